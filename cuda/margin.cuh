// margin.cuh: the L-Softmax margin math, written once for the CUDA kernels and the CPU backend.
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

#include "lsoftmax.h"

#if defined(__CUDACC__)
#define LSM_HD __host__ __device__ __forceinline__
#else
#define LSM_HD inline
#endif

#define LSM_PI 3.14159265358979323846

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
// then lsm_stats_add per element (the CUDA warp adds its lanes' partial sums together).
struct lsm_stats {
  int ex, ew;          // exponents of the scales
  double sx, sw;       // the scales 2^ex, 2^ew; 0 for a zero vector; NaN when the vector holds a
                       // NaN or an infinity (every result of the sample is then NaN)
  double px, pw;       // 1/sx, 1/sw (exact: powers of two; 0 or NaN as sx, sw)
  double dot, xx, ww;  // xs . ws, |xs|^2, |ws|^2
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

// Starts the statistics from the largest magnitudes of x_i and W_y: scales set, sums zero.
LSM_HD lsm_stats lsm_stats_begin(double amax_x, double amax_w) {
  lsm_stats s;
  lsm_scale(amax_x, &s.ex, &s.sx, &s.px);
  lsm_scale(amax_w, &s.ew, &s.sw, &s.pw);
  s.dot = s.xx = s.ww = 0.0;
  return s;
}

// Adds element k (x_k of x_i, w_k of W_y) to the scaled sums.
LSM_HD void lsm_stats_add(lsm_stats &s, double xk, double wk) {
  const double a = xk * s.px, b = wk * s.pw;
  s.dot += a * b;
  s.xx += a * a;
  s.ww += b * b;
}

// True where the cosine is undefined: x_i or W_y is the zero vector (and only then: a vector of
// tiny elements has a nonzero scale). The rule then is the plain inner product, for the logit and
// for its gradients.
LSM_HD bool lsm_degenerate(const lsm_stats &s) { return s.sx == 0.0 || s.sw == 0.0; }

// The target logit f_iy = (lambda x.w + |w| |x| psi(c)) / (1 + lambda), evaluated as
//   2^(ex+ew) [ dot lambda/(1+lambda) + |xs||ws| psi/(1+lambda) ]
// in the scaled space, rescaled once at the end (ldexp: one rounding, no intermediate overflow or
// underflow, so the result is finite wherever the true value is). lambda/(1+lambda) rather than
// lambda dot / (1+lambda): the latter overflows for lambda = 1e30. Margin 1 and the degenerate
// case give the plain inner product.
LSM_HD double lsm_target_logit(const lsm_stats &s, const lsm_margin &mg) {
  if (mg.m == 1 || lsm_degenerate(s)) return ldexp(s.dot, s.ex + s.ew);
  const double norms = sqrt(s.xx) * sqrt(s.ww);
  double psi, dpsi;
  lsm_psi(lsm_cosine(s.dot, norms), mg.m, &psi, &dpsi);
  const double inv = 1.0 / (1.0 + mg.lambda);
  return ldexp(s.dot * (mg.lambda * inv) + norms * psi * inv, s.ex + s.ew);
}

// What the target logit adds to the plain inner product's gradients, for an upstream gradient
// g = dL/df_iy. With a = lambda + psi', b = psi - c psi' (docs/math.md, Backward):
//   dL/dx_i (target part) = g w + g/(1+lambda) [(psi' - 1) w + |w| b x/|x|]
//   dL/dW_y (target part) = g x + g/(1+lambda) [(psi' - 1) x + |x| b w/|w|]
// The g w and g x terms come from the plain matrix products; the rest is the correction. In the
// scaled space (x = sx xs, w = sw ws, |x| = sx |xs|):
//   correction to dL/dx_i[k] = sw (alpha ws_k + bx xs_k)
//   correction to dL/dW_y[k] = sx (alpha xs_k + bw ws_k)
// with alpha = g (psi' - 1)/(1+lambda), bx = g b/(1+lambda) |ws|/|xs|, bw = g b/(1+lambda)
// |xs|/|ws|: every factor is of the data's own scale, and the scaling is exact.
struct lsm_correction {
  double alpha;   // coefficient of the other vector (scaled)
  double bx;      // coefficient of xs in the correction to dL/dx_i
  double bw;      // coefficient of ws in the correction to dL/dW_y
  double px, pw;  // 1/sx, 1/sw (lsm_stats)
  double sx, sw;  // the scales
  int32_t label;  // y_i where the correction applies; -1 where it does not (margin 1, a zero
                  // vector, a bad label): then the coefficients are 0
};

// The inactive correction: nothing to add.
LSM_HD lsm_correction lsm_no_correction() {
  lsm_correction r = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1};
  return r;
}

LSM_HD lsm_correction lsm_target_correction(double g, const lsm_stats &s, const lsm_margin &mg, int32_t label) {
  lsm_correction r = lsm_no_correction();
  if (mg.m == 1 || lsm_degenerate(s)) return r;
  const double nx = sqrt(s.xx), nw = sqrt(s.ww);
  const double c = lsm_cosine(s.dot, nx * nw);
  double psi, dpsi;
  lsm_psi(c, mg.m, &psi, &dpsi);
  const double scale = g / (1.0 + mg.lambda);
  const double b = scale * (psi - c * dpsi);
  r.alpha = scale * (dpsi - 1.0);
  r.bx = b * (nw / nx);
  r.bw = b * (nx / nw);
  r.px = s.px, r.pw = s.pw;
  r.sx = s.sx, r.sw = s.sw;
  r.label = label;
  return r;
}

// The corrections of one element k, from x_k = x[i, k] and w_k = W[y_i, k] (an active r). The
// caller adds them, in double, to the plain products' value and rounds once to the dtype.
LSM_HD double lsm_correction_x(const lsm_correction &r, double xk, double wk) {
  return r.sw * (r.alpha * (wk * r.pw) + r.bx * (xk * r.px));
}
LSM_HD double lsm_correction_w(const lsm_correction &r, double xk, double wk) {
  return r.sx * (r.alpha * (xk * r.px) + r.bw * (wk * r.pw));
}

#endif  // LSOFTMAX_MARGIN_CUH
