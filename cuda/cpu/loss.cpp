// cpu/loss.cpp: the fused loss on the CPU: softmax cross-entropy over the margin logits without
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
#include <math.h>
#include <stdlib.h>

#include <limits>

#include "cpu/common.h"
#include "cpu/rows.h"
#include "math/ce.cuh"

namespace {

using namespace lsm_cpu;

// The row kernels by element type: float through cpu/rows.h (vectorized), double through libm.
float row_max(const float *row, int64_t count) { return lsm_rows().max(row, count); }
double exp_sum(const float *in, float *out, int64_t count, float shift) {
  return lsm_rows().exp_sum(in, out, count, shift);
}
double sum_squares(const float *v, int64_t count) { return lsm_rows().sum_squares(v, count); }
void accumulate_columns(double *acc, const float *e, float *row, const float *b, double k, int64_t count) {
  lsm_rows().accumulate_columns(acc, e, row, b, k, count);
}
double row_max(const double *row, int64_t count) {
  double m = -INFINITY;
  for (int64_t j = 0; j < count; ++j) m = row[j] > m ? row[j] : m;
  return m;
}
double exp_sum(const double *in, double *out, int64_t count, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < count; ++j) total += out[j] = exp(in[j] - shift);
  return total;
}
double sum_squares(const double *v, int64_t count) { return lane_dot(v, v, count); }
void accumulate_columns(double *acc, const double *e, double *row, const double *b, double k, int64_t count) {
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

  loss_run(lsm_context *ctx, const lsm_loss_problem &q)
      : p(q), x(static_cast<const T *>(q.x)), w(static_cast<const T *>(q.w)), colscale(direct_scales(ctx, q)),
        in(ctx, x, w, q.n, q.c, q.d, q.margin, colscale.empty()), gx(static_cast<T *>(q.grad_x)),
        gw(static_cast<T *>(q.grad_w)), n(q.n), d(q.d), c(q.c), scale(q.args.grad_scale), ce(lsm_ce_of(q.args)) {
    if (ce.weights != nullptr) cw = ce.weights + q.args.class_offset;
  }

  double weight(int64_t j) const { return cw == nullptr ? 1.0 : cw[j]; }

  // The direct path's column scales b_j = 1/|w_j| (see the top), or none where it does not apply:
  // not one block, no gradients, L-Softmax, or a row of W (of x, for A-Softmax) whose norm is
  // outside [2^-50, 2^50] (or a scale past 2^40), where the products of unnormalised rows could
  // lose range.
  static std::vector<double> direct_scales(lsm_context *ctx, const lsm_loss_problem &q) {
    std::vector<double> b;
    const bool one_block = (size_t)q.c <= ctx->workspace_limit / ((size_t)q.n * sizeof(T));
    if (q.stage != LSM_LOSS_FULL || q.grad_x == nullptr || !lsm_normalises_w(q.margin.kind) || !one_block ||
        lsm_x_factor(q.margin) > 0x1p40)
      return b;
    auto in_range = [](double ss) { return ss >= 0x1p-100 && ss <= 0x1p100; };
    const T *xv = static_cast<const T *>(q.x), *wv = static_cast<const T *>(q.w);
    if (!lsm_normalises_x(q.margin.kind))
      for (int64_t i = 0; i < q.n; ++i)
        if (!in_range(lane_dot(xv + i * q.d, xv + i * q.d, q.d))) return b;
    b.resize((size_t)q.c);
    parallel_for(q.c, q.d / kRowPassWork, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) b[j] = 1.0 / sqrt(sum_squares(wv + j * q.d, q.d));
    });
    // |w_j|^2 in [2^-100, 2^100] exactly where b_j is in [2^-50, 2^50] (NaN in neither).
    for (int64_t j = 0; j < q.c; ++j)
      if (!(b[j] >= 0x1p-50 && b[j] <= 0x1p50)) return {};
    return b;
  }


  // Logits of classes [c0, c0 + cb) into buf (row stride cb), target entries replaced.
  void logits(int64_t c0, int64_t cb) {
    gemm(CblasNoTrans, CblasTrans, (int)n, (int)cb, (int)d, in.x, (int)d, in.w + c0 * d, (int)d, buf, (int)cb);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = local[i] - c0;
      if (y >= 0 && y < cb) buf[i * cb + y] = (T)target[i];
    }
  }

  // Folds a block into each row's running max and sum of exponentials (and A, with smoothing;
  // `seen`: the weight of the classes before the block); the block's exponentials exp(f - max)
  // replace its logits.
  void fold(int64_t c0, int64_t cb, double seen, double *maxes, double *sums) {
    const bool smoothing = lsm_ce_smoothing(ce);
    parallel_for(n, (smoothing ? 6 : 4) * cb, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T *row = buf + i * cb;
        const T bm = row_max(row, cb);  // one of the row's values: exact in T
        const T b = (double)bm > maxes[i] ? bm : (T)maxes[i];
        if (smoothing) {
          double a = lsm_ce_shift(smooth[i], seen, maxes[i], (double)b);
          for (int64_t j = 0; j < cb; ++j) a += weight(c0 + j) * ((double)b - (double)row[j]);
          smooth[i] = a;
        }
        const double carried = sums[i] == 0.0 ? 0.0 : sums[i] * exp(maxes[i] - (double)b);
        sums[i] = carried + exp_sum(row, row, cb, b);
        maxes[i] = (double)b;
      }
    });
  }

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

  // A block's logits in buf to G = scale (softmax - onehot), given each row's lse. With t_i =
  // lse_i rounded to T, softmax = exp(f - t_i) / exp(lse_i - t_i): f - t_i is formed in T
  // without losing the float64 lse's digits.
  void gradient(int64_t c0, int64_t cb, const double *lse) {
    parallel_for(n, 4 * cb, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T *row = buf + i * cb;
        if (zero_row(i, row, cb)) continue;
        T t = (T)lse[i];
        if (!isfinite((double)t) && isfinite(lse[i])) t = std::numeric_limits<T>::max();  // lse past T
        const double k = factors[i].a / exp(lse[i] - (double)t);
        exp_sum(row, row, cb, t);
        if (factors[i].u != 0.0) {
          smoothing_terms(i, c0, row, k, cb);
        } else {
          for (int64_t j = 0; j < cb; ++j) row[j] = (T)(k * (double)row[j]);
        }
        const int64_t y = local[i] - c0;
        if (y >= 0 && y < cb) row[y] = target_gradient(i, lse[i]);
      }
    });
  }

  // The last block's exponentials E = exp(f - max_i) still in buf (max_i is the row's final max)
  // to G = scale (softmax - onehot) = k_i E - scale onehot, k_i = scale / sum_i: no product again.
  void gradient_from_exps(int64_t c0, int64_t cb, const double *sums, const double *lse) {
    parallel_for(n, 2 * cb, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T *row = buf + i * cb;
        if (zero_row(i, row, cb)) continue;
        const double k = factors[i].a / sums[i];
        if (factors[i].u != 0.0) {
          smoothing_terms(i, c0, row, k, cb);
        } else {
          for (int64_t j = 0; j < cb; ++j) row[j] = (T)(k * (double)row[j]);
        }
        const int64_t y = local[i] - c0;
        if (y >= 0 && y < cb) row[y] = target_gradient(i, lse[i]);
      }
    });
  }

  // dx (+)= G_b W_b and dW_b = G_b^T x for the block of gradients in buf.
  void products(int64_t c0, int64_t cb, bool first) {
    gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)cb, buf, (int)cb, in.w + c0 * d, (int)d, gx, (int)d,
         first ? T(0) : T(1));
    gemm(CblasTrans, CblasNoTrans, (int)cb, (int)d, (int)n, buf, (int)cb, in.x, (int)d, gw + c0 * d, (int)d);
  }

  // The gradients from the one block's exponentials E in buf and their row sums (see the top).
  void products_from_exps(const double *sums, const double *lse) {
    std::vector<double> k((size_t)n);
    std::vector<T> kx((size_t)(n * d));
    for (int64_t i = 0; i < n; ++i) {
      k[i] = factors[i].a / sums[i];
      if (factors[i].a == 0.0) {  // an ignored row, or a target of weight 0: no gradient
        std::fill(buf + i * c, buf + (i + 1) * c, T(0));
        k[i] = 0.0;
      }
      const int64_t y = local[i];
      if (y >= 0 && k[i] != 0.0) {
        T &e = buf[i * c + y];
        e = (T)(target_gradient(i, lse[i]) / k[i]);
      }
      for (int64_t q = 0; q < d; ++q) kx[i * d + q] = (T)(k[i] * (double)in.x[i * d + q]);
    }
    gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)c, buf, (int)c, in.w, (int)d, gx, (int)d);
    gemm(CblasTrans, CblasNoTrans, (int)c, (int)d, (int)n, buf, (int)c, kx.data(), (int)d, gw, (int)d);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t q = 0; q < d; ++q) gx[i * d + q] = (T)(k[i] * (double)gx[i * d + q]);
  }

  // The direct path's row pass over the one block of raw products x~_i . w_j in buf (see the
  // top): logits scaled by b_j, the target's replaced, max and sum of exponentials; then buf
  // holds E' diag(b) (E' = exp(f - max) with sum_i taken off the target entry) and beta the
  // column sums w^_j . V_j. Rows in 4 fixed chunks, each with its own column sums, added in
  // order: the same result whatever the thread count.
  void fold_direct(double *maxes, double *sums, std::vector<double> *beta) {
    constexpr int64_t kChunks = 4;
    const double *b = colscale.data();
    std::vector<T> bt(colscale.begin(), colscale.end());  // b_j in T: the n x c loops stay in T
    std::vector<std::vector<double>> acc(kChunks);
    parallel_for(kChunks, n * c / kChunks, [&](int64_t k0, int64_t k1) {
      std::vector<T> tmp((size_t)c);
      for (int64_t k = k0; k < k1; ++k) {
        std::vector<double> &a = acc[k];
        a.assign((size_t)c, 0.0);
        for (int64_t i = k * n / kChunks; i < (k + 1) * n / kChunks; ++i) {
          T *row = buf + i * c;
          for (int64_t j = 0; j < c; ++j) row[j] *= bt[j];
          const int64_t y = local[i];
          double plain_y = 0.0;
          if (y >= 0) plain_y = (double)row[y], row[y] = (T)target[i];
          const T bm = row_max(row, c);
          if (!smooth.empty()) {
            double sa = 0.0;
            for (int64_t j = 0; j < c; ++j) sa += weight(j) * ((double)bm - (double)row[j]);
            smooth[i] = sa;
          }
          const double sum = exp_sum(row, tmp.data(), c, bm);
          maxes[i] = (double)bm, sums[i] = sum;
          const double ki = factors[i].a / sum;
          if (factors[i].a == 0.0) {  // an ignored row, or a target of weight 0: no gradient
            std::fill(row, row + c, T(0));
            continue;
          }
          accumulate_columns(a.data(), tmp.data(), row, bt.data(), ki, c);
          if (y >= 0) {  // G_iy in float64 as target_gradient forms it; G_iy times the plain logit
            const double e = (double)tmp[y], margin_y = (double)(T)target[i];
            g_target[i] = lsm_ce_target_gradient(ce, factors[i], margin_y, (double)bm + log(sum));
            // The smoothing's -u_i w_y is the rank-one term's (products_direct), not buf's.
            const double g0 = g_target[i] + factors[i].u * weight(y);
            a[y] += g0 * plain_y - ki * e * margin_y;
            row[y] = (T)(g0 / ki * b[y]);
          }
        }
      }
    });
    beta->assign((size_t)c, 0.0);
    for (int64_t k = 0; k < kChunks; ++k)
      for (int64_t j = 0; j < c; ++j) (*beta)[j] += acc[k][j];
  }

  // The direct path's gradients: grad_w filled with -b_j^2 beta_j w_j, then the products of
  // E' diag(b) in buf as in products_from_exps, adding to it. Label smoothing's term of G,
  // R = -u v^T (u_i the rows' factor, v_j = w_j), is rank one: R W^ = -u q^T with q = sum_j v_j
  // w^_j, and R^T x~ = -v r^T with r = sum_i u_i x~_i, which enters V_j and beta_j
  // (-v_j w^_j . r): a pass over c x d that grad_w's fill makes anyway, and one more for q.
  void products_direct(const double *sums, const std::vector<double> &beta) {
    const double *b = colscale.data();
    const bool smoothing = !smooth.empty();
    std::vector<double> r(smoothing ? (size_t)d : 0, 0.0), qv(smoothing ? (size_t)d : 0, 0.0);
    if (smoothing) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t e = 0; e < d; ++e) r[e] += factors[i].u * (double)in.x[i * d + e];
      for (int64_t j = 0; j < c; ++j) {
        const double vb = weight(j) * b[j];
        if (vb != 0.0)
          for (int64_t e = 0; e < d; ++e) qv[e] += vb * (double)w[j * d + e];
      }
    }
    parallel_for(c, d / kRowPassWork, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const T *wj = w + j * d;
        if (!smoothing) {
          const T f = (T)(-b[j] * b[j] * beta[j]);
          for (int64_t q = 0; q < d; ++q) gw[j * d + q] = f * wj[q];
          continue;
        }
        const double vb = weight(j) * b[j];
        double wr = 0.0;
        for (int64_t q = 0; q < d; ++q) wr += (double)wj[q] * r[q];
        const double f = -b[j] * b[j] * (beta[j] - vb * wr);
        for (int64_t q = 0; q < d; ++q) gw[j * d + q] = (T)(f * (double)wj[q] - vb * r[q]);
      }
    });
    std::vector<double> k((size_t)n);
    std::vector<T> kx((size_t)(n * d));
    for (int64_t i = 0; i < n; ++i) {
      k[i] = factors[i].a / sums[i];
      for (int64_t q = 0; q < d; ++q) kx[i * d + q] = (T)(k[i] * (double)in.x[i * d + q]);
    }
    gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)c, buf, (int)c, w, (int)d, gx, (int)d);
    gemm(CblasTrans, CblasNoTrans, (int)c, (int)d, (int)n, buf, (int)c, kx.data(), (int)d, gw, (int)d, T(1));
    for (int64_t i = 0; i < n; ++i) {
      const double u = smoothing ? factors[i].u : 0.0;
      for (int64_t q = 0; q < d; ++q)
        gx[i * d + q] = (T)(k[i] * (double)gx[i * d + q] - (u == 0.0 ? 0.0 : u * qv[q]));
    }
  }

  // The products' gradients projected back to x and W (normalised kinds), then the margin's
  // corrections of the target rows.
  void corrections() {
    if (colscale.empty()) {
      project_gradients(x, w, n, c, d, p.margin, gx, gw);
    } else if (lsm_normalises_x(p.margin.kind)) {
      project_rows(x, n, d, p.margin.scale, gx);  // W's projection is in products_direct
    }
    if (lsm_plain_margin(p.margin)) return;
    std::vector<lsm_correction> coef((size_t)n);
    for (int64_t i = 0; i < n; ++i) {
      coef[i] = local[i] < 0 ? lsm_no_correction()
                             : lsm_target_correction(g_target[i], stats[i], p.margin, (int32_t)local[i]);
    }
    add_corrections(x, w, n, d, coef, gx, gw);
  }

  double row_loss(int64_t i, double m, double s) const {
    return lsm_ce_row_loss(ce, local[i] == LSM_CE_IGNORED, factors[i].wy, m, s, target[i],
                           smooth.empty() ? 0.0 : smooth[i]);
  }

  // The labels, copied first (memory another thread writes meanwhile cannot slip an unchecked
  // index past the check): each in [0, total_classes), or the ignored label.
  int32_t read_labels(lsm_context *ctx) {
    labels.assign(p.labels, p.labels + n);
    const int64_t total = p.args.total_classes;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t y = labels[i];
      if ((y >= 0 && y < total) || lsm_ce_ignored(ce, y)) continue;
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "labels[" + std::to_string(i) + "]: expected an integer in [0, " + std::to_string(total) + ")" +
                          (ce.ignoring ? " or the ignore index " + std::to_string(ce.ignore) : std::string()) +
                          ", got " + std::to_string(y));
    }
    return LSM_OK;
  }

  // Every class weight finite and >= 0.
  int32_t check_weights(lsm_context *ctx) const {
    if (ce.weights == nullptr) return LSM_OK;
    for (int64_t j = 0; j < p.args.total_classes; ++j) {
      const double v = ce.weights[j];
      if (v >= 0.0 && isfinite(v)) continue;
      char text[32];
      snprintf(text, sizeof text, "%.17g", v);
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "class_weights[" + std::to_string(j) + "]: expected a finite number >= 0, got " + text);
    }
    return LSM_OK;
  }

  int32_t run(lsm_context *ctx) {
    const lsm_loss_args &a = p.args;
    int32_t s = read_labels(ctx);
    if (s != LSM_OK || (s = check_weights(ctx)) != LSM_OK) return s;
    local.assign((size_t)n, -1);
    factors.resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) {
      factors[i] = lsm_ce_row_of(ce, labels[i]);
      if (lsm_ce_ignored(ce, labels[i])) local[i] = LSM_CE_IGNORED;
    }
    if (lsm_ce_smoothing(ce)) smooth.assign((size_t)n, 0.0);
    stats.resize((size_t)n);
    target.assign((size_t)n, 0.0);
    g_target.assign((size_t)n, 0.0);
    parallel_for(n, 3 * d, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t y = labels[i] - a.class_offset;
        if (local[i] == LSM_CE_IGNORED || y < 0 || y >= c) continue;
        local[i] = y;
        stats[i] = target_stats(x + i * d, w + y * d, d, p.margin);
        target[i] = lsm_softmax_target<T>(lsm_target_logit(stats[i], p.margin));
      }
    });
    // Blocks of equal size within the limit: the last one, whose exponentials the gradients
    // reuse, is then as large as any.
    const size_t per_class = (size_t)n * sizeof(T);
    block = std::max<int64_t>(1, std::min<int64_t>(c, (int64_t)(ctx->workspace_limit / per_class)));
    const int64_t blocks = (c + block - 1) / block;
    block = (c + blocks - 1) / blocks;
    void *ws = nullptr;
    if ((s = lsm_cpu_workspace(ctx, (size_t)block * per_class, &ws)) != LSM_OK) return s;
    buf = static_cast<T *>(ws);

    std::vector<double> lse((size_t)n), maxes((size_t)n, -INFINITY), sums((size_t)n, 0.0);
    if (!colscale.empty()) {  // the direct path: one block, the loss and its gradients
      std::vector<double> beta;
      gemm(CblasNoTrans, CblasTrans, (int)n, (int)c, (int)d, in.x, (int)d, w, (int)d, buf, (int)c);
      fold_direct(maxes.data(), sums.data(), &beta);
      for (int64_t i = 0; i < n; ++i) p.row_loss[i] = row_loss(i, maxes[i], sums[i]);
      products_direct(sums.data(), beta);
      corrections();
      return LSM_OK;
    }
    if (p.stage != LSM_LOSS_GRADIENTS) {
      double seen = 0.0;  // the weight of the classes folded so far
      for (int64_t c0 = 0; c0 < c; c0 += block) {
        const int64_t cb = std::min(block, c - c0);
        logits(c0, cb);
        fold(c0, cb, seen, maxes.data(), sums.data());
        if (lsm_ce_smoothing(ce))
          for (int64_t j = c0; j < c0 + cb; ++j) seen += weight(j);
      }
      if (p.stage == LSM_LOSS_PARTIALS) {
        for (int64_t i = 0; i < n; ++i) {
          p.row_max[i] = maxes[i];
          p.row_sum[i] = sums[i];
          p.target[i] = local[i] >= 0 ? target[i] : 0.0;
          if (p.row_smooth != nullptr) p.row_smooth[i] = smooth[i];
        }
        return LSM_OK;
      }
      for (int64_t i = 0; i < n; ++i) {
        lse[i] = maxes[i] + log(sums[i]);
        p.row_loss[i] = row_loss(i, maxes[i], sums[i]);
      }
      if (gx == nullptr) return LSM_OK;  // the loss alone
      if (block == c && !lsm_ce_smoothing(ce)) {
        products_from_exps(sums.data(), lse.data());
        corrections();
        return LSM_OK;
      }
    } else {
      lse.assign(p.lse, p.lse + n);
    }
    // The last block first: after the fold its exponentials are still in buf.
    const int64_t last = (c - 1) / block * block;
    for (int64_t c0 = last; c0 >= 0; c0 -= block) {
      const int64_t cb = std::min(block, c - c0);
      if (p.stage != LSM_LOSS_GRADIENTS && c0 == last) {
        gradient_from_exps(c0, cb, sums.data(), lse.data());
      } else {
        logits(c0, cb);
        gradient(c0, cb, lse.data());
      }
      products(c0, cb, c0 == last);
    }
    corrections();
    return LSM_OK;
  }
};

}  // namespace

int32_t lsm_cpu_loss(lsm_context *ctx, const lsm_loss_problem &p) {
  if (p.dtype == LSM_FLOAT32) return loss_run<float>(ctx, p).run(ctx);
  return loss_run<double>(ctx, p).run(ctx);
}
