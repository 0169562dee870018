// reference_adaptive.ts: an independent float64 reference of the adaptive kinds (sub-center
// ArcFace, AdaFace, CurricularFace, MagFace), written from docs/math.md and the spec alone: plain
// loops over the whole N x C logits, nothing shared with the library. The quantities the spec
// holds constant for the gradient (AdaFace's z_i, CurricularFace's t and its hard set) can be
// frozen, so that central differences of this loss are the gradient the library computes.

/** An adaptive kind's options, as loss() takes them. */
export interface AdaptiveSpec {
  kind: "subcenter" | "adaface" | "curricularface" | "magface";
  scale: number;
  margin?: number;
  subcenters?: number;
  h?: number;
  tAlpha?: number;
  batchMean?: number;
  batchStd?: number;
  t?: number;
  lowerMargin?: number;
  upperMargin?: number;
  lowerNorm?: number;
  upperNorm?: number;
  lambdaG?: number;
}

/** The constants of one evaluation, to hold fixed under central differences. */
export interface Frozen {
  /** AdaFace: each row's margin scaler. */
  z?: number[];
  /** CurricularFace: the updated t and each row's hard negatives (row-major N x C booleans). */
  t?: number;
  hard?: boolean[];
  /** Sub-center ArcFace: each (row, class)'s winning sub-center. */
  best?: number[];
}

/**
 * What the reference gives: the loss (mean), row losses, the constants, the updated state, and
 * the logits [n, C] and MagFace's regulariser per row (0 for the other kinds) it was made of.
 */
export interface ReferenceResult {
  loss: number;
  rows: number[];
  logits: number[];
  regulariser: number[];
  frozen: Frozen;
  batchMean?: number;
  batchStd?: number;
  t?: number;
}

const EPS_ADA = 1e-3;

function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

function length(v: Float64Array, off: number, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) s += v[off + k] * v[off + k];
  return Math.sqrt(s);
}

/** cos and sin of the angle between x_i and W_r by the spec's rules (zero vectors, parallel). */
function pair(
  x: Float64Array,
  w: Float64Array,
  i: number,
  r: number,
  d: number,
): { c: number; sin: number; zero: boolean } {
  const nx = length(x, i * d, d), nw = length(w, r * d, d);
  if (nx === 0 || nw === 0) return { c: 0, sin: 1, zero: true };
  let dot = 0;
  for (let k = 0; k < d; k++) dot += (x[i * d + k] / nx) * (w[r * d + k] / nw);
  const c = clamp(dot, -1, 1);
  let rr = 0;
  for (let k = 0; k < d; k++) {
    const e = w[r * d + k] / nw - c * (x[i * d + k] / nx);
    rr += e * e;
  }
  const sin = Math.sqrt(rr);
  return { c, sin: sin <= 32 * (d + 4) * 2 ** -52 ? 0 : sin, zero: false };
}

/** ArcFace's target A_m(c) with the fallback. */
function arcTarget(c: number, sin: number, m: number): number {
  if (c > Math.cos(Math.PI - m)) return c * Math.cos(m) - sin * Math.sin(m);
  return c - m * Math.sin(m);
}

/**
 * An adaptive kind's logits f [n][C] over the rows given (the rows the loss counts), MagFace's
 * regulariser λ_g g_i per row, the constants and the updated state: the spec's forward pass, with
 * every batch statistic over these rows (none: the state as it was). Both losses below start
 * from it.
 */
