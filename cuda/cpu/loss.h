// cpu/loss.h: the fused loss on the CPU: softmax cross-entropy over the margin logits without
// the n x c logits. Classes go in blocks of B (all n rows at a time, n*B elements within the
// context's workspace limit): a block's logits are one product x W_b^T, their target entries are
// replaced by the margin logits, and a running max and sum of exponentials per row (float64)
// folds the block in. The gradients need softmax_ij = exp(f_ij - lse_i):
// - one block (every class fits): its exponentials E_ij = exp(f_ij - max_i) are still in the
//   buffer. With k_i = scale / sum_i, G = diag(k) E - scale onehot = diag(k) E' where E' is E
//   with sum_i taken off the target entries; so dx = diag(k) (E' W) and dW = E'^T (diag(k) x):
//   the n x c matrix is never rescaled, only the n x d ones.
// - several blocks (of equal size): the last block's exponentials are still in the buffer and
//   become G in place; every other block's logits are made again (one more product).
// Then the margin's corrections on the target rows, as in the backward. The kinds that normalise
// run all of this on normalised copies of the rows (cpu/common.h, product_inputs) and project the
// gradients back at the end; but with one block, gradients asked for and W rows of moderate norm,
// the direct path leaves W as it is, which saves three passes over c x d of the four: the logits
// are (s x^_i . w_j) b_j with b_j = 1/|w_j| (columns scaled in the row pass, in cache), G's
// columns are scaled by b_j as well, so that G' W = G W^ (dL/d(s x^)) and G'^T (s x^) = b_j V_j,
// V_j = dL/dw^_j; and the projection dL/dw_j = b_j (V_j - w^_j (w^_j . V_j)) comes from
// w^_j . V_j = sum_i G_ij f_ij (f the plain normalised logits, summed in the row pass), with
// grad_w filled with -b_j^2 (w^_j . V_j) w_j before the product adds b_j V_j to it.
// The cross-entropy options (math/ce.cuh): weights and the ignored label only change each row's
// factor (a_i in place of the scale; 0 for an ignored row, whose gradient row is then exactly 0,
// whatever its logits hold); label smoothing adds -u_i w_j to every entry: written element by
// element on the block path (one block or several; L-Softmax then takes it), a rank-one term of
// its own on the direct path; and A folds beside the max.
// Not installed, not ABI: the state of one run, shared by cpu/loss.cpp (the entry point, the
// checks, the run and the corrections), cpu/loss_blocks.cpp (the class-block path),
// cpu/loss_direct.cpp (the direct path of the normalised kinds) and cpu/loss_op.cpp (the op).
#ifndef LSOFTMAX_CPU_LOSS_H
#define LSOFTMAX_CPU_LOSS_H

#include <math.h>

#include <memory>

#include "cpu/common.h"
#include "cpu/rows.h"
#include "math/ce.cuh"
#include "math/optim.cuh"

namespace lsm_cpu {
// count elements of a step (lsm_loss_step) through cpu/optim.cpp's loops, on this thread.
template <typename T>
void step_range(const lsm_loss_step &st, const lsm_adam_coefs &k, int64_t count, T *w, const T *g, T *s0, T *s1,
                T *s2);
}  // namespace lsm_cpu

namespace lsm_cpu_fused {

using namespace lsm_cpu;

// The row kernels by element type: float through cpu/rows.h (vectorized), double through libm.
inline float row_max(const float *row, int64_t count) { return lsm_rows().max(row, count); }
inline double exp_sum(const float *in, float *out, int64_t count, float shift) {
  return lsm_rows().exp_sum(in, out, count, shift);
}
inline double sum_squares(const float *v, int64_t count) { return lsm_rows().sum_squares(v, count); }
inline void accumulate_columns(double *acc, const float *e, float *row, const float *b, double k, int64_t count) {
  lsm_rows().accumulate_columns(acc, e, row, b, k, count);
}
inline void adaptive_row(float *v, float *deriv, int64_t count, int32_t kind, double s, double threshold, double t) {
  lsm_rows().adaptive_row(v, deriv, count, kind, s, threshold, t);
}
inline void adaptive_row(double *v, double *deriv, int64_t count, int32_t kind, double s, double threshold,
                         double t) {
  const double inv = 1.0 / s;
  for (int64_t j = 0; j < count; ++j) {
    const double c = v[j] * inv;
    v[j] = s * (kind == LSM_MARGIN_ADAFACE ? lsm_adaface_nontarget(c, &deriv[j])
                                           : lsm_curricular_nontarget(c, threshold, t, &deriv[j]));
  }
}
inline double row_max(const double *row, int64_t count) {
  double m = -INFINITY;
  for (int64_t j = 0; j < count; ++j) m = row[j] > m ? row[j] : m;
  return m;
}
inline double exp_sum(const double *in, double *out, int64_t count, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < count; ++j) total += out[j] = exp(in[j] - shift);
  return total;
}
inline double sum_squares(const double *v, int64_t count) { return lane_dot(v, v, count); }
inline void accumulate_columns(double *acc, const double *e, double *row, const double *b, double k, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    acc[j] += k * (e[j] * row[j]);
    row[j] = e[j] * b[j];
  }
}

