// finite_test.ts: finite inputs give finite results, by the rule of docs/math.md (Finite results):
// a row the op normalises whose largest magnitude is below f 2^-112 (float32) or f 2^-1008
// (float64), f = scale for x and 1 for the rows of W, counts as the zero vector. Sweeps the scale of x and of W from the smallest subnormal to the
// largest finite value, both signs, every kind, float32 and float64, the CPU and (where backends()
// reports one: the emulator) the CUDA backend: the fused loss and both gradients finite, the loss
// >= 0; then the rule's boundary on both sides.

import assert from "node:assert/strict";
import { backends, type FloatArray, loss, type LossOptions } from "../mod.ts";
import { Rng } from "./helpers.ts";

type DType = "float32" | "float64";
type Margin = Omit<LossOptions, "backend" | "workspace" | "reduction" | "gradients">;
const BACKENDS = backends().cuda.available ? (["cpu", "cuda"] as const) : (["cpu"] as const);

const KINDS: { m: Margin; normalisesX: boolean; normalisesW: boolean }[] = [
  { m: { margin: 4, lambda: 0.5 }, normalisesX: false, normalisesW: false },
  { m: { kind: "asoftmax", margin: 3, lambda: 0 }, normalisesX: false, normalisesW: true },
  { m: { kind: "cosface", scale: 64, margin: 0.35 }, normalisesX: true, normalisesW: true },
  { m: { kind: "arcface", scale: 64, margin: 0.5 }, normalisesX: true, normalisesW: true },
  {
    m: { kind: "combined", scale: 32, m1: 1.2, m2: 0.3, m3: 0.1 },
    normalisesX: true,
    normalisesW: true,
  },
];

const ZERO_BELOW = { float32: 2 ** -112, float64: 2 ** -1008 };
// The factor f of a side: the kind's scale for x, 1 for W.
const factor = (m: Margin, side: "x" | "w") => side === "x" ? (m.scale ?? 1) : 1;
const RANGE = {
  float32: { min: -149, max: 127, largest: 3.4028234663852886e38 },
  float64: { min: -1074, max: 1023, largest: Number.MAX_VALUE },
};

function array(dtype: DType, v: ArrayLike<number>): FloatArray {
  return dtype === "float32" ? Float32Array.from(v) : Float64Array.from(v);
}

// The scales of the sweep: powers of two from the smallest subnormal to the largest, a step of
// 2^9 (float32) or 2^37 (float64) (three times that on the emulator, which runs every CUDA
// thread on the CPU), the boundary's neighbours, and the largest finite value.
function scales(dtype: DType, sparse: boolean): number[] {
  const r = RANGE[dtype], step = (dtype === "float32" ? 9 : 37) * (sparse ? 3 : 1);
  const out: number[] = [];
  for (let e = r.min; e <= r.max; e += step) out.push(2 ** e);
  const z = ZERO_BELOW[dtype];
  out.push(z / 2, z, 2 * z, 64 * z / 2, 64 * z, 2 ** r.max, r.largest);
  return out;
}

// Elements in [1/2, 1] with random signs times `size` (the largest element is then within a
// factor 2 of it; at the largest finite value, exactly it).
function scaled(rng: Rng, count: number, size: number, sign: number): number[] {
  return Array.from(
    { length: count },
    (_, k) =>
      k === 0 ? sign * size : sign * size * rng.uniform(0.5, 1) * (rng.next() < 0.5 ? -1 : 1),
  );
}

function finite(a: ArrayLike<number>): boolean {
  for (let e = 0; e < a.length; e++) if (!Number.isFinite(a[e])) return false;
  return true;
}

