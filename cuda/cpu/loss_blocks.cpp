// cpu/loss_blocks.cpp: the fused loss's class-block path (cpu/loss.h): each block's logits, the
// fold into the running max and sum, the gradients from the last block's exponentials or from the
// logits made again, and the products.
#include <limits>

#include "cpu/loss.h"

namespace lsm_cpu_fused {

// G's row from its exponentials and the softmax's factor k: the smoothing's terms or the plain
// scaling, then the target's entry (formed apart, so it keeps its digits near p = 1).
template <typename T>
inline void finish_row(loss_run<T> &r, int64_t i, int64_t c0, T *row, double k, int64_t cb, double lse) {
  if (r.factors[i].u != 0.0) {
    r.smoothing_terms(i, c0, row, k, cb);
  } else {
    for (int64_t j = 0; j < cb; ++j) row[j] = (T)(k * (double)row[j]);
  }
  if (r.aux != nullptr) {  // the element-wise kinds: times d f / d(product) (1 at the target)
    const T *a = r.aux + i * cb;
    for (int64_t j = 0; j < cb; ++j) row[j] *= a[j];
  }
  const int64_t y = r.local[i] - c0;
  if (y >= 0 && y < cb) row[y] = r.target_gradient(i, lse);
}

// Logits of classes [c0, c0 + cb) into buf (row stride cb), target entries replaced.
template <typename T>
void loss_run<T>::logits(int64_t c0, int64_t cb) {
  gemm(CblasNoTrans, CblasTrans, (int)n, (int)cb, (int)d, in.x, (int)d, in.w + c0 * d, (int)d, buf, (int)cb);
  if (subs > 1) return;  // the targets are the class logits' (class_logits)
  if (aux != nullptr) transform(c0, cb);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = local[i] - c0;
    if (y >= 0 && y < cb) buf[i * cb + y] = (T)target[i];
  }
}

// The element-wise kinds' non-target logits from the products v = s c in buf (AdaFace's clamp,
// CurricularFace's hard negatives), their derivatives d f / d v into aux (1 at the target).
template <typename T>
void loss_run<T>::transform(int64_t c0, int64_t cb) {
  const lsm_margin &mg = p.margin;
  parallel_for(n, 4 * cb, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T *row = buf + i * cb, *a = aux + i * cb;
      adaptive_row(row, a, cb, mg.kind, mg.scale, mg.kind == LSM_MARGIN_ADAFACE ? 0.0 : thresh[i], t_now);
      const int64_t y = local[i] - c0;
      if (y >= 0 && y < cb) a[y] = T(1);
    }
  });
}

// Sub-center ArcFace: row i's class logits into cls (the largest of each class's K products, NaN
// kept), the target's replaced by its margin logit, and each class's winning sub-center into win
// (the lowest on a tie, and the lowest of equal sub-centers), which its gradient goes to
// (math/margin_adaptive.cuh).
template <typename T>
void loss_run<T>::class_logits(int64_t i, int64_t c0, int64_t cb) {
  const T *row = buf + i * cb;
  const int64_t cbk = cb / subs;
  T *cr = cls + i * cbk;
  uint16_t *wr = win + i * cbk;
  for (int64_t j = 0; j < cbk; ++j) {
    int64_t best = 0;
    cr[j] = lsm_subcenter_pick(row + j * subs, subs, &best);
    wr[j] = alias[c0 + j * subs + best];
  }
  const int64_t y = local[i] - c0 / subs;
  if (y >= 0 && y < cbk) cr[y] = (T)target[i];
}

