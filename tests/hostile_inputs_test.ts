// hostile_inputs_test.ts: inputs that change under the library's feet or lie about themselves
// (buffers resized or transferred between a layer's forward and backward, option getters that
// shrink an array, typed-array subclasses with a false length, fake typed arrays) are refused
// with a named error instead of reaching native code with the wrong sizes; a failed layer
// forward leaves nothing stale behind. Each runs on the CPU and, where usable, on CUDA.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax, releaseContexts } from "../mod.ts";
import { loadLibrary } from "../ffi/library.ts";
import { NativeContext } from "../ffi/context.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { assertClose, randomProblem, Rng, rowScale } from "./helpers.ts";
import { referenceBackward, referenceForward } from "./reference.ts";

const SCHEDULE = { base: 10, gamma: 0.1, power: 1, lambdaMin: 0 };
const BACKENDS: TestBackend[] = ["cpu", "cuda"];

function throwsNaming(call: () => unknown, cls: typeof Error, ...mentions: string[]): void {
  assert.throws(call, (e: unknown) => {
    assert.ok(e instanceof cls, `expected a ${cls.name}, got ${e}`);
    for (const m of mentions) assert.ok(e.message.includes(m), `"${e.message}" lacks "${m}"`);
    return true;
  });
}

/** A copy of `a` in a resizable ArrayBuffer that may grow to twice its size. */
function resizable(a: Float64Array): Float64Array {
  const buf = new ArrayBuffer(a.byteLength, { maxByteLength: 2 * a.byteLength });
  const out = new Float64Array(buf); // length-tracking
  out.set(a);
  return out;
}

