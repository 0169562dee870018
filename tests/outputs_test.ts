// outputs_test.ts: caller-provided output arrays (out, outX, outW) are written in place, give
// the same results as fresh arrays, and are refused when of the wrong dtype, length or when they
// overlap an input; on every backend here.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { randomProblem, Rng, toF32 } from "./helpers.ts";

const rng = new Rng(907);
const P = randomProblem(rng, 5, 3, 4); // N = 5, D = 3, C = 4

for (const backend of ["cpu", "cuda"] as const) {
  Deno.test({
    name: `outputs (${backend}): out, outX and outW are filled in place like fresh arrays`,
    ignore: backend === "cuda" && !cudaAvailable,
    fn() {
      const o = { margin: 3, lambda: 0.5, backend };
      const fresh = forward(P.x, P.w, P.labels, o).logits;
      const out = new Float64Array(fresh.length).fill(Number.NaN);
      const { logits } = forward(P.x, P.w, P.labels, { ...o, out });
      assert.equal(logits, out);
      assert.deepEqual(Array.from(out), Array.from(fresh));

      const ref = backward(P.x, P.w, P.labels, P.g, o);
      const outX = new Float64Array(ref.gradX.length).fill(Number.NaN);
      const outW = new Float64Array(ref.gradW.length).fill(Number.NaN);
      const got = backward(P.x, P.w, P.labels, P.g, { ...o, outX, outW });
      assert.equal(got.gradX, outX);
      assert.equal(got.gradW, outW);
      assert.deepEqual(Array.from(outX), Array.from(ref.gradX));
      assert.deepEqual(Array.from(outW), Array.from(ref.gradW));
    },
  });
}

Deno.test("outputs: a wrong dtype, length or an overlap with an input is refused by name", () => {
  const o = { margin: 2, lambda: 0, backend: "cpu" as const };
  const n = P.labels.length, c = P.w.length / 3;
  assert.throws(
    () => forward(P.x, P.w, P.labels, { ...o, out: toF32(new Float64Array(n * c)) as never }),
    (e: Error) =>
      e instanceof TypeError && e.message.includes("out") && e.message.includes("Float32Array"),
  );
  assert.throws(
    () => forward(P.x, P.w, P.labels, { ...o, out: new Float64Array(n * c + 1) }),
    (e: Error) =>
      e instanceof RangeError && e.message.includes("out") && e.message.includes(`${n * c + 1}`),
  );
  // out viewing the same memory as x.
  const shared = new Float64Array(P.x.length + n * c);
  shared.set(P.x);
  const x = shared.subarray(0, P.x.length);
  assert.throws(
    () =>
      forward(x, P.w, P.labels, {
        ...o,
        out: shared.subarray(P.x.length - 1, P.x.length - 1 + n * c),
      }),
    (e: Error) =>
      e instanceof RangeError && e.message.includes("out") && e.message.includes("overlap"),
  );
  // outW the same array as outX's memory.
  const both = new Float64Array(P.x.length + P.w.length);
  assert.throws(
    () =>
      backward(P.x, P.w, P.labels, P.g, {
        ...o,
        outX: both.subarray(0, P.x.length),
        outW: both.subarray(0, P.w.length),
      }),
    (e: Error) => e instanceof RangeError && e.message.includes("outW"),
  );
  // Adjacent but apart is fine.
  const r = backward(P.x, P.w, P.labels, P.g, {
    ...o,
    outX: both.subarray(0, P.x.length),
    outW: both.subarray(P.x.length),
  });
  assert.ok(r.gradW.every(Number.isFinite));
});

Deno.test("outputs: the layer takes out, outX and outW too", () => {
  using layer = new LargeMarginSoftmax({
    margin: 4,
    base: 1000,
    gamma: 0.000025,
    power: 35,
    lambdaMin: 0,
    iteration: 9000,
    backend: "cpu",
  });
  const out = new Float64Array(P.labels.length * (P.w.length / 3));
  const { logits, lambda } = layer.forward(P.x, P.w, P.labels, { out });
  assert.equal(logits, out);
  const fresh = forward(P.x, P.w, P.labels, { margin: 4, lambda, backend: "cpu" }).logits;
  assert.deepEqual(Array.from(out), Array.from(fresh));
  const outX = new Float64Array(P.x.length), outW = new Float64Array(P.w.length);
  const g = layer.backward(P.g, { outX, outW });
  assert.equal(g.gradX, outX);
  assert.equal(g.gradW, outW);
  const ref = backward(P.x, P.w, P.labels, P.g, { margin: 4, lambda, backend: "cpu" });
  assert.deepEqual(Array.from(outW), Array.from(ref.gradW));
});
