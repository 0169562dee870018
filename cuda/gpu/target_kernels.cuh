// target_kernels.cuh: the per-sample kernels of the margin, which touch only the n target
// logits and the rows of the gradients they feed (the matrix products are in gemm_kernels.cuh).
// Plain CUDA C++: static shared memory, __syncthreads, warp shuffles and atomics only, so that
// the CPU execution layer (LSM_EMU) can run this same source. Every kernel has a CPU twin in
// cpu/op.cpp, and both take their margin math from margin.cuh, element for element.
//
// Indexing is 32-bit: the C ABI guarantees n*c, n*d and c*d fit in int32.
#ifndef LSOFTMAX_KERNELS_CUH
#define LSOFTMAX_KERNELS_CUH

#include <stdint.h>

#include "gpu/gemm_kernels.cuh"
#include "math/margin.cuh"

namespace lsm_kernels {

// ---------------------------------------------------------------------------------------------
// Per-sample margin work: one warp per sample. Only the n target entries need the margin, so
// this is O(n d) next to the O(n c d) of the products.
// ---------------------------------------------------------------------------------------------
constexpr int kWarp = 32;
constexpr int kSampleBlock = 256;  // threads per block: 8 samples

// The sample's statistics (margin.cuh, lsm_stats) across the warp, in the CPU backend's two
// passes: the largest magnitudes, reduced with shuffles (NaN-keeping), then the scaled sums.
// Every lane gets the same totals (a butterfly: lane l and l^off add the same two numbers).
template <typename T>
__device__ lsm_stats warp_stats(const T *x, const T *w, int d, int lane, const lsm_margin &mg) {
  double amax_x = 0.0, amax_w = 0.0;
  for (int k = lane; k < d; k += kWarp) {
    amax_x = lsm_absmax(amax_x, x[k]);
    amax_w = lsm_absmax(amax_w, w[k]);
  }
  for (int off = kWarp / 2; off > 0; off /= 2) {
    amax_x = lsm_absmax(amax_x, __shfl_xor_sync(0xffffffffu, amax_x, off));
    amax_w = lsm_absmax(amax_w, __shfl_xor_sync(0xffffffffu, amax_w, off));
  }
  lsm_stats s = lsm_stats_begin<T>(amax_x, amax_w, mg);
  for (int k = lane; k < d; k += kWarp) lsm_stats_add(s, x[k], w[k]);
  for (int off = kWarp / 2; off > 0; off /= 2) {
    s.dot += __shfl_xor_sync(0xffffffffu, s.dot, off);
    s.xx += __shfl_xor_sync(0xffffffffu, s.xx, off);
    s.ww += __shfl_xor_sync(0xffffffffu, s.ww, off);
  }
  lsm_stats_finish(s, d);
  if (lsm_needs_residual(mg.kind) && !lsm_degenerate(s)) {  // uniform across the warp
    for (int k = lane; k < d; k += kWarp) lsm_stats_add_residual(s, x[k], w[k]);
    for (int off = kWarp / 2; off > 0; off /= 2) s.rr += __shfl_xor_sync(0xffffffffu, s.rr, off);
  }
  return s;
}

// The warp's sum of v across its lanes (a butterfly: every lane gets the same total).
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// A row's normalisation (margin.cuh, lsm_norm) across the warp, as the CPU backend's row_norm:
// the plain sum of squares where safe, else the largest magnitude and the scaled sum.
template <typename T>
__device__ lsm_norm warp_norm(const T *v, int d, int lane, double f) {
  double ss = 0.0;
  for (int k = lane; k < d; k += kWarp) ss += (double)v[k] * (double)v[k];
  lsm_norm r;
  if (lsm_norm_direct<T>(warp_sum(ss), d, f, &r)) return r;  // uniform across the warp
  double amax = 0.0;
  for (int k = lane; k < d; k += kWarp) amax = lsm_absmax(amax, v[k]);
  for (int off = kWarp / 2; off > 0; off /= 2) amax = lsm_absmax(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  r = lsm_norm_begin<T>(amax, f);
  ss = 0.0;
  for (int k = lane; k < d; k += kWarp) {
    const double a = v[k] * r.p;
    ss += a * a;
  }
  lsm_norm_finish(r, warp_sum(ss));
  return r;
}

// The grid-stride step i + step, or n once that would reach or pass n (without overflow).
__device__ __forceinline__ int next_index(int i, int step, int n) { return n - i > step ? i + step : n; }

// Returns the label of sample i, or -1 (recording the lowest such i in *bad_label) when it is
// outside [0, c): a bad label is never used as an index.
__device__ inline int checked_label(const int32_t *labels, int i, int c, int lane, int *bad_label) {
  const int y = labels[i];
  if (y >= 0 && y < c) return y;
  if (lane == 0) atomicMin(bad_label, i);
  return -1;
}

// Adds sample i's correction r (x_i, w_y) to its row of grad_x across the warp, each element
// formed in double and added with one rounding to T, as the CPU backend does.
template <typename T>
__device__ __forceinline__ void correct_row_x(const lsm_correction &r, const T *xi, const T *wy, int d, int lane,
                                              T *gxi) {
  for (int k = lane; k < d; k += kWarp) gxi[k] = (T)(gxi[k] + lsm_correction_x(r, xi[k], wy[k]));
}

// Overwrites the target logit of each sample with the margin logit (after gemm_nt).
template <typename T>
__global__ void forward_target(const T *x, const T *w, const int32_t *labels, int n, int d, int c,
                               lsm_margin margin, T *logits, int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  // i is per warp, so whole warps move (and leave) together, as the shuffles need. The step
  // never forms i + warps past n: n may be 2^31 - 1, and int overflow would wrap i negative.
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    if (y < 0 || lsm_plain_margin(margin)) continue;  // the plain inner product is already there
    const lsm_stats s = warp_stats(x + (int64_t)i * d, w + (int64_t)y * d, d, lane, margin);
    if (lane == 0) logits[(int64_t)i * c + y] = (T)lsm_target_logit(s, margin);
  }
}

// Backward, after grad_x = G W (gemm NN): per sample, the correction coefficients (kept in
// coef[i] for backward_target_w) and the correction of its own row of grad_x, each element
// formed in double and added with one rounding to T, as the CPU backend does. Bad labels and
// margin 1 leave an inactive record (label -1) and the row untouched.
template <typename T>
__global__ void backward_target_x(const T *x, const T *w, const int32_t *labels, const T *grad_logits, int n,
                                  int d, int c, lsm_margin margin, T *grad_x, lsm_correction *coef,
                                  int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    lsm_correction r = lsm_no_correction();
    const T *xi = x + (int64_t)i * d;
    const T *wy = w + (int64_t)(y < 0 ? 0 : y) * d;
    if (y >= 0 && !lsm_plain_margin(margin)) {
      const lsm_stats s = warp_stats(xi, wy, d, lane, margin);
      r = lsm_target_correction((double)grad_logits[(int64_t)i * c + y], s, margin, y);
    }
    if (lane == 0) coef[i] = r;
    if (r.label >= 0) correct_row_x(r, xi, wy, d, lane, grad_x + (int64_t)i * d);  // uniform across the warp
  }
}

