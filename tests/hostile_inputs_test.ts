// hostile_inputs_test.ts: inputs that change under the library's feet or lie about themselves
// (buffers resized or transferred between a layer's forward and backward, option getters that
// shrink an array, typed-array subclasses with a false length, fake typed arrays) are refused
// with a named error instead of reaching native code with the wrong sizes; a failed layer
// forward leaves nothing stale behind. Each runs on the CPU and, where usable, on CUDA.

import assert from "node:assert/strict";
import { forward, LargeMarginSoftmax } from "../mod.ts";
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
      "typed array",
    );
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
