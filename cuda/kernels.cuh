// kernels.cuh: the CUDA kernels of the L-Softmax op. Plain CUDA C++: static shared memory,
// __syncthreads, warp shuffles and atomics only, so that the CPU execution layer (LSM_EMU) can
// run this same source. Every kernel has a CPU twin in cpu_backend.cpp to check against.
//
// Indexing is 32-bit: the C ABI guarantees n*c, n*d and c*d fit in int32.
#ifndef LSOFTMAX_KERNELS_CUH
#define LSOFTMAX_KERNELS_CUH

#include <stdint.h>

#include "margin.cuh"

namespace lsm_kernels {

// ---------------------------------------------------------------------------------------------
// Tiled matrix product C[M,N] = op(A)[M,K] op(B)[K,N], row-major. A block of 16x16 threads owns
// a 64x64 tile of C; each thread accumulates a 4x4 set of it, strided by 16 so that reads of the
// B tile are consecutive across a warp and reads of the A tile are broadcasts.
// A_K_CONTIG: element (m, k) of op(A) is A[m*lda + k] (else A[k*lda + m]).
// B_N_CONTIG: element (k, n) of op(B) is B[k*ldb + n] (else B[n*ldb + k]).
// ---------------------------------------------------------------------------------------------
constexpr int kTile = 64;     // BM = BN
constexpr int kTileK = 16;    // BK
constexpr int kThreads = 16;  // per side of the thread block
constexpr int kPerThread = kTile / kThreads;

template <typename T, bool A_K_CONTIG, bool B_N_CONTIG>
__device__ void gemm_tile(int M, int N, int K, const T *__restrict__ A, int lda, const T *__restrict__ B, int ldb,
                          T *__restrict__ C, int ldc) {
  // +1 column: the loads below write along k for k-contiguous inputs; padding keeps those
  // 16 writes in distinct banks.
  __shared__ T As[kTileK][kTile + 1];
  __shared__ T Bs[kTileK][kTile + 1];
  const int tiles_n = (N + kTile - 1) / kTile;
  const int m0 = (int)(blockIdx.x / tiles_n) * kTile;
  const int n0 = (int)(blockIdx.x % tiles_n) * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreads + tx;

  T acc[kPerThread][kPerThread];
  for (int i = 0; i < kPerThread; ++i)
    for (int j = 0; j < kPerThread; ++j) acc[i][j] = T(0);

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    // Each of the 256 threads loads 4 elements of each tile, walking the contiguous dimension
    // across consecutive threads so global reads coalesce.
    for (int r = 0; r < (kTile * kTileK) / (kThreads * kThreads); ++r) {
      const int e = tid + r * kThreads * kThreads;
      const int am = A_K_CONTIG ? e / kTileK : e % kTile;
      const int ak = A_K_CONTIG ? e % kTileK : e / kTile;
      const int gm = m0 + am, gak = k0 + ak;
      T av = T(0);
      if (gm < M && gak < K) av = A_K_CONTIG ? A[gm * lda + gak] : A[gak * lda + gm];
      As[ak][am] = av;

      const int bn = B_N_CONTIG ? e % kTile : e / kTileK;
      const int bk = B_N_CONTIG ? e / kTile : e % kTileK;
      const int gn = n0 + bn, gbk = k0 + bk;
      T bv = T(0);
      if (gn < N && gbk < K) bv = B_N_CONTIG ? B[gbk * ldb + gn] : B[gn * ldb + gbk];
      Bs[bk][bn] = bv;
    }
    __syncthreads();  // the tile is complete before anyone reads it
    for (int kk = 0; kk < kTileK; ++kk) {
      T a[kPerThread], b[kPerThread];
      for (int i = 0; i < kPerThread; ++i) a[i] = As[kk][ty + i * kThreads];
      for (int j = 0; j < kPerThread; ++j) b[j] = Bs[kk][tx + j * kThreads];
      for (int i = 0; i < kPerThread; ++i)
        for (int j = 0; j < kPerThread; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // everyone is done reading before the next tile overwrites it
  }
  for (int i = 0; i < kPerThread; ++i) {
    const int gm = m0 + ty + i * kThreads;
    if (gm >= M) continue;
    for (int j = 0; j < kPerThread; ++j) {
      const int gn = n0 + tx + j * kThreads;
      if (gn < N) C[gm * ldc + gn] = acc[i][j];
    }
  }
}

// logits[n,c] = x[n,d] W[c,d]^T
template <typename T>
__global__ void gemm_nt(int M, int N, int K, const T *A, const T *B, T *C) {
  gemm_tile<T, true, false>(M, N, K, A, K, B, K, C, N);
}

// grad_x[n,d] = G[n,c] W[c,d]
template <typename T>
__global__ void gemm_nn(int M, int N, int K, const T *A, const T *B, T *C) {
  gemm_tile<T, true, true>(M, N, K, A, K, B, N, C, N);
}

// grad_w[c,d] = G[n,c]^T x[n,d]
template <typename T>
__global__ void gemm_tn(int M, int N, int K, const T *A, const T *B, T *C) {
  gemm_tile<T, false, true>(M, N, K, A, M, B, N, C, N);
}

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
  // i is per warp, so whole warps move (and leave) together, as the shuffles need.
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i += warps) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    if (y < 0 || margin == 1) continue;  // m = 1: the plain inner product is already there
    double dot, xx, ww;
    warp_stats(x + (int64_t)i * d, w + (int64_t)y * d, d, lane, &dot, &xx, &ww);
    if (lane == 0) logits[(int64_t)i * c + y] = (T)lsm_target_logit(dot, xx, ww, margin, lambda);
  }
}

