// optim_kernels.cuh: the kernels of resident training (gpu/optim.cu): the SGD and Adam updates
// over W's memory, the sum of squares (clipping), the sum of the row losses, and top-k over a block of scores. The CPU twins are in
// cpu/optim.cpp; the element math is optim.cuh's.
#ifndef LSOFTMAX_OPTIM_KERNELS_CUH
#define LSOFTMAX_OPTIM_KERNELS_CUH

#include <limits.h>
#include <stdint.h>

#include "math/optim.cuh"
#include "gpu/target_kernels.cuh"  // next_index

namespace lsm_kernels {

// Sets *flag when grad [count] holds a non-finite value: the check of lsm_sgd.nonfinite, a
// reduction into a device flag that sgd_update then reads on the device.
template <typename T>
__global__ void nonfinite_flag(const T *grad, int count, int32_t *flag) {
  const int step = (int)(gridDim.x * blockDim.x);
  bool found = false;
  for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < count; j = next_index(j, step, count))
    found |= !lsm_finite(grad[j]);
  if (found) atomicOr(flag, 1);
}

// One SGD step, element-wise and grid-strided: each element read and written once. With a flag
// (the check of nonfinite_flag) set, nothing is written.
template <typename T>
__global__ void sgd_update(lsm_sgd o, int count, T *w, const T *grad, T *v, const int32_t *skip) {
  if (skip != nullptr && *skip != 0) return;
  const int step = (int)(gridDim.x * blockDim.x);
  for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < count; j = next_index(j, step, count)) {
    T unused = T(0);
    lsm_sgd_element(o, v != nullptr, o.nesterov != 0, o.first != 0, w + j, grad[j], v == nullptr ? &unused : v + j);
  }
}

// One Adam/AdamW step, element-wise and grid-strided, as sgd_update (vmax null unless amsgrad).
template <typename T>
__global__ void adam_update(lsm_adam_coefs k, int mode, int count, T *w, const T *grad, T *m, T *v, T *vmax,
                            const int32_t *skip) {
  if (skip != nullptr && *skip != 0) return;
  const int step = (int)(gridDim.x * blockDim.x);
  for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < count; j = next_index(j, step, count)) {
    T unused = T(0);
    lsm_adam_element(k, mode, vmax != nullptr, w + j, grad[j], m + j, v + j, vmax == nullptr ? &unused : vmax + j);
  }
}

// y = a x + b y, element-wise and grid-strided (x null: a is 0; read_y false: b is 0).
template <typename T>
__global__ void axpby_update(int count, double a, const T *x, double b, bool read_y, T *y) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < count; j = next_index(j, step, count))
    lsm_axpby_element(a, x != nullptr, x == nullptr ? y + j : x + j, b, read_y, y + j);
}

// Each thread's strided sum of squares (in double) into part[its index]; sum_values then adds
// the parts in their order (the same sum every run, no barrier here).
constexpr int kSquaresThreads = 256;
template <typename T>
__global__ void sum_squares_parts(const T *x, int count, double *part) {
  const int step = (int)(gridDim.x * blockDim.x), first = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  double s = 0.0;
  for (int j = first; j < count; j = next_index(j, step, count)) s += (double)x[j] * (double)x[j];
  part[first] = s;
}

// The sum of count doubles by one block: strided partial sums, a butterfly within each warp, then
// thread 0 adds the warps' sums (a fixed order: the same sum every run).
constexpr int kSumThreads = 256;
__global__ void sum_values(const double *values, int count, double *out) {
  __shared__ double part[kSumThreads / kWarp];
  const int tid = (int)threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  double s = 0.0;
  for (int j = tid; j < count; j = next_index(j, kSumThreads, count)) s += values[j];
  for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) part[warp] = s;
  __syncthreads();  // every warp's sum is in before thread 0 reads them
  if (tid != 0) return;
  double total = 0.0;
  for (int k = 0; k < kSumThreads / kWarp; ++k) total += part[k];
  *out = total;
}

// Top-k of a block of scores z [n, cb] (classes c0 ..), merged with the rows' k best so far in
// indices/scores unless `first`. One block of threads per row: each thread keeps its columns' k
// best in a sorted list (optim.cuh), then k rounds of a block-wide pick of the best list head.
constexpr int kTopkThreads = 64;
template <typename T>
__global__ void topk_block(const T *z, int n, int cb, int c0, int k, bool first, int32_t *indices, T *scores) {
  __shared__ T sm_s[kTopkThreads];
  __shared__ int sm_i[kTopkThreads], sm_t[kTopkThreads];
  const int tid = (int)threadIdx.x;
  for (int i = (int)blockIdx.x; i < n; i = next_index(i, (int)gridDim.x, n)) {
    T ls[LSM_MAX_TOPK];
    int li[LSM_MAX_TOPK];
    int size = 0;
    T *out_s = scores + (int64_t)i * k;
    int32_t *out_i = indices + (int64_t)i * k;
    // Thread 0 reads the previous list before round 0 writes it (behind the round's barriers).
    if (!first && tid == 0)
      for (int q = 0; q < k; ++q) size = lsm_topk_insert(ls, li, size, k, out_s[q], (int)out_i[q]);
    const T *row = z + (int64_t)i * cb;
    for (int j = tid; j < cb; j += kTopkThreads) size = lsm_topk_insert(ls, li, size, k, row[j], c0 + j);
    int head = 0;
    for (int r = 0; r < k; ++r) {
      const bool has = head < size;
      sm_s[tid] = has ? ls[head] : T(0);
      sm_i[tid] = has ? li[head] : INT_MAX;
      sm_t[tid] = has ? tid : -1;
      __syncthreads();  // every proposal is in
      for (int off = kTopkThreads / 2; off > 0; off /= 2) {
        if (tid < off && sm_t[tid + off] >= 0 &&
            (sm_t[tid] < 0 || lsm_topk_before(sm_s[tid + off], sm_i[tid + off], sm_s[tid], sm_i[tid]))) {
          sm_s[tid] = sm_s[tid + off];
          sm_i[tid] = sm_i[tid + off];
          sm_t[tid] = sm_t[tid + off];
        }
        __syncthreads();  // a level done before the next reads it
      }
      const int winner = sm_t[0];
      if (tid == 0) out_s[r] = sm_s[0], out_i[r] = sm_i[0];
      if (tid == winner) ++head;
      __syncthreads();  // the pick is read by all before the next round overwrites it
    }
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_OPTIM_KERNELS_CUH