function adaptiveLogits(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  frozen: Frozen,
): { f: number[][]; g: number[]; out: ReferenceResult } {
  const n = labels.length, rows = w.length / d;
  const K = o.kind === "subcenter" ? o.subcenters! : 1;
  const C = rows / K, s = o.scale;
  const out: ReferenceResult = { loss: 0, rows: [], logits: [], regulariser: [], frozen: {} };
  const cos: number[][] = [], sinY: number[] = [], best: number[] = [];
  for (let i = 0; i < n; i++) {
    const row: number[] = [];
    for (let j = 0; j < C; j++) {
      const at = i * C + j;
      let bk = 0, bc = -Infinity, bs = 1;
      for (let k = 0; k < K; k++) {
        const p = pair(x, w, i, j * K + k, d);
        if (p.c > bc) bc = p.c, bk = k, bs = p.sin;
      }
      if (frozen.best !== undefined) {
        bk = frozen.best[at];
        const p = pair(x, w, i, j * K + bk, d);
        bc = p.c, bs = p.sin;
      }
      best[at] = bk;
      row.push(bc);
      if (j === labels[i]) sinY[i] = bs;
    }
    cos.push(row);
  }
  out.frozen.best = best;
  const f = cos.map((r) => r.map((c) => s * c));
  const g = new Array(n).fill(0);
  if (o.kind === "subcenter") {
    for (let i = 0; i < n; i++) {
      f[i][labels[i]] = s * arcTarget(cos[i][labels[i]], sinY[i], o.margin!);
    }
  } else if (o.kind === "adaface") {
    const a = [];
    for (let i = 0; i < n; i++) a.push(clamp(length(x, i * d, d), 0.001, 100));
    let mu = o.batchMean!, sigma = o.batchStd!;
    if (n > 0) {
      const meanB = a.reduce((p, q) => p + q, 0) / n;
      const stdB = n >= 2 ? Math.sqrt(a.reduce((p, q) => p + (q - meanB) ** 2, 0) / (n - 1)) : 0;
      mu = o.tAlpha! * meanB + (1 - o.tAlpha!) * o.batchMean!;
      sigma = o.tAlpha! * stdB + (1 - o.tAlpha!) * o.batchStd!;
    }
    out.batchMean = mu, out.batchStd = sigma;
    const z = frozen.z ?? a.map((ai) => clamp(o.h! * (ai - mu) / (sigma + EPS_ADA), -1, 1));
    out.frozen.z = z;
    const m = o.margin!;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < C; j++) f[i][j] = s * clamp(cos[i][j], -1 + EPS_ADA, 1 - EPS_ADA);
      const cy = clamp(cos[i][labels[i]], -1 + EPS_ADA, 1 - EPS_ADA);
      const phi = clamp(Math.acos(cy) - m * z[i], EPS_ADA, Math.PI - EPS_ADA);
      f[i][labels[i]] = s * (Math.cos(phi) - m - m * z[i]);
    }
  } else if (o.kind === "curricularface") {
    const m = o.margin!;
    let sum = 0;
    for (let i = 0; i < n; i++) sum += cos[i][labels[i]];
    const t = frozen.t ?? (n === 0 ? o.t! : o.tAlpha! * (sum / n) + (1 - o.tAlpha!) * o.t!);
    out.t = t;
    out.frozen.t = t;
    const hard: boolean[] = [];
    for (let i = 0; i < n; i++) {
      const cy = cos[i][labels[i]];
      const T = cy * Math.cos(m) - sinY[i] * Math.sin(m);
      for (let j = 0; j < C; j++) {
        const h = frozen.hard ? frozen.hard[i * C + j] : cos[i][j] > T;
        hard.push(h);
        if (j !== labels[i] && h) f[i][j] = s * cos[i][j] * (t + cos[i][j]);
      }
      f[i][labels[i]] = s * arcTarget(cy, sinY[i], m);
    }
    out.frozen.hard = hard;
  } else {
    const la = o.lowerNorm!, ua = o.upperNorm!, lm = o.lowerMargin!, um = o.upperMargin!;
    for (let i = 0; i < n; i++) {
      const a = clamp(length(x, i * d, d), la, ua);
      const mi = lm + (um - lm) * (a - la) / (ua - la);
      const cy = cos[i][labels[i]];
      if (cy > 0) f[i][labels[i]] = s * (cy * Math.cos(mi) - sinY[i] * Math.sin(mi));
      g[i] = o.lambdaG! * (a / (ua * ua) + 1 / a);
    }
  }
  return { f, g, out };
}

/**
 * The loss of an adaptive kind over x [n, d], w [rows, d]; `frozen` replaces the constants the
 * gradient holds fixed (their values at the unperturbed point).
 */
export function referenceAdaptive(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  frozen: Frozen = {},
): ReferenceResult {
  const n = labels.length;
  const { f, g: extra, out } = adaptiveLogits(x, w, labels, d, o, frozen);
  out.logits = f.flat(), out.regulariser = extra;
  for (let i = 0; i < n; i++) {
    let mx = -Infinity;
    for (const v of f[i]) mx = Math.max(mx, v);
    let se = 0;
    for (const v of f[i]) se += Math.exp(v - mx);
    const l = mx + Math.log(se) - f[i][labels[i]] + extra[i];
    out.rows.push(l);
    out.loss += l / n;
  }
  return out;
}

