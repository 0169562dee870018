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

// Per sample: the label check against the whole W, the label within this shard (local[i], -1
// when another shard holds it) and the margin target logit (target[i], float64). Bad labels are
// recorded and never used as an index. One warp per sample, as forward_target. The target is
// rounded to T (lsm_softmax_target): the value the log-sum-exp, the loss and dL/df_iy all use.
template <typename T>
__global__ void loss_targets(const T *x, const T *w, const int32_t *labels, int n, int d, int c, int64_t offset,
                             int64_t total, lsm_margin margin, int32_t *local, double *target, int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int32_t label = labels[i];
    const bool valid = label >= 0 && label < total;
    if (!valid && lane == 0) atomicMin(bad_label, i);
    const int64_t y = valid ? label - offset : -1;
    if (y < 0 || y >= c) {  // a bad label, or one of another shard's classes
      if (lane == 0) local[i] = -1, target[i] = 0.0;
      continue;
    }
    const lsm_stats s = warp_stats(x + (int64_t)i * d, w + y * d, d, lane, margin);
    if (lane == 0) local[i] = (int32_t)y, target[i] = lsm_softmax_target<T>(lsm_target_logit(s, margin));
  }
}

// Online log-sum-exp of one chunk of one row (blockIdx.x = row, blockIdx.y = chunk): each
// thread keeps its own running max and sum (in T: the terms are at most 1), then the block
// merges the threads' pairs in double into part_m/part_s[row * chunks + chunk].
template <typename T>
__global__ void loss_chunk_lse(const T *z, int cb, int c0, int chunk, const int32_t *local, const double *target,
                               double *part_m, double *part_s) {
  __shared__ double sm_m[kRowBlock / kWarp], sm_s[kRowBlock / kWarp];
  const int i = (int)blockIdx.x, tid = (int)threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int j0 = (int)blockIdx.y * chunk;
  const int j1 = cb - j0 > chunk ? j0 + chunk : cb;
  const int y = local[i] - c0;  // the target's column in this block, if it is in [0, cb)
  const T *row = z + (int64_t)i * cb;
  T tm = -INFINITY, ts = T(0);
  for (int j = j0 + tid; j < j1; j += kRowBlock) {
    const T f = j == y ? (T)target[i] : row[j];
    if (f > tm) {
      ts = ts * exp(tm - f) + T(1);
      tm = f;
    } else {
      ts += exp(f - tm);  // NaN f lands here and makes the sum NaN
    }
  }
  double m = (double)tm, s = (double)ts;
  for (int off = kWarp / 2; off > 0; off /= 2)
    lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, s, off));
  if (lane == 0) sm_m[warp] = m, sm_s[warp] = s;
  __syncthreads();  // every warp's pair is in shared memory before thread 0 reads them
  if (tid != 0) return;
  for (int k = 1; k < kRowBlock / kWarp; ++k) lse_merge(m, s, sm_m[k], sm_s[k]);
  const int64_t at = (int64_t)i * gridDim.y + blockIdx.y;
  part_m[at] = m;
  part_s[at] = s;
}

// Folds a block's chunk pairs, in chunk order, into each row's running max and sum (thread per
// row; the first block starts them).
__global__ void loss_fold(const double *part_m, const double *part_s, int n, int chunks, bool first, double *maxes,
                          double *sums) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    double m = first ? -INFINITY : maxes[i], s = first ? 0.0 : sums[i];
    for (int k = 0; k < chunks; ++k) lse_merge(m, s, part_m[(int64_t)i * chunks + k], part_s[(int64_t)i * chunks + k]);
    maxes[i] = m;
    sums[i] = s;
  }
}

// After the last block: each row's lse (into lse[]) and its loss (lsm_row_loss: FULL), or the
// shard's partials (PARTIALS: target 0 where another shard holds the label).
__global__ void loss_rows(const double *maxes, const double *sums, const int32_t *local, const double *target, int n,
                          double *lse, double *row_loss, double *row_max, double *row_sum, double *row_target) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    if (row_loss != nullptr) {
      lse[i] = maxes[i] + log(sums[i]);
      row_loss[i] = lsm_row_loss(maxes[i], sums[i], target[i]);
    } else {
      row_max[i] = maxes[i];
      row_sum[i] = sums[i];
      row_target[i] = local[i] >= 0 ? target[i] : 0.0;
    }
  }
}

// softmax = exp(f - t) / exp(lse - t) with t = lse rounded to T (the largest finite T when lse is
// past T's range): f - t is formed in T without losing lse's float64 digits. Per row, the shift t
// and the factor k = scale / exp(lse - t).
template <typename T>
__global__ void loss_shifts(const double *lse, int n, double scale, T *shift, double *factor) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    T t = (T)lse[i];
    if (!isfinite((double)t) && isfinite(lse[i])) t = (T)float_limits<T>::max;
    shift[i] = t;
    factor[i] = scale / exp(lse[i] - (double)t);
  }
}

// A block's logits in z to G = scale (softmax - onehot), element-wise (grid-strided). The target
// entry is scale expm1(f_iy - lse_i) in float64, kept in g_target[i] for the corrections:
// (T)(scale softmax) - scale would cancel to a few bits where softmax_iy is near 1 (cpu/loss.cpp
// target_gradient).
template <typename T>
__global__ void loss_gradient(T *z, int n, int cb, int c0, const int32_t *local, const double *target,
                              const double *lse, const T *shift, const double *factor, double scale,
                              double *g_target) {
  const int64_t total = (int64_t)n * cb;  // the block's elements: past int32 with a large workspace
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cb), j = (int)(e % cb);
    if (local[i] - c0 != j) {
      z[e] = (T)(factor[i] * (double)exp(z[e] - shift[i]));
    } else {
      g_target[i] = scale * expm1(target[i] - lse[i]);
      z[e] = (T)g_target[i];
    }
  }
}

// The margin's corrections of grad_x after the products (one warp per sample, as
// backward_target_x), with dL/df_iy from g_target and the label within the shard; the records go
// to coef for backward_target_w.
template <typename T>
__global__ void loss_target_x(const T *x, const T *w, const int32_t *local, const double *g_target, int n, int d,
                              lsm_margin margin, T *grad_x, lsm_correction *coef) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int y = local[i];
    lsm_correction r = lsm_no_correction();
    const T *xi = x + (int64_t)i * d;
    const T *wy = w + (int64_t)(y < 0 ? 0 : y) * d;
    if (y >= 0 && !lsm_plain_margin(margin))
      r = lsm_target_correction(g_target[i], warp_stats(xi, wy, d, lane, margin), margin, y);
    if (lane == 0) coef[i] = r;
    if (r.label >= 0) correct_row_x(r, xi, wy, d, lane, grad_x + (int64_t)i * d);
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_LOSS_KERNELS_CUH