for (const backend of BACKENDS) {
  const test = (name: string, fn: () => void) =>
    Deno.test({ name: `${backend}: ${name}`, ignore: backend === "cuda" && !cudaAvailable, fn });

  test("layer backward refuses inputs resized or transferred since its forward", () => {
    const p = randomProblem(new Rng(901), 4, 3, 5);
    for (const change of ["shrink x", "grow w", "transfer labels"] as const) {
      using layer = new LargeMarginSoftmax({ margin: 3, ...SCHEDULE, backend });
      const x = resizable(p.x), w = resizable(p.w), labels = p.labels.slice();
      layer.forward(x, w, labels);
      if (change === "shrink x") (x.buffer as ArrayBuffer).resize(8);
      if (change === "grow w") (w.buffer as ArrayBuffer).resize(2 * w.byteLength);
      if (change === "transfer labels") labels.buffer.transfer();
      const name = change.split(" ")[1];
      throwsNaming(() => layer.backward(p.g), RangeError, `${name}:`, "last forward");
      // Still usable: a fresh forward and backward agree with the reference.
      const { lambda } = layer.forward(p.x, p.w, p.labels);
      const { gradX } = layer.backward(p.g);
      const ref = referenceBackward(p.x, p.w, p.labels, p.g, { margin: 3, lambda });
      assertClose(gradX, ref.gradX, 1e-12, "gradX after refusal", rowScale(ref.gradX, 4));
    }
  });

  test("an option getter that shrinks x runs before the size checks", () => {
    const p = randomProblem(new Rng(902), 4, 3, 5);
    const x = resizable(p.x);
    const options = {
      lambda: 0.5,
      backend,
      get margin() {
        (x.buffer as ArrayBuffer).resize(16); // 2 elements: not a multiple of N = 4
        return 3;
      },
    };
    throwsNaming(() => forward(x, p.w, p.labels, options), RangeError, "x:", "got 2");
    const out = new Float64Array(20);
    const shrinkOut = {
      margin: 3,
      lambda: 0.5,
      backend,
      get out() {
        (x.buffer as ArrayBuffer).resize(p.x.byteLength - 8);
        return out;
      },
    };
    (x.buffer as ArrayBuffer).resize(p.x.byteLength);
    throwsNaming(() => forward(x, p.w, p.labels, shrinkOut), RangeError, "x:", "got 11");
  });

  test("a subclass lying about its length is measured by the engine", () => {
    class Liar extends Float64Array {
      override get length(): number {
        return 1 << 20;
      }
    }
    const p = randomProblem(new Rng(903), 3, 2, 4);
    const x = new Liar(p.x);
    // The true length (6) is used: N = 3, D = 2, C = 4, as the reference says.
    const { logits } = forward(x, p.w, p.labels, { margin: 2, lambda: 0, backend });
    const ref = referenceForward(p.x, p.w, p.labels, { margin: 2, lambda: 0 });
    assertClose(logits, ref, 1e-12, "logits of a Liar", rowScale(ref, 3));
    // A lying output is refused by its true length.
    const out = new Liar(5);
    throwsNaming(
      () => forward(p.x, p.w, p.labels, { margin: 2, lambda: 0, backend, out }),
      RangeError,
      "out:",
      "got 5",
    );
  });

  test("an object that only inherits from Float64Array.prototype is a TypeError", () => {
    const p = randomProblem(new Rng(904), 3, 2, 4);
    const fake = Object.create(Float64Array.prototype) as Float64Array;
    throwsNaming(
      () => forward(fake, p.w, p.labels, { margin: 2, lambda: 0, backend }),
      TypeError,
      "x:",
      "not a typed array",
    );
    const proxy = new Proxy(p.x, {});
    throwsNaming(
      () => forward(proxy, p.w, p.labels, { margin: 2, lambda: 0, backend }),
      TypeError,
      "x:",
      "not a typed array",
    );
  });

  test("an array wearing another type's prototype is taken for what it is", () => {
    const p = randomProblem(new Rng(906), 3, 2, 4);
    const disguise = <A extends object>(a: A, proto: object) => Object.setPrototypeOf(a, proto);
    // Float32 data posing as Float64: read as float32 (8 bytes a value would overrun it).
    const x32 = disguise(new Float32Array(p.x), Float64Array.prototype) as Float64Array;
    const w32 = disguise(new Float32Array(p.w), Float64Array.prototype) as Float64Array;
    throwsNaming(
      () => forward(x32, p.w, p.labels, { margin: 2, lambda: 0, backend }),
      TypeError,
      "w:",
      "expected a Float32Array like x",
      "Float64Array(8)",
    );
    const { logits } = forward(x32, w32, p.labels, { margin: 2, lambda: 0, backend });
    assert.equal(Object.prototype.toString.call(logits), "[object Float32Array]");
    const ref = referenceForward(
      new Float64Array(new Float32Array(p.x)),
      new Float64Array(new Float32Array(p.w)),
      p.labels,
      { margin: 2, lambda: 0 },
    );
    assertClose(
      Float64Array.from(logits),
      ref,
      1e-5,
      "logits of disguised float32",
      rowScale(ref, 3),
    );
    // Bytes posing as int32 labels, and a float32 output posing as float64.
    const bytes = disguise(new Uint8Array(3), Int32Array.prototype) as Int32Array;
    throwsNaming(
      () => forward(p.x, p.w, bytes, { margin: 2, lambda: 0, backend }),
      TypeError,
      "labels:",
      "Uint8Array(3)",
    );
    const out = disguise(new Float32Array(12), Float64Array.prototype) as Float64Array;
    throwsNaming(
      () => forward(p.x, p.w, p.labels, { margin: 2, lambda: 0, backend, out }),
      TypeError,
      "out:",
      "Float32Array(12)",
    );
    const outX = disguise(new Float32Array(6), Float64Array.prototype) as Float64Array;
    using layer = new LargeMarginSoftmax({ margin: 2, ...SCHEDULE, backend });
    layer.forward(p.x, p.w, p.labels);
    throwsNaming(() => layer.backward(p.g, { outX }), TypeError, "outX:", "Float32Array(6)");
  });

  test("no caller code runs between the size checks and the native call", () => {
    const p = randomProblem(new Rng(907), 4, 3, 5);
    let ran = 0;
    // Outputs whose buffer, offset and length getters would shrink them, were they asked.
    class Shrinking extends Float64Array {
      override get buffer(): ArrayBuffer {
        ran++;
        (super.buffer as ArrayBuffer).resize(0);
        return super.buffer as ArrayBuffer;
      }
      override get byteOffset(): number {
        ran++;
        return 0;
      }
      override get byteLength(): number {
        ran++;
        return 0;
      }
    }
    const shrinking = (length: number) =>
      new Shrinking(new ArrayBuffer(8 * length, { maxByteLength: 8 * length }));
    const opts = { margin: 3, lambda: 0.5, backend };
    const out = shrinking(20);
    forward(p.x, p.w, p.labels, { ...opts, out });
    assertClose(out, referenceForward(p.x, p.w, p.labels, opts), 1e-12, "out", 1);
    // outX is checked against outW for overlap: its getters must not run there either.
    const outX = shrinking(12), outW = shrinking(15);
    backward(p.x, p.w, p.labels, p.g, { ...opts, outX, outW });
    const ref = referenceBackward(p.x, p.w, p.labels, p.g, opts);
    assertClose(outX, ref.gradX, 1e-12, "outX", rowScale(ref.gradX, 4));
    assertClose(outW, ref.gradW, 1e-12, "outW", rowScale(ref.gradW, 5));
    using layer = new LargeMarginSoftmax({ margin: 3, ...SCHEDULE, backend });
    const { lambda } = layer.forward(p.x, p.w, p.labels);
    layer.backward(p.g, { outX, outW });
    const refLayer = referenceBackward(p.x, p.w, p.labels, p.g, { margin: 3, lambda });
    assertClose(outW, refLayer.gradW, 1e-12, "layer outW", rowScale(refLayer.gradW, 5));
    assert.equal(ran, 0, "a getter of the caller's array ran");
    assert.equal(out.length, 20, "out kept its memory");

    // Nor do patched globals: instanceof and the prototype's getters are not consulted.
    const typedProto = Object.getPrototypeOf(Int8Array.prototype);
    const length = Object.getOwnPropertyDescriptor(typedProto, "length")!;
    Object.defineProperty(Float64Array, Symbol.hasInstance, {
      value: () => false,
      configurable: true,
    });
    Object.defineProperty(typedProto, "length", { get: () => 1 << 20, configurable: true });
    let patched: Float64Array;
    try {
      patched = forward(p.x, p.w, p.labels, opts).logits;
    } finally {
      Object.defineProperty(typedProto, "length", length);
      delete (Float64Array as { [Symbol.hasInstance]?: unknown })[Symbol.hasInstance];
    }
    assertClose(patched, referenceForward(p.x, p.w, p.labels, opts), 1e-12, "patched", 1);
  });

  test("replaced globals that shrink the output mid-call never reach native code", () => {
    const p = randomProblem(new Rng(909), 4, 3, 5);
    const opts = { margin: 3, lambda: 0.5, backend };
    const refF = referenceForward(p.x, p.w, p.labels, opts);
    const refB = referenceBackward(p.x, p.w, p.labels, p.g, opts);
    // Each replacement shrinks the outputs to nothing the first time it is used, wherever that
    // is: the call must then refuse by name, or never have used it and be right.
    type Patch = [object, PropertyKey];
    const patches: Patch[] = [
      [Array.prototype, Symbol.iterator],
      [Array.prototype, "some"],
      [globalThis, "BigInt"],
      [globalThis, "BigUint64Array"],
      [Map.prototype, "get"],
      [Map.prototype, "set"],
      [Deno.UnsafePointer, "create"],
    ];
    for (const [target, key] of patches) {
      const label = `${String(key)}`;
      const bytes = 8 * 20 + 8 * 12 + 8 * 15;
      const buf = new ArrayBuffer(bytes, { maxByteLength: bytes });
      const out = new Float64Array(buf, 0, 20);
      const outX = new Float64Array(buf, 160, 12), outW = new Float64Array(buf, 256, 15);
      const original = Object.getOwnPropertyDescriptor(target, key)!;
      let fired = false;
      const value = original.value as (...a: unknown[]) => unknown;
      const hostile = function (this: unknown, ...args: unknown[]) {
        if (!fired) (fired = true, buf.resize(8));
        return new.target ? Reflect.construct(value, args, new.target) : value.apply(this, args);
      };
      Object.defineProperty(target, key, { ...original, value: hostile });
      let f: unknown, b: unknown;
      try {
        f = (() => {
          try {
            return forward(p.x, p.w, p.labels, { ...opts, out }).logits;
          } catch (e) {
            return e;
          }
        })();
        buf.resize(bytes);
        fired = false;
        b = (() => {
          try {
            return backward(p.x, p.w, p.labels, p.g, { ...opts, outX, outW });
          } catch (e) {
            return e;
          }
        })();
      } finally {
        Object.defineProperty(target, key, original);
      }
      buf.resize(bytes);
      if (f instanceof Error) {
        assert.ok(f instanceof RangeError && f.message.startsWith("out:"), `${label}: ${f}`);
      } else assertClose(f as Float64Array, refF, 1e-12, `${label}: logits`, rowScale(refF, 4));
      if (b instanceof Error) {
        assert.ok(b instanceof RangeError && /^out[XW]:/.test(b.message), `${label}: ${b}`);
      } else {
        assertClose(outW, refB.gradW, 1e-12, `${label}: outW`, rowScale(refB.gradW, 5));
      }
    }
  });

  test("outputs on another SharedArrayBuffer object over the inputs' memory are refused", () => {
    const p = randomProblem(new Rng(910), 2, 3, 3);
    const sab = new SharedArrayBuffer(8 * 6);
    const alias = structuredClone(sab); // a second object, the same memory
    assert.notEqual(alias, sab);
    const x = new Float64Array(sab);
    x.set(p.x);
    assert.equal(new Float64Array(alias)[5], p.x[5], "the clone shares the memory");
    throwsNaming(
      () =>
        forward(x, p.w, p.labels, { margin: 2, lambda: 0, backend, out: new Float64Array(alias) }),
      RangeError,
      "out:",
      "overlap with x",
    );
    const w = new Float64Array(new SharedArrayBuffer(8 * 9));
    w.set(p.w);
    const outW = new Float64Array(structuredClone(w.buffer as SharedArrayBuffer));
    throwsNaming(
      () => backward(p.x, w, p.labels, p.g, { margin: 2, lambda: 0, backend, outW }),
      RangeError,
      "outW:",
      "overlap with w",
    );
    // Apart: accepted, and right.
    const out = new Float64Array(new SharedArrayBuffer(8 * 6));
    forward(x, w, p.labels, { margin: 2, lambda: 0, backend, out });
    const ref = referenceForward(p.x, p.w, p.labels, { margin: 2, lambda: 0 });
    assertClose(out, ref, 1e-12, "logits on shared memory", rowScale(ref, 2));
  });

  test("caller code while the arrays are placed can close the context or call in again", () => {
    // Two SharedArrayBuffers make the guard take addresses, and Deno.UnsafePointer.of reads the
    // array's own `length`: caller code inside the call, before any context state is taken.
    const p = randomProblem(new Rng(911), 4, 8, 5);
    const onShared = (a: Float64Array) => {
      const v = new Float32Array(new SharedArrayBuffer(4 * a.length));
      v.set(a);
      return v;
    };
    const x = onShared(p.x), w = onShared(p.w);
    const opts = { margin: 2, lambda: 0.25, backend };
    const exact = forward(x, w, p.labels, opts).logits.slice();
    let action: () => void = () => {};
    let fired = 0;
    Object.defineProperty(x, "length", {
      get() {
        if (!fired++) action();
        return p.x.length;
      },
    });
    // The shared context closed mid-call: refused by name, then reopened by the next call.
    action = () => releaseContexts();
    throwsNaming(() => forward(x, w, p.labels, opts), Error, "context is closed");
    assert.equal(fired, 1, "the getter ran inside the call");
    // Called in again with another shape and precision: this call keeps its own.
    fired = 0;
    action = () => {
      const big = randomProblem(new Rng(912), 64, 32, 16);
      const precision = backend === "cuda" ? "tf32" : "exact";
      forward(new Float32Array(big.x), new Float32Array(big.w), big.labels, { ...opts, precision });
    };
    const again = forward(x, w, p.labels, opts).logits;
    assert.equal(fired, 1);
    assert.deepEqual(Array.from(again), Array.from(exact), "same bits as the undisturbed call");
    // A layer closed by its own input mid-backward.
    using layer = new LargeMarginSoftmax({ margin: 2, ...SCHEDULE, backend });
    layer.forward(x, w, p.labels);
    fired = 0;
    action = () => layer.close();
    throwsNaming(() => layer.backward(new Float32Array(p.g)), Error, "closed");
    assert.equal(fired, 1);
    action = () => {};
    assert.deepEqual(Array.from(forward(x, w, p.labels, opts).logits), Array.from(exact));
  });

  test("layer: null options are a TypeError; a failed forward leaves no stale backward", () => {
    const p = randomProblem(new Rng(905), 3, 2, 4);
    using layer = new LargeMarginSoftmax({ margin: 2, ...SCHEDULE, backend });
    throwsNaming(
      // deno-lint-ignore no-explicit-any
      () => layer.forward(p.x, p.w, p.labels, null as any),
      TypeError,
      "options:",
      "null",
    );
    layer.forward(p.x, p.w, p.labels);
    assert.equal(layer.iteration, 1);
    const bad = p.labels.slice();
    bad[1] = 4;
    throwsNaming(() => layer.forward(p.x, p.w, bad), RangeError, "labels[1]", "got 4");
    assert.equal(layer.iteration, 1, "a failed forward does not advance the iteration");
    throwsNaming(() => layer.backward(p.g), Error, "forward first");
    throwsNaming(
      // deno-lint-ignore no-explicit-any
      () => (layer.forward(p.x, p.w, p.labels), layer.backward(p.g, null as any)),
      TypeError,
      "options:",
    );
  });
}

