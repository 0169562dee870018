// gemm_kernels.cuh: the plain matrix products of the L-Softmax op (we have no cuBLAS).
//
//   forward   logits = x W^T     (NT)
//   backward  grad_x = G W       (NN)
//             grad_w = G^T x     (TN)
//   fused loss the same three, per class block (gpu/loss.cu), grad_x accumulated over blocks
//
// The margin's target corrections are not fused in here: they are added afterwards, per element
// in double, by target_kernels.cuh (as the CPU backend adds them). Fusing them into the tiles in
// the tensors' dtype rounded the per-sample coefficients to float, cancelled badly near
// cos = +-1 at large margins and overflowed 1/|x| for tiny vectors.
//
// Two kernels share the tile loaders and the epilogue:
// - gemm: SIMT, 256 threads, a BM x BM tile of C per block, BK = 8, each thread a TM x TM
//   register block (fp32: 128x128, 8x8; fp64: 64x64, 4x4), shared memory double buffered.
// - gemm_tf32: the same tiles (fp32 only) on tensor cores through WMMA m16n16k8 TF32, for
//   contexts set to LSM_PRECISION_TF32 (sm_80+).
#ifndef LSOFTMAX_KERNELS_GEMM_CUH
#define LSOFTMAX_KERNELS_GEMM_CUH

#include <stddef.h>
#include <stdint.h>

#include <mma.h>

// Fixed-count loops must unroll for the register blocks to stay in registers (nvcc only; g++
// warns about the pragma).
#if defined(__CUDACC__)
#define LSM_UNROLL _Pragma("unroll")
#else
#define LSM_UNROLL
#endif