// Sub-center ArcFace's fold: the block's class logits into the running max and sum (and A over
// the classes, with smoothing: as fold); their exponentials stay in cls, the products in buf.
template <typename T>
void loss_run<T>::fold_classes(int64_t c0, int64_t cb, double seen, double *maxes, double *sums) {
  const int64_t cbk = cb / subs, j0 = c0 / subs;
  const bool smoothing = lsm_ce_smoothing(ce);
  parallel_for(n, (smoothing ? 6 : 4) * cb, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      class_logits(i, c0, cb);
      T *cr = cls + i * cbk;
      const T bm = row_max(cr, cbk);
      const T b = (double)bm > maxes[i] ? bm : (T)maxes[i];
      if (smoothing) {
        double a = lsm_ce_shift(smooth[i], seen, maxes[i], (double)b);
        for (int64_t j = 0; j < cbk; ++j) a += weight(j0 + j) * ((double)b - (double)cr[j]);
        smooth[i] = a;
      }
      const double carried = sums[i] == 0.0 ? 0.0 : sums[i] * exp(maxes[i] - (double)b);
      sums[i] = carried + exp_sum(cr, cr, cbk, b);
      maxes[i] = (double)b;
    }
  });
}

// Sub-center ArcFace's gradients of a block: each class's dL/df goes to its winning sub-center's
// row of buf (the lowest k on a tie; the target's from the pre-pass), the other K - 1 get 0. From
// the exponentials in cls where `sums` is given (the last block of the fold), else from the
// products in buf and lse.
template <typename T>
void loss_run<T>::gradient_classes(int64_t c0, int64_t cb, const double *lse, const double *sums) {
  const int64_t cbk = cb / subs;
  parallel_for(n, 4 * cb, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T *row = buf + i * cb, *cr = cls + i * cbk;
      if (zero_row(i, row, cb)) continue;
      double k;
      if (sums != nullptr) {
        k = factors[i].a / sums[i];
      } else {
        class_logits(i, c0, cb);
        T t = (T)lse[i];
        if (!isfinite((double)t) && isfinite(lse[i])) t = std::numeric_limits<T>::max();
        k = factors[i].a / exp(lse[i] - (double)t);
        exp_sum(cr, cr, cbk, t);
      }
      if (factors[i].u != 0.0) {  // label smoothing's -u_i w_j on every class's entry
        smoothing_terms(i, c0 / subs, cr, k, cbk);
      } else {
        for (int64_t j = 0; j < cbk; ++j) cr[j] = (T)(k * (double)cr[j]);
      }
      const int64_t y = local[i] - c0 / subs;
      if (y >= 0 && y < cbk) cr[y] = target_gradient(i, lse[i]);
      const uint16_t *wr = win + i * cbk;
      std::fill(row, row + cb, T(0));
      for (int64_t j = 0; j < cbk; ++j) row[j * subs + (j == y ? trow[i] - (c0 + j * subs) : wr[j])] = cr[j];
    }
  });
}

// Folds a block into each row's running max and sum of exponentials (and A, with smoothing;
// `seen`: the weight of the classes before the block); the block's exponentials exp(f - max)
// replace its logits.
template <typename T>
void loss_run<T>::fold(int64_t c0, int64_t cb, double seen, double *maxes, double *sums) {
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

// A block's logits in buf to G = scale (softmax - onehot), given each row's lse. With t_i =
// lse_i rounded to T, softmax = exp(f - t_i) / exp(lse_i - t_i): f - t_i is formed in T
// without losing the float64 lse's digits.
template <typename T>
void loss_run<T>::gradient(int64_t c0, int64_t cb, const double *lse) {
  parallel_for(n, 4 * cb, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T *row = buf + i * cb;
      if (zero_row(i, row, cb)) continue;
      T t = (T)lse[i];
      if (!isfinite((double)t) && isfinite(lse[i])) t = std::numeric_limits<T>::max();  // lse past T
      const double k = factors[i].a / exp(lse[i] - (double)t);
      exp_sum(row, row, cb, t);
      finish_row(*this, i, c0, row, k, cb, lse[i]);
    }
  });
}

// The last block's exponentials E = exp(f - max_i) still in buf (max_i is the row's final max)
// to G = scale (softmax - onehot) = k_i E - scale onehot, k_i = scale / sum_i: no product again.
template <typename T>
void loss_run<T>::gradient_from_exps(int64_t c0, int64_t cb, const double *sums, const double *lse) {
  parallel_for(n, 2 * cb, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T *row = buf + i * cb;
      if (zero_row(i, row, cb)) continue;
      const double k = factors[i].a / sums[i];
      finish_row(*this, i, c0, row, k, cb, lse[i]);
    }
  });
}