// Backward, after grad_w = G^T x (gemm TN): adds every sample's correction to its label's row of
// grad_w. Samples of one label share that row, so, without atomics and deterministically, each
// element grad_w[y, k] has one owner thread, which adds the samples in order i = 0, 1, ..., as
// the CPU backend's column-split loop does (same order, same rounding: the same bits, given the
// same product). Thread (k, s) owns column k of the rows y with y % slices == s (blockIdx.y = s):
// slices keep the chain of dependent updates per thread near n / slices when d is small.
template <typename T>
__global__ void backward_target_w(const T *x, const T *w, const lsm_correction *coef, int n, int d, int slices,
                                  T *grad_w) {
  const int slice = (int)blockIdx.y;
  const int step = (int)(gridDim.x * blockDim.x);
  for (int k = (int)(blockIdx.x * blockDim.x + threadIdx.x); k < d; k = next_index(k, step, d)) {
    for (int i = 0; i < n; ++i) {
      const int y = coef[i].label;  // in [0, c) (checked by backward_target_x) or -1
      if (y < 0 || y % slices != slice) continue;
      const lsm_correction &r = coef[i];
      T *g = grad_w + (int64_t)y * d + k;
      *g = (T)(*g + lsm_correction_w(r, x[(int64_t)i * d + k], w[(int64_t)y * d + k]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Row normalisation for the kinds that normalise: one warp per row, O(rows d) like the above.
// ---------------------------------------------------------------------------------------------

// out[r] = f v[r] / |v[r]| (0 for a zero row): the products' inputs (CPU: product_inputs).
template <typename T>
__global__ void normalise_rows(const T *v, int rows, int d, double f, T *out) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int r = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); r < rows; r = next_index(r, warps, rows)) {
    const T *vr = v + (int64_t)r * d;
    const lsm_norm nr = warp_norm(vr, d, lane, f);
    for (int k = lane; k < d; k += kWarp) out[(int64_t)r * d + k] = (T)lsm_unit(nr, vr[k], f);
  }
}

// g[r] = f (g[r] - v^ (v^ . g[r])) / |v[r]| in place: the gradient with respect to the
// normalised row back to the row (CPU: project_rows).
template <typename T>
__global__ void project_rows(const T *v, int rows, int d, double f, T *g) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int r = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); r < rows; r = next_index(r, warps, rows)) {
    const T *vr = v + (int64_t)r * d;
    T *gr = g + (int64_t)r * d;
    const lsm_norm nr = warp_norm(vr, d, lane, f);
    double dot = 0.0;
    for (int k = lane; k < d; k += kWarp) dot += lsm_unit(nr, vr[k], 1.0) * gr[k];
    dot = warp_sum(dot);
    for (int k = lane; k < d; k += kWarp) gr[k] = (T)lsm_project(nr, gr[k], vr[k], dot, f);
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_KERNELS_CUH
