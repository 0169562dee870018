// check.ts: what the test files share that touches the library (through ../mod.ts): the
// backends under test, finite-difference gradient checks, comparisons with the reference, the
// NaN/Inf and zero-row checks (run on CPU and CUDA), and problem builders.

import assert from "node:assert/strict";
import { backends, backward, forward } from "../mod.ts";
import {
  allFinite,
  allNonFinite,
  assertClose,
  maxAbs,
  maxRelErr,
  orthogonalUnit,
  type Problem,
  randomArray,
  randomProblem,
  type Rng,
  rowScale,
  toF32,
} from "./helpers.ts";
import {
  plainBackward,
  plainForward,
  type PsiFn,
  referenceBackward,
  referenceForward,
} from "./reference.ts";

export type TestBackend = "cpu" | "cuda";

/** What the library under test reports (LSOFTMAX_LIB or build/liblsoftmax.so). */
export const info = backends();
/** Whether the CUDA tests run: a GPU here, or the emulated library. */
export const cudaAvailable = info.cuda.available;

/** The margins, lambdas and (N, D, C) shapes of the gradient and reference checks. */
export const MARGINS = [1, 2, 3, 4, 5, 6];
export const LAMBDAS = [0, 0.5, 1000];
export const SHAPES: [number, number, number][] = [
  [7, 5, 3],
  [1, 1, 1],
  [3, 1, 4],
  [1, 6, 1],
  [2, 2, 2],
  [17, 33, 65],
];
/** Small shapes for the (slow, possibly emulated) CUDA path. */
export const CUDA_SHAPES: [number, number, number][] = [
  [7, 5, 3],
  [1, 1, 1],
  [3, 1, 4],
  [1, 6, 1],
  [13, 37, 70],
];

/** L = sum_ij R_ij f_ij evaluated as the sum of R (f+ - f-), for central differences. */
function diffFunctional(
  fPlus: ArrayLike<number>,
  fMinus: ArrayLike<number>,
  r: ArrayLike<number>,
): number {
  let s = 0;
  for (let i = 0; i < r.length; ++i) {
    const d = fPlus[i] - fMinus[i];
    if (d !== 0) s += r[i] * d;
  }
  return s;
}

export interface GradCheckResult {
  /** Worst relative error of gradX and gradW against the central differences. */
  err: number;
  errX: number;
  errW: number;
}

/**
 * Library backward (gradLogits = R = p.g) against central differences of library forward in
 * float64, coordinate by coordinate. The error of element k is |fd - g| / max(|g|, floor), the
 * floor 1e-2 of the largest gradient magnitude of that tensor.
 */
export function gradCheckCoordinates(
  p: Problem,
  margin: number,
  lambda: number,
  backend: TestBackend,
  h = 1e-6,
): GradCheckResult {
  const opts = { margin, lambda, backend };
  const { gradX, gradW } = backward(p.x, p.w, p.labels, p.g, opts);
  const fdX = new Float64Array(p.x.length);
  const fdW = new Float64Array(p.w.length);
  const xp = p.x.slice(), wp = p.w.slice();
  for (let k = 0; k < p.x.length; ++k) {
    const v = p.x[k];
    xp[k] = v + h;
    const fPlus = forward(xp, p.w, p.labels, opts).logits;
    xp[k] = v - h;
    const fMinus = forward(xp, p.w, p.labels, opts).logits;
    xp[k] = v;
    fdX[k] = diffFunctional(fPlus, fMinus, p.g) / (2 * h);
  }
  for (let k = 0; k < p.w.length; ++k) {
    const v = p.w[k];
    wp[k] = v + h;
    const fPlus = forward(p.x, wp, p.labels, opts).logits;
    wp[k] = v - h;
    const fMinus = forward(p.x, wp, p.labels, opts).logits;
    wp[k] = v;
    fdW[k] = diffFunctional(fPlus, fMinus, p.g) / (2 * h);
  }
  const errX = relErrFloor(gradX, fdX);
  const errW = relErrFloor(gradW, fdW);
  return { err: Math.max(errX, errW), errX, errW };
}

