// loss_kernels.cuh: the kernels of the fused loss (gpu/loss.cu) besides the products: softmax
// cross-entropy over the margin logits, one class block of logits at a time, without an n x c
// buffer. The CPU twin of every kernel is in cpu/loss.cpp; the margin math is margin.cuh's.
//
// A block's logits z = x W_b^T (gemm NT) sit in the workspace, row stride cb. The target entry
// of a row whose label the block holds is read as the margin logit target[i] wherever it is used
// (the product's value there is the plain inner product).
//
// Sizes n, d, c and a block's cb are int32 (the C ABI's bound); offsets into a block of n x cb
// logits, and n * c itself, are 64-bit: the loss takes n * c past int32.
#ifndef LSOFTMAX_LOSS_KERNELS_CUH
#define LSOFTMAX_LOSS_KERNELS_CUH

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "math/ce.cuh"
#include "math/margin.cuh"
#include "gpu/target_kernels.cuh"

namespace lsm_kernels {

constexpr int kRowBlock = 256;       // threads of a block working on one row's chunk of classes
constexpr int kChunkColumns = 4096;  // classes per chunk (more when a block has > 65535 chunks)

template <typename T>
struct float_limits;
template <>
struct float_limits<float> {
  static constexpr double max = FLT_MAX;
};
template <>
struct float_limits<double> {
  static constexpr double max = DBL_MAX;
};

// Merges the running (max m, sum s of exp(f - m)) with another such pair, in double. A sum of 0
// contributes 0 whatever its max (-inf - -inf would be NaN); a NaN sum stays NaN.
__device__ __forceinline__ void lse_merge(double &m, double &s, double mo, double so) {
  const double top = mo > m ? mo : m;
  s = (s == 0.0 ? 0.0 : s * exp(m - top)) + (so == 0.0 ? 0.0 : so * exp(mo - top));
  m = top;
}

// Every class weight finite and >= 0: the first bad class into bad_weight (grid-strided).
__global__ void loss_check_weights(const double *weights, int total, int *bad_weight) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < total; j = next_index(j, step, total)) {
    const double v = weights[j];
    if (!(v >= 0.0 && isfinite(v))) atomicMin(bad_weight, j);
  }
}

// Per sample: the label check against the whole W (the ignored label passes), the label within
// this shard (local[i], -1 when another shard holds it, LSM_CE_IGNORED for an ignored row), the
// row's gradient coefficients (factors[i], math/ce.cuh) and the margin target logit (target[i],
// float64). Bad labels are recorded and never used as an index. One warp per sample, as
// forward_target. The target is rounded to T (lsm_softmax_target): the value the log-sum-exp, the
// loss and dL/df_iy all use. Sub-center ArcFace (subs = K > 1; c = C K rows): the target's
// statistics are those of the label's sub-center of largest cosine (the lowest on a tie), whose
// row of W goes to trow[i].
template <typename T>
__global__ void loss_targets(const T *x, const T *w, const int32_t *labels, int n, int d, int c, int subs,
                             int64_t offset, int64_t total, lsm_margin margin, lsm_ce ce, int32_t *local,
                             double *target, lsm_ce_row *factors, int *bad_label, const double *rowq, double *cos_y,
                             double *thresh, int32_t *trow) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int32_t label = labels[i];
    const bool ignored = lsm_ce_ignored(ce, label);
    const bool valid = label >= 0 && label < total;
    if (!valid && !ignored && lane == 0) atomicMin(bad_label, i);
    if (lane == 0) factors[i] = valid || ignored ? lsm_ce_row_of(ce, label) : lsm_ce_row{0.0, 0.0, 0.0, 0.0};
    const int64_t y = valid && !ignored ? label - offset : -1;
    if (y < 0 || y >= c / subs) {  // a bad or ignored label, or one of another shard's classes
      if (lane == 0) local[i] = ignored ? LSM_CE_IGNORED : -1, target[i] = 0.0;
      continue;
    }
    const T *xi = x + (int64_t)i * d;
    int64_t best = y * subs;
    lsm_stats s = warp_stats(xi, w + best * d, d, lane, margin);
    for (int k = 1; k < subs; ++k) {  // the totals, so the choice, are the same on every lane
      const lsm_stats sk = warp_stats(xi, w + (y * subs + k) * d, d, lane, margin);
      if (sk.c > s.c) s = sk, best = y * subs + k;
    }
    const double q = rowq == nullptr ? 0.0 : rowq[i];  // the adaptive kinds' per-row quantity
    if (lane == 0) local[i] = (int32_t)y, target[i] = lsm_softmax_target<T>(lsm_target_logit(s, margin, q));
    if (lane == 0 && trow != nullptr) trow[i] = (int32_t)best;
    if (lane == 0 && cos_y != nullptr) cos_y[i] = s.c, thresh[i] = lsm_curricular_threshold(s, margin);
  }
}

