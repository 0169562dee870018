// margin.cuh: the margin family's math (L-Softmax, A-Softmax, CosFace, ArcFace, the combined
// margin, and the adaptive kinds: margin_adaptive.cuh), written once for the CUDA kernels, the CPU
// backend and the fused losses; the row normalisation of the normalised kinds is margin_rows.cuh.
//
// Everything here works on one sample's statistics, in double whatever the tensors' dtype: it runs
// n times per call, so its cost is nothing next to the matrix products, and double keeps float32
// results within float rounding of a float64 computation.
//
// Scaling. The statistics are taken of x and w scaled by powers of two near their largest
// magnitudes (xs = x / 2^ex, ws = w / 2^ew, largest element in [1, 2)), so that no sum of squares
// overflows or underflows however large or small the vectors are, as hypot and BLAS nrm2 do. The
// scales are powers of two, so scaling is exact: the op is exactly positively homogeneous under
// power-of-two scalings, and 1/|x| is never formed (it overflows for subnormal |x|). Every result
// is assembled in the scaled space and multiplied by the scale once, at the end.
#ifndef LSOFTMAX_MARGIN_CUH
#define LSOFTMAX_MARGIN_CUH

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "math/kinds.h"

// The part of the circle sample i falls in: the k in [0, m-1] with
// cos(k pi/m) >= c > cos((k+1) pi/m). Counted by comparisons rather than floor(m acos(c)/pi), so
// a NaN cosine gives k = 0 (and a NaN result) instead of an undefined float-to-int conversion.
LSM_HD int lsm_margin_k(double c, int m) {
  int k = 0;
  for (int j = 1; j < m; ++j) k += (c <= cos(j * LSM_PI / m)) ? 1 : 0;
  return k;
}

// psi(c) = (-1)^k T_m(c) - 2k and its derivative psi'(c) = (-1)^k m U_{m-1}(c), by the
// Chebyshev recurrences. psi is continuous and monotone in theta; psi' is 0 on the boundaries
// cos(k pi/m), so a boundary sample rounded into the neighbouring k changes nothing measurable.
LSM_HD void lsm_psi(double c, int m, double *psi, double *dpsi) {
  double t_prev = 1.0, t = c;        // T_0, T_1
  double u_prev = 0.0, u = 1.0;      // U_{-1}, U_0
  for (int j = 1; j < m; ++j) {      // after the body: t = T_{j+1}, u = U_j
    const double t_next = 2.0 * c * t - t_prev;
    const double u_next = 2.0 * c * u - u_prev;
    t_prev = t; t = t_next;
    u_prev = u; u = u_next;
  }
  const int k = lsm_margin_k(c, m);
  const double sign = (k & 1) ? -1.0 : 1.0;
  *psi = sign * t - 2.0 * k;
  *dpsi = sign * m * u;
}

// The cosine from the scaled statistics (dot and the product of the norms), clamped to [-1, 1];
// NaN stays NaN (fmin and fmax would turn it into a bound).
LSM_HD double lsm_cosine(double dot, double norms) {
  const double c = dot / norms;
  return c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
}

// max(m, |v|) that keeps a NaN from either side (fmax would drop it): a NaN element must make
// the sample's results NaN, not be skipped. Also the warp reduction's combine.
LSM_HD double lsm_absmax(double m, double v) {
  const double a = fabs(v);
  return (a > m || a != a) ? a : m;
}

// One sample's statistics: x_i and W_y as 2^ex xs and 2^ew ws, and the sums over the scaled
// vectors. Filled in two passes over d: the largest magnitudes (lsm_absmax), lsm_stats_begin,
// then lsm_stats_add per element (the CUDA warp adds its lanes' partial sums together); then
// lsm_stats_finish. ArcFace and the combined margin take a third pass (lsm_stats_add_residual)
// for |r|^2, r = W^_y - cos t x^_i (unit vectors), whose norm is sin t to full accuracy also
// where 1 - cos^2 t has lost every digit (x_i nearly parallel to W_y).
struct lsm_stats {
  int ex, ew;          // exponents of the scales
  double sx, sw;       // the scales 2^ex, 2^ew; 0 for a zero vector; NaN when the vector holds a
                       // NaN or an infinity (every result of the sample is then NaN)
  double px, pw;       // 1/sx, 1/sw (exact: powers of two; 0 or NaN as sx, sw)
  double dot, xx, ww;  // xs . ws, |xs|^2, |ws|^2
  double nx, nw;       // |xs|, |ws| (lsm_stats_finish)
  double ux, uw;       // 1/|xs|, 1/|ws|; 0 for a zero vector
  double c;            // cos t, clamped; 0 where a vector is zero
  double rr;           // |r|^2 (third pass; 0 unless lsm_needs_residual)
  double sin_floor;    // sin t below this is rounding: x_i and W_y count as parallel
};