// Central differences of `at` (a loss of x and w, read in place) in every element of x and w,
// the step h relative to the element's row.
function centralDifferences(
  x: Float64Array,
  w: Float64Array,
  d: number,
  h: number,
  at: () => number,
): { gx: Float64Array; gw: Float64Array } {
  const diff = (v: Float64Array) => {
    const g = new Float64Array(v.length);
    for (let e = 0; e < v.length; e++) {
      const row = Math.floor(e / d);
      const step = h * Math.max(1e-3, length(v, row * d, d));
      const keep = v[e];
      v[e] = keep + step;
      const up = at();
      v[e] = keep - step;
      const down = at();
      v[e] = keep;
      g[e] = (up - down) / (2 * step);
    }
    return g;
  };
  return { gx: diff(x), gw: diff(w) };
}

/**
 * Central differences of the reference loss in every element of x and w (step h relative to
 * the element's row), with the constants frozen at the unperturbed point.
 */
export function referenceGradients(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  h = 1e-6,
): { gx: Float64Array; gw: Float64Array } {
  const frozen = referenceAdaptive(x, w, labels, d, o).frozen;
  return centralDifferences(x, w, d, h, () => referenceAdaptive(x, w, labels, d, o, frozen).loss);
}

/** The cross-entropy options of torch's F.cross_entropy, as loss() takes them. */
export interface CrossEntropySpec {
  labelSmoothing?: number;
  classWeights?: Float64Array;
  ignoreIndex?: number;
}

/** The reference with cross-entropy options: the reduced loss, the row losses, the state. */
export interface ReferenceCEResult {
  /** The reduced loss ("none": the sum of the row losses, whose gradients the library gives). */
  loss: number;
  /** Row losses, 0 for an ignored row. */
  rows: number[];
  frozen: Frozen;
  batchMean?: number;
  batchStd?: number;
  t?: number;
}

/**
 * The loss of an adaptive kind with torch's cross-entropy options (training.md) and a
 * reduction: an ignored row is left out of the batch (its loss 0, and out of every batch
 * statistic: the kind's forward pass runs over the counted rows alone); row loss
 * l_i = (1 − ε) w_y (−log p_iy) + (ε / C) Σ_j w_j (−log p_ij), plus λ_g w_y g_i for MagFace (the
 * regulariser weighted as the row's target); "mean" divides the sum by Σ w_{y_i} over the counted
 * rows (0 over none).
 */
export function referenceAdaptiveCE(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  ce: CrossEntropySpec,
  reduction: "mean" | "sum" | "none" = "mean",
  frozen: Frozen = {},
): ReferenceCEResult {
  const n = labels.length;
  const kept: number[] = [];
  for (let i = 0; i < n; i++) if (labels[i] !== ce.ignoreIndex) kept.push(i);
  const xs = new Float64Array(kept.length * d), ys = new Int32Array(kept.length);
  kept.forEach((i, q) => {
    xs.set(x.subarray(i * d, (i + 1) * d), q * d);
    ys[q] = labels[i];
  });
  const { f, g, out } = adaptiveLogits(xs, w, ys, d, o, frozen);
  const C = f.length > 0
    ? f[0].length
    : w.length / d / (o.kind === "subcenter" ? o.subcenters! : 1);
  const eps = ce.labelSmoothing ?? 0, wt = (j: number) => ce.classWeights?.[j] ?? 1;
  const rows = new Array(n).fill(0);
  let sum = 0, weight = 0;
  kept.forEach((i, q) => {
    const fi = f[q], y = ys[q];
    let mx = -Infinity;
    for (const v of fi) mx = Math.max(mx, v);
    let se = 0;
    for (const v of fi) se += Math.exp(v - mx);
    const lse = mx + Math.log(se);
    let smooth = 0;
    for (let j = 0; j < C; j++) smooth += wt(j) * (lse - fi[j]);
    const l = (1 - eps) * wt(y) * (lse - fi[y]) + (eps / C) * smooth + wt(y) * g[q];
    rows[i] = l;
    sum += l;
    weight += wt(y);
  });
  out.rows = rows;
  out.loss = reduction === "mean" ? (weight === 0 ? 0 : sum / weight) : sum;
  return out;
}

/**
 * Central differences of referenceAdaptiveCE's loss (for "none", of the sum of the row losses)
 * in every element of x and w, the constants frozen at the unperturbed point.
 */
export function referenceGradientsCE(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  ce: CrossEntropySpec,
  reduction: "mean" | "sum" | "none" = "mean",
  h = 1e-6,
): { gx: Float64Array; gw: Float64Array } {
  const frozen = referenceAdaptiveCE(x, w, labels, d, o, ce, reduction).frozen;
  const at = () => referenceAdaptiveCE(x, w, labels, d, o, ce, reduction, frozen).loss;
  return centralDifferences(x, w, d, h, at);
}
