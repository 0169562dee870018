// special_values_test.ts: NaN or Inf in a feature row stays in that row of logits and gradX;
// zero (or underflowing) feature and weight rows give finite results equal to the plain inner
// product's. CPU here; cuda_test.ts repeats the essentials on CUDA.

import assert from "node:assert/strict";
import { backward, forward } from "../mod.ts";
import { checkNonFiniteRow, checkZeroRows } from "./check.ts";
import { assertClose, randomProblem, Rng, rowScale } from "./helpers.ts";
import { referenceBackward, referenceForward } from "./reference.ts";

Deno.test("NaN / Inf in a feature row stays in that row of logits and gradX (cpu)", () => {
  const rng = new Rng(501);
  for (const dtype of ["float64", "float32"] as const) {
    for (const value of [NaN, Infinity, -Infinity]) {
      for (const m of [1, 2, 4, 6]) {
        for (const lambda of [0, 1000]) checkNonFiniteRow("cpu", dtype, value, m, lambda, rng);
      }
    }
  }
});

Deno.test("zero feature / weight rows: finite, equal to the plain inner product's (cpu)", () => {
  const rng = new Rng(502);
  for (const dtype of ["float64", "float32"] as const) {
    for (const m of [1, 2, 3, 4, 6, 16]) {
      for (const lambda of [0, 0.5, 1000]) checkZeroRows("cpu", dtype, m, lambda, rng);
    }
  }
});

Deno.test("all-zero inputs: logits and gradients are all 0 (cpu)", () => {
  const x = new Float64Array(6), w = new Float64Array(9), labels = new Int32Array([0, 2]);
  const g = new Float64Array(6).fill(1);
  for (const m of [1, 4]) {
    const o = { margin: m, lambda: 0, backend: "cpu" as const };
    const { logits } = forward(x, w, labels, o);
    const { gradX, gradW } = backward(x, w, labels, g, o);
    for (const a of [logits, gradX, gradW]) assert.ok(a.every((v) => v === 0), `m=${m}`);
  }
});

Deno.test("tiny and huge (finite) scales in float64 match the reference (cpu)", () => {
  const rng = new Rng(503);
  for (const scale of [1e-150, 1e-100, 1e100, 1e150]) {
    const p = randomProblem(rng, 5, 4, 3);
    const x = p.x.map((v) => v * scale);
    for (const m of [2, 5]) {
      const o = { margin: m, lambda: 0.5, backend: "cpu" as const };
      const { logits } = forward(x, p.w, p.labels, o);
      const ref = referenceForward(x, p.w, p.labels, o);
      assertClose(logits, ref, 1e-12, `scale ${scale} m=${m}`, rowScale(ref, 5));
      const { gradX, gradW } = backward(x, p.w, p.labels, p.g, o);
      const rb = referenceBackward(x, p.w, p.labels, p.g, o);
      assertClose(gradX, rb.gradX, 1e-12, `scale ${scale} gradX`, rowScale(rb.gradX, 5));
      assertClose(gradW, rb.gradW, 1e-12, `scale ${scale} gradW`, rowScale(rb.gradW, 3));
    }
  }
});
