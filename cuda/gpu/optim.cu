// gpu/optim.cu: resident training on a CUDA device: the SGD and Adam updates (one element-wise
// kernel over W's memory each), the sum of squares for clipping, the sum of the row losses (one block, 8 bytes back), and top-k by blocks of
// classes (x W_b^T into the workspace, then each row's k best kept in the outputs).
#include <cuda_runtime.h>

#include <algorithm>

#include "gpu/common.cuh"
#include "gpu/optim_kernels.cuh"

namespace {

using namespace lsm_cuda;

// Every optimizer's update: with the check asked for (mode LSM_SGD_SKIP or LSM_SGD_CHECK), the
// flag zeroed and the reduction into it, then the update kernel (launch) that reads it on the
// device, no host round trip in between; then the 4 bytes of the flag back.
template <typename T, typename Launch>
int32_t checked_update(lsm_context *ctx, int64_t count, int32_t mode, const void *g, int32_t *nonfinite,
                       Launch launch) {
  constexpr int threads = 256;
  cudaStream_t stream = ctx->cuda->stream;
  const unsigned int blocks = blocks_for(count, threads);
  int32_t *flag = nullptr;
  *nonfinite = 0;
  if (mode != LSM_SGD_APPLY) {
    void *mem = nullptr;
    const int32_t s = workspace(ctx, sizeof(int32_t), &mem);
    if (s != LSM_OK) return s;
    flag = static_cast<int32_t *>(mem);
    LSM_CUDA_TRY(ctx, cudaMemsetAsync(flag, 0, sizeof(int32_t), stream));
    LSM_LAUNCH(lsm_kernels::nonfinite_flag<T>, blocks, threads, stream, static_cast<const T *>(g), (int)count, flag);
  }
  if (mode != LSM_SGD_CHECK) launch(blocks, threads, stream, flag);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  if (flag != nullptr) {
    LSM_CUDA_TRY(ctx, cudaMemcpyAsync(nonfinite, flag, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    ctx->traffic_from += sizeof(int32_t);
  }
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(stream));
  return LSM_OK;
}

template <typename T>
int32_t sgd(lsm_context *ctx, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v, int32_t *nonfinite) {
  T *velocity = o.momentum == 0.0 ? nullptr : static_cast<T *>(v);
  return checked_update<T>(ctx, count, o.nonfinite, g, nonfinite,
                           [&](unsigned int blocks, int threads, cudaStream_t stream, const int32_t *flag) {
                             LSM_LAUNCH(lsm_kernels::sgd_update<T>, blocks, threads, stream, o, (int)count,
                                        static_cast<T *>(w), static_cast<const T *>(g), velocity, flag);
                           });
}

template <typename T>
int32_t adam(lsm_context *ctx, int64_t count, const lsm_adam &o, void *w, const void *g, void *m, void *v, void *vmax,
             int32_t *nonfinite) {
  const int mode = o.decoupled ? LSM_ADAM_DECOUPLED : o.weight_decay != 0.0 ? LSM_ADAM_L2 : LSM_ADAM_PLAIN;
  T *max = o.amsgrad ? static_cast<T *>(vmax) : nullptr;
  return checked_update<T>(ctx, count, o.nonfinite, g, nonfinite,
                           [&](unsigned int blocks, int threads, cudaStream_t stream, const int32_t *flag) {
                             LSM_LAUNCH(lsm_kernels::adam_update<T>, blocks, threads, stream, lsm_adam_coefs_of(o),
                                        mode, (int)count, static_cast<T *>(w), static_cast<const T *>(g),
                                        static_cast<T *>(m), static_cast<T *>(v), max, flag);
                           });
}

// Threads' sums of squares into the workspace, added by one block (sum_values), 8 bytes back.
template <typename T>
int32_t sum_squares(lsm_context *ctx, const void *values, int64_t count, double *out) {
  using namespace lsm_kernels;
  const unsigned int blocks = std::min(blocks_for(count, kSquaresThreads), 64u);
  const int parts = (int)blocks * kSquaresThreads;
  void *mem = nullptr;
  const int32_t s = workspace(ctx, (size_t)(parts + 1) * sizeof(double), &mem);
  if (s != LSM_OK) return s;
  double *part = static_cast<double *>(mem), *slot = part + parts;
  cudaStream_t stream = ctx->cuda->stream;
  LSM_LAUNCH(sum_squares_parts<T>, blocks, kSquaresThreads, stream, static_cast<const T *>(values), (int)count, part);
  LSM_LAUNCH(sum_values, 1, kSumThreads, stream, part, parts, slot);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(out, slot, sizeof(double), cudaMemcpyDeviceToHost, stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(stream));
  ctx->traffic_from += sizeof(double);
  return LSM_OK;
}

template <typename T>
int32_t topk(lsm_context *ctx, int n, int d, int c, const lsm_margin &mg, int k, const T *x, const T *w,
             int32_t *indices, T *scores) {
  using namespace lsm_kernels;
  // Blocks of at least k classes, so that the first one fills every row's list.
  const int64_t fit = (int64_t)(ctx->workspace_limit / ((size_t)n * sizeof(T)));
  const int block = (int)std::min<int64_t>(c, std::max<int64_t>(k, fit));
  void *mem = nullptr;
  const size_t inputs = inputs_bytes<T>(mg, n, d, c);  // normalised rows where the kind has them
  int32_t st = workspace(ctx, inputs + (size_t)n * block * sizeof(T), &mem);
  if (st != LSM_OK) return st;
  const device_inputs<T> in = normalise_inputs<T>(ctx, mg, x, w, n, d, c, static_cast<char *>(mem));
  T *z = reinterpret_cast<T *>(static_cast<char *>(mem) + inputs);
  for (int c0 = 0; c0 < c; c0 += block) {
    const int cb = std::min(block, c - c0);
    gemm_args<T> a = {};  // z = x W_b^T
    a.M = n, a.N = cb, a.K = d;
    a.A = in.x, a.lda = d, a.vec_a = vectorizable<T>(in.x, d);
    a.B = in.w + (int64_t)c0 * d, a.ldb = d, a.vec_b = vectorizable<T>(a.B, d);
    a.C = z, a.vec_c = vectorizable<T>(z, cb);
    launch_gemm<T, kNT>(ctx, a);
    LSM_LAUNCH(topk_block<T>, (unsigned int)std::min(n, 65535), kTopkThreads, ctx->cuda->stream, z, n, cb, c0, k,
               c0 == 0, indices, scores);
  }
  if ((st = launched(ctx)) != LSM_OK) return st;
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  return LSM_OK;
}

}  // namespace

int32_t lsm_cuda_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g,
                     void *v, int32_t *nonfinite) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return dtype == LSM_FLOAT32 ? sgd<float>(ctx, count, o, w, g, v, nonfinite)
                              : sgd<double>(ctx, count, o, w, g, v, nonfinite);
}