// The power of two 2^e <= amax (amax = max |v_k|), with e >= -1022 so that 2^-e is a double
// too; then the scaled vector's largest element lies in [1, 2) (or [2^-52, 1) for a subnormal
// amax), and its sums of squares neither overflow nor underflow.
LSM_HD void lsm_scale(double amax, int *e, double *s, double *p) {
  *e = 0;
  if (amax == 0.0 || !(amax <= DBL_MAX)) {  // zero vector: 0; NaN or infinity: NaN (0 * amax)
    *s = *p = 0.0 * amax;
    return;
  }
  int k = ilogb(amax);
  if (k < -1022) k = -1022;
  *e = k;
  *s = ldexp(1.0, k);
  *p = ldexp(1.0, -k);
}

// The zero-vector rule of the rows an op normalises (x_i for the normalised kinds, entering the
// products as f x^_i with f = scale; the rows of W for every kind but L-Softmax, with f = 1;
// docs/math.md, Finite results): a row of dtype T whose largest magnitude is below
// f 2^-(E - 16), E = 128 for float32 and 1024 for float64, counts as the zero vector: its unit
// vector is 0, no gradient flows through its normalisation, and its cosines are 0
// (lsm_degenerate). Above it f/|v| < 2^(E - 16), so that the gradients, a few f |dL/df| / |v|,
// keep 2^15 of headroom below the dtype's largest value; below it they overflow, or nearly do.
// A NaN row stays NaN.
template <typename T>
LSM_HD double lsm_zero_below(double f) {
  return f * (sizeof(T) == 4 ? 0x1p-112 : 0x1p-1008);
}

// Starts the statistics from the largest magnitudes of x_i and W_y (of dtype T, for a margin):
// scales set, sums zero; a normalised vector under the zero-vector rule taken as zero.
template <typename T>
LSM_HD lsm_stats lsm_stats_begin(double amax_x, double amax_w, const lsm_margin &mg) {
  if (lsm_normalises_x(mg.kind) && amax_x < lsm_zero_below<T>(mg.scale)) amax_x = 0.0;
  if (lsm_normalises_w(mg.kind) && amax_w < lsm_zero_below<T>(1.0)) amax_w = 0.0;
  lsm_stats s;
  lsm_scale(amax_x, &s.ex, &s.sx, &s.px);
  lsm_scale(amax_w, &s.ew, &s.sw, &s.pw);
  s.dot = s.xx = s.ww = 0.0;
  s.nx = s.nw = s.ux = s.uw = s.c = s.rr = s.sin_floor = 0.0;
  return s;
}

// Adds element k (x_k of x_i, w_k of W_y) to the scaled sums.
LSM_HD void lsm_stats_add(lsm_stats &s, double xk, double wk) {
  const double a = xk * s.px, b = wk * s.pw;
  s.dot += a * b;
  s.xx += a * a;
  s.ww += b * b;
}

// True where the cosine is undefined: x_i or W_y is the zero vector, or counts as one under the
// zero-vector rule (lsm_zero_below; otherwise a vector of tiny elements has a nonzero scale).
// L-Softmax and A-Softmax then take the plain inner product, the normalised kinds a cosine of 0,
// for the logit and for its gradients.
LSM_HD bool lsm_degenerate(const lsm_stats &s) { return s.sx == 0.0 || s.sw == 0.0; }

// 1/v for a norm v > 0; 0 for 0; NaN stays NaN.
LSM_HD double lsm_inverse(double v) { return v > 0.0 ? 1.0 / v : (v == 0.0 ? 0.0 : v); }

// After the second pass (d elements): the norms, their inverses, the cosine, and the floor of
// sin t: the elements of r = w^ - c x^ carry rounding errors of about (d + 4) eps, so a smaller
// |r| says nothing about the direction of r (docs/math.md, Singular points).
LSM_HD void lsm_stats_finish(lsm_stats &s, int64_t d) {
  s.sin_floor = 32.0 * ((double)d + 4.0) * DBL_EPSILON;
  s.nx = sqrt(s.xx), s.nw = sqrt(s.ww);
  s.ux = lsm_inverse(s.nx), s.uw = lsm_inverse(s.nw);
  s.c = lsm_degenerate(s) ? 0.0 : lsm_cosine(s.dot, s.nx * s.nw);
}

