// reference.ts: an independent float64 reference of the L-Softmax op, written from the spec
// (docs/math.md) and the paper, sharing no code with the library or mod.ts.
//
// It deliberately takes a different route from the library's Chebyshev recurrences: psi from
// theta = acos(c) and cos(m theta), psi' = (-1)^k m sin(m theta) / sin(theta) (with its series
// near theta = 0 and pi), and the part k = floor(m theta / pi). The gradients are the spec's
// formulas taken literally (no correction terms on top of plain matrix products). The Caffe
// closed forms for m = 2, 3, 4 are separate functions.
//
// Layout: x [n, d], w [c, d], labels [n], logits and upstream gradients [n, c], all row-major.

/** psi(c) and its derivative psi'(c) for one cosine. */
export interface Psi {
  psi: number;
  dpsi: number;
}

export type PsiFn = (c: number, m: number) => Psi;

/** sin(m t) / sin(t) for small t (|t| < 1e-4) by its Taylor series; m at most 16. */
function sinRatioSeries(t: number, m: number): number {
  const t2 = t * t, m2 = m * m;
  return m * (1 - (m2 - 1) * t2 / 6 + (3 * m2 * m2 - 10 * m2 + 7) * t2 * t2 / 360);
}

/** psi by acos / cos: k = floor(m theta / pi) in [0, m-1], psi = (-1)^k cos(m theta) - 2k. */
export function psiTrig(c: number, m: number): Psi {
  const cc = c > 1 ? 1 : c < -1 ? -1 : c;
  const theta = Math.acos(cc);
  let k = Math.floor(m * theta / Math.PI);
  if (k > m - 1) k = m - 1;
  if (k < 0) k = 0;
  const sign = k % 2 === 0 ? 1 : -1;
  const psi = sign * Math.cos(m * theta) - 2 * k;
  // U_{m-1}(cos theta) = sin(m theta) / sin(theta); at theta -> 0 it tends to m. For c < 0 use
  // phi = pi - theta = acos(-c) (accurate, unlike pi - acos(c)) and the identity
  // sin(m theta) / sin(theta) = (-1)^(m-1) sin(m phi) / sin(phi).
  const ratio = (t: number) => (t < 1e-4 ? sinRatioSeries(t, m) : Math.sin(m * t) / Math.sin(t));
  const u = cc >= 0 ? ratio(theta) : (m % 2 === 1 ? 1 : -1) * ratio(Math.acos(-cc));
  return { psi, dpsi: sign * m * u };
}

const sign = (v: number): number => (v > 0 ? 1 : v < 0 ? -1 : 0);

/** The Caffe layer's closed forms of psi (and its derivative) for m = 2, 3, 4; m = 1 is c. */
export function psiCaffe(c: number, m: number): Psi {
  const cc = c > 1 ? 1 : c < -1 ? -1 : c;
  switch (m) {
    case 1:
      return { psi: cc, dpsi: 1 };
    case 2:
      return psiCaffe2(cc);
    case 3:
      return psiCaffe3(cc);
    case 4:
      return psiCaffe4(cc);
    default:
      throw new RangeError(`psiCaffe: no closed form for margin ${m}`);
  }
}

/** m = 2: psi = 2 sign(c) c^2 - 1. */
export function psiCaffe2(c: number): Psi {
  return { psi: 2 * sign(c) * c * c - 1, dpsi: 4 * sign(c) * c };
}

/** m = 3: psi = sign(|c|-1/2)(4c^3-3c) + sign(c)(sign(|c|-1/2)+1) - 2. */
export function psiCaffe3(c: number): Psi {
  const s1 = sign(Math.abs(c) - 0.5);
  return {
    psi: s1 * (4 * c * c * c - 3 * c) + sign(c) * (s1 + 1) - 2,
    dpsi: s1 * (12 * c * c - 3),
  };
}

