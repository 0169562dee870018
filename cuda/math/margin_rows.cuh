// margin_rows.cuh: row normalisation for the normalised kinds' products, and the projection of
// their gradients back to the rows. A part of margin.cuh, which includes it after the scaling and
// zero-vector rules it uses; not included on its own.
#ifndef LSOFTMAX_MARGIN_ROWS_CUH
#define LSOFTMAX_MARGIN_ROWS_CUH

// ---------------------------------------------------------------------------------------------
// Row normalisation, for the normalised kinds' products: v^ = v/|v| (0 for a zero row) into the
// products' inputs, and their gradients projected back, dL/dv = f (G - v^ (v^ . G)) / |v| for a
// gradient G with respect to f v^. Each row is scaled by a power of two first, as above.
// ---------------------------------------------------------------------------------------------
struct lsm_norm {
  double p;    // 2^-e, e the row's scale exponent (lsm_scale)
  double inv;  // 1/|v 2^-e|; 0 for a zero row
};

// From the row's largest magnitude and the sum of squares of v_k p (computed by the caller
// between lsm_norm_begin and lsm_norm_finish); a row of dtype T, entering the products times f,
// under the zero-vector rule (lsm_zero_below) is the zero row.
template <typename T>
LSM_HD lsm_norm lsm_norm_begin(double amax, double f) {
  if (amax < lsm_zero_below<T>(f)) amax = 0.0;
  int e;
  double s;
  lsm_norm r;
  lsm_scale(amax, &e, &s, &r.p);
  r.inv = 0.0;
  return r;
}
LSM_HD void lsm_norm_finish(lsm_norm &r, double sum_squares) { r.inv = lsm_inverse(sqrt(sum_squares)); }

// The fast path: from the plain sum of squares ss of the row, when it lies where neither it nor
// any of its terms that matter can have overflowed or underflowed (then p = 1 gives the same
// results as the scaled row: the scaling is by a power of two, which commutes with rounding).
// False (r untouched) where the caller must take the scaled path: a zero, tiny, huge or
// non-finite row, or one that may fall under the zero-vector rule (ss >= d z^2 says that its
// largest magnitude is at least z).
template <typename T>
LSM_HD bool lsm_norm_direct(double ss, int64_t d, double f, lsm_norm *r) {
  const double z = lsm_zero_below<T>(f);
  if (!(ss >= 0x1p-960 && ss >= (double)d * z * z && ss <= 0x1p960)) return false;
  r->p = 1.0;
  r->inv = 1.0 / sqrt(ss);
  return true;
}

// Element k of f v^.
LSM_HD double lsm_unit(const lsm_norm &r, double vk, double f) { return vk * r.p * r.inv * f; }

// Element k of the projected gradient, given G_k, v_k and dot = v^ . G:
// f (G_k - v^_k dot) / |v| = (G_k - v^_k dot) (f inv) p.
LSM_HD double lsm_project(const lsm_norm &r, double gk, double vk, double dot, double f) {
  return (gk - vk * r.p * r.inv * dot) * (f * r.inv) * r.p;
}

#endif  // LSOFTMAX_MARGIN_ROWS_CUH
