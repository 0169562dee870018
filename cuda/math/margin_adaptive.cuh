// margin_adaptive.cuh: the adaptive kinds' per-row quantities and state (sub-center ArcFace,
// AdaFace, CurricularFace, MagFace; docs/math.md), from a pre-pass over the rows. A part of
// margin.cuh, which includes it where the statistics (lsm_stats) and the targets' values
// (lsm_phi_value) are defined; not included on its own.
#ifndef LSOFTMAX_MARGIN_ADAPTIVE_CUH
#define LSOFTMAX_MARGIN_ADAPTIVE_CUH

// AdaFace's norm a_i = clip(|x_i|, 0.001, 100) (NaN stays NaN).
LSM_HD double lsm_adaface_norm(double len) {
  return len < LSM_ADAFACE_NORM_MIN ? LSM_ADAFACE_NORM_MIN : (len > LSM_ADAFACE_NORM_MAX ? LSM_ADAFACE_NORM_MAX : len);
}

// AdaFace's batch statistics to the updated moving averages: from sum a_i and sum (a_i - mean)^2
// over the n rows the loss counts (unbiased std; 0 for n = 1). n = 0 (every row ignored): no
// batch, the state as it was.
LSM_HD void lsm_adaface_update(const lsm_margin &mg, double mean_b, double sq_dev, int64_t n, double *mu,
                               double *sigma) {
  if (n == 0) {
    *mu = mg.batch_mean, *sigma = mg.batch_std;
    return;
  }
  const double std_b = n >= 2 ? sqrt(sq_dev / (double)(n - 1)) : 0.0;
  *mu = mg.t_alpha * mean_b + (1.0 - mg.t_alpha) * mg.batch_mean;
  *sigma = mg.t_alpha * std_b + (1.0 - mg.t_alpha) * mg.batch_std;
}

// AdaFace's margin scaler z_i = clip(h (a_i - mu) / (sigma + eps), -1, 1), with the updated mu, sigma.
LSM_HD double lsm_adaface_z(const lsm_margin &mg, double a, double mu, double sigma) {
  const double z = mg.h * (a - mu) / (sigma + LSM_ADAFACE_EPS);
  return z < -1.0 ? -1.0 : (z > 1.0 ? 1.0 : z);
}

// AdaFace's non-target cosine clamp: the clamped value, and 1 for its derivative inside, 0 outside.
LSM_HD double lsm_adaface_nontarget(double c, double *deriv) {
  const double e = LSM_ADAFACE_EPS;
  *deriv = (c >= -1.0 + e && c <= 1.0 - e) ? 1.0 : 0.0;
  return c > 1.0 - e ? 1.0 - e : (c < -1.0 + e ? -1.0 + e : c);
}

// MagFace's magnitude a_i = clamp(|x_i|, l_a, u_a), margin m_i, and dm_i/d|x_i| (0 outside
// [l_a, u_a]).
struct lsm_magface_row {
  double a, m, dm;
  bool inside;  // |x_i| in [l_a, u_a]: a_i carries gradient
};
LSM_HD lsm_magface_row lsm_magface_of(const lsm_margin &mg, double len) {
  lsm_magface_row r;
  r.inside = len >= mg.lower_norm && len <= mg.upper_norm;
  r.a = len < mg.lower_norm ? mg.lower_norm : (len > mg.upper_norm ? mg.upper_norm : len);
  if (len != len) r.a = len;
  const double k = (mg.upper_margin - mg.m2) / (mg.upper_norm - mg.lower_norm);
  r.m = mg.m2 + k * (r.a - mg.lower_norm);
  r.dm = r.inside ? k : 0.0;
  return r;
}
// MagFace's regulariser g(a) = a / u_a^2 + 1 / a and dg/da.
LSM_HD double lsm_magface_g(const lsm_margin &mg, double a) { return a / (mg.upper_norm * mg.upper_norm) + 1.0 / a; }
LSM_HD double lsm_magface_dg(const lsm_margin &mg, double a) {
  return 1.0 / (mg.upper_norm * mg.upper_norm) - 1.0 / (a * a);
}
// d f_iy / d m_i of MagFace's target, over the scale: -sin(t + m_i) on the margin's branch, else 0.
LSM_HD double lsm_magface_dphi_dm(const lsm_stats &s, double m) {
  if (lsm_degenerate(s) || !(s.c > 0.0)) return 0.0;
  return -sin(atan2(sqrt(s.rr), s.c) + m);
}