/** m = 4: psi = s3 (8c^4 - 8c^2 + 1) + 2 sign(c) + s3 - 3, s3 = sign(c) sign(2c^2 - 1). */
export function psiCaffe4(c: number): Psi {
  const c2 = c * c;
  const s3 = sign(c) * sign(2 * c2 - 1);
  return {
    psi: s3 * (8 * c2 * c2 - 8 * c2 + 1) + 2 * sign(c) + s3 - 3,
    dpsi: s3 * (32 * c2 * c - 16 * c),
  };
}

/**
 * The Caffe layer's target logit for m = 2, 3, 4 written as Caffe writes it, from the inner
 * product and the norm product alone (no explicit psi): |x||w| psi(c) expanded in dot and
 * nn = |x||w|, then mixed with lambda.
 */
export function caffeTargetLogit(
  dot: number,
  nn: number,
  m: number,
  lambda: number,
): number {
  if (nn === 0) return dot;
  const c = dot / nn;
  let t: number;
  switch (m) {
    case 2: {
      const s0 = sign(c);
      t = 2 * s0 * dot * dot / nn - nn;
      break;
    }
    case 3: {
      const s0 = sign(c), s1 = sign(Math.abs(c) - 0.5);
      t = s1 * (4 * dot * dot * dot / (nn * nn) - 3 * dot) + (s0 * (s1 + 1) - 2) * nn;
      break;
    }
    case 4: {
      const s0 = sign(c), s3 = s0 * sign(2 * c * c - 1);
      t = s3 * (8 * dot ** 4 / nn ** 3 - 8 * dot * dot / nn + nn) + (2 * s0 + s3 - 3) * nn;
      break;
    }
    default:
      throw new RangeError(`caffeTargetLogit: no closed form for margin ${m}`);
  }
  return (lambda * dot + t) / (1 + lambda);
}

function dims(x: ArrayLike<number>, w: ArrayLike<number>, labels: ArrayLike<number>) {
  const n = labels.length;
  const d = x.length / n;
  const c = w.length / d;
  if (!Number.isInteger(d) || !Number.isInteger(c) || n === 0) {
    throw new RangeError(`reference: bad sizes x ${x.length}, w ${w.length}, n ${n}`);
  }
  return { n, d, c };
}

function dotRow(
  a: ArrayLike<number>,
  ao: number,
  b: ArrayLike<number>,
  bo: number,
  d: number,
): number {
  let s = 0;
  for (let k = 0; k < d; ++k) s += a[ao + k] * b[bo + k];
  return s;
}

/** The plain inner products x W^T, [n, c]. */
export function plainForward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: ArrayLike<number>,
): Float64Array {
  const { n, d, c } = dims(x, w, labels);
  const f = new Float64Array(n * c);
  for (let i = 0; i < n; ++i) {
    for (let j = 0; j < c; ++j) f[i * c + j] = dotRow(x, i * d, w, j * d, d);
  }
  return f;
}

/** The plain inner product's gradients: dL/dx = G W, dL/dW = G^T x. */
export function plainBackward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: ArrayLike<number>,
  g: ArrayLike<number>,
): { gradX: Float64Array; gradW: Float64Array } {
  const { n, d, c } = dims(x, w, labels);
  const gradX = new Float64Array(n * d);
  const gradW = new Float64Array(c * d);
  for (let i = 0; i < n; ++i) {
    for (let j = 0; j < c; ++j) {
      const gij = g[i * c + j];
      for (let k = 0; k < d; ++k) {
        gradX[i * d + k] += gij * w[j * d + k];
        gradW[j * d + k] += gij * x[i * d + k];
      }
    }
  }
  return { gradX, gradW };
}

/**
 * Per-sample statistics of the target class; degenerate where x_i or W_y is the zero vector.
 * Norms and the cosine come from the vectors divided by their largest magnitudes (as hypot
 * does), so they neither overflow nor underflow, whatever the vectors' scale.
 */