template <typename T>
struct loss_run {
  const lsm_loss_problem &p;
  const T *x, *w;       // the inputs: statistics, projections and corrections
  std::vector<double> colscale;  // the direct path's b_j = 1/|w_j| (empty: not taken)
  product_inputs<T> in;  // the products' inputs (normalised rows for the kinds that normalise)
  T *gx, *gw;
  int64_t n, d, c, block = 0;
  double scale;
  std::vector<int32_t> labels;
  std::vector<int64_t> local;  // y_i - class_offset where this shard owns the label, else -1
  std::vector<lsm_stats> stats;
  std::vector<double> target;    // the margin target logit of each owned row, rounded to T
  std::vector<double> g_target;  // dL/df_iy of each owned row
  lsm_ce ce;
  std::vector<lsm_ce_row> factors;  // each row's gradient coefficients
  std::vector<double> smooth;    // each row's A = sum_j w_j (max - f_ij), with smoothing
  const double *cw = nullptr;    // the shard's class weights (null: all 1)
  T *buf = nullptr;              // n x block logits, then their exponentials or gradients
  std::vector<lsm_correction> coef;  // the margin's corrections of the target rows (once formed)
  bool x_corrected = false;      // grad_x has its corrections already (the fused step's check)
  // The fused step (cpu/fused_update.cpp): args.update applied class block by class block.
  bool stepping = false;
  std::vector<char> deferred;    // classes a correction reads or writes: updated last
  std::unique_ptr<T[]> dw_block; // one block of dL/dW rows, in cache (left uninitialised: each
                                 // product writes all of it)
  lsm_adam_coefs adam_k{};
  // The adaptive kinds (docs/math.md).
  int64_t subs = 1;              // sub-centers K: buf's columns are rows of W, K per class
  std::vector<int64_t> trow;     // the W row (of this shard) of each owned row's target, else -1
  std::vector<double> rowq;      // the target's per-row quantity: AdaFace z_i, MagFace m_i
  std::vector<lsm_magface_row> mag;  // MagFace's magnitudes
  std::vector<double> thresh;    // CurricularFace's T_i
  double t_now = 0.0;            // CurricularFace's updated t
  T *aux = nullptr;              // n x block: d f / d(products) of the element-wise kinds
  T *cls = nullptr;              // n x block/K: sub-center ArcFace's class logits, then exponentials
  uint16_t *win = nullptr;       // n x block/K: each class's winning sub-center (K <= 65536)
  std::vector<uint16_t> alias;   // each row's sub-center, or that of the lowest equal row of its class

  loss_run(lsm_context *ctx, const lsm_loss_problem &q)
      : p(q), x(static_cast<const T *>(q.x)), w(static_cast<const T *>(q.w)), colscale(direct_scales(ctx, q)),
        in(ctx, x, w, q.n, q.c, q.d, q.margin, colscale.empty()), gx(static_cast<T *>(q.grad_x)),
        gw(static_cast<T *>(q.grad_w)), n(q.n), d(q.d), c(q.c), scale(q.args.grad_scale), ce(lsm_ce_of(q.args)),
        subs(lsm_subcenters(q.margin)) {
    if (ce.weights != nullptr) cw = ce.weights + q.args.class_offset;
  }

  double weight(int64_t j) const { return cw == nullptr ? 1.0 : cw[j]; }

