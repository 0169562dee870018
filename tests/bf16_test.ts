// bf16_test.ts: the opt-in bf16 precision (float32 products with their inputs rounded to bfloat16,
// float32 accumulation). The CUDA tests ("cuda bf16 ...") are ignored where backends() reports no
// CUDA; under the emulated library they run the library's own kernels on rounded copies, or the
// cuBLAS stand-in's bf16 products where LSOFTMAX_CUBLAS names it (make test-emu runs both).
//
// The reference rounds with its own rule (round half to even on the upper 16 bits, decided from
// the lower 16), then takes the products in float64: what remains is float32 accumulation,
// ~K 2^-24 of the sum of |terms|, so 1e-5 of that scale is tight, while the rounding itself moves
// results by ~2^-9 relative, far outside it.

import assert from "node:assert/strict";
import { backward, forward, loss } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { maxRelErr, randomProblem, Rng, rowScale, toF32 } from "./helpers.ts";
import { plainBackward, plainForward } from "./reference.ts";

const cudaTest = (name: string, fn: () => void) => Deno.test({ name, ignore: !cudaAvailable, fn });
const SHAPES: [number, number, number][] = [[1, 1, 1], [7, 5, 3], [13, 37, 70], [130, 9, 6], [
  20,
  131,
  129,
]];

/** A float32 value rounded to bfloat16: to nearest, half to even, kept as a number. */
function bf16(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  if (Number.isNaN(f[0])) return NaN;
  const lower = u[0] & 0xffff;
  let upper = u[0] >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
  u[0] = (upper << 16) >>> 0;
  return f[0];
}
const rounded = (a: ArrayLike<number>) => Float64Array.from(a, bf16);
const abs = (a: ArrayLike<number>) => Float64Array.from(a, Math.abs);
const maxOf = (a: Float64Array, b: ArrayLike<number>) => a.map((v, k) => Math.max(v, b[k]));

Deno.test("bf16 reference: half to even, infinity above the largest bf16", () => {
  assert.equal(bf16(1 + 2 ** -8), 1); // a tie, down to the even 1.0
  assert.equal(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6); // a tie, up to the even neighbour
  assert.equal(bf16(1 + 2 ** -8 + 2 ** -20), 1 + 2 ** -7);
  assert.equal(bf16(3.4e38), Infinity);
  assert.equal(bf16(-(1 + 2 ** -8 + 2 ** -20)), -(1 + 2 ** -7));
});

// m = 1: the logits are the plain product x W^T and the gradients G W and G^T x, no margin terms.
cudaTest(
  "cuda bf16: forward and backward are float32 sums of the bf16-rounded inputs' products",
  () => {
    const rng = new Rng(3301);
    let moved = 0;
    for (const [n, d, c] of SHAPES) {
      const p = randomProblem(rng, n, d, c);
      const x = toF32(p.x), w = toF32(p.w), g = toF32(p.g);
      const opts = { margin: 1, lambda: 0, backend: "cuda" as const, precision: "bf16" as const };
      const { logits } = forward(x, w, p.labels, opts);
      const { gradX, gradW } = backward(x, w, p.labels, g, opts);
      const rx = rounded(x), rw = rounded(w), rg = rounded(g);
      const f = plainForward(rx, rw, p.labels);
      const b = plainBackward(rx, rw, p.labels, rg);
      const fAbs = plainForward(abs(rx), abs(rw), p.labels);
      const bAbs = plainBackward(abs(rx), abs(rw), p.labels, abs(rg));
      const tol = 1e-5;
      const e = {
        logits: maxRelErr(logits, f, maxOf(rowScale(f, n), fAbs)),
        gradX: maxRelErr(gradX, b.gradX, maxOf(rowScale(b.gradX, n), bAbs.gradX)),
        gradW: maxRelErr(gradW, b.gradW, maxOf(rowScale(b.gradW, c), bAbs.gradW)),
      };
      assert.ok(
        Math.max(e.logits, e.gradX, e.gradW) <= tol,
        `n=${n} d=${d} c=${c}: ${JSON.stringify(e)}`,
      );
      const exact = plainForward(Float64Array.from(x), Float64Array.from(w), p.labels);
      moved = Math.max(moved, maxRelErr(logits, exact, maxOf(rowScale(exact, n), fAbs)));
    }
    assert.ok(
      moved > 1e-4,
      `bf16 results within ${moved} of exact ones: the inputs were not rounded`,
    );
  },
);

cudaTest("cuda bf16: ties round to even and values above bf16's largest become infinity", () => {
  // D = 1, W = [1, 1]: the non-target logit of each row is its x rounded.
  const x = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, -(1 + 2 ** -8 + 2 ** -20)]);
  const w = new Float32Array([1, 1]);
  const labels = new Int32Array([1, 1, 1, 1]);
  const { logits } = forward(x, w, labels, {
    margin: 1,
    lambda: 0,
    backend: "cuda",
    precision: "bf16",
  });
  assert.deepEqual(Array.from({ length: 4 }, (_, i) => logits[2 * i]), [
    1,
    1 + 2 ** -6,
    Infinity,
    -(1 + 2 ** -7),
  ]);
});

cudaTest("cuda bf16: the fused loss of every path within bf16's error of exact float32", () => {
  const rng = new Rng(3302);
  const p = randomProblem(rng, 24, 40, 150);
  const x = toF32(p.x), w = toF32(p.w);
  for (
    const kind of [{ margin: 4, lambda: 1 }, { kind: "arcface" as const, scale: 16, margin: 0.3 }]
  ) {
    // A small workspace: several class blocks, so grad_x accumulates across them.
    const opts = { ...kind, backend: "cuda" as const, workspace: 24 * 40 * 4 };
    const exact = loss(x, w, p.labels, opts);
    const b = loss(x, w, p.labels, { ...opts, precision: "bf16" });
    const rel = Math.abs(b.loss - exact.loss) / exact.loss;
    assert.ok(
      rel < 2e-2 && rel > 0,
      `${JSON.stringify(kind)}: loss ${b.loss} against ${exact.loss}`,
    );
    const ex = maxRelErr(b.gradX, exact.gradX, rowScale(exact.gradX, 24));
    const ew = maxRelErr(b.gradW, exact.gradW, rowScale(exact.gradW, 150));
    assert.ok(ex < 5e-2 && ew < 5e-2, `${JSON.stringify(kind)}: gradX ${ex}, gradW ${ew}`);
  }
});

cudaTest("cuda bf16: float64 calls stay exact", () => {
  const p = randomProblem(new Rng(3303), 13, 37, 70);
  const opts = { margin: 4, lambda: 0.5, backend: "cuda" as const };
  assert.deepEqual(
    forward(p.x, p.w, p.labels, { ...opts, precision: "bf16" }).logits,
    forward(p.x, p.w, p.labels, opts).logits,
  );
});

Deno.test("precision bf16 on backend cpu: the RangeError naming precision", () => {
  const x = new Float32Array([1, 2, 3, 4]), w = new Float32Array([1, 0, 0, 1]);
  assert.throws(
    () =>
      forward(x, w, new Int32Array([0, 1]), {
        margin: 2,
        lambda: 0,
        backend: "cpu",
        precision: "bf16",
      }),
    (e: unknown) =>
      e instanceof RangeError &&
      /^precision: expected "exact" on the cpu \("bf16" needs/.test(e.message),
  );
});
