// cuda_backend.cu: the CUDA backend: devices, contexts, memory, and the op's launches of the
// kernels in target_kernels.cuh and gemm_kernels.cuh (the fused loss: cuda_loss.cu).
// Every CUDA error becomes a status and a message through lsm_fail; nothing prints or exits.
// Under LSM_EMU the same file compiles with the host compiler against the CPU execution layer.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "internal.h"
#include "cuda_common.cuh"

namespace {

using namespace lsm_cuda;

template <typename T>
int32_t forward(lsm_context *ctx, const lsm_problem &p) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  // Workspace: the normalised inputs (if any), then the bad-label slot.
  const size_t in_bytes = inputs_bytes<T>(p.margin, n, d, c);
  void *ws = nullptr;
  int32_t st = workspace(ctx, in_bytes + sizeof(int), &ws);
  if (st != LSM_OK) return st;
  int *bad = reinterpret_cast<int *>(static_cast<char *>(ws) + in_bytes);
  if ((st = reset_bad_label(ctx, bad, n)) != LSM_OK) return st;
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  T *logits = static_cast<T *>(p.logits);
  const device_inputs<T> in = normalise_inputs<T>(ctx, p.margin, x, w, n, d, c, static_cast<char *>(ws));
  gemm_args<T> a = {};
  a.M = n, a.N = c, a.K = d;
  a.A = in.x, a.lda = d, a.vec_a = vectorizable<T>(in.x, d);
  a.B = in.w, a.ldb = d, a.vec_b = vectorizable<T>(in.w, d);
  a.C = logits, a.vec_c = vectorizable<T>(logits, c);
  launch_gemm<T, kNT>(ctx, a);
  LSM_LAUNCH(forward_target<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, x, w, p.labels, n, d,
             c, p.margin, logits, bad);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  return check_bad_label(ctx, p.labels, p.n, p.c, bad);
}

template <typename T>
int32_t backward(lsm_context *ctx, const lsm_problem &p) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  // Workspace: the normalised inputs (if any), the per-sample correction records (n, in double:
  // margin.cuh lsm_correction), then the bad-label slot.
  const size_t in_bytes = inputs_bytes<T>(p.margin, n, d, c);
  const size_t coef_bytes = aligned((size_t)n * sizeof(lsm_correction));
  void *ws = nullptr;
  int32_t st = workspace(ctx, in_bytes + coef_bytes + sizeof(int), &ws);
  if (st != LSM_OK) return st;
  lsm_correction *coef = reinterpret_cast<lsm_correction *>(static_cast<char *>(ws) + in_bytes);
  int *bad = reinterpret_cast<int *>(static_cast<char *>(ws) + in_bytes + coef_bytes);
  if ((st = reset_bad_label(ctx, bad, n)) != LSM_OK) return st;
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  const T *g = static_cast<const T *>(p.grad_logits);
  T *gx = static_cast<T *>(p.grad_x);
  T *gw = static_cast<T *>(p.grad_w);
  const device_inputs<T> in = normalise_inputs<T>(ctx, p.margin, x, w, n, d, c, static_cast<char *>(ws));
  // The plain linear layer's gradients (of the products' inputs, projected back to x and W for
  // the kinds that normalise), each followed by the margin's corrections (added per element in
  // double, as the CPU backend adds them; target_kernels.cuh).
  gemm_args<T> a = {};
  // grad_x[n,d] = G[n,c] W[c,d], then each sample's correction of its row (and its record).
  a.M = n, a.N = d, a.K = c;
  a.A = g, a.lda = c, a.vec_a = vectorizable<T>(g, c);
  a.B = in.w, a.ldb = d, a.vec_b = vectorizable<T>(in.w, d);
  a.C = gx, a.vec_c = vectorizable<T>(gx, d);
  launch_gemm<T, kNN>(ctx, a);
  project_gradients<T>(ctx, p.margin, x, w, n, d, c, gx, nullptr);
  LSM_LAUNCH(backward_target_x<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, x, w, p.labels, g,
             n, d, c, p.margin, gx, coef, bad);
  // grad_w[c,d] = G[n,c]^T x[n,d], then the samples' corrections of their label rows.
  a.M = c, a.N = d, a.K = n;
  a.A = g, a.lda = c, a.vec_a = vectorizable<T>(g, c);
  a.B = in.x, a.ldb = d, a.vec_b = vectorizable<T>(in.x, d);
  a.C = gw, a.vec_c = vectorizable<T>(gw, d);
  launch_gemm<T, kTN>(ctx, a);
  project_gradients<T>(ctx, p.margin, x, w, n, d, c, nullptr, gw);
  if (!(p.margin.kind == LSM_MARGIN_LSOFTMAX && p.margin.m == 1)) {
    launch_target_w<T>(ctx, x, w, coef, n, d, c, gw);
  }
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  return check_bad_label(ctx, p.labels, p.n, p.c, bad);
}

}  // namespace

