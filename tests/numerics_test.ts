// numerics_test.ts: the op's numerics at the edges of the floating-point range, on the CPU and the
// CUDA backend (emulated under make test-emu; tests named "cuda ..." are ignored without CUDA).
//
// The op is positively homogeneous: for s > 0, logits(s x) = s logits(x), gradX(s x) = gradX(x)
// and gradW(s x) = s gradW(x) (and likewise in w). Scaling by a power of two is exact, so the
// library must give the scaled results to float64 rounding from 1e-300 to 1e300: its norms are
// scaled before squaring (no overflow above 1e154, no underflow below 1e-154, the zero-vector
// rule for zero vectors only), and its λ mix does not overflow where the result does not. In
// float32 the results must stay finite across the float32 range, and the CUDA backend must be as
// accurate as the CPU backend, also for subnormal inputs and near cos θ = ±1.

import assert from "node:assert/strict";
import { backward, forward } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { allFinite, assertClose, randomProblem, Rng, rowScale, Worst } from "./helpers.ts";

type TestBackend = "cpu" | "cuda";
type Floats = Float32Array | Float64Array;

interface Outputs {
  logits: Floats;
  gradX: Floats;
  gradW: Floats;
}

/** Forward and backward of one problem (the dtype is that of x; w and g must match it). */
function run(
  x: Floats,
  w: Floats,
  labels: Int32Array,
  g: Floats,
  margin: number,
  lambda: number,
  backend: TestBackend,
): Outputs {
  const o = { margin, lambda, backend };
  const { logits } = forward(x as Float64Array, w as Float64Array, labels, o);
  const { gradX, gradW } = backward(
    x as Float64Array,
    w as Float64Array,
    labels,
    g as Float64Array,
    o,
  );
  return { logits, gradX, gradW };
}

/** a times s, element by element, in float64 (exact for a power of two s in range). */
function scaled(a: ArrayLike<number>, s: number): Float64Array {
  return Float64Array.from(a, (v) => v * s);
}

/**
 * Checks got against want (errors relative to the row's largest magnitude), per tensor, with a
 * floor `abs` on that scale: an absolute error the comparison tolerates (float32 subnormals).
 */
function assertOutputs(
  got: Outputs,
  want: { logits: ArrayLike<number>; gradX: ArrayLike<number>; gradW: ArrayLike<number> },
  rows: { n: number; c: number },
  tol: number,
  what: string,
  abs = 0,
): number {
  const floor = (a: ArrayLike<number>, r: number) => rowScale(a, r).map((v) => Math.max(v, abs));
  return Math.max(
    assertClose(got.logits, want.logits, tol, `${what}: logits`, floor(want.logits, rows.n)),
    assertClose(got.gradX, want.gradX, tol, `${what}: gradX`, floor(want.gradX, rows.n)),
    assertClose(got.gradW, want.gradW, tol, `${what}: gradW`, floor(want.gradW, rows.c)),
  );
}

function assertFinite(o: Outputs, what: string): void {
  assert.ok(allFinite(o.logits), `${what}: logits not finite`);
  assert.ok(allFinite(o.gradX), `${what}: gradX not finite`);
  assert.ok(allFinite(o.gradW), `${what}: gradW not finite`);
}

const MARGINS = [1, 2, 3, 4, 5, 6, 16];
const BACKENDS: TestBackend[] = ["cpu", "cuda"];
const testOn = (backend: TestBackend, name: string, fn: () => void) =>
  Deno.test({ name: `${backend} ${name}`, ignore: backend === "cuda" && !cudaAvailable, fn });

// ------------------------------------------------------------------------------------------------
// float64: exact homogeneity over the whole range (issues 3 and 4)
// ------------------------------------------------------------------------------------------------

/** Exponents k of the feature scale 2^k: 2^-990 ~ 1e-298 to 2^990 ~ 1e298. */
const X_EXPONENTS = [-990, -600, -300, -100, 0, 100, 300, 600, 990];
/** (kx, kw): x scaled by 2^kx and w by 2^kw, the logits by 2^(kx + kw), all within range. */
const XW_EXPONENTS: [number, number][] = [
  [990, -990],
  [-990, 990],
  [-600, -300],
  [600, 300],
  [-1000, 10],
  [500, -980],
];