// Third pass, element k: r_k = w^_k - c x^_k.
LSM_HD void lsm_stats_add_residual(lsm_stats &s, double xk, double wk) {
  const double r = wk * s.pw * s.uw - s.c * (xk * s.px * s.ux);
  s.rr += r * r;
}

// ---------------------------------------------------------------------------------------------
// The normalised kinds' target: f_iy = scale phi(cos t). Besides phi, the bounded
// q = phi'(c) sin t, from which the gradient is formed (docs/math.md, Singular points).
// ---------------------------------------------------------------------------------------------
struct lsm_phi_value {
  double phi;   // phi(c)
  double q;     // phi'(c) sin t: m1 sin(m1 t + m2) on the angular branches
  bool angular; // phi' != 1: the target's gradient differs from the plain cosine's
};

// ArcFace's target cos(t + m) above cos(pi - m), c - m sin m below (sub-center ArcFace, CurricularFace).
LSM_HD void lsm_arcface_phi(double c, double t, double m, lsm_phi_value *v) {
  if (c > cos(LSM_PI - m)) {
    v->phi = cos(t + m), v->q = sin(t + m), v->angular = true;
  } else {
    v->phi = c - m * sin(m);
  }
}

// AdaFace's fixed constants: the cosines' clamp and the angle's clip (eps), the norm's clip.
#define LSM_ADAFACE_EPS 1e-3
#define LSM_ADAFACE_NORM_MIN 1e-3
#define LSM_ADAFACE_NORM_MAX 100.0

// `row`: the target's per-row quantity of an adaptive kind (AdaFace z_i, MagFace m_i), else 0.
LSM_HD lsm_phi_value lsm_phi(const lsm_stats &s, const lsm_margin &mg, double row = 0.0) {
  const double c = s.c;
  // The angle from (cos t, sin t = |r|); pi/2 where a vector is zero (cosine 0).
  const double t = lsm_degenerate(s) ? 0.5 * LSM_PI : atan2(sqrt(s.rr), c);
  lsm_phi_value v = {c, 0.0, false};
  if (mg.kind == LSM_MARGIN_COSFACE) {
    v.phi = c - mg.m3;
  } else if (mg.kind == LSM_MARGIN_ARCFACE) {
    const double m = mg.m2;
    if ((mg.flags & LSM_FLAG_EASY_MARGIN) == 0) {
      lsm_arcface_phi(c, t, m, &v);
    } else if (c > 0.0) {
      v.phi = cos(t + m), v.q = sin(t + m), v.angular = true;
    }
  } else if (mg.kind == LSM_MARGIN_COMBINED) {
    v.phi = cos(mg.m1 * t + mg.m2) - mg.m3;
    v.q = mg.m1 * sin(mg.m1 * t + mg.m2);
    v.angular = true;
  } else if (mg.kind == LSM_MARGIN_SUBCENTER || mg.kind == LSM_MARGIN_CURRICULARFACE) {
    lsm_arcface_phi(c, t, mg.m2, &v);
  } else if (mg.kind == LSM_MARGIN_ADAFACE) {
    // cos(clip(arccos c' - m z, eps, pi - eps)) - m - m z, c' = clamp(c, -1 + eps, 1 - eps); no
    // gradient where the clamp or the clip is active. q = phi'(c) sin t = sin(phi) (sin t = sqrt(1 -
    // c^2) >= 0.0447 inside the clamp, where |r| is it to full accuracy).
    const double e = LSM_ADAFACE_EPS, m = mg.m2, z = row;
    const bool clamped = !(c > -1.0 + e && c < 1.0 - e);
    const double cc = c > 1.0 - e ? 1.0 - e : (c < -1.0 + e ? -1.0 + e : c);
    double a = acos(cc) - m * z;
    const bool clipped = !(a > e && a < LSM_PI - e);
    a = a < e ? e : (a > LSM_PI - e ? LSM_PI - e : a);
    v.phi = cos(a) - m - m * z;
    v.q = (clamped || clipped) ? 0.0 : sin(a);
    v.angular = true;
  } else if (mg.kind == LSM_MARGIN_MAGFACE) {
    if (c > 0.0) v.phi = cos(t + row), v.q = sin(t + row), v.angular = true;  // the easy margin
  }
  if (lsm_degenerate(s)) v.angular = false;  // no gradient through a zero vector
  if (c != c) v.phi = c;                      // NaN in, NaN out
  return v;
}