int32_t lsm_cuda_device_count(int32_t *count, std::string *why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  *count = 0;
  if (e != cudaSuccess) {
    cudaGetLastError();
    int driver = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0) {
      *why = "CUDA backend unavailable: no NVIDIA driver is installed (libcuda.so.1 was not found)";
    } else {
      *why = "CUDA backend unavailable: " + describe(e, "cudaGetDeviceCount");
    }
    cudaGetLastError();
    return LSM_ERR_UNAVAILABLE;
  }
  if (n == 0) {
    *why = "CUDA backend unavailable: the driver reports no CUDA device";
    return LSM_ERR_UNAVAILABLE;
  }
  *count = n;
  return LSM_OK;
}

int32_t lsm_cuda_device_name(int32_t device, std::string *name, std::string *why) {
  int32_t count = 0;
  const int32_t s = lsm_cuda_device_count(&count, why);
  if (s != LSM_OK) return s;
  if (device < 0 || device >= count) {
    *why = "device: expected an index in [0, " + std::to_string(count) + "), got " + std::to_string(device);
    return LSM_ERR_INVALID_ARGUMENT;
  }
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *why = describe(e, "cudaGetDeviceProperties");
    return LSM_ERR_CUDA;
  }
  *name = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  return LSM_OK;
}

int32_t lsm_cuda_context_init(lsm_context *ctx) {
  int32_t count = 0;
  std::string why;
  int32_t s = lsm_cuda_device_count(&count, &why);
  if (s != LSM_OK) return lsm_fail(ctx, s, why);
  if (ctx->device < 0 || ctx->device >= count)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "device: expected an index in [0, " + std::to_string(count) + "), got " + std::to_string(ctx->device));
  ctx->cuda = new lsm_cuda_state();
  if ((s = activate(ctx)) != LSM_OK) return s;
  LSM_CUDA_TRY(ctx, cudaDeviceGetAttribute(&ctx->cuda->cc_major, cudaDevAttrComputeCapabilityMajor, ctx->device));
  LSM_CUDA_TRY(ctx, cudaDeviceGetAttribute(&ctx->cuda->cc_minor, cudaDevAttrComputeCapabilityMinor, ctx->device));
  // The oldest target CUDA 13 builds for: below it no kernel image exists, so say so up front
  // rather than fail at the first launch.
  if (ctx->cuda->cc_major * 10 + ctx->cuda->cc_minor < 75)
    return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                    "device " + std::to_string(ctx->device) + " has compute capability " +
                        std::to_string(ctx->cuda->cc_major) + "." + std::to_string(ctx->cuda->cc_minor) +
                        "; this library has kernels for 7.5 and newer");
  LSM_CUDA_TRY(ctx, cudaStreamCreateWithFlags(&ctx->cuda->stream, cudaStreamNonBlocking));
  return LSM_OK;
}

void lsm_cuda_context_release(lsm_context *ctx) {
  lsm_cuda_state *st = ctx->cuda;
  if (st == nullptr) return;
  // Best effort: a broken device must not stop the host memory from being released.
  if (cudaSetDevice(ctx->device) == cudaSuccess) {
    if (st->stream != nullptr) cudaStreamSynchronize(st->stream);
    for (auto &a : ctx->allocations) cudaFree(const_cast<char *>(a.first));
    if (st->workspace != nullptr) cudaFree(st->workspace);
    if (st->stream != nullptr) cudaStreamDestroy(st->stream);
  }
  cudaGetLastError();
  ctx->allocations.clear();
  delete st;
  ctx->cuda = nullptr;
}

int32_t lsm_cuda_malloc(lsm_context *ctx, size_t bytes, void **out) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  void *p = nullptr;
  LSM_CUDA_TRY(ctx, cudaMalloc(&p, bytes));
  try {
    ctx->allocations.emplace(static_cast<const char *>(p), bytes);
  } catch (...) {
    cudaFree(p);
    return lsm_fail(ctx, LSM_ERR_OUT_OF_MEMORY, "host allocation failed");
  }
  *out = p;
  return LSM_OK;
}

int32_t lsm_cuda_free(lsm_context *ctx, void *ptr) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  // Work queued on the stream may still read ptr. The record goes only once the memory is
  // gone: after a failure it stays, and lsm_context_destroy frees it.
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaFree(ptr));
  ctx->allocations.erase(static_cast<const char *>(ptr));
  return LSM_OK;
}

int32_t lsm_cuda_copy(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_device) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(dst, src, bytes, kind, ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  return LSM_OK;
}

int32_t lsm_cuda_synchronize(lsm_context *ctx) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  return LSM_OK;
}

int32_t lsm_cuda_check_precision(lsm_context *ctx, int32_t precision) {
  if (precision == LSM_PRECISION_TF32 && ctx->cuda->cc_major < 8)
    return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                    "precision: TF32 needs a CUDA device of compute capability 8.0 or newer, and device " +
                        std::to_string(ctx->device) + " is " + std::to_string(ctx->cuda->cc_major) + "." +
                        std::to_string(ctx->cuda->cc_minor));
  return LSM_OK;
}

int32_t lsm_cuda_forward(lsm_context *ctx, const lsm_problem &p) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return p.dtype == LSM_FLOAT32 ? forward<float>(ctx, p) : forward<double>(ctx, p);
}

int32_t lsm_cuda_backward(lsm_context *ctx, const lsm_problem &p) {
  int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return p.dtype == LSM_FLOAT32 ? backward<float>(ctx, p) : backward<double>(ctx, p);
}
