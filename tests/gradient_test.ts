// gradient_test.ts: the library's backward against central finite differences of its forward,
// in float64, for the linear functional L = sum_ij R_ij f_ij (R random, passed as gradLogits).
// CPU: coordinate by coordinate. CUDA (GPU or the emulated library): along random directions
// on small shapes, since every forward there may be slow.

import assert from "node:assert/strict";
import {
  boundaryProblem,
  CUDA_SHAPES,
  cudaAvailable,
  gradCheckCoordinates,
  gradCheckDirections,
  LAMBDAS,
  MARGINS,
  SHAPES,
  targetCosine,
} from "./check.ts";
import { randomProblem, Rng, Worst } from "./helpers.ts";

/** Central differences with h = 1e-6 in float64 are good to ~1e-8 here; 1e-5 leaves room. */
const BOUND = 1e-5;

Deno.test("gradient check cpu: m 1..6, lambda 0/0.5/1000, odd shapes (coordinate FD)", () => {
  const rng = new Rng(101);
  const worst = new Worst();
  for (const [n, d, c] of SHAPES) {
    for (const m of MARGINS) {
      for (const lambda of LAMBDAS) {
        const p = randomProblem(rng, n, d, c);
        const r = gradCheckCoordinates(p, m, lambda, "cpu");
        worst.add("cpu", r.err);
        assert.ok(
          r.err < BOUND,
          `cpu (N,D,C)=(${n},${d},${c}) m=${m} lambda=${lambda}: gradX err ${r.errX}, gradW err ${r.errW}`,
        );
      }
    }
  }
  worst.report("gradient check cpu, random inputs");
});

Deno.test("gradient check cpu: m 16 (MAX_MARGIN) and lambda 1e-3, 3.7", () => {
  const rng = new Rng(102);
  const worst = new Worst();
  for (const [m, lambda] of [[16, 0], [16, 0.5], [7, 1e-3], [3, 3.7], [12, 1000]]) {
    const p = randomProblem(rng, 5, 4, 3);
    const r = gradCheckCoordinates(p, m, lambda, "cpu");
    worst.add("cpu", r.err);
    assert.ok(r.err < BOUND, `cpu m=${m} lambda=${lambda}: ${r.errX}, ${r.errW}`);
  }
  worst.report("gradient check cpu, large margins");
});

Deno.test("gradient check cpu: inputs at angle k pi/m +- 1e-3 (near every boundary)", () => {
  const rng = new Rng(103);
  const worst = new Worst();
  for (const m of MARGINS) {
    for (const lambda of LAMBDAS) {
      const p = boundaryProblem(rng, m, 5, 3);
      // The construction: every sample within ~1e-3 of its boundary angle.
      for (let i = 0; i < p.n; ++i) {
        const t = Math.acos(Math.max(-1, Math.min(1, targetCosine(p, i)))) * m / Math.PI;
        assert.ok(Math.abs(t - Math.round(t)) < 2e-3 * m, `construction: sample ${i} at ${t}`);
      }
      const r = gradCheckCoordinates(p, m, lambda, "cpu");
      worst.add("cpu", r.err);
      assert.ok(r.err < BOUND, `cpu boundary m=${m} lambda=${lambda}: ${r.errX}, ${r.errW}`);
    }
  }
  worst.report("gradient check cpu, near boundaries");
});

Deno.test({
  name: "gradient check cuda: m 1..6, lambda 0/0.5/1000, small shapes (directional FD)",
  ignore: !cudaAvailable,
  fn() {
    const rng = new Rng(104);
    const worst = new Worst();
    for (const [n, d, c] of CUDA_SHAPES) {
      for (const m of MARGINS) {
        for (const lambda of LAMBDAS) {
          const p = randomProblem(rng, n, d, c);
          const err = gradCheckDirections(p, m, lambda, "cuda", rng, 2);
          worst.add("cuda", err);
          assert.ok(err < BOUND, `cuda (N,D,C)=(${n},${d},${c}) m=${m} lambda=${lambda}: ${err}`);
        }
      }
    }
    worst.report("gradient check cuda, random inputs");
  },
});

Deno.test({
  name: "gradient check cuda: near boundaries, and coordinate FD on (7,5,3)",
  ignore: !cudaAvailable,
  fn() {
    const rng = new Rng(105);
    const worst = new Worst();
    for (const m of MARGINS) {
      for (const lambda of [0, 1000]) {
        const p = boundaryProblem(rng, m, 5, 3);
        const err = gradCheckDirections(p, m, lambda, "cuda", rng, 2);
        worst.add("cuda boundary", err);
        assert.ok(err < BOUND, `cuda boundary m=${m} lambda=${lambda}: ${err}`);
      }
    }
    for (const m of [2, 4]) {
      const r = gradCheckCoordinates(randomProblem(rng, 7, 5, 3), m, 0.5, "cuda");
      worst.add("cuda coordinates", r.err);
      assert.ok(r.err < BOUND, `cuda coordinates m=${m}: ${r.errX}, ${r.errW}`);
    }
    worst.report("gradient check cuda");
  },
});