namespace lsm_kernels {

enum gemm_mode { kNT = 0, kNN = 1, kTN = 2 };

// 16-byte vectors: 4 floats or 2 doubles.
template <typename T>
struct vec_traits;
template <>
struct vec_traits<float> {
  static constexpr int V = 4;
};
template <>
struct vec_traits<double> {
  static constexpr int V = 2;
};

// Aligned 16-byte loads and stores (the host checks alignment before it asks for them).
__device__ __forceinline__ void ld_vec(const float *p, float *v) {
  const float4 q = *reinterpret_cast<const float4 *>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void ld_vec(const double *p, double *v) {
  const double2 q = *reinterpret_cast<const double2 *>(p);
  v[0] = q.x, v[1] = q.y;
}
__device__ __forceinline__ void st_vec(float *p, const float *v) {
  *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void st_vec(double *p, const double *v) {
  *reinterpret_cast<double2 *>(p) = make_double2(v[0], v[1]);
}

constexpr int kGemmThreads = 256;  // 16 x 16
constexpr int kGemmBK = 8;

// ceil(a / b) for 0 <= a <= INT_MAX, b > 0, without forming a + b - 1 (which overflows int when a
// is within b of 2^31: the ABI allows a dimension of 2^31 - 1).
__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return a / b + (a % b != 0 ? 1 : 0); }

// Tile shape per dtype: TM = 2 vectors per thread and dimension, so that both the shared-memory
// reads of the inner loop and the stores of C are 16-byte vectors.
template <typename T>
struct gemm_shape {
  static constexpr int V = vec_traits<T>::V;
  static constexpr int TM = 2 * V;     // fp32 8, fp64 4
  static constexpr int BM = 16 * TM;   // fp32 128, fp64 64 (= BN)
  static constexpr int LD = BM + V;    // smem row stride: 16-byte rows, no bank conflicts on the
                                       // transposing stores of k-contiguous operands
};

// Everything a product needs; passed by value (kernel parameter space).
template <typename T>
struct gemm_args {
  int M, N, K;
  const T *A;  // NT, NN: row-major M x K (lda); TN: row-major K x M (lda)
  const T *B;  // NT: row-major N x K (ldb); NN, TN: row-major K x N (ldb)
  int lda, ldb;
  T *C;  // row-major M x N
  // 16-byte vector access allowed for A, B and C (host-checked alignment and leading dimensions).
  bool vec_a, vec_b, vec_c;
  bool accumulate;  // C += A B (the fused loss sums grad_x over class blocks), else C = A B
};

template <int MODE>
struct gemm_layout {
  static constexpr bool a_k_contig = MODE != kTN;  // A[m*lda + k], else A[k*lda + m]
  static constexpr bool b_k_contig = MODE == kNT;  // B[n*ldb + k], else B[k*ldb + n]
};

// One thread's share of a tile of R rows (m or n) x BK: one vector of V elements along the
// dimension that is contiguous in memory, so global reads coalesce (R-contiguous) or at least use
// whole sectors (K-contiguous: 2 or 4 threads per row). Shared memory holds tiles k-major,
// S[k][r], which is what the inner loop and WMMA (col-major A, row-major B) read.
template <typename T, bool K_CONTIG>
struct tile_loader {
  using S = gemm_shape<T>;
  static constexpr int V = S::V;
  int r, k;  // the thread's first element inside the tile
  T v[V];

  __device__ __forceinline__ tile_loader(int tid) {
    r = K_CONTIG ? tid / (kGemmBK / V) : (tid % (S::BM / V)) * V;
    k = K_CONTIG ? (tid % (kGemmBK / V)) * V : tid / (S::BM / V);
  }

  // Element (row, kk) of the operand is P[row*ld + kk] (K_CONTIG) or P[kk*ld + row]. Outside
  // [0, rows) x [0, K) it is 0, so edge tiles need no special case in the math.
  __device__ __forceinline__ void load(const T *P, int ld, int rows, int K, int r0, int k0, bool vec) {
    const int gr = r0 + r, gk = k0 + k;
    if (K_CONTIG) {
      if (vec && gr < rows && gk <= K - V) {  // not gk + V <= K: that overflows near 2^31
        ld_vec(P + gr * ld + gk, v);
      } else {
        LSM_UNROLL for (int j = 0; j < V; ++j) v[j] = (gr < rows && gk + j < K) ? P[gr * ld + gk + j] : T(0);
      }
    } else {
      if (vec && gk < K && gr <= rows - V) {
        ld_vec(P + gk * ld + gr, v);
      } else {
        LSM_UNROLL for (int j = 0; j < V; ++j) v[j] = (gk < K && gr + j < rows) ? P[gk * ld + gr + j] : T(0);
      }
    }
  }

  __device__ __forceinline__ void store(T (*s)[S::LD]) const {
    if (K_CONTIG) {
      LSM_UNROLL for (int j = 0; j < V; ++j) s[k + j][r] = v[j];
    } else {
      st_vec(&s[k][r], v);
    }
  }
};

// Shared memory of both kernels: double-buffered A and B tiles.
template <typename T>
struct gemm_smem {
  using S = gemm_shape<T>;
  alignas(128) T a[2][kGemmBK][S::LD];
  alignas(128) T b[2][kGemmBK][S::LD];
};

// The main-loop state both kernels share: the loaders, and the prefetch of tile t+1 into
// registers while tile t is multiplied.
template <typename T, int MODE>
struct gemm_pipeline {
  using S = gemm_shape<T>;
  using L = gemm_layout<MODE>;
  const gemm_args<T> &p;
  const int m0, n0;
  tile_loader<T, L::a_k_contig> la;
  tile_loader<T, L::b_k_contig> lb;

  __device__ __forceinline__ gemm_pipeline(const gemm_args<T> &args, int t, int bm0, int bn0)
      : p(args), m0(bm0), n0(bn0), la(t), lb(t) {}

  // Global -> registers for the tile at k0 (loads in flight while the previous tile is used).
  __device__ __forceinline__ void fetch(int k0) {
    la.load(p.A, p.lda, p.M, p.K, m0, k0, p.vec_a);
    lb.load(p.B, p.ldb, p.N, p.K, n0, k0, p.vec_b);
  }

  // Registers -> shared buffer `buf` (its previous readers are past a barrier).
  __device__ __forceinline__ void put(gemm_smem<T> &sm, int buf) const {
    la.store(sm.a[buf]);
    lb.store(sm.b[buf]);
  }

  // Writes V (or fewer, at the right edge) consecutive outputs of row m from column n.
  __device__ __forceinline__ void write(int m, int n, const T *v) const {
    const int N = p.N;
    T *c = p.C + m * N;
    const bool full = p.vec_c && n <= N - S::V;
    if (full && p.accumulate) {
      T sum[S::V];
      ld_vec(c + n, sum);
      LSM_UNROLL for (int j = 0; j < S::V; ++j) sum[j] += v[j];
      st_vec(c + n, sum);
    } else if (full) {
      st_vec(c + n, v);
    } else {
      LSM_UNROLL for (int j = 0; j < S::V && n + j < N; ++j) c[n + j] = p.accumulate ? c[n + j] + v[j] : v[j];
    }
  }
};

// Block coordinates: blockIdx.x enumerates tiles row by row, so neighbouring blocks share A's row
// panel in L2. One dimension: the tile count can pass 65535.
template <typename T>
__device__ __forceinline__ void gemm_block_origin(int N, int *m0, int *n0) {
  const int bm = gemm_shape<T>::BM;
  const int tiles_n = ceil_div(N, bm);
  *m0 = (int)(blockIdx.x / tiles_n) * bm;
  *n0 = (int)(blockIdx.x % tiles_n) * bm;
}

template <typename T, int M_>
struct gemm_cfg {
  using type = T;
  static constexpr int mode = M_;
};

// SIMT product. Thread (tx, ty) owns rows ty*V + {0..V-1} + {0, 16V} and the same columns of tx:
// the inner loop reads two 16-byte vectors of A (a broadcast within each half-warp) and two of B
// (16 consecutive vectors, conflict-free) per k, for TM*TM FMAs.
template <class CFG>
__global__ void __launch_bounds__(kGemmThreads, 2) gemm(gemm_args<typename CFG::type> p) {
  using T = typename CFG::type;
  using S = gemm_shape<T>;
  constexpr int V = S::V, TM = S::TM;
  __shared__ gemm_smem<T> sm;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  int m0, n0;
  gemm_block_origin<T>(p.N, &m0, &n0);
  gemm_pipeline<T, CFG::mode> pipe(p, tid, m0, n0);

  T acc[TM][TM];
  LSM_UNROLL for (int i = 0; i < TM; ++i)
    LSM_UNROLL for (int j = 0; j < TM; ++j) acc[i][j] = T(0);

  const int ktiles = ceil_div(p.K, kGemmBK);
  pipe.fetch(0);
  pipe.put(sm, 0);
  __syncthreads();
  for (int t = 0; t < ktiles; ++t) {
    const int buf = t & 1;
    const bool more = t + 1 < ktiles;
    if (more) pipe.fetch((t + 1) * kGemmBK);  // global loads overlap the math below
    LSM_UNROLL for (int kk = 0; kk < kGemmBK; ++kk) {
      T a[TM], b[TM];
      LSM_UNROLL for (int g = 0; g < 2; ++g) {
        ld_vec(&sm.a[buf][kk][g * 16 * V + ty * V], a + g * V);
        ld_vec(&sm.b[buf][kk][g * 16 * V + tx * V], b + g * V);
      }
      LSM_UNROLL for (int i = 0; i < TM; ++i)
        LSM_UNROLL for (int j = 0; j < TM; ++j) acc[i][j] += a[i] * b[j];
    }
    // The other buffer was last read in iteration t-1, which ended at a barrier.
    if (more) pipe.put(sm, buf ^ 1);
    __syncthreads();
  }

  // The epilogue reads registers only: no barrier before it.
  LSM_UNROLL for (int i = 0; i < TM; ++i) {
    const int m = m0 + (i / V) * 16 * V + ty * V + i % V;
    if (m >= p.M) continue;
    LSM_UNROLL for (int g = 0; g < 2; ++g) {
      const int n = n0 + g * 16 * V + tx * V;
      if (n < p.N) pipe.write(m, n, &acc[i][g * V]);
    }
  }
}

// TF32 tensor-core product, fp32 only: same block tile (128x128, BK = 8) and pipeline; warp w
// computes a 64x32 sub-tile (wm = w / 4, wn = w % 4) as 4x2 m16n16k8 fragments. Inputs are
// rounded to TF32 (10-bit mantissa, round to nearest) and accumulated in fp32. The epilogue goes
// through a per-warp 16x16 staging tile in shared memory, whose layout WMMA defines.
constexpr int kWmma = 16;

struct tf32_smem {
  gemm_smem<float> g;
  alignas(128) float stage[kGemmThreads / 32][kWmma * kWmma];
};

// What a GPU requires of these layouts (the emulator checks WMMA pointers only at run time, in
// host memory, and not vector alignment at all): 16-byte rows for the float4/double2 accesses;
// for load/store_matrix_sync, 32-byte aligned tile origins (buffer, column block of 16, staging
// tile) and ldm a multiple of 16 bytes.
static_assert(gemm_shape<float>::LD * sizeof(float) % 16 == 0, "fp32 tile rows must be 16-byte aligned");
static_assert(gemm_shape<double>::LD * sizeof(double) % 16 == 0, "fp64 tile rows must be 16-byte aligned");
static_assert(offsetof(gemm_smem<float>, a) % 32 == 0 && offsetof(gemm_smem<float>, b) % 32 == 0 &&
                  sizeof(gemm_smem<float>::a[0]) % 32 == 0 && kWmma * sizeof(float) % 32 == 0,
              "WMMA operand tiles must start 32-byte aligned");
static_assert(offsetof(tf32_smem, stage) % 32 == 0 && sizeof(tf32_smem::stage[0]) % 32 == 0,
              "WMMA staging tiles must start 32-byte aligned");
static_assert(sizeof(tf32_smem) <= 48 * 1024 && sizeof(gemm_smem<double>) <= 48 * 1024,
              "static shared memory is limited to 48 KB per block");

template <class CFG>
__global__ void __launch_bounds__(kGemmThreads, 2) gemm_tf32(gemm_args<float> p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using S = gemm_shape<float>;
  __shared__ tf32_smem sh;
  gemm_smem<float> &sm = sh.g;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
  int m0, n0;
  gemm_block_origin<float>(p.N, &m0, &n0);
  gemm_pipeline<float, CFG::mode> pipe(p, tid, m0, n0);

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[4][2];
  LSM_UNROLL for (int i = 0; i < 4; ++i)
    LSM_UNROLL for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int ktiles = ceil_div(p.K, kGemmBK);
  pipe.fetch(0);
  pipe.put(sm, 0);
  __syncthreads();
  for (int t = 0; t < ktiles; ++t) {
    const int buf = t & 1;
    const bool more = t + 1 < ktiles;
    if (more) pipe.fetch((t + 1) * kGemmBK);
    // sm.a is k-major (element (m, k) at [k][m]): a col-major A operand; sm.b a row-major B.
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa[4];
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
    LSM_UNROLL for (int i = 0; i < 4; ++i) {
      wmma::load_matrix_sync(fa[i], &sm.a[buf][0][wm + i * kWmma], S::LD);
      LSM_UNROLL for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
    }
    LSM_UNROLL for (int j = 0; j < 2; ++j) {
      wmma::load_matrix_sync(fb[j], &sm.b[buf][0][wn + j * kWmma], S::LD);
      LSM_UNROLL for (int e = 0; e < fb[j].num_elements; ++e) fb[j].x[e] = wmma::__float_to_tf32(fb[j].x[e]);
    }
    LSM_UNROLL for (int i = 0; i < 4; ++i)
      LSM_UNROLL for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    if (more) pipe.put(sm, buf ^ 1);
    __syncthreads();
  }

  // The epilogue stages through the warp's own tile (no block barrier). Each lane finishes 8 of a
  // fragment's 256 outputs: two half-rows of 4 per pass.
  float *st = sh.stage[warp];
  LSM_UNROLL for (int i = 0; i < 4; ++i) {
    LSM_UNROLL for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(st, acc[i][j], kWmma, wmma::mem_row_major);
      __syncwarp();
      LSM_UNROLL for (int h = 0; h < 2; ++h) {
        const int r = h * 8 + lane / 4, c = (lane % 4) * 4;
        const int m = m0 + wm + i * kWmma + r, n = n0 + wn + j * kWmma + c;
        if (m < p.M && n < p.N) {
          const float v[4] = {st[r * kWmma + c], st[r * kWmma + c + 1], st[r * kWmma + c + 2],
                              st[r * kWmma + c + 3]};
          pipe.write(m, n, v);
        }
      }
      // The staging tile is read before the next fragment overwrites it. The next
      // store_matrix_sync waits for every lane too, but .sync is documented to order execution
      // only; __syncwarp also orders memory. (barrier-mutants: redundant in the emulator)
      __syncwarp();
    }
  }
#else
  (void)p;
#endif
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_KERNELS_GEMM_CUH