Deno.test("finite for finite inputs: |x| and |w| swept over the whole range, every kind", () => {
  const rng = new Rng(3001);
  const n = 3, d = 4, c = 4;
  const labels = new Int32Array([0, 2, 3]);
  for (const b of BACKENDS) {
    for (const dtype of ["float32", "float64"] as const) {
      for (const { m, normalisesX, normalisesW } of KINDS) {
        // L-Softmax's logits are products: the unscaled side small enough that they stay
        // finite; L-Softmax's and A-Softmax's gradients are of the size of the scaled side, so
        // it stops at 1/16 of the largest value (their true values overflow otherwise).
        const small = normalisesW ? 1 : 2 ** -8 / d;
        for (
          const size of scales(dtype, b === "cuda").filter((v) =>
            normalisesX || v <= RANGE[dtype].largest / 16
          )
        ) {
          for (const sign of [1, -1]) {
            for (const which of ["x", "w", "both"] as const) {
              if (which === "both" && !(normalisesX && normalisesW)) continue;
              const xs = which === "w" ? small : size, ws = which === "x" ? small : size;
              const x = array(dtype, scaled(rng, n * d, xs, sign));
              const w = array(dtype, scaled(rng, c * d, ws, 1));
              const r = loss(x, w, labels, { ...m, backend: b, workspace: 1 << 24 });
              const what = `${b} ${dtype} ${JSON.stringify(m)} ${which} ~ ${sign * size}`;
              assert.ok(Number.isFinite(r.loss) && r.loss >= 0, `${what}: loss ${r.loss}`);
              assert.ok(finite(r.gradX), `${what}: gradX ${r.gradX}`);
              assert.ok(finite(r.gradW), `${what}: gradW ${r.gradW}`);
            }
          }
        }
      }
    }
  }
});

Deno.test("the zero-vector rule's boundary: below it a row is 0, at it a row is itself", () => {
  const rng = new Rng(3002);
  const n = 2, d = 3, c = 3;
  const labels = new Int32Array([1, 2]);
  for (const b of BACKENDS) {
    for (const dtype of ["float32", "float64"] as const) {
      for (const { m, normalisesX, normalisesW } of KINDS) {
        const o = { ...m, backend: b, workspace: 1 << 24 };
        const x1 = scaled(rng, n * d, 1, 1), w1 = scaled(rng, c * d, 1, 1);
        const base = loss(array(dtype, x1), array(dtype, w1), labels, o);
        for (const side of ["x", "w"] as const) {
          if (side === "x" ? !normalisesX : !normalisesW) continue;
          // Row 0 (of x, or W's row of label 1) scaled so that its largest magnitude is z (kept:
          // the results are those of the unscaled row) or z/2 (the zero vector).
          const row = side === "x" ? 0 : 1, v = side === "x" ? x1 : w1;
          const z = ZERO_BELOW[dtype] * factor(m, side);
          const top = Math.max(...v.slice(row * d, row * d + d).map(Math.abs));
          const at = (f: number) =>
            v.map((e, k) => (Math.floor(k / d) === row ? (e / top) * f : e));
          const zero = v.map((e, k) => (Math.floor(k / d) === row ? 0 : e));
          const run = (vv: number[]) =>
            side === "x"
              ? loss(array(dtype, vv), array(dtype, w1), labels, o)
              : loss(array(dtype, x1), array(dtype, vv), labels, o);
          const kept = run(at(z)), unit = run(at(1)), below = run(at(z / 2)), zeroed = run(zero);
          const what = `${b} ${dtype} ${JSON.stringify(m)} ${side}`;
          // Normalisation is invariant under scaling: at z the row gives the unit-size row's loss.
          assert.ok(Math.abs(kept.loss - unit.loss) <= 1e-5 * unit.loss, `${what}: at the bound`);
          assert.notEqual(kept.loss, zeroed.loss, `${what}: the row at the bound is not 0`);
          assert.equal(below.loss, zeroed.loss, `${what}: below the bound the row is 0`);
          const g = side === "x" ? below.gradX : below.gradW;
          for (let k = row * d; k < row * d + d; k++) {
            assert.ok(g[k] === 0, `${what}: no gradient through a zero row (${g[k]})`);
          }
          assert.ok(base.loss >= 0);
        }
      }
    }
  }
});