function targetStats(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  i: number,
  y: number,
  d: number,
) {
  const dot = dotRow(x, i * d, w, y * d, d);
  let sx = 0, sw = 0;
  for (let k = 0; k < d; ++k) {
    sx = Math.max(sx, Math.abs(x[i * d + k]));
    sw = Math.max(sw, Math.abs(w[y * d + k]));
  }
  const degenerate = sx === 0 || sw === 0;
  let ds = 0, xx = 0, ww = 0;
  for (let k = 0; k < d; ++k) {
    const a = x[i * d + k] / sx, b = w[y * d + k] / sw;
    ds += a * b;
    xx += a * a;
    ww += b * b;
  }
  const nx = sx * Math.sqrt(xx), nw = sw * Math.sqrt(ww);
  let c = ds / Math.sqrt(xx * ww);
  if (c > 1) c = 1;
  if (c < -1) c = -1;
  return { dot, nx, nw, c, degenerate };
}

export interface ReferenceOptions {
  margin: number;
  lambda: number;
  /** psi's formulation: psiTrig (default) or psiCaffe (m <= 4). */
  psi?: PsiFn;
}

/** Forward: f_ij = W_j . x_i off target; f_iy = (lambda w.x + |w||x| psi(c)) / (1 + lambda). */
export function referenceForward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: ArrayLike<number>,
  opts: ReferenceOptions,
): Float64Array {
  const { n, d, c } = dims(x, w, labels);
  const psiFn = opts.psi ?? psiTrig;
  const m = opts.margin, lambda = opts.lambda;
  const f = plainForward(x, w, labels);
  for (let i = 0; i < n; ++i) {
    const y = labels[i];
    const s = targetStats(x, w, i, y, d);
    if (s.degenerate) continue; // the plain inner product
    const { psi } = psiFn(s.c, m);
    f[i * c + y] = (lambda * s.dot + s.nw * s.nx * psi) / (1 + lambda);
  }
  return f;
}

/**
 * Backward by the spec's formulas: with a = lambda + psi'(c), b = psi(c) - c psi'(c),
 *   d f_iy / d x_i = (a w + (|w| / |x|) b x_i) / (1 + lambda)
 *   d f_iy / d W_y = (a x_i + (|x| / |w|) b w) / (1 + lambda)
 * and the plain inner product's derivatives off target (and where a norm is 0).
 */
export function referenceBackward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: ArrayLike<number>,
  g: ArrayLike<number>,
  opts: ReferenceOptions,
): { gradX: Float64Array; gradW: Float64Array } {
  const { n, d, c } = dims(x, w, labels);
  if (g.length !== n * c) throw new RangeError("reference: bad gradient length");
  const psiFn = opts.psi ?? psiTrig;
  const m = opts.margin, lambda = opts.lambda;
  const gradX = new Float64Array(n * d);
  const gradW = new Float64Array(c * d);
  for (let i = 0; i < n; ++i) {
    const y = labels[i];
    const s = targetStats(x, w, i, y, d);
    for (let j = 0; j < c; ++j) {
      const gij = g[i * c + j];
      if (j === y && !s.degenerate) {
        const { psi, dpsi } = psiFn(s.c, m);
        const a = lambda + dpsi;
        const b = psi - s.c * dpsi;
        for (let k = 0; k < d; ++k) {
          const xk = x[i * d + k], wk = w[y * d + k];
          gradX[i * d + k] += gij * (a * wk + (s.nw / s.nx) * b * xk) / (1 + lambda);
          gradW[y * d + k] += gij * (a * xk + (s.nx / s.nw) * b * wk) / (1 + lambda);
        }
      } else {
        for (let k = 0; k < d; ++k) {
          gradX[i * d + k] += gij * w[j * d + k];
          gradW[j * d + k] += gij * x[i * d + k];
        }
      }
    }
  }
  return { gradX, gradW };
}

/** The annealing schedule, written from the spec: max(base (1 + gamma t)^-power, lambdaMin). */
export function referenceLambda(
  t: number,
  o: { base: number; gamma: number; power: number; lambdaMin: number },
): number {
  return Math.max(o.base * Math.pow(1 + o.gamma * t, -o.power), o.lambdaMin);
}
