// margin.cuh: the L-Softmax margin math, written once for the CUDA kernels and the CPU backend.
//
// Everything here works on one sample's statistics (x.w, |x|^2, |w|^2), in double whatever the
// tensors' dtype: it runs n times per call, so its cost is nothing next to the matrix products,
// and double keeps float32 results within float rounding of a float64 computation.
#ifndef LSOFTMAX_MARGIN_CUH
#define LSOFTMAX_MARGIN_CUH

#include <math.h>

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

// The cosine between x and w from their statistics, clamped to [-1, 1]; NaN stays NaN (fmin and
// fmax would turn it into a bound).
LSM_HD double lsm_cosine(double dot, double nx, double nw) {
  const double c = dot / (nx * nw);
  return c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
}

// True where the cosine is undefined: a zero vector, or one whose squared norm underflowed.
// The rule then is the plain inner product, for the logit and for its gradients.
LSM_HD bool lsm_degenerate(double xx, double ww) { return xx == 0.0 || ww == 0.0; }

// The target logit f_iy = (lambda x.w + |w| |x| psi(c)) / (1 + lambda).
LSM_HD double lsm_target_logit(double dot, double xx, double ww, int m, double lambda) {
  if (m == 1 || lsm_degenerate(xx, ww)) return dot;
  const double nx = sqrt(xx), nw = sqrt(ww);
  double psi, dpsi;
  lsm_psi(lsm_cosine(dot, nx, nw), m, &psi, &dpsi);
  return (lambda * dot + nw * nx * psi) / (1.0 + lambda);
}

// What the target logit adds to the plain inner product's gradients, for an upstream gradient
// g = dL/df_iy. With a = lambda + psi', b = psi - c psi' (spec, Backward):
//   dL/dx_i (target part) = g w + alpha w + beta_x x/|x|
//   dL/dW_y (target part) = g x + alpha x + beta_w w/|w|
// where alpha = g (psi' - 1)/(1 + lambda), beta_x = g |w| b/(1 + lambda), beta_w = g |x| b/(1 +
// lambda). The g w and g x terms come from the plain matrix products; the rest is the
// correction. The unit vectors x/|x| and w/|w| are formed by the caller as x * inv_nx, so no
// intermediate grows past the data's own scale.
struct lsm_correction {
  double alpha;   // coefficient of w (in dL/dx) and of x (in dL/dW)
  double beta_x;  // coefficient of x/|x| in dL/dx
  double beta_w;  // coefficient of w/|w| in dL/dW
  double inv_nx;  // 1/|x| (0 when degenerate)
  double inv_nw;  // 1/|w| (0 when degenerate)
};

LSM_HD lsm_correction lsm_target_correction(double g, double dot, double xx, double ww, int m,
                                            double lambda) {
  lsm_correction r = {0.0, 0.0, 0.0, 0.0, 0.0};
  if (m == 1 || lsm_degenerate(xx, ww)) return r;
  const double nx = sqrt(xx), nw = sqrt(ww);
  const double c = lsm_cosine(dot, nx, nw);
  double psi, dpsi;
  lsm_psi(c, m, &psi, &dpsi);
  const double scale = g / (1.0 + lambda);
  const double b = psi - c * dpsi;
  r.alpha = scale * (dpsi - 1.0);
  r.beta_x = scale * nw * b;
  r.beta_w = scale * nx * b;
  r.inv_nx = 1.0 / nx;
  r.inv_nw = 1.0 / nw;
  return r;
}

#endif  // LSOFTMAX_MARGIN_CUH
