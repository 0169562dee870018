// gpu/gather.cu: rows of a [c, d] tensor by an index list (the sampled classes of a head),
// gathered into a [k, d] tensor or scattered back from one: one thread per element. The first
// entry that is out of [0, c) or not above the one before is noted in a slot of the workspace
// (its rows are not touched) and reported once the stream has drained.
#include <cuda_runtime.h>

#include "gpu/common.cuh"

namespace {

using namespace lsm_cuda;

template <typename T>
__global__ void copy_rows(const int32_t *index, const T *src, T *dst, int64_t c, int64_t d, int64_t k, bool scatter,
                          int *bad) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= k * d) return;
  const int64_t i = e / d, j = e - i * d;
  const int32_t v = index[i];
  const bool ok = v >= 0 && v < c && (i == 0 || v > index[i - 1]);
  if (!ok) {
    if (j == 0) atomicMin(bad, (int)i);
    return;
  }
  if (scatter) dst[(int64_t)v * d + j] = src[e];
  else dst[e] = src[(int64_t)v * d + j];
}

template <typename T>
int32_t rows(lsm_context *ctx, int64_t c, int64_t d, int64_t k, const int32_t *index, const void *src, void *dst,
             bool scatter) {
  constexpr int threads = 256;
  void *mem = nullptr;
  int32_t s = workspace(ctx, sizeof(int), &mem);
  if (s != LSM_OK) return s;
  int *bad = static_cast<int *>(mem);
  if ((s = reset_bad_label(ctx, bad, (int)k)) != LSM_OK) return s;
  LSM_LAUNCH(copy_rows<T>, blocks_for(k * d, threads), threads, ctx->cuda->stream, index,
             static_cast<const T *>(src), static_cast<T *>(dst), c, d, k, scatter, bad);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  int at = 0;
  int32_t v = 0;
  if ((s = read_bad(ctx, bad, index, k, &at, &v)) != LSM_OK || at >= k) return s;
  int32_t previous = -1;  // the bound below the first entry
  if (at > 0) {
    LSM_CUDA_TRY(ctx, cudaMemcpyAsync(&previous, index + at - 1, sizeof previous, cudaMemcpyDeviceToHost,
                                      ctx->cuda->stream));
    LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  }
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  "index[" + std::to_string(at) + "]: expected an integer in [" +
                      std::to_string(int64_t(previous) + 1) + ", " + std::to_string(c) +
                      ") (strictly ascending row indices), got " + std::to_string(v));
}

}  // namespace

int32_t lsm_cuda_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                      const void *src, void *dst, bool scatter) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return dtype == LSM_FLOAT32 ? rows<float>(ctx, c, d, k, index, src, dst, scatter)
                              : rows<double>(ctx, c, d, k, index, src, dst, scatter);
}