// dx (+)= G_b W_b and dW_b = G_b^T x for the block of gradients in buf.
template <typename T>
void loss_run<T>::products(int64_t c0, int64_t cb, bool first) {
  gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)cb, buf, (int)cb, in.w + c0 * d, (int)d, gx, (int)d,
       first ? T(0) : T(1));
  gemm(CblasTrans, CblasNoTrans, (int)cb, (int)d, (int)n, buf, (int)cb, in.x, (int)d, gw + c0 * d, (int)d);
}

// The gradients from the one block's exponentials E in buf and their row sums (see cpu/loss.h).
template <typename T>
void loss_run<T>::products_from_exps(const double *sums, const double *lse) {
  std::vector<double> k((size_t)n);
  std::vector<T> kx((size_t)(n * d));
  for (int64_t i = 0; i < n; ++i) {
    k[i] = factors[i].a / sums[i];
    if (factors[i].a == 0.0) {  // an ignored row, or a target of weight 0: no gradient
      std::fill(buf + i * c, buf + (i + 1) * c, T(0));
      k[i] = 0.0;
    }
    if (aux != nullptr)  // the element-wise kinds: times d f / d(product) (1 at the target)
      for (int64_t j = 0; j < c; ++j) buf[i * c + j] *= aux[i * c + j];
    const int64_t y = local[i];
    if (y >= 0 && k[i] != 0.0) {
      T &e = buf[i * c + y];
      e = (T)(target_gradient(i, lse[i]) / k[i]);
    }
    for (int64_t q = 0; q < d; ++q) kx[i * d + q] = (T)(k[i] * (double)in.x[i * d + q]);
  }
  gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)c, buf, (int)c, in.w, (int)d, gx, (int)d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t q = 0; q < d; ++q) gx[i * d + q] = (T)(k[i] * (double)gx[i * d + q]);
  // dW by blocks of classes, with or without the step: the same products either way.
  const bool fused = step_begin();
  const int64_t sub = dw_block_classes();
  for (int64_t c0 = 0; c0 < c; c0 += sub) {
    const int64_t cb = std::min(sub, c - c0);
    T *out = fused ? dw_block.get() : gw + c0 * d;
    gemm(CblasTrans, CblasNoTrans, (int)cb, (int)d, (int)n, buf + c0, (int)c, kx.data(), (int)d, out, (int)d);
    if (fused) step_block(c0, cb, out);
  }
}

// The members run() calls from cpu/loss.cpp.
template void loss_run<float>::logits(int64_t c0, int64_t cb);
template void loss_run<float>::fold(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
template void loss_run<float>::gradient(int64_t c0, int64_t cb, const double *lse);
template void loss_run<float>::gradient_from_exps(int64_t c0, int64_t cb, const double *sums, const double *lse);
template void loss_run<float>::products(int64_t c0, int64_t cb, bool first);
template void loss_run<float>::products_from_exps(const double *sums, const double *lse);
template void loss_run<float>::fold_classes(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
template void loss_run<float>::gradient_classes(int64_t c0, int64_t cb, const double *lse, const double *sums);
template void loss_run<double>::logits(int64_t c0, int64_t cb);
template void loss_run<double>::fold(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
template void loss_run<double>::gradient(int64_t c0, int64_t cb, const double *lse);
template void loss_run<double>::gradient_from_exps(int64_t c0, int64_t cb, const double *sums, const double *lse);
template void loss_run<double>::products(int64_t c0, int64_t cb, bool first);
template void loss_run<double>::products_from_exps(const double *sums, const double *lse);
template void loss_run<double>::fold_classes(int64_t c0, int64_t cb, double seen, double *maxes, double *sums);
template void loss_run<double>::gradient_classes(int64_t c0, int64_t cb, const double *lse, const double *sums);

}  // namespace lsm_cpu_fused