int32_t lsm_cuda_adam(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, void *w, const void *g,
                      void *m, void *v, void *vmax, int32_t *nonfinite) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return dtype == LSM_FLOAT32 ? adam<float>(ctx, count, o, w, g, m, v, vmax, nonfinite)
                              : adam<double>(ctx, count, o, w, g, m, v, vmax, nonfinite);
}

int32_t lsm_cuda_axpby(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b, void *y) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  constexpr int threads = 256;
  cudaStream_t stream = ctx->cuda->stream;
  const unsigned int blocks = blocks_for(count, threads);
  if (dtype == LSM_FLOAT32) {
    LSM_LAUNCH(lsm_kernels::axpby_update<float>, blocks, threads, stream, (int)count, a,
               a == 0.0 ? nullptr : static_cast<const float *>(x), b, b != 0.0, static_cast<float *>(y));
  } else {
    LSM_LAUNCH(lsm_kernels::axpby_update<double>, blocks, threads, stream, (int)count, a,
               a == 0.0 ? nullptr : static_cast<const double *>(x), b, b != 0.0, static_cast<double *>(y));
  }
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(stream));
  return LSM_OK;
}

int32_t lsm_cuda_sum_squares(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return dtype == LSM_FLOAT32 ? sum_squares<float>(ctx, values, count, out)
                              : sum_squares<double>(ctx, values, count, out);
}

int32_t lsm_cuda_sum(lsm_context *ctx, const double *values, int64_t count, double *out) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  void *mem = nullptr;
  if ((s = workspace(ctx, sizeof(double), &mem)) != LSM_OK) return s;
  double *slot = static_cast<double *>(mem);
  cudaStream_t stream = ctx->cuda->stream;
  LSM_LAUNCH(lsm_kernels::sum_values, 1, lsm_kernels::kSumThreads, stream, values, (int)count, slot);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(out, slot, sizeof(double), cudaMemcpyDeviceToHost, stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(stream));
  ctx->traffic_from += sizeof(double);
  return LSM_OK;
}

int32_t lsm_cuda_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k, const void *x,
                      const void *w, int32_t *indices, void *scores) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  if (dtype == LSM_FLOAT32)
    return topk<float>(ctx, (int)n, (int)d, (int)c, mg, (int)k, static_cast<const float *>(x),
                       static_cast<const float *>(w), indices, static_cast<float *>(scores));
  return topk<double>(ctx, (int)n, (int)d, (int)c, mg, (int)k, static_cast<const double *>(x),
                      static_cast<const double *>(w), indices, static_cast<double *>(scores));
}