// CurricularFace's threshold T_i = cos(t_y + m) = c cos m - sin t sin m (sin t: 1 for a zero
// vector, 0 where the pair counts as parallel, else |r|), used even where the target takes the
// fallback.
LSM_HD double lsm_curricular_threshold(const lsm_stats &s, const lsm_margin &mg) {
  const double r = sqrt(s.rr);
  const double sin_t = lsm_degenerate(s) ? 1.0 : (r > s.sin_floor ? r : 0.0);
  return s.c * cos(mg.m2) - sin_t * sin(mg.m2);
}
// CurricularFace's updated t from the mean of the target cosines.
LSM_HD double lsm_curricular_update(const lsm_margin &mg, double mean_cos) {
  return mg.t_alpha * mean_cos + (1.0 - mg.t_alpha) * mg.t;
}
// The same from the sum of the target cosines of the n rows the loss counts; n = 0 (every row
// ignored): t as it was.
LSM_HD double lsm_curricular_update_rows(const lsm_margin &mg, double sum_cos, int64_t n) {
  return n == 0 ? mg.t : lsm_curricular_update(mg, sum_cos / (double)n);
}
// A non-target cosine c (of the products) to CurricularFace's c (t + c) where it is hard (c > T_i),
// and the derivative: t + 2c there, 1 elsewhere.
LSM_HD double lsm_curricular_nontarget(double c, double threshold, double t, double *deriv) {
  if (c > threshold) {
    *deriv = t + 2.0 * c;
    return c * (t + c);
  }
  *deriv = 1.0;
  return c;
}

// Sub-center ArcFace's K sub-centers' products v[0], ..., v[K-1], in one pass: the class logit
// (returned), the largest, a NaN kept (it must poison the row, not be skipped); and the sub-center
// a non-target class's gradient goes to (*best), the largest product, the lowest on a tie.
template <typename T>
LSM_HD T lsm_subcenter_pick(const T *v, int64_t k, int64_t *best) {
  int64_t b = 0;
  T nan = v[0];
  for (int64_t q = 1; q < k; ++q) {
    b = v[q] > v[b] ? q : b;
    nan = v[q] != v[q] ? v[q] : nan;
  }
  *best = b;
  return nan != nan ? nan : v[b];
}
// The class logit alone.
template <typename T>
LSM_HD T lsm_subcenter_max(const T *v, int64_t k) {
  int64_t best = 0;
  return lsm_subcenter_pick(v, k, &best);
}
// The winning sub-center alone.
template <typename T>
LSM_HD int64_t lsm_subcenter_best(const T *v, int64_t k) {
  int64_t best = 0;
  lsm_subcenter_pick(v, k, &best);
  return best;
}

// Sub-center ArcFace: equal sub-centers tie exactly (the lowest wins), though their products need
// not (a BLAS rounds the product of equal rows differently at different columns of its blocks):
// the sub-center k of the lowest row of row r's class equal to it element for element, r's own k
// where none is. w: the rows (K per class, r counted from a class's first), d elements each.
template <typename T>
LSM_HD int32_t lsm_subcenter_alias(const T *w, int64_t r, int64_t d, int64_t k) {
  const int64_t first = r - r % k;
  for (int64_t q = first; q < r; ++q) {
    int64_t e = 0;
    while (e < d && w[q * d + e] == w[r * d + e]) ++e;
    if (e == d) return (int32_t)(q - first);
  }
  return (int32_t)(r - first);
}

#endif  // LSOFTMAX_MARGIN_ADAPTIVE_CUH
