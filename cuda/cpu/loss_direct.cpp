// cpu/loss_direct.cpp: the fused loss's direct path for the kinds that normalise W (cpu/loss.h):
// the column scales, the row pass over the raw products and the gradients without normalised copies.
#include <math.h>

#include "cpu/loss.h"

namespace lsm_cpu_fused {

// The direct path's column scales b_j = 1/|w_j| (see cpu/loss.h), or none where it does not apply:
// not one block, no gradients, L-Softmax, sub-centers, label smoothing with an element-wise kind
// (its -u_i w_j term is then times each entry's derivative, no longer rank one), or a row of W (of
// x, for A-Softmax) whose norm is outside [2^-50, 2^50] (or a scale past 2^40), where the products
// of unnormalised rows could lose range.
template <typename T>
std::vector<double> loss_run<T>::direct_scales(lsm_context *ctx, const lsm_loss_problem &q) {
  std::vector<double> b;
  const bool one_block = (size_t)q.c <= ctx->workspace_limit / ((size_t)q.n * sizeof(T));
  if (q.stage != LSM_LOSS_FULL || q.grad_x == nullptr || !lsm_normalises_w(q.margin.kind) || !one_block ||
      lsm_x_factor(q.margin) > 0x1p40 || lsm_subcenters(q.margin) > 1 ||
      (lsm_elementwise(q.margin.kind) && q.args.label_smoothing > 0.0))
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

// The direct path's row pass over the one block of raw products x~_i . w_j in buf (see
// cpu/loss.h): logits scaled by b_j, the target's replaced, max and sum of exponentials; then buf
// holds E' diag(b) (E' = exp(f - max) with sum_i taken off the target entry; for the element-wise
// kinds f is their transform of the plain logits and E' is times its derivative) and beta the
// column sums w^_j . V_j. Rows in 4 fixed chunks, each with its own column sums, added in
// order: the same result whatever the thread count.
template <typename T>
void loss_run<T>::fold_direct(double *maxes, double *sums, std::vector<double> *beta) {
  constexpr int64_t kChunks = 4;
  const double *b = colscale.data();
  std::vector<T> bt(colscale.begin(), colscale.end());  // b_j in T: the n x c loops stay in T
  std::vector<std::vector<double>> acc(kChunks);
  const bool elementwise = lsm_elementwise(p.margin.kind);
  const double s = p.margin.scale;
  parallel_for(kChunks, n * c / kChunks, [&](int64_t k0, int64_t k1) {
    std::vector<T> tmp((size_t)c), deriv(elementwise ? (size_t)c : 0);
    for (int64_t k = k0; k < k1; ++k) {
      std::vector<double> &a = acc[k];
      a.assign((size_t)c, 0.0);
      for (int64_t i = k * n / kChunks; i < (k + 1) * n / kChunks; ++i) {
        T *row = buf + i * c;
        for (int64_t j = 0; j < c; ++j) row[j] *= bt[j];
        const int64_t y = local[i];
        double plain_y = 0.0;
        if (y >= 0) plain_y = (double)row[y], row[y] = (T)target[i];
        T bm;
        double sum;
        if (elementwise) {  // the kind's logits f into tmp, d f / d(product) beside; then E times it
          const double th = p.margin.kind == LSM_MARGIN_ADAFACE ? 0.0 : thresh[i];
          std::copy(row, row + c, tmp.data());
          adaptive_row(tmp.data(), deriv.data(), c, p.margin.kind, s, th, t_now);
          if (y >= 0) tmp[y] = row[y], deriv[y] = T(1);
          bm = row_max(tmp.data(), c);
          sum = exp_sum(tmp.data(), tmp.data(), c, bm);
          for (int64_t j = 0; j < c; ++j) tmp[j] *= deriv[j];
        } else {
          bm = row_max(row, c);
          if (!smooth.empty()) {
            double sa = 0.0;
            for (int64_t j = 0; j < c; ++j) sa += weight(j) * ((double)bm - (double)row[j]);
            smooth[i] = sa;
          }
          sum = exp_sum(row, tmp.data(), c, bm);
        }
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
template <typename T>
void loss_run<T>::products_direct(const double *sums, const std::vector<double> &beta) {
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

// The members run() calls from cpu/loss.cpp.
template std::vector<double> loss_run<float>::direct_scales(lsm_context *ctx, const lsm_loss_problem &q);
template void loss_run<float>::fold_direct(double *maxes, double *sums, std::vector<double> *beta);
template void loss_run<float>::products_direct(const double *sums, const std::vector<double> &beta);
template std::vector<double> loss_run<double>::direct_scales(lsm_context *ctx, const lsm_loss_problem &q);
template void loss_run<double>::fold_direct(double *maxes, double *sums, std::vector<double> *beta);
template void loss_run<double>::products_direct(const double *sums, const std::vector<double> &beta);

}  // namespace lsm_cpu_fused