// With label smoothing (part_a not null), A = sum w_j (m - f_j) and the weight W of the classes
// seen beside the pair (m, s): merged as A + W (top - m) (math/ce.cuh, lsm_ce_shift).
__device__ __forceinline__ void smooth_merge(double m, double &a, double &wt, double mo, double ao, double wo,
                                             double top) {
  a = lsm_ce_shift(a, wt, m, top) + lsm_ce_shift(ao, wo, mo, top);
  wt += wo;
}

// Online log-sum-exp of one chunk of one row (blockIdx.x = row, blockIdx.y = chunk): each
// thread keeps its own running max and sum (in T: the terms are at most 1), then the block
// merges the threads' pairs in double into part_m/part_s[row * chunks + chunk]; with smoothing
// (part_a), A and W as well (weights: the shard's class weights from the block's first, or null).
template <typename T>
__global__ void loss_chunk_lse(const T *z, int cb, int c0, int chunk, const int32_t *local, const double *target,
                               const double *weights, double *part_m, double *part_s, double *part_a,
                               double *part_w) {
  __shared__ double sm_m[kRowBlock / kWarp], sm_s[kRowBlock / kWarp];
  __shared__ double sm_a[kRowBlock / kWarp], sm_w[kRowBlock / kWarp];
  const int i = (int)blockIdx.x, tid = (int)threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int j0 = (int)blockIdx.y * chunk;
  const int j1 = cb - j0 > chunk ? j0 + chunk : cb;
  const int y = local[i] - c0;  // the target's column in this block, if it is in [0, cb)
  const T *row = z + (int64_t)i * cb;
  const bool smoothing = part_a != nullptr;
  T tm = -INFINITY, ts = T(0);
  double ta = 0.0, tw = 0.0;
  for (int j = j0 + tid; j < j1; j += kRowBlock) {
    const T f = j == y ? (T)target[i] : row[j];
    if (smoothing) {
      const double wj = weights == nullptr ? 1.0 : weights[c0 + j];
      const double top = f > tm ? (double)f : (double)tm;
      ta = lsm_ce_shift(ta, tw, (double)tm, top) + wj * (top - (double)f);
      tw += wj;
    }
    if (f > tm) {
      ts = ts * exp(tm - f) + T(1);
      tm = f;
    } else {
      ts += exp(f - tm);  // NaN f lands here and makes the sum NaN
    }
  }
  double m = (double)tm, s = (double)ts;
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const double mo = __shfl_xor_sync(0xffffffffu, m, off), so = __shfl_xor_sync(0xffffffffu, s, off);
    if (smoothing) {  // the same for every thread of the block
      const double ao = __shfl_xor_sync(0xffffffffu, ta, off), wo = __shfl_xor_sync(0xffffffffu, tw, off);
      smooth_merge(m, ta, tw, mo, ao, wo, mo > m ? mo : m);
    }
    lse_merge(m, s, mo, so);
  }
  if (lane == 0) sm_m[warp] = m, sm_s[warp] = s, sm_a[warp] = ta, sm_w[warp] = tw;
  __syncthreads();  // every warp's pair is in shared memory before thread 0 reads them
  if (tid != 0) return;
  for (int k = 1; k < kRowBlock / kWarp; ++k) {
    if (smoothing) smooth_merge(m, ta, tw, sm_m[k], sm_a[k], sm_w[k], sm_m[k] > m ? sm_m[k] : m);
    lse_merge(m, s, sm_m[k], sm_s[k]);
  }
  const int64_t at = (int64_t)i * gridDim.y + blockIdx.y;
  part_m[at] = m;
  part_s[at] = s;
  if (smoothing) part_a[at] = ta, part_w[at] = tw;
}

// Folds a block's chunk pairs, in chunk order, into each row's running max and sum (thread per
// row; the first block starts them), and A with smoothing (part_a: then smooth[i], with seen[i]
// the weight of the classes folded so far).
__global__ void loss_fold(const double *part_m, const double *part_s, const double *part_a, const double *part_w,
                          int n, int chunks, bool first, double *maxes, double *sums, double *smooth, double *seen) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    double m = first ? -INFINITY : maxes[i], s = first ? 0.0 : sums[i];
    double a = first || part_a == nullptr ? 0.0 : smooth[i], wt = first || part_a == nullptr ? 0.0 : seen[i];
    for (int k = 0; k < chunks; ++k) {
      const int64_t at = (int64_t)i * chunks + k;
      if (part_a != nullptr) smooth_merge(m, a, wt, part_m[at], part_a[at], part_w[at], part_m[at] > m ? part_m[at] : m);
      lse_merge(m, s, part_m[at], part_s[at]);
    }
    maxes[i] = m;
    sums[i] = s;
    if (part_a != nullptr) smooth[i] = a, seen[i] = wt;
  }
}