#include "math/margin_adaptive.cuh"

// The target logit of any kind. L-Softmax: f_iy = (lambda x.w + |w| |x| psi(c)) / (1 + lambda),
// evaluated as
//   2^(ex+ew) [ dot lambda/(1+lambda) + |xs||ws| psi/(1+lambda) ]
// in the scaled space, rescaled once at the end (ldexp: one rounding, no intermediate overflow or
// underflow, so the result is finite wherever the true value is). lambda/(1+lambda) rather than
// lambda dot / (1+lambda): the latter overflows for lambda = 1e30. Margin 1 and the degenerate
// case give the plain inner product. A-Softmax is the same with |w| = 1:
// 2^ex |xs| [c lambda/(1+lambda) + psi/(1+lambda)]. The normalised kinds: scale phi(c).
LSM_HD double lsm_target_logit(const lsm_stats &s, const lsm_margin &mg, double row = 0.0) {
  if (lsm_normalises_x(mg.kind)) return mg.scale * lsm_phi(s, mg, row).phi;
  const bool a = lsm_normalises_w(mg.kind);  // A-Softmax
  if (lsm_degenerate(s)) return a ? 0.0 * s.c : ldexp(s.dot, s.ex + s.ew);
  if (lsm_plain_margin(mg)) return ldexp(s.dot, s.ex + s.ew);
  const double norms = s.nx * s.nw;
  double psi, dpsi;
  lsm_psi(lsm_cosine(s.dot, norms), mg.m, &psi, &dpsi);
  const double inv = 1.0 / (1.0 + mg.lambda);
  if (a) return ldexp(s.nx * (s.c * (mg.lambda * inv) + psi * inv), s.ex);
  return ldexp(s.dot * (mg.lambda * inv) + norms * psi * inv, s.ex + s.ew);
}

// The target logit as the softmax sees it: rounded to the dtype T of the logits, the value that
// enters the log-sum-exp, the loss and dL/df_iy alike. A loss of lse - f_iy with the unrounded
// f_iy would disagree with its own gradient by the rounding of f_iy (and be negative where the
// row is fitted to within it).
template <typename T>
LSM_HD double lsm_softmax_target(double f) { return (double)(T)f; }

// A row's loss lse - t, with lse = M + log S (M the row's largest logit, S its sum of
// exp(f - M)) and t the target logit as the softmax saw it (lsm_softmax_target), evaluated as
// (M - t) + log S: the log-sum-exp runs over values that include t, so M >= t, and the term of
// the largest value is exp(0) = 1 exactly, so S >= 1 and log S >= 0; both terms are >= 0 in
// floating point too (roundings are monotone), so the loss is never negative. Without forming
// M + log S, a fitted row's loss (M = t, S = 1 + eps) keeps the digits of log S rather than
// those of an absolute rounding of lse. The clamp keeps the guarantee from resting on each
// backend's exp at 0; NaN stays NaN (fmax would drop it).
LSM_HD double lsm_row_loss(double m, double s, double t) {
  const double l = (m - t) + log(s);
  return l < 0.0 ? 0.0 : l;
}

// 2^e as a product f1 f2 of two doubles (2^e itself where it is one): a result of that scale is
// then finite wherever it is representable.
LSM_HD void lsm_pow2_pair(int e, double *f1, double *f2) {
  if (e >= -1022 && e <= 1023) {
    *f1 = ldexp(1.0, e), *f2 = 1.0;
  } else {
    const int h = e / 2;
    *f1 = ldexp(1.0, e - h), *f2 = ldexp(1.0, h);
  }
}

