// ce.cuh: the cross-entropy options of the fused loss (lsm_loss_args: label smoothing, class
// weights, the ignored label), shared by both backends. docs/math.md has the formulas:
//   l_i = (1 - eps) w_y (-log p_iy) + (eps / C) sum_j w_j (-log p_ij)
//   dl_i/df_ij = a_i p_ij - t_i [j = y] - u_i w_j,  t_i = (1 - eps) w_y,  u_i = eps / C,
//   a_i = t_i + u_i S_w  (each times the call's grad_scale; all 0 for an ignored row).
// The value needs per row only lse, w_y, the constant S_w and sum_j w_j f_ij, which the class
// blocks fold as A = sum_j w_j (M - f_ij) >= 0 beside the running max M: with
// -log p_ij = (M - f_ij) + log S, sum_j w_j (-log p_ij) = A + S_w log S, a sum of terms >= 0.
#ifndef LSOFTMAX_MATH_CE_CUH
#define LSOFTMAX_MATH_CE_CUH

#include <math.h>
#include <stdint.h>

#include "lsoftmax.h"
#include "math/margin.cuh"

// local[i] of a row left out by ignore_index (-1: a label of another shard).
constexpr int32_t LSM_CE_IGNORED = -2;

// A call's options, read from lsm_loss_args.
struct lsm_ce {
  double keep;        // 1 - eps
  double per_class;   // eps / C (C: every class of the whole W)
  double weight_sum;  // S_w
  double scale;       // grad_scale
  const double *weights;  // [C] or null (every weight 1)
  int32_t ignore;
  bool ignoring;
};

LSM_HD lsm_ce lsm_ce_of(const lsm_loss_args &a) {
  lsm_ce c;
  c.keep = 1.0 - a.label_smoothing;
  c.per_class = a.label_smoothing / (double)a.total_classes;
  c.weight_sum = a.class_weights == nullptr ? (double)a.total_classes : a.weight_sum;
  c.scale = a.grad_scale;
  c.weights = a.class_weights;
  c.ignore = a.ignore_index;
  c.ignoring = (a.flags & LSM_LOSS_IGNORE) != 0;
  return c;
}

LSM_HD bool lsm_ce_smoothing(const lsm_ce &c) { return c.per_class > 0.0; }
LSM_HD bool lsm_ce_ignored(const lsm_ce &c, int32_t label) { return c.ignoring && label == c.ignore; }
// w_j of a class of the whole W (j in [0, C)).
LSM_HD double lsm_ce_weight(const lsm_ce &c, int64_t j) { return c.weights == nullptr ? 1.0 : c.weights[j]; }

// A row's gradient coefficients (grad_scale included): G_ij = a p_ij - t [j = y] - u w_j.
struct lsm_ce_row {
  double a, t, u, wy;
};

// label: the row's global label, valid or ignored (checked before).
LSM_HD lsm_ce_row lsm_ce_row_of(const lsm_ce &c, int32_t label) {
  lsm_ce_row r = {0.0, 0.0, 0.0, 0.0};
  if (lsm_ce_ignored(c, label)) return r;
  r.wy = lsm_ce_weight(c, label);
  r.t = c.scale * c.keep * r.wy;
  r.u = c.scale * c.per_class;
  r.a = r.t + r.u * c.weight_sum;
  return r;
}

// G_iy, the target's entry, in float64 from f_iy and lse: t (p - 1) + u (S_w p - w_y) with p - 1
// as expm1(f_iy - lse), which keeps its digits where p is near 1 (the softmax's own rounding
// would cancel them).
LSM_HD double lsm_ce_target_gradient(const lsm_ce &c, const lsm_ce_row &r, double f_y, double lse) {
  const double g = r.t * expm1(f_y - lse);
  return r.u == 0.0 ? g : g + r.u * (c.weight_sum * exp(f_y - lse) - r.wy);
}

// A row's loss from its max M, sum S of exp(f - M), target logit t (as the softmax saw it) and
// A = sum_j w_j (M - f_ij) (0 without smoothing): every term >= 0, so the loss is never negative;
// an ignored row's is 0. 0 times an infinite term is taken as 0 (a class of weight 0 adds nothing).
LSM_HD double lsm_ce_row_loss(const lsm_ce &c, bool ignored, double wy, double m, double s, double t,
                                     double smooth) {
  if (ignored) return 0.0;
  const double ce = c.keep * wy == 0.0 ? 0.0 : c.keep * wy * lsm_row_loss(m, s, t);
  if (!(c.per_class > 0.0)) return ce;
  const double log_s = log(s);
  double sm = smooth + (c.weight_sum == 0.0 ? 0.0 : c.weight_sum * (log_s < 0.0 ? 0.0 : log_s));
  if (!(sm >= 0.0) && sm == sm) sm = 0.0;  // never below 0 (NaN kept)
  return ce + c.per_class * sm;
}

// The running (max m, weight W, A = sum w_j (m - f_j)) moved to a new max top >= m: A + W (top - m).
LSM_HD double lsm_ce_shift(double smooth, double weight, double m, double top) {
  return weight == 0.0 || m == top ? smooth : smooth + weight * (top - m);
}

#endif  // LSOFTMAX_MATH_CE_CUH