// Per-sample correction coefficients for the backward: 5 doubles per sample, laid out
// [alpha, beta_x, inv_nx, beta_w, inv_nw] (see lsm_correction). Zero for bad labels.
constexpr int kCoefs = 5;

template <typename T>
__global__ void backward_coefs(const T *x, const T *w, const int32_t *labels, const T *grad_logits, int n, int d,
                               int c, int margin, double lambda, double *coefs, int *bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i += warps) {
    const int y = checked_label(labels, i, c, lane, bad_label);
    lsm_correction r = {0.0, 0.0, 0.0, 0.0, 0.0};
    if (y >= 0 && margin > 1) {
      double dot, xx, ww;
      warp_stats(x + (int64_t)i * d, w + (int64_t)y * d, d, lane, &dot, &xx, &ww);
      r = lsm_target_correction((double)grad_logits[(int64_t)i * c + y], dot, xx, ww, margin, lambda);
    }
    if (lane == 0) {
      double *o = coefs + (int64_t)i * kCoefs;
      o[0] = r.alpha;
      o[1] = r.beta_x;
      o[2] = r.inv_nx;
      o[3] = r.beta_w;
      o[4] = r.inv_nw;
    }
  }
}

// grad_x[i,:] += alpha_i W_y + beta_x,i x_i/|x_i| (after gemm_nn). Rows are disjoint: no atomics.
template <typename T>
__global__ void grad_x_correct(const T *x, const T *w, const int32_t *labels, const double *coefs, int n, int d,
                               int c, T *grad_x) {
  // 64-bit: e + stride may pass 2^31 - 1 even though n*d does not.
  const int64_t total = (int64_t)n * d;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int i = (int)(e / d), k = (int)(e - (e / d) * d);
    const int y = labels[i];
    if (y < 0 || y >= c) continue;
    const double *r = coefs + i * kCoefs;
    const double xk = x[e], wk = w[(int64_t)y * d + k];
    grad_x[e] = (T)((double)grad_x[e] + (r[0] * wk + r[1] * (xk * r[2])));
  }
}

// grad_w[y_i,:] += alpha_i x_i + beta_w,i W_y/|W_y| (after gemm_tn). Samples sharing a label add
// into the same row, hence the atomics.
template <typename T>
__global__ void grad_w_correct(const T *x, const T *w, const int32_t *labels, const double *coefs, int n, int d,
                               int c, T *grad_w) {
  // 64-bit: e + stride may pass 2^31 - 1 even though n*d does not.
  const int64_t total = (int64_t)n * d;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int i = (int)(e / d), k = (int)(e - (e / d) * d);
    const int y = labels[i];
    if (y < 0 || y >= c) continue;
    const double *r = coefs + i * kCoefs;
    const double xk = x[e], wk = w[(int64_t)y * d + k];
    atomicAdd(&grad_w[(int64_t)y * d + k], (T)(r[0] * xk + r[3] * (wk * r[4])));
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_KERNELS_CUH