  // The rows the loss counts (not ignored): the adaptive kinds' batch statistics are theirs.
  int64_t counted() const {
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) k += local[i] != LSM_CE_IGNORED;
    return k;
  }

  // The direct path (cpu/loss_direct.cpp).
  static std::vector<double> direct_scales(lsm_context *ctx, const lsm_loss_problem &q);
  void fold_direct(double *maxes, double *sums, std::vector<double> *beta);
  void products_direct(const double *sums, const std::vector<double> &beta);

  // The class-block path (cpu/loss_blocks.cpp).
  void logits(int64_t c0, int64_t cb);
  void fold(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
  void gradient(int64_t c0, int64_t cb, const double *lse);
  void gradient_from_exps(int64_t c0, int64_t cb, const double *sums, const double *lse);
  void products(int64_t c0, int64_t cb, bool first);
  void products_from_exps(const double *sums, const double *lse);

  // The fused step (cpu/fused_update.cpp): whether it goes with the one block's dL/dW products
  // (grad_x complete), the rows of a block of dL/dW, and the
  // classes left for after the corrections; and the classes of a block of dL/dW's product.
  bool step_begin();
  void step_block(int64_t c0, int64_t cb, const T *g);
  void step_finish();
  int64_t dw_block_classes() const;

  // The adaptive kinds' element transform and sub-center ArcFace's class logits (cpu/loss_blocks.cpp).
  void transform(int64_t c0, int64_t cb);
  void class_logits(int64_t i, int64_t c0, int64_t cb);
  void fold_classes(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
  void gradient_classes(int64_t c0, int64_t cb, const double *lse, const double *sums);

  // The op through this machinery: lsm_forward_args, lsm_backward_args (cpu/loss_op.cpp).
  int32_t op(lsm_context *ctx);

  // The checks, the run and the corrections (cpu/loss.cpp).
  int32_t prepass();
  void correction_coefs();
  void magnitude_gradient();
  int32_t read_labels(lsm_context *ctx);
  int32_t check_weights(lsm_context *ctx) const;
  int32_t run(lsm_context *ctx);
  void corrections();

  // dL/df_iy = scale (softmax_iy - 1) = scale expm1(f_iy - lse_i), in float64 (kept in g_target
  // for the corrections) and rounded to T once: (T)(scale softmax) - scale would cancel to a few
  // bits when softmax_iy is near 1, as it is for a trained model. f_iy is the logit as the
  // log-sum-exp saw it, rounded to T.
  T target_gradient(int64_t i, double lse_i) {
    g_target[i] = lsm_ce_target_gradient(ce, factors[i], target[i], lse_i);
    return (T)g_target[i];
  }

  // An ignored row's gradient row: exactly 0 (whatever its logits hold).
  bool zero_row(int64_t i, T *row, int64_t cb) {
    if (local[i] != LSM_CE_IGNORED) return false;
    std::fill(row, row + cb, T(0));
    return true;
  }

  // -u_i w_j on a row of gradients (label smoothing), before the target's entry is written.
  void smoothing_terms(int64_t i, int64_t c0, T *row, double k, int64_t cb) {
    const double u = factors[i].u;
    for (int64_t j = 0; j < cb; ++j) row[j] = (T)(k * (double)row[j] - u * weight(c0 + j));
  }

  // The weight of row i's MagFace regulariser in L: the loss's grad_scale w_y, or the op's given
  // dL/d(regulariser_i).
  double regulariser_weight(int64_t i) const {
    if (p.stage == LSM_LOSS_BACKWARD) return p.grad_regulariser == nullptr ? 0.0 : p.grad_regulariser[i];
    return p.args.grad_scale * factors[i].wy;
  }

  double row_loss(int64_t i, double m, double s) const {
    const double l = lsm_ce_row_loss(ce, local[i] == LSM_CE_IGNORED, factors[i].wy, m, s, target[i],
                                     smooth.empty() ? 0.0 : smooth[i]);
    if (p.margin.kind != LSM_MARGIN_MAGFACE || local[i] < 0) return l;
    // The owner adds the regulariser, weighted as the row's target (w_y; 1 without weights).
    return l + factors[i].wy * p.margin.lambda_g * lsm_magface_g(p.margin, mag[i].a);
  }
};

}  // namespace lsm_cpu_fused

#endif  // LSOFTMAX_CPU_LOSS_H
