// guards_test.ts: the mistakes the module catches (threat model in the README): arrays resized or
// transferred between a layer's forward and backward, typed-array subclasses and look-alikes,
// misspelt option names, a layer counting past 2^53, unreadable LSOFTMAX_LIB, messages that say
// exactly what came. Each error names the argument and leaves the library usable.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax } from "../mod.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { assertClose, randomProblem, Rng, rowScale } from "./helpers.ts";
import { referenceBackward, referenceForward } from "./reference.ts";

const SCHEDULE = { base: 10, gamma: 0.1, power: 1, lambdaMin: 0 };

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

for (const backend of ["cpu", "cuda"] as TestBackend[]) {
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
      const { lambda } = layer.forward(p.x, p.w, p.labels); // still usable
      const { gradX } = layer.backward(p.g);
      const ref = referenceBackward(p.x, p.w, p.labels, p.g, { margin: 3, lambda });
      assertClose(gradX, ref.gradX, 1e-12, "gradX after refusal", rowScale(ref.gradX, 4));
    }
  });

  test("a typed-array subclass with a false length is read for its true size", () => {
    const p = randomProblem(new Rng(902), 4, 3, 5);
    class Lying extends Float64Array {
      override get length(): number {
        return 1e6;
      }
    }
    const x = new Lying(p.x.length);
    x.set(p.x);
    const { logits } = forward(x, p.w, p.labels, { margin: 2, lambda: 0.5, backend });
    const ref = referenceForward(p.x, p.w, p.labels, { margin: 2, lambda: 0.5 });
    assertClose(logits, ref, 1e-12, "subclass x", rowScale(ref, 4));
    const proxy = new Proxy(p.x, {});
    throwsNaming(
      () => forward(proxy, p.w, p.labels, { margin: 2, lambda: 0.5, backend }),
      TypeError,
      "x:",
    );
    const lookAlike = Object.setPrototypeOf({ length: 12 }, Float64Array.prototype);
    throwsNaming(
      () => forward(p.x, lookAlike, p.labels, { margin: 2, lambda: 0.5, backend }),
      TypeError,
      "w:",
    );
    const wearing = Object.setPrototypeOf(new Float32Array(p.w.length), Float64Array.prototype);
    throwsNaming(
      () => forward(p.x, wearing, p.labels, { margin: 2, lambda: 0.5, backend }),
      TypeError,
      "w:",
      "Float32Array(15)",
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

Deno.test("options: a misspelt or unknown key is a TypeError naming it and the likely key", () => {
  const p = randomProblem(new Rng(903), 3, 2, 4);
  const op = { margin: 2, lambda: 0.5, backend: "cpu" as const };
  const layerOptions = { margin: 2, ...SCHEDULE, backend: "cpu" as const };
  const cases: [string, () => unknown, string, string | undefined][] = [
    [
      "backward outx",
      () => backward(p.x, p.w, p.labels, p.g, { ...op, outx: 1 } as never),
      "outx",
      "outX",
    ],
    [
      "forward backnd",
      () => forward(p.x, p.w, p.labels, { ...op, backnd: "cpu" } as never),
      "backnd",
      "backend",
    ],
    [
      "forward featurs",
      () => forward(p.x, p.w, p.labels, { ...op, featurs: 2 } as never),
      "featurs",
      "features",
    ],
    [
      "layer iterations",
      () => new LargeMarginSoftmax({ ...layerOptions, iterations: 3 } as never),
      "iterations",
      "iteration",
    ],
    [
      "layer forward stp",
      () => {
        using layer = new LargeMarginSoftmax(layerOptions);
        layer.forward(p.x, p.w, p.labels, { stp: 3 } as never);
      },
      "stp",
      "step",
    ],
    [
      "layer backward outW typo",
      () => {
        using layer = new LargeMarginSoftmax(layerOptions);
        layer.forward(p.x, p.w, p.labels);
        layer.backward(p.g, { outw: new Float64Array(8) } as never);
      },
      "outw",
      "outW",
    ],
    [
      "forward unrelated key",
      () => forward(p.x, p.w, p.labels, { ...op, colour: 1 } as never),
      "colour",
      undefined,
    ],
  ];
  for (const [what, call, key, hint] of cases) {
    assert.throws(call, (e: unknown) => {
      assert.ok(e instanceof TypeError, `${what}: expected a TypeError, got ${e}`);
      assert.ok(e.message.includes(`"${key}"`), `${what}: "${e.message}" lacks "${key}"`);
      if (hint) assert.ok(e.message.includes(`did you mean "${hint}"`), `${what}: ${e.message}`);
      else assert.ok(!e.message.includes("did you mean"), `${what}: ${e.message}`);
      return true;
    });
  }
  forward(p.x, p.w, p.labels, op); // still usable
});

Deno.test("layer: counting past Number.MAX_SAFE_INTEGER is refused before it happens", () => {
  const p = randomProblem(new Rng(904), 3, 2, 4);
  const start = Number.MAX_SAFE_INTEGER - 1;
  using layer = new LargeMarginSoftmax({
    margin: 2,
    ...SCHEDULE,
    iteration: start,
    backend: "cpu",
  });
  layer.forward(p.x, p.w, p.labels);
  assert.equal(layer.iteration, Number.MAX_SAFE_INTEGER);
  throwsNaming(
    () => layer.forward(p.x, p.w, p.labels),
    RangeError,
    "iteration:",
    "MAX_SAFE_INTEGER",
  );
  assert.equal(layer.iteration, Number.MAX_SAFE_INTEGER);
  using again = new LargeMarginSoftmax(layer.toJSON()); // still a valid state
  assert.equal(again.iteration, Number.MAX_SAFE_INTEGER);
  layer.forward(p.x, p.w, p.labels, { step: 5 }); // an explicit step still works
  assert.equal(layer.iteration, 5);
});

Deno.test("messages: say exactly what came (undefined, 2.5 (not an integer), NaN)", () => {
  const p = randomProblem(new Rng(905), 3, 2, 4);
  const call = (o: unknown) => () => forward(p.x, p.w, p.labels, o as never);
  throwsNaming(call({ lambda: 0 }), TypeError, "margin:", "got undefined");
  assert.throws(call({ lambda: 0 }), (e: Error) => !e.message.includes("undefined undefined"));
  throwsNaming(call({ margin: 2.5, lambda: 0 }), TypeError, "margin:", "got 2.5 (not an integer)");
  throwsNaming(call({ margin: NaN, lambda: 0 }), TypeError, "margin:", "got NaN");
  throwsNaming(call({ margin: "4", lambda: 0 }), TypeError, "margin:", 'got "4"');
  throwsNaming(call({ margin: 2, lambda: null }), TypeError, "lambda:", "got null");
  throwsNaming(call(undefined), TypeError, "options:", "got undefined");
});

// A child Deno that imports mod.ts with the given permissions and environment.
async function child(permissions: string[], env: Record<string, string>, code: string) {
  const script = `import { forward } from ${
    JSON.stringify(new URL("../mod.ts", import.meta.url).href)
  };
try { ${code} } catch (e) { console.log(e.name + ": " + e.message); }`;
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--no-check", ...permissions, "-"],
    env: { ...env, NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = proc.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const out = await proc.output();
  return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
}

const CALL = `forward(new Float64Array(2), new Float64Array(2), new Int32Array(1), ` +
  `{ margin: 1, lambda: 0, backend: "cpu" }); console.log("ran");`;

Deno.test("library: LSOFTMAX_LIB set but not readable is an error, not another library", async () => {
  const out = await child(
    ["--allow-ffi", "--allow-read"],
    { LSOFTMAX_LIB: "/elsewhere/lib.so" },
    CALL,
  );
  assert.ok(!out.includes("ran"), out);
  assert.match(out, /Error: liblsoftmax: cannot read LSOFTMAX_LIB .*--allow-env=LSOFTMAX_LIB/);
});

Deno.test("library: a missing --allow-ffi says so, without the build hint", async () => {
  const out = await child(["--allow-env", "--allow-read"], {}, CALL);
  assert.match(out, /Error: liblsoftmax: cannot open .*: run with --allow-ffi/);
  assert.ok(!out.includes("make"), out);
});

Deno.test("library: a path that does not open names it once, with the build hint", async () => {
  const out = await child(["--allow-ffi", "--allow-env"], {
    LSOFTMAX_LIB: "/nonexistent/liblsoftmax.so",
  }, CALL);
  assert.match(out, /cannot open \/nonexistent\/liblsoftmax\.so/);
  assert.equal(out.match(/Could not open library/g)?.length ?? 0, 0, out);
  assert.ok(out.includes("make"), out);
});

Deno.test("options: one object passed call after call is checked again whenever it changes", () => {
  const p = randomProblem(new Rng(78), 3, 4, 5);
  const want = (margin: number, lambda: number) =>
    referenceForward(p.x, p.w, p.labels, { margin, lambda });
  const o: Record<string, unknown> = { margin: 3, lambda: 1, backend: "cpu" };
  assertClose(forward(p.x, p.w, p.labels, o).logits, want(3, 1), 1e-10, "logits 1");
  assertClose(forward(p.x, p.w, p.labels, o).logits, want(3, 1), 1e-10, "logits 2");
  o.margin = 2; // a value changed
  assertClose(forward(p.x, p.w, p.labels, o).logits, want(2, 1), 1e-10, "logits 3");
  o.margin = 17; // out of range now
  throwsNaming(() => forward(p.x, p.w, p.labels, o), RangeError, "margin", "17");
  o.margin = 2;
  o.lamda = 0; // a key added: still named
  throwsNaming(() => forward(p.x, p.w, p.labels, o), TypeError, '"lamda"', '"lambda"');
  delete o.lamda;
  delete o.lambda; // a key removed: λ is required
  throwsNaming(() => forward(p.x, p.w, p.labels, o), TypeError, "lambda", "undefined");
  o.lambda = 0; // and given again, last now
  assertClose(forward(p.x, p.w, p.labels, o).logits, want(2, 0), 1e-10, "logits 4");
  o.lambda = 1;
  o.out = new Float64Array(15); // an output given, then resized, then of the wrong type
  const logits = forward(p.x, p.w, p.labels, o).logits;
  assert.equal(logits, o.out);
  assertClose(logits, want(2, 1), 1e-10, "logits 5");
  o.out = new Float64Array(14);
  throwsNaming(() => forward(p.x, p.w, p.labels, o), RangeError, "out", "15", "14");
  o.out = new Float32Array(15);
  throwsNaming(() => forward(p.x, p.w, p.labels, o), TypeError, "out", "Float64Array");
  delete o.out;
  // The same object for backward, and then with a kind that has no λ.
  const g = new Float64Array(15).fill(0.25);
  const { gradX } = backward(p.x, p.w, p.labels, g, o);
  assert.deepEqual(gradX, backward(p.x, p.w, p.labels, g, { ...o }).gradX);
  o.margin = 3; // changed between a forward and a backward: each sees it
  assertClose(forward(p.x, p.w, p.labels, o).logits, want(3, 1), 1e-10, "logits after");
  assert.deepEqual(
    backward(p.x, p.w, p.labels, g, o).gradX,
    backward(p.x, p.w, p.labels, g, { ...o }).gradX,
  );
  assert.notDeepEqual(backward(p.x, p.w, p.labels, g, o).gradX, gradX);
  o.kind = "cosface";
  throwsNaming(() => forward(p.x, p.w, p.labels, o), TypeError, "lambda", "cosface");
});

Deno.test("options: each is read once, own keys of a plain object, inherited ones of a class", () => {
  const p = randomProblem(new Rng(77), 3, 4, 5);
  const want = forward(p.x, p.w, p.labels, { margin: 3, lambda: 1, backend: "cpu" }).logits;
  let reads = 0;
  const plain = {
    lambda: 1,
    backend: "cpu" as const,
    get margin() {
      reads++;
      return 3;
    },
  };
  assert.deepEqual(forward(p.x, p.w, p.labels, plain).logits, want);
  assert.equal(reads, 1);
  // Again with the same object (its checked options kept): still one read a call.
  assert.deepEqual(forward(p.x, p.w, p.labels, plain).logits, want);
  assert.equal(reads, 2);
  class Options {
    lambda = 1;
    backend = "cpu" as const;
    get margin() {
      reads++;
      return 3;
    }
  }
  assert.deepEqual(forward(p.x, p.w, p.labels, new Options()).logits, want);
  assert.equal(reads, 3);
  // A misspelt own key of either is still named.
  throwsNaming(
    () => forward(p.x, p.w, p.labels, { ...plain, lamda: 1 } as never),
    TypeError,
    '"lamda"',
    '"lambda"',
  );
});
