// mma.h of the CPU execution layer (LSM_EMU): the WMMA subset the kernels use (nvcuda::wmma,
// m16n16k8 with precision::tf32 inputs and float accumulators), found through -Iemulator instead
// of the toolkit's.
//
// A fragment holds its whole tile in every lane (logical row-major order; on a GPU each lane
// holds an opaque slice, so code may only touch x[] element-wise, which is all the kernels do);
// a store writes only the lane's slice, as a GPU's does.
// load/store/mma are warp-collective: each starts with a __syncwarp, so a lane that skips one, or
// reaches it while the rest of its warp waits at __syncthreads, fails the launch as on a GPU it
// would hang or corrupt. Operand requirements of the real API (a 256-bit aligned pointer, ldm a
// multiple of 16 bytes) are checked: a violation poisons the fragment with NaN, so the results
// show it. mma_sync uses only the 10 explicit mantissa bits of each input (the hardware ignores
// the low 13 bits of a float that was not rounded to TF32), and accumulates in float in k order.
#ifndef LSM_EMU_MMA_H
#define LSM_EMU_MMA_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <class Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

inline bool operand_ok(const void *p, unsigned ldm) {
  return reinterpret_cast<uintptr_t>(p) % 32 == 0 && ldm % 4 == 0;
}

inline float tf32_bits(float f) {  // what the tensor core reads of a float: its top 19 bits
  uint32_t u;
  memcpy(&u, &f, 4);
  u &= 0xffffe000u;
  memcpy(&f, &u, 4);
  return f;
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 8, "emulated WMMA: m16n16k8 only");
  static_assert(std::is_same<T, precision::tf32>::value || std::is_same<T, float>::value,
                "emulated WMMA: tf32 inputs and float accumulators only");
  using element_type = float;
  static constexpr int rows = detail::dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 explicit mantissa bits.
// Inf and NaN pass through; a finite value may round up to Inf, as on the GPU.
inline float __float_to_tf32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  memcpy(&f, &u, 4);
  return f;
}

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

// Operands (matrix_a / matrix_b): the layout is the fragment's.
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const float *p, unsigned ldm) {
  static_assert(std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                "load_matrix_sync: an operand fragment needs row_major or col_major");
  __syncwarp();
  constexpr bool rm = std::is_same<Layout, row_major>::value;
  const bool ok = detail::operand_ok(p, ldm);
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = ok ? (rm ? p[r * ldm + c] : p[c * ldm + r]) : NAN;
}

// Accumulators: the layout is an argument.
template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm, layout_t l) {
  __syncwarp();
  const bool ok = detail::operand_ok(p, ldm);
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c)
      f.x[r * f.cols + c] = ok ? (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) : NAN;
}

// Each lane stores only its own slice (elements e with e % 32 == lane), as on a GPU, where the
// tile is whole only once every lane has stored: reading it before a __syncwarp reads stale data.
template <int M, int N, int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm, layout_t l) {
  __syncwarp();
  const bool ok = detail::operand_ok(p, ldm);
  const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
  for (int e = (int)lane; e < f.num_elements; e += 32) {
    const int r = e / f.cols, c = e % f.cols;
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = ok ? f.x[e] : NAN;
  }
}

// D = A B + C. d may be c.
template <int M, int N, int K, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, precision::tf32, LA> &a,
                     const fragment<matrix_b, M, N, K, precision::tf32, LB> &b,
                     const fragment<accumulator, M, N, K, float> &c) {
  __syncwarp();
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s = fmaf(detail::tf32_bits(a.x[i * K + k]), detail::tf32_bits(b.x[k * N + j]), s);
      out[i * N + j] = s;
    }
  memcpy(d.x, out, sizeof out);
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // LSM_EMU_MMA_H
