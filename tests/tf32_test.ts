// tf32_test.ts: the opt-in TF32 precision (float32 matrix products on tensor cores with inputs
// rounded to TF32, float32 accumulation). The CUDA tests ("cuda tf32 ...") are ignored where
// backends() reports no CUDA; under the emulated library they run the emulated WMMA, so shapes
// stay small. The CPU refusal runs everywhere.
//
// Tolerance. TF32 keeps 10 explicit mantissa bits, so rounding an input is a relative error of at
// most 2^-11 and a product of two rounded inputs one of at most ~2^-10 ≈ 9.8e-4; float32
// accumulation adds ~K 2^-24. Every element is a sum of such products, so its error is bounded by
// ~1e-3 times the sum of the magnitudes of its terms: sum_k |x_ik w_jk| for a logit,
// sum_j |G'_ij W_jk| for grad_x and sum_i |G'_ij x_ik| for grad_w, where G' is the upstream
// gradient with alpha_i (the margin correction folded into the products) added at the target
// entries. The tests allow 5e-3 of that scale: five times the bound, and still far below what a
// wrong index or a dropped term would give. The target logits themselves are computed exactly
// (in double from the float32 inputs), as are the corrections outside the products.

import assert from "node:assert/strict";
import { backward, forward } from "../mod.ts";
import { cudaAvailable, targetCosine } from "./check.ts";
import { maxRelErr, type Problem, randomProblem, Rng, rowScale, toF32 } from "./helpers.ts";
import {
  plainBackward,
  plainForward,
  psiTrig,
  referenceBackward,
  referenceForward,
} from "./reference.ts";

const TF32_TOL = 5e-3;
/** Shapes around the 128 x 128 block tile, kept small for the emulator. */
const TF32_SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [7, 5, 3],
  [13, 37, 70],
  [130, 9, 6],
  [20, 131, 129],
];

const cudaTest = (name: string, fn: () => void) => Deno.test({ name, ignore: !cudaAvailable, fn });

const abs = (a: ArrayLike<number>) => Float64Array.from(a, Math.abs);
const maxOf = (a: Float64Array, b: ArrayLike<number>) => a.map((v, k) => Math.max(v, b[k]));

/** G with alpha_i = g_iy (psi'(c_i) - 1) / (1 + lambda) added at the target entries. */
function gPrime(p: Problem, g: ArrayLike<number>, margin: number, lambda: number): Float64Array {
  const out = Float64Array.from(g);
  if (margin === 1) return out;
  for (let i = 0; i < p.n; ++i) {
    const cos = targetCosine(p, i);
    if (!Number.isFinite(cos)) continue; // a zero row: no correction
    const e = i * p.c + p.labels[i];
    out[e] += g[e] * (psiTrig(cos, margin).dpsi - 1) / (1 + lambda);
  }
  return out;
}

/** TF32 forward and backward against the float64 reference on the float32-rounded inputs. */
function tf32Errors(p: Problem, margin: number, lambda: number) {
  const x = toF32(p.x), w = toF32(p.w), g = toF32(p.g);
  const opts = { margin, lambda, backend: "cuda" as const, precision: "tf32" as const };
  const { logits } = forward(x, w, p.labels, opts);
  const { gradX, gradW } = backward(x, w, p.labels, g, opts);
  const ro = { margin, lambda };
  const f = referenceForward(x, w, p.labels, ro);
  const rb = referenceBackward(x, w, p.labels, g, ro);
  const q: Problem = { ...p, x: Float64Array.from(x), w: Float64Array.from(w) };
  const fAbs = plainForward(abs(x), abs(w), p.labels);
  const gAbs = plainBackward(abs(x), abs(w), p.labels, abs(gPrime(q, g, margin, lambda)));
  return {
    logits: maxRelErr(logits, f, maxOf(rowScale(f, p.n), fAbs)),
    gradX: maxRelErr(gradX, rb.gradX, maxOf(rowScale(rb.gradX, p.n), gAbs.gradX)),
    gradW: maxRelErr(gradW, rb.gradW, maxOf(rowScale(rb.gradW, p.c), gAbs.gradW)),
  };
}

cudaTest(
  "cuda tf32: forward and backward within 5e-3 of the float64 reference (scale: sum of |terms|)",
  () => {
    const rng = new Rng(3201);
    let worst = 0;
    for (const [n, d, c] of TF32_SHAPES) {
      for (const [m, lambda] of [[1, 0], [4, 0], [3, 1000]]) {
        const e = tf32Errors(randomProblem(rng, n, d, c), m, lambda);
        const max = Math.max(e.logits, e.gradX, e.gradW);
        worst = Math.max(worst, max);
        assert.ok(
          max <= TF32_TOL,
          `n=${n} d=${d} c=${c} m=${m} lambda=${lambda}: logits ${e.logits}, gradX ${e.gradX}, gradW ${e.gradW}`,
        );
      }
    }
    // Exact float32 stays near 1e-7 here; TF32 rounding must show, or the tensor-core path was
    // never taken.
    assert.ok(worst > 1e-5, `worst relative error ${worst}: no sign of TF32 rounding`);
    console.log(
      `cuda tf32: worst relative error ${worst.toExponential(2)} (tolerance ${TF32_TOL})`,
    );
  },
);

cudaTest("cuda tf32: float64 calls stay exact, and exact float32 is the default", () => {
  const rng = new Rng(3202);
  const p = randomProblem(rng, 13, 37, 70);
  const opts = { margin: 4, lambda: 0.5, backend: "cuda" as const };
  const tf = forward(p.x, p.w, p.labels, { ...opts, precision: "tf32" }).logits;
  const ex = forward(p.x, p.w, p.labels, { ...opts, precision: "exact" }).logits;
  assert.deepEqual(tf, ex);
  const tb = backward(p.x, p.w, p.labels, p.g, { ...opts, precision: "tf32" });
  const eb = backward(p.x, p.w, p.labels, p.g, opts);
  assert.deepEqual(tb.gradX, eb.gradX);
  assert.deepEqual(tb.gradW, eb.gradW);
  // float32 without a precision: within float32 rounding of the reference, after a tf32 call.
  const x = toF32(p.x), w = toF32(p.w);
  forward(x, w, p.labels, { ...opts, precision: "tf32" });
  const plain = forward(x, w, p.labels, opts).logits;
  const f = referenceForward(x, w, p.labels, opts);
  const fAbs = plainForward(abs(x), abs(w), p.labels);
  assert.ok(maxRelErr(plain, f, maxOf(rowScale(f, p.n), fAbs)) <= 1e-5);
});

Deno.test("precision tf32 on backend cpu throws an Error naming precision", () => {
  const x = new Float32Array([1, 2, 3, 4]), w = new Float32Array([1, 0, 0, 1]);
  assert.throws(
    () =>
      forward(x, w, new Int32Array([0, 1]), {
        margin: 2,
        lambda: 0,
        backend: "cpu",
        precision: "tf32",
      }),
    (e: unknown) => e instanceof Error && /precision/.test(e.message),
  );
});