function relErrFloor(g: ArrayLike<number>, fd: ArrayLike<number>): number {
  const floor = 1e-2 * Math.max(maxAbs(g), maxAbs(fd), 1e-300);
  let worst = 0;
  for (let k = 0; k < g.length; ++k) {
    const e = Math.abs(g[k] - fd[k]) / Math.max(Math.abs(g[k]), floor);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst;
}

/**
 * Library backward against central differences along random directions (x and w perturbed
 * together): 2 forwards per direction, for the slow CUDA path. The error is relative to
 * sum_k |grad_k v_k|, the scale of the directional derivative.
 */
export function gradCheckDirections(
  p: Problem,
  margin: number,
  lambda: number,
  backend: TestBackend,
  rng: Rng,
  directions = 3,
  h = 1e-6,
): number {
  const opts = { margin, lambda, backend };
  const { gradX, gradW } = backward(p.x, p.w, p.labels, p.g, opts);
  let worst = 0;
  for (let t = 0; t < directions; ++t) {
    const vx = randomArray(rng, p.x.length), vw = randomArray(rng, p.w.length);
    const xp = p.x.map((v, k) => v + h * vx[k]), xm = p.x.map((v, k) => v - h * vx[k]);
    const wp = p.w.map((v, k) => v + h * vw[k]), wm = p.w.map((v, k) => v - h * vw[k]);
    const fd = diffFunctional(
      forward(xp, wp, p.labels, opts).logits,
      forward(xm, wm, p.labels, opts).logits,
      p.g,
    ) / (2 * h);
    let an = 0, scale = 0;
    for (let k = 0; k < vx.length; ++k) {
      an += gradX[k] * vx[k];
      scale += Math.abs(gradX[k] * vx[k]);
    }
    for (let k = 0; k < vw.length; ++k) {
      an += gradW[k] * vw[k];
      scale += Math.abs(gradW[k] * vw[k]);
    }
    const e = Math.abs(fd - an) / Math.max(scale, 1e-300);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst;
}

/**
 * A problem whose samples sit at angle k pi/m +- 1e-3 from their target class's weight row,
 * for every boundary k = 0..m (one side at 0 and pi): 2m samples, d >= 2, c classes.
 */
export function boundaryProblem(rng: Rng, m: number, d: number, c: number, delta = 1e-3): Problem {
  const angles: number[] = [];
  for (let k = 0; k <= m; ++k) {
    const t = k * Math.PI / m;
    if (k > 0) angles.push(t - delta);
    if (k < m) angles.push(t + delta);
  }
  const n = angles.length;
  const w = randomArray(rng, c * d);
  const x = new Float64Array(n * d);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; ++i) {
    const y = i % c;
    labels[i] = y;
    const row = w.subarray(y * d, (y + 1) * d);
    let nw = 0;
    for (let k = 0; k < d; ++k) nw += row[k] * row[k];
    nw = Math.sqrt(nw);
    const u = Float64Array.from(row, (v) => v / nw);
    const v = orthogonalUnit(rng, u);
    const r = rng.uniform(0.5, 2);
    for (let k = 0; k < d; ++k) {
      x[i * d + k] = r * (Math.cos(angles[i]) * u[k] + Math.sin(angles[i]) * v[k]);
    }
  }
  return { n, d, c, x, w, labels, g: randomArray(rng, n * c) };
}

/** The cosine between sample i and its target's weight row, in float64. */
export function targetCosine(p: Problem, i: number): number {
  const y = p.labels[i];
  let dot = 0, xx = 0, ww = 0;
  for (let k = 0; k < p.d; ++k) {
    const a = p.x[i * p.d + k], b = p.w[y * p.d + k];
    dot += a * b;
    xx += a * a;
    ww += b * b;
  }
  return dot / Math.sqrt(xx * ww);
}

export type DType = "float32" | "float64";

export interface RefErrors {
  logits: number;
  gradX: number;
  gradW: number;
  max: number;
}

/**
 * Library forward and backward against the float64 reference (reference.ts) on the same input
 * values: for float32 the inputs are rounded to float32 first and the reference computes on
 * those values in float64. Errors are relative with a per-element floor (see below), since
 * rounding in sums of products scales with the terms, not with a sum that may cancel.
 */
export function compareWithReference(
  p: Problem,
  margin: number,
  lambda: number,
  backend: TestBackend | "auto",
  dtype: DType,
  psi?: PsiFn,
): RefErrors {
  const opts = { margin, lambda, backend };
  let logits: ArrayLike<number>, gradX: ArrayLike<number>, gradW: ArrayLike<number>;
  let x: ArrayLike<number>, w: ArrayLike<number>, g: ArrayLike<number>;
  if (dtype === "float32") {
    const x32 = toF32(p.x), w32 = toF32(p.w), g32 = toF32(p.g);
    logits = forward(x32, w32, p.labels, opts).logits;
    ({ gradX, gradW } = backward(x32, w32, p.labels, g32, opts));
    [x, w, g] = [x32, w32, g32];
  } else {
    logits = forward(p.x, p.w, p.labels, opts).logits;
    ({ gradX, gradW } = backward(p.x, p.w, p.labels, p.g, opts));
    [x, w, g] = [p.x, p.w, p.g];
  }
  const ro = { margin, lambda, psi };
  const f = referenceForward(x, w, p.labels, ro);
  const rb = referenceBackward(x, w, p.labels, g, ro);
  // The floor: the larger of the row's largest magnitude and the sum of the magnitudes of the
  // products summed into the element (plain part), which bounds rounding even where a short row
  // (D = 1) cancels to near 0.
  const abs = (a: ArrayLike<number>) => Float64Array.from(a, Math.abs);
  const fAbs = plainForward(abs(x), abs(w), p.labels);
  const gAbs = plainBackward(abs(x), abs(w), p.labels, abs(g));
  const e = {
    logits: maxRelErr(logits, f, maxOf(rowScale(f, p.n), fAbs)),
    gradX: maxRelErr(gradX, rb.gradX, maxOf(rowScale(rb.gradX, p.n), gAbs.gradX)),
    gradW: maxRelErr(gradW, rb.gradW, maxOf(rowScale(rb.gradW, p.c), gAbs.gradW)),
  };
  return { ...e, max: Math.max(e.logits, e.gradX, e.gradW) };
}

function maxOf(a: Float64Array, b: ArrayLike<number>): Float64Array {
  return a.map((v, k) => Math.max(v, b[k]));
}

export function describeErrors(e: RefErrors): string {
  return `logits ${e.logits}, gradX ${e.gradX}, gradW ${e.gradW}`;
}

/** Checks containment of non-finite values planted in row `bad` of x, for one dtype. */
export function checkNonFiniteRow(
  backend: TestBackend,
  dtype: "float32" | "float64",
  value: number,
  m: number,
  lambda: number,
  rng: Rng,
): void {
  const [n, d, c] = [6, 5, 4];
  const p = randomProblem(rng, n, d, c);
  const bad = 2;
  p.x[bad * d + 1] = value;
  const [x, w, g] = dtype === "float32" ? [toF32(p.x), toF32(p.w), toF32(p.g)] : [p.x, p.w, p.g];
  const o = { margin: m, lambda, backend };
  const { logits } = forward(x as Float64Array, w as Float64Array, p.labels, o);
  const { gradX } = backward(x as Float64Array, w as Float64Array, p.labels, g as Float64Array, o);
  const what = `${backend} ${dtype} x[${bad}] has ${value}, m=${m} lambda=${lambda}`;
  for (let i = 0; i < n; ++i) {
    if (i === bad) {
      assert.ok(allNonFinite(logits, i * c, (i + 1) * c), `${what}: logits row ${i} finite`);
      if (m > 1) {
        assert.ok(!allFinite(gradX, i * d, (i + 1) * d), `${what}: gradX row ${i} all finite`);
      }
    } else {
      assert.ok(allFinite(logits, i * c, (i + 1) * c), `${what}: logits row ${i} not finite`);
      assert.ok(allFinite(gradX, i * d, (i + 1) * d), `${what}: gradX row ${i} not finite`);
    }
  }
  // The finite rows are still right.
  const ref = referenceForward(x, w, p.labels, o);
  const rb = referenceBackward(x, w, p.labels, g, o);
  const tol = dtype === "float32" ? 1e-5 : 1e-12;
  for (let i = 0; i < n; ++i) {
    if (i === bad) continue;
    const rows = (a: ArrayLike<number>, k: number) => Array.from(a).slice(i * k, (i + 1) * k);
    assertClose(
      rows(logits, c),
      rows(ref, c),
      tol,
      `${what}: logits row ${i}`,
      rowScale(rows(ref, c), 1),
    );
    assertClose(
      rows(gradX, d),
      rows(rb.gradX, d),
      tol,
      `${what}: gradX row ${i}`,
      rowScale(rows(rb.gradX, d), 1),
    );
  }
}

/**
 * Zero rows: sample 1 is a zero vector, class 2 (the label of samples 0 and 3) a zero weight
 * row, and sample 4 a vector whose squared norm underflows (float64 only), which is not a zero
 * vector and gets the margin. Every logit and gradient must be finite and equal to the plain inner
 * product's where the rule applies, and to the reference everywhere.
 */
export function checkZeroRows(
  backend: TestBackend,
  dtype: "float32" | "float64",
  m: number,
  lambda: number,
  rng: Rng,
): void {
  const [n, d, c] = [6, 4, 5];
  const p = randomProblem(rng, n, d, c);
  p.x.fill(0, 1 * d, 2 * d);
  p.labels[0] = 2;
  p.labels[3] = 2;
  p.w.fill(0, 2 * d, 3 * d);
  if (dtype === "float64") {
    // (1e-170)^2 = 1e-340 underflows to 0, but the vector is not zero: the margin applies.
    for (let k = 0; k < d; ++k) p.x[4 * d + k] = (k + 1) * 1e-170;
  }
  const [x, w, g] = dtype === "float32" ? [toF32(p.x), toF32(p.w), toF32(p.g)] : [p.x, p.w, p.g];
  const o = { margin: m, lambda, backend };
  const what = `${backend} ${dtype} zero rows m=${m} lambda=${lambda}`;
  const { logits } = forward(x as Float64Array, w as Float64Array, p.labels, o);
  const { gradX, gradW } = backward(
    x as Float64Array,
    w as Float64Array,
    p.labels,
    g as Float64Array,
    o,
  );
  assert.ok(allFinite(logits), `${what}: logits not finite`);
  assert.ok(allFinite(gradX), `${what}: gradX not finite`);
  assert.ok(allFinite(gradW), `${what}: gradW not finite`);
  const tol = dtype === "float32" ? 1e-5 : 1e-12;
  // Against the plain inner product for the degenerate samples (0, 1 and 3).
  const plain = plainForward(x, w, p.labels);
  const plainG = plainBackward(x, w, p.labels, g);
  for (const i of [0, 1, 3]) {
    const k = i * c + p.labels[i];
    assert.ok(
      Math.abs(logits[k] - plain[k]) <= tol * Math.max(Math.abs(plain[k]), 1e-300),
      `${what}: target logit of sample ${i}: ${logits[k]}, plain ${plain[k]}`,
    );
    const row = (a: ArrayLike<number>) => Array.from(a).slice(i * d, (i + 1) * d);
    assertClose(
      row(gradX),
      row(plainG.gradX),
      tol,
      `${what}: gradX row ${i} vs plain`,
      rowScale(row(plainG.gradX), 1),
    );
  }
  // Zero sample 1's target logit is exactly 0, and so is every logit of that row.
  for (let j = 0; j < c; ++j) assert.equal(Math.abs(logits[1 * c + j]), 0);
  // The zero class row's gradient: only plain terms (samples 0 and 3 are degenerate).
  const rowW = (a: ArrayLike<number>) => Array.from(a).slice(2 * d, 3 * d);
  assertClose(
    rowW(gradW),
    rowW(plainG.gradW),
    tol,
    `${what}: gradW row 2 vs plain`,
    rowScale(rowW(plainG.gradW), 1),
  );
  // Everything against the reference (which applies the same rule).
  const ref = referenceForward(x, w, p.labels, o);
  const rb = referenceBackward(x, w, p.labels, g, o);
  assertClose(logits, ref, tol, `${what}: logits`, rowScale(ref, n));
  assertClose(gradX, rb.gradX, tol, `${what}: gradX`, rowScale(rb.gradX, n));
  assertClose(gradW, rb.gradW, tol, `${what}: gradW`, rowScale(rb.gradW, c));
}