Deno.test("layer: precision tf32 on the cpu is refused when the layer is made", () => {
  throwsNaming(
    () => new LargeMarginSoftmax({ margin: 2, ...SCHEDULE, backend: "cpu", precision: "tf32" }),
    RangeError,
    "precision:",
    "cpu",
  );
});

// The native layer's own guard: a Problem whose arrays do not hold what it says never reaches
// native code (mod.ts never builds one; this is the guard behind its checks).
Deno.test("context: arrays that do not match the problem are refused before the native call", () => {
  const p = randomProblem(new Rng(908), 3, 2, 4);
  const ctx = new NativeContext(loadLibrary(), "cpu", 0);
  try {
    const problem = {
      dtype: "float64" as const,
      x: p.x,
      w: p.w,
      labels: p.labels,
      n: 3,
      d: 2,
      c: 4,
      margin: 2,
      lambda: 0,
      precision: "exact" as const,
    };
    const logits = new Float64Array(12);
    ctx.forward(problem, logits);
    assertClose(
      logits,
      referenceForward(p.x, p.w, p.labels, { margin: 2, lambda: 0 }),
      1e-12,
      "ok",
      1,
    );
    throwsNaming(
      () => ctx.forward({ ...problem, c: 5 }, new Float64Array(15)),
      RangeError,
      "w:",
      "expected 10",
      "got 8",
    );
    throwsNaming(
      () => ctx.forward({ ...problem, dtype: "float32" }, logits),
      TypeError,
      "x:",
      "Float32Array",
    );
    throwsNaming(() => ctx.forward(problem, new Float64Array(11)), RangeError, "out:", "got 11");
    const [gx, gw] = [new Float64Array(6), new Float64Array(8)];
    throwsNaming(
      () => ctx.backward(problem, new Float32Array(12), gx, gw),
      TypeError,
      "gradLogits:",
    );
    throwsNaming(
      () => ctx.backward(problem, p.g, gx, new Float64Array(9)),
      RangeError,
      "outW:",
      "got 9",
    );
    ctx.backward(problem, p.g, gx, gw); // still usable
  } finally {
    ctx.close();
  }
});