// What the target logit adds to the gradients the plain products (and, for the normalised kinds,
// the projections lsm_unit / lsm_project below) give, for an upstream gradient g = dL/df_iy:
//   correction to dL/dx_i[k] = 2^ox (ax ws_k + bx xs_k)
//   correction to dL/dW_y[k] = 2^ow (aw xs_k + bw ws_k)
// in the scaled space (x = sx xs, w = sw ws), every coefficient of the data's own scale.
// L-Softmax, with a = lambda + psi', b = psi - c psi' (docs/math.md, Backward):
//   dx (target part) = g w + g/(1+lambda) [(psi' - 1) w + |w| b x/|x|]
//   dW (target part) = g x + g/(1+lambda) [(psi' - 1) x + |x| b w/|w|]
// of which g w and g x come from the products: ax = aw = g (psi' - 1)/(1+lambda), bx = g b/(1+lambda)
// |ws|/|xs|, bw = g b/(1+lambda) |xs|/|ws|, 2^ox = sw, 2^ow = sx. A-Softmax: the same with w^ for
// w, and the W side projected onto the tangent of the unit sphere at w^ (its w^ term vanishes):
//   dW correction = g (psi' - 1)/(1+lambda) (x - c |x| w^) / |w|.
// The normalised kinds: the products give scale (w^ - c x^)/|x| (the plain cosine's gradient,
// after projection); the target's is scale (q r^)/|x| with r = w^ - c x^, r^ = r/|r|, so
//   dx correction = g scale (q/|r| - 1) (w^ - c x^)/|x|,  dW: g scale (q/|r| - 1) (x^ - c w^)/|w|,
// with q r^ taken as 0 where |r| = sin t <= 32 (d + 4) eps (x_i parallel or antiparallel to W_y
// to within rounding, where phi' is unbounded and r^ is noise): outputs stay finite, and the rule
// is the same on every backend.
struct lsm_correction {
  double ax, bx;  // the x correction's coefficients of ws and xs
  double aw, bw;  // the W correction's coefficients of xs and ws
  double px, pw;  // 1/sx, 1/sw (lsm_stats)
  double ox1, ox2, ow1, ow2;  // 2^ox and 2^ow as lsm_pow2_pair products
  int32_t label;  // y_i where the correction applies; -1 where it does not (margin 1, a zero
                  // vector, no angular term, a bad label): then the coefficients are 0
};

// The inactive correction: nothing to add.
LSM_HD lsm_correction lsm_no_correction() {
  lsm_correction r = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1};
  return r;
}

LSM_HD lsm_correction lsm_target_correction(double g, const lsm_stats &s, const lsm_margin &mg, int32_t label,
                                            double row = 0.0) {
  lsm_correction r = lsm_no_correction();
  if (lsm_degenerate(s)) return r;
  const double c = s.c, nx = s.nx, nw = s.nw;
  int ox, ow;
  if (lsm_normalises_x(mg.kind)) {
    const lsm_phi_value v = lsm_phi(s, mg, row);
    if (!v.angular) return r;  // phi' = 1: the plain cosine's gradient is the target's
    const double sin_t = sqrt(s.rr);
    const double a = g * mg.scale * ((sin_t > s.sin_floor ? v.q / sin_t : 0.0) - 1.0);
    r.ax = r.aw = a * (s.ux * s.uw);
    r.bx = -a * c * (s.ux * s.ux);
    r.bw = -a * c * (s.uw * s.uw);
    ox = -s.ex, ow = -s.ew;
  } else {
    if (lsm_plain_margin(mg)) return r;
    double psi, dpsi;
    lsm_psi(c, mg.m, &psi, &dpsi);
    const double scale = g / (1.0 + mg.lambda);
    const double a = scale * (dpsi - 1.0), b = scale * (psi - c * dpsi);
    if (!lsm_normalises_w(mg.kind)) {  // L-Softmax
      r.ax = r.aw = a;
      r.bx = b * (nw / nx);
      r.bw = b * (nx / nw);
      ox = s.ew, ow = s.ex;
    } else {  // A-Softmax: w^ = ws/|ws|
      r.ax = a * s.uw;
      r.bx = b * s.ux;
      r.aw = a * s.uw;
      r.bw = -a * c * nx * (s.uw * s.uw);
      ox = 0, ow = s.ex - s.ew;
    }
  }
  r.px = s.px, r.pw = s.pw;
  lsm_pow2_pair(ox, &r.ox1, &r.ox2);
  lsm_pow2_pair(ow, &r.ow1, &r.ow2);
  r.label = label;
  return r;
}

// The corrections of one element k, from x_k = x[i, k] and w_k = W[y_i, k] (an active r). The
// caller adds them, in double, to the plain products' value and rounds once to the dtype.
LSM_HD double lsm_correction_x(const lsm_correction &r, double xk, double wk) {
  return (r.ax * (wk * r.pw) + r.bx * (xk * r.px)) * r.ox1 * r.ox2;
}
LSM_HD double lsm_correction_w(const lsm_correction &r, double xk, double wk) {
  return (r.aw * (xk * r.px) + r.bw * (wk * r.pw)) * r.ow1 * r.ow2;
}

#include "math/margin_rows.cuh"

#endif  // LSOFTMAX_MARGIN_CUH
