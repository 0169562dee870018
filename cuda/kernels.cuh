// kernels.cuh: the CUDA kernels of the L-Softmax op (the matrix products: kernels_gemm.cuh). Plain CUDA C++: static shared memory,
// __syncthreads, warp shuffles and atomics only, so that the CPU execution layer (LSM_EMU) can
// run this same source. Every kernel has a CPU twin in cpu_backend.cpp to check against.
//
// Indexing is 32-bit: the C ABI guarantees n*c, n*d and c*d fit in int32.
#ifndef LSOFTMAX_KERNELS_CUH
#define LSOFTMAX_KERNELS_CUH

#include <stdint.h>

#include "kernels_gemm.cuh"
#include "margin.cuh"

namespace lsm_kernels {

// ---------------------------------------------------------------------------------------------
// Per-sample margin work: one warp per sample. Only the n target entries need the margin, so
// this is O(n d) next to the O(n c d) of the products.
// ---------------------------------------------------------------------------------------------
constexpr int kWarp = 32;
constexpr int kSampleBlock = 256;  // threads per block: 8 samples

// x.w, |x|^2 and |w|^2 in double, reduced across the warp; every lane gets the totals.
template <typename T>
__device__ void warp_stats(const T *x, const T *w, int d, int lane, double *dot, double *xx, double *ww) {
  double s_dot = 0.0, s_xx = 0.0, s_ww = 0.0;
  for (int k = lane; k < d; k += kWarp) {
    const double a = x[k], b = w[k];
    s_dot += a * b;
    s_xx += a * a;
    s_ww += b * b;
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    s_dot += __shfl_xor_sync(0xffffffffu, s_dot, off);
    s_xx += __shfl_xor_sync(0xffffffffu, s_xx, off);
    s_ww += __shfl_xor_sync(0xffffffffu, s_ww, off);
  }
  *dot = s_dot;
  *xx = s_xx;
  *ww = s_ww;
}

// The grid-stride step i + warps, or n once that would reach or pass n (without overflow).
__device__ __forceinline__ int next_sample(int i, int warps, int n) { return n - i > warps ? i + warps : n; }

// Returns the label of sample i, or -1 (recording the lowest such i in *bad_label) when it is
// outside [0, c): a bad label is never used as an index.
__device__ inline int checked_label(const int32_t *labels, int i, int c, int lane, int *bad_label) {
  const int y = labels[i];
  if (y >= 0 && y < c) return y;
  if (lane == 0) atomicMin(bad_label, i);
  return -1;
}

// Overwrites the target logit of each sample with the margin logit (after gemm_nt).
template <typename T>
__global__ void forward_target(const T *x, const T *w, const int32_t *labels, int n, int d, int c, int margin,
                               double lambda, T *logits, int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  // i is per warp, so whole warps move (and leave) together, as the shuffles need. The step
  // never forms i + warps past n: n may be 2^31 - 1, and int overflow would wrap i negative.
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_sample(i, warps, n)) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    if (y < 0 || margin == 1) continue;  // m = 1: the plain inner product is already there
    double dot, xx, ww;
    warp_stats(x + (int64_t)i * d, w + (int64_t)y * d, d, lane, &dot, &xx, &ww);
    if (lane == 0) logits[(int64_t)i * c + y] = (T)lsm_target_logit(dot, xx, ww, margin, lambda);
  }
}

// Per-sample coefficients of the backward's fused corrections (kernels_gemm.cuh), each an array
// of n in the tensors' dtype: alpha_i, cx_i = beta_x,i/|x_i| and bw_i = beta_w,i/|W_y|
// (lsm_target_correction). Zero for bad labels and margin 1. Runs before the products.
template <typename T>
__global__ void backward_coefs(const T *x, const T *w, const int32_t *labels, const T *grad_logits, int n, int d,
                               int c, int margin, double lambda, T *alpha, T *cx, T *bw, int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_sample(i, warps, n)) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    lsm_correction r = {0.0, 0.0, 0.0, 0.0, 0.0};
    if (y >= 0 && margin > 1) {
      double dot, xx, ww;
      warp_stats(x + (int64_t)i * d, w + (int64_t)y * d, d, lane, &dot, &xx, &ww);
      r = lsm_target_correction((double)grad_logits[(int64_t)i * c + y], dot, xx, ww, margin, lambda);
    }
    if (lane == 0) {
      alpha[i] = (T)r.alpha;
      cx[i] = (T)(r.beta_x * r.inv_nx);
      bw[i] = (T)(r.beta_w * r.inv_nw);
    }
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_KERNELS_CUH