for (const backend of BACKENDS) {
  testOn(
    backend,
    "float64: logits, gradX and gradW scale exactly with x from 2^-990 to 2^990",
    () => {
      const rng = new Rng(1101);
      const worst = new Worst();
      for (const m of MARGINS) {
        for (const lambda of [0, 0.5]) {
          const p = randomProblem(rng, 6, 5, 4);
          const base = run(p.x, p.w, p.labels, p.g, m, lambda, backend);
          for (const k of X_EXPONENTS) {
            const s = 2 ** k;
            const got = run(scaled(p.x, s), p.w, p.labels, p.g, m, lambda, backend);
            const want = {
              logits: scaled(base.logits, s),
              gradX: base.gradX,
              gradW: scaled(base.gradW, s),
            };
            const what = `${backend} float64 x * 2^${k}, m=${m} lambda=${lambda}`;
            assertFinite(got, what);
            worst.add("x", assertOutputs(got, want, p, 1e-12, what));
          }
        }
      }
      worst.report(`${backend} float64 homogeneity in x`);
    },
  );

  testOn(backend, "float64: the results scale exactly with x and w scaled together", () => {
    const rng = new Rng(1102);
    const worst = new Worst();
    for (const m of MARGINS) {
      const p = randomProblem(rng, 5, 6, 3);
      const base = run(p.x, p.w, p.labels, p.g, m, 0.5, backend);
      for (const [kx, kw] of XW_EXPONENTS) {
        const sx = 2 ** kx, sw = 2 ** kw;
        const got = run(scaled(p.x, sx), scaled(p.w, sw), p.labels, p.g, m, 0.5, backend);
        const want = {
          logits: scaled(base.logits, 2 ** (kx + kw)),
          gradX: scaled(base.gradX, sw),
          gradW: scaled(base.gradW, sx),
        };
        const what = `${backend} float64 x * 2^${kx}, w * 2^${kw}, m=${m}`;
        assertFinite(got, what);
        worst.add("xw", assertOutputs(got, want, p, 1e-12, what));
      }
    }
    worst.report(`${backend} float64 homogeneity in x and w`);
  });

  testOn(
    backend,
    "float64: norms exact above 1e154 and below 1e-158; subnormal vectors get the margin",
    () => {
      // Issue 3: elements above ~1e154 overflowed |x|^2 (infinite target logits), elements below
      // ~1e-158 lost accuracy and from ~1e-162 fell to the zero-vector rule.
      const rng = new Rng(1103);
      for (const m of [2, 4, 6]) {
        const p = randomProblem(rng, 4, 3, 3);
        const base = run(p.x, p.w, p.labels, p.g, m, 0, backend);
        for (const k of [532, 664, -530, -532, -540, -565, -997]) {
          const s = 2 ** k;
          const got = run(scaled(p.x, s), p.w, p.labels, p.g, m, 0, backend);
          const what = `${backend} x * 2^${k} (~1e${Math.round(k * Math.log10(2))}), m=${m}`;
          assertFinite(got, what);
          assertOutputs(
            got,
            { logits: scaled(base.logits, s), gradX: base.gradX, gradW: scaled(base.gradW, s) },
            p,
            1e-12,
            what,
          );
        }
        // Features of subnormal elements (integers times 2^-1074) against weights near 2^1000: the
        // products are normal numbers, and the target logit is the margin's, not the plain one.
        const ints = Float64Array.from({ length: p.x.length }, () => rng.int(15) - 7);
        ints[0] = 3; // no zero row
        ints[3] = -5;
        ints[6] = 6;
        ints[9] = 1;
        const ref = run(ints, scaled(p.w, 2 ** 1000), p.labels, p.g, m, 0, backend);
        const got = run(
          scaled(ints, 2 ** -1074),
          scaled(p.w, 2 ** 1000),
          p.labels,
          p.g,
          m,
          0,
          backend,
        );
        const what = `${backend} subnormal features, m=${m}`;
        assertFinite(got, what);
        // The logits (near 2^-74) and gradX are normal numbers; gradW = G^T x is subnormal, and
        // each of its terms is rounded to a multiple of 2^-1074.
        assertOutputs(
          got,
          {
            logits: scaled(ref.logits, 2 ** -1074),
            gradX: ref.gradX,
            gradW: scaled(ref.gradW, 2 ** -1074),
          },
          p,
          1e-12,
          what,
          (2 * p.n * 2 ** -1074) / 1e-12,
        );
      }
    },
  );

  testOn(backend, "float64: λ = 1e30 with logits near 1e301 stays finite and exact", () => {
    // Issue 4: (λ a + b) / (1 + λ) overflowed in λ a although the result is near a.
    const rng = new Rng(1104);
    for (const m of [1, 2, 4, 16]) {
      for (const lambda of [1e30, 1e300]) {
        const p = randomProblem(rng, 4, 3, 3);
        const base = run(p.x, p.w, p.labels, p.g, m, lambda, backend);
        const s = 2 ** 1000;
        const got = run(scaled(p.x, s), p.w, p.labels, p.g, m, lambda, backend);
        const what = `${backend} lambda=${lambda} x * 2^1000, m=${m}`;
        assertFinite(got, what);
        assertOutputs(
          got,
          { logits: scaled(base.logits, s), gradX: base.gradX, gradW: scaled(base.gradW, s) },
          p,
          1e-12,
          what,
        );
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// float32: finite across the range, the CUDA backend as accurate as the CPU backend (issues 1, 2)
// ------------------------------------------------------------------------------------------------

/**
 * The absolute error float32 products may make on subnormal values: each of the `terms` products
 * of a sum is rounded to a multiple of 2^-149. As a floor for the relative errors (tolerance
 * `tol`), it lets two backends differ by that much at the bottom of the range.
 */
const subnormalFloor = (terms: number, tol: number) => (terms * 2 ** -149) / tol;

for (const backend of BACKENDS) {
  testOn(backend, "float32: finite across the float32 range (x * 2^k, k = -140..100)", () => {
    const rng = new Rng(1201);
    const worst = new Worst();
    for (const m of [1, 2, 4, 6, 16]) {
      const p = randomProblem(rng, 6, 5, 4);
      const [w, g] = [Float32Array.from(p.w), Float32Array.from(p.g)];
      const base = run(Float32Array.from(p.x), w, p.labels, g, m, 0.5, backend);
      for (let k = -140; k <= 100; k += 20) {
        const x = Float32Array.from(p.x, (v) => v * 2 ** k);
        const got = run(x, w, p.labels, g, m, 0.5, backend);
        const what = `${backend} float32 x * 2^${k}, m=${m}`;
        assertFinite(got, what);
        // Where x stays normal, scaling it is exact, and gradX must not move (the logits and
        // gradW scale with x, to the rounding of their float32 sums).
        if (k >= -100) {
          const s = 2 ** k;
          const want = {
            logits: scaled(base.logits, s),
            gradX: base.gradX,
            gradW: scaled(base.gradW, s),
          };
          worst.add("scaled", assertOutputs(got, want, p, 1e-5, what));
        }
      }
    }
    worst.report(`${backend} float32 homogeneity`);
  });
}

Deno.test({
  name: "cuda float32: agrees with the cpu across the float32 range, subnormals included",
  ignore: !cudaAvailable,
  fn: () => {
    const rng = new Rng(1202);
    const worst = new Worst();
    for (const m of [1, 2, 4, 6, 16]) {
      const p = randomProblem(rng, 6, 5, 4);
      const [w, g] = [Float32Array.from(p.w), Float32Array.from(p.g)];
      for (let k = -149; k <= 100; k += 13) {
        for (const target of ["x", "w"] as const) {
          // Scale x, or the weight rows (then the products of gradX are the small ones).
          const x = Float32Array.from(p.x, (v) => (target === "x" ? v * 2 ** k : v));
          const wk = target === "w" ? Float32Array.from(p.w, (v) => v * 2 ** k) : w;
          const a = run(x, wk, p.labels, g, m, 0.5, "cuda");
          const b = run(x, wk, p.labels, g, m, 0.5, "cpu");
          const what = `cuda vs cpu float32 ${target} * 2^${k}, m=${m}`;
          assertFinite(a, what);
          worst.add(target, assertOutputs(a, b, p, 1e-5, what, subnormalFloor(12, 1e-5)));
        }
      }
    }
    worst.report("cuda vs cpu float32 across the range");
  },
});

Deno.test({
  name:
    "cuda float32: tiny |x| and |W_y| (subnormal elements, 1e-44) give the cpu's finite gradients",
  ignore: !cudaAvailable,
  fn: () => {
    // Issue 1: below |x| or |W_y| ~ 3e-39 the CUDA path formed 1/|x| in float32 (Inf), so
    // gradX or gradW came back as +-Inf and NaN; the CPU's are finite and right.
    const rng = new Rng(1203);
    for (const m of [2, 4, 6]) {
      for (const size of [1e-44, 1e-41, 3e-39, 1e-38]) {
        const p = randomProblem(rng, 5, 4, 3);
        for (const target of ["x", "w"] as const) {
          const x = Float32Array.from(p.x, (v) => (target === "x" ? v * size : v));
          const w = Float32Array.from(p.w, (v) => (target === "w" ? v * size : v));
          const g = Float32Array.from(p.g);
          const a = run(x, w, p.labels, g, m, 0, "cuda");
          const b = run(x, w, p.labels, g, m, 0, "cpu");
          const what = `cuda float32 ${target} elements ~${size}, m=${m}`;
          assertFinite(b, `${what} (cpu)`);
          assertFinite(a, what);
          assertOutputs(a, b, p, 1e-5, what, subnormalFloor(12, 1e-5));
        }
      }
    }
  },
});

/**
 * Samples parallel or antiparallel to their class's weight row (D = 1: cos θ = ±1 exactly), or
 * within `angle` radians of it: where the margin's gradient terms nearly cancel.
 */
function nearParallel(rng: Rng, n: number, d: number, c: number, angle: number) {
  const p = randomProblem(rng, n, d, c);
  for (let i = 0; i < n; ++i) {
    const y = p.labels[i] = i % c;
    const r = (i % 2 === 0 ? 1 : -1) * rng.uniform(0.5, 2);
    for (let k = 0; k < d; ++k) {
      p.x[i * d + k] = r * p.w[y * d + k] + (d > 1 ? angle * rng.uniform(-1, 1) : 0);
    }
  }
  return p;
}

/**
 * The error of a float32 result against the float64 result `ref` of the same inputs, as a
 * fraction of what float32 rounding can explain: each element's error over (K + 2) u S, with u =
 * 2^-24, K the inner dimension of the element's matrix product (D for logits, C for gradX, N for
 * gradW: the classic bound of a float32 sum of K terms) and S the larger of its row's largest
 * |ref| and the sum of the magnitudes of the terms its product adds (`terms`), the scale a float32
 * product is accurate to where its terms cancel (D = 1 rows). The "+ 2": the margin's part, formed
 * in float64, adds one rounding to float32 (and the input to the product one more). The worst
 * element over the three tensors; at most 1 for a result within float32 rounding.
 */
function roundingUnits(
  got: Outputs,
  ref: Outputs,
  terms: Outputs,
  p: { n: number; c: number; d: number },
) {
  const err = (
    a: ArrayLike<number>,
    b: ArrayLike<number>,
    t: ArrayLike<number>,
    rows: number,
    k: number,
  ) => {
    const s = rowScale(b, rows);
    let worst = 0;
    for (let i = 0; i < b.length; ++i) {
      const e = Math.abs(a[i] - b[i]) / ((k + 2) * 2 ** -24 * Math.max(s[i], t[i]));
      worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
    }
    return worst;
  };
  return Math.max(
    err(got.logits, ref.logits, terms.logits, p.n, p.d),
    err(got.gradX, ref.gradX, terms.gradX, p.n, p.c),
    err(got.gradW, ref.gradW, terms.gradW, p.c, p.n),
  );
}

for (const backend of BACKENDS) {
  testOn(
    backend,
    "float32: near cos θ = ±1 at margins 4, 6 and 16, within float32 rounding",
    () => {
      // Issue 2: the CUDA path rounded the correction coefficients to float32 and added them in
      // float32, so near cos θ = ±1, where they nearly cancel, it was ~100 times less accurate
      // than the CPU. Both must be within float32 rounding of the float64 result: the margin's
      // terms formed and added in float64, then one rounding to float32.
      const rng = new Rng(1204);
      let worst = 0;
      for (const m of [4, 6, 16]) {
        for (const [d, angle] of [[1, 0], [8, 1e-4], [8, 1e-2]] as const) {
          for (const lambda of [0, 0.5]) {
            const p = nearParallel(rng, 16, d, 5, angle);
            const [x, w, g] = [p.x, p.w, p.g].map((a) => Float32Array.from(a));
            const [x64, w64, g64] = [x, w, g].map((a) => Float64Array.from(a));
            const ref = run(x64, w64, p.labels, g64, m, lambda, "cpu");
            const abs = (a: Float64Array) => a.map(Math.abs);
            const terms = run(abs(x64), abs(w64), p.labels, abs(g64), 1, 0, "cpu");
            const e = roundingUnits(run(x, w, p.labels, g, m, lambda, backend), ref, terms, p);
            worst = Math.max(worst, e);
            const what = `${backend} m=${m} D=${d} angle ${angle} lambda=${lambda}`;
            assert.ok(e <= 1, `${what}: error ${e} times the float32 rounding bound`);
          }
        }
      }
      console.log(`${backend} float32 near cos = +-1: worst error ${worst.toFixed(2)} x the bound`);
    },
  );
}
