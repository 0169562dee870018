// bf16_kernels.cuh: a product's float32 inputs rounded to bfloat16 (precision "bf16"), as tensor
// cores read them: to nearest, ties to even, 8 bits of mantissa, float32's exponent range (a
// value above bf16's largest, 3.39e38, becomes infinity, as IEEE rounding says). The copy is
// bf16 for cuBLAS, or float32 holding the rounded values for the library's own kernel: the
// product of two bf16 values is exact in float32, so both accumulate the same terms in float32.
#ifndef LSOFTMAX_KERNELS_BF16_CUH
#define LSOFTMAX_KERNELS_BF16_CUH

#include <stdint.h>

namespace lsm_kernels {

__device__ __forceinline__ uint32_t bf16_round_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u | 0x00400000u) & 0xffff0000u;  // NaN stays a (quiet) NaN
  return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

__device__ __forceinline__ void bf16_store(float f, uint16_t *out) { *out = (uint16_t)(bf16_round_bits(f) >> 16); }
__device__ __forceinline__ void bf16_store(float f, float *out) { *out = __uint_as_float(bf16_round_bits(f)); }

template <typename OUT>
__global__ void round_bf16(const float *in, int64_t count, OUT *out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    bf16_store(in[i], out + i);
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_KERNELS_BF16_CUH