// After the last block: each row's lse (into lse[]) and its loss (lsm_row_loss: FULL), or the
// shard's partials (PARTIALS: target 0 where another shard holds the label).
__global__ void loss_rows(const double *maxes, const double *sums, const double *smooth, const int32_t *local,
                          const double *target, const lsm_ce_row *factors, lsm_ce ce, int n, double *lse,
                          double *row_loss, double *row_max, double *row_sum, double *row_target,
                          double *row_smooth) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    if (row_loss != nullptr) {
      lse[i] = maxes[i] + log(sums[i]);
      row_loss[i] = lsm_ce_row_loss(ce, local[i] == LSM_CE_IGNORED, factors[i].wy, maxes[i], sums[i], target[i],
                                    smooth == nullptr ? 0.0 : smooth[i]);
    } else {
      row_max[i] = maxes[i];
      row_sum[i] = sums[i];
      row_target[i] = local[i] >= 0 ? target[i] : 0.0;
      if (row_smooth != nullptr) row_smooth[i] = smooth[i];
    }
  }
}

// softmax = exp(f - t) / exp(lse - t) with t = lse rounded to T (the largest finite T when lse is
// past T's range): f - t is formed in T without losing lse's float64 digits. Per row, the shift t
// and the factor k = a_i / exp(lse - t) (a_i: the row's coefficient of softmax, math/ce.cuh).
template <typename T>
__global__ void loss_shifts(const double *lse, int n, const lsm_ce_row *factors, T *shift, double *factor) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    T t = (T)lse[i];
    if (!isfinite((double)t) && isfinite(lse[i])) t = (T)float_limits<T>::max;
    shift[i] = t;
    factor[i] = factors[i].a / exp(lse[i] - (double)t);
  }
}

// A block's logits in z to G = a softmax - t onehot - u w (math/ce.cuh), element-wise
// (grid-strided); an ignored row's G is 0. The target entry is formed in float64 from expm1(f_iy -
// lse_i) (lsm_ce_target_gradient), kept in g_target[i] for the corrections: (T)(scale softmax) -
// scale would cancel to a few bits where softmax_iy is near 1 (cpu/loss.cpp target_gradient).
// weights: the shard's class weights (null: all 1).
template <typename T>
__global__ void loss_gradient(T *z, int n, int cb, int c0, const int32_t *local, const double *target,
                              const double *lse, const T *shift, const double *factor, const lsm_ce_row *factors,
                              lsm_ce ce, const double *weights, double *g_target) {
  const int64_t total = (int64_t)n * cb;  // the block's elements: past int32 with a large workspace
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cb), j = (int)(e % cb);
    if (local[i] == LSM_CE_IGNORED) {
      z[e] = T(0);
    } else if (local[i] - c0 != j) {
      const double u = factors[i].u;
      const double g = factor[i] * (double)exp(z[e] - shift[i]);
      z[e] = (T)(u == 0.0 ? g : g - u * (weights == nullptr ? 1.0 : weights[c0 + j]));
    } else {
      g_target[i] = lsm_ce_target_gradient(ce, factors[i], target[i], lse[i]);
      z[e] = (T)g_target[i];
    }
  }
}

// The margin's corrections of grad_x after the products (one warp per sample, as
// backward_target_x), with dL/df_iy from g_target and the label within the shard; the records go
// to coef for backward_target_w. trow (sub-center ArcFace, else null): the target's row of W,
// where the label's class holds K rows. MagFace's regulariser weighs grad_scale w_y in the loss,
// reg_weight[i] (dL/d(regulariser_i), given) in lsm_backward_args.
template <typename T>
__global__ void loss_target_x(const T *x, const T *w, const int32_t *local, const int32_t *trow,
                              const double *g_target, int n, int d, lsm_margin margin, T *grad_x,
                              lsm_correction *coef, const double *rowq, const double *mag,
                              const lsm_ce_row *factors, double grad_scale, const double *reg_weight) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int y = local[i];
    const int row = y < 0 ? 0 : (trow == nullptr ? y : trow[i]);
    lsm_correction r = lsm_no_correction();
    const T *xi = x + (int64_t)i * d;
    const T *wy = w + (int64_t)row * d;
    const double q = rowq == nullptr ? 0.0 : rowq[i];
    lsm_stats st = {};
    if (y >= 0 && !lsm_plain_margin(margin)) {
      st = warp_stats(xi, wy, d, lane, margin);
      r = lsm_target_correction(g_target[i], st, margin, row, q);
    }
    if (lane == 0) coef[i] = r;
    if (r.label >= 0) correct_row_x(r, xi, wy, d, lane, grad_x + (int64_t)i * d);
    // MagFace's magnitude (mag: a_i, dm_i, inside, n each), as cpu/loss.cpp's corrections.
    if (mag == nullptr || y < 0 || mag[2 * n + i] == 0.0 || lsm_degenerate(st)) continue;
    const double da = g_target[i] * margin.scale * lsm_magface_dphi_dm(st, q) * mag[n + i] +
                      (reg_weight == nullptr ? grad_scale * factors[i].wy : reg_weight[i]) * margin.lambda_g *
                          lsm_magface_dg(margin, mag[i]);
    const double f = da * st.px * st.ux;
    T *gxi = grad_x + (int64_t)i * d;
    for (int k = lane; k < d; k += kWarp) gxi[k] = (T)((double)gxi[k] + f * (double)xi[k]);
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_LOSS_KERNELS_CUH
