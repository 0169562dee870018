// backend.cu: the CUDA backend's table (api/backend.h): devices, contexts and their memory, and
// the ops of op.cu, loss.cu and optim.cu. Every CUDA error becomes a status and a message through
// lsm_fail; nothing prints or exits. Under LSM_EMU the same file compiles with the host compiler
// against the CPU execution layer (emulator/).
#include <cuda_runtime.h>

#include <string>

#include "api/backend.h"
#include "gpu/common.cuh"

using namespace lsm_cuda;

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

namespace {

// cuBLAS on the context's stream with a workspace of its own (NVIDIA's advice: 32 MiB on Hopper
// and newer, 4 MiB before), where the process found cuBLAS. A cuBLAS that was found but cannot
// start fails the context: the message says how to run on the library's kernels instead.
int32_t start_blas(lsm_context *ctx) {
  const lsm_blas::library &lib = lsm_blas::load();
  if (lib.refused) return lsm_fail(ctx, LSM_ERR_UNAVAILABLE, lib.why);
  if (lib.calls == nullptr) return LSM_OK;
  lsm_cuda_state *st = ctx->cuda;
  auto refuse = [&](const std::string &what) {
    return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                    "cuBLAS (" + lib.path + ") cannot run on device " + std::to_string(ctx->device) + ": " + what +
                        "; LSOFTMAX_CUBLAS=off uses the library's own kernels");
  };
  int b = lib.calls->create(&st->blas);
  if (b != lsm_blas::kStatusSuccess) {
    st->blas = nullptr;
    return refuse(std::string("cublasCreate: ") + lsm_blas::status_name(b));
  }
  const size_t bytes = (size_t)(st->cc_major >= 9 ? 32 : 4) << 20;
  LSM_CUDA_TRY(ctx, cudaMalloc(&st->blas_workspace, bytes));
  if ((b = lib.calls->set_stream(st->blas, st->stream)) != lsm_blas::kStatusSuccess)
    return refuse(std::string("cublasSetStream: ") + lsm_blas::status_name(b));
  if ((b = lib.calls->set_workspace(st->blas, st->blas_workspace, bytes)) != lsm_blas::kStatusSuccess)
    return refuse(std::string("cublasSetWorkspace: ") + lsm_blas::status_name(b));
  return LSM_OK;
}

}  // namespace

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
  return start_blas(ctx);
}

void lsm_cuda_context_release(lsm_context *ctx) {
  lsm_cuda_state *st = ctx->cuda;
  if (st == nullptr) return;
  // Best effort: a broken device must not stop the host memory from being released.
  if (cudaSetDevice(ctx->device) == cudaSuccess) {
    if (st->stream != nullptr) cudaStreamSynchronize(st->stream);
    for (auto &a : ctx->allocations) cudaFree(const_cast<char *>(a.first));
    if (st->workspace != nullptr) cudaFree(st->workspace);
    if (st->blas != nullptr) lsm_blas::load().calls->destroy(st->blas);
    if (st->blas_workspace != nullptr) cudaFree(st->blas_workspace);
    if (st->rounded != nullptr) cudaFree(st->rounded);
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
  if (precision != LSM_PRECISION_EXACT && ctx->cuda->cc_major < 8)
    return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                    std::string("precision: ") + (precision == LSM_PRECISION_BF16 ? "bf16" : "TF32") + " needs a CUDA device of compute capability 8.0 or newer, and device " +
                        std::to_string(ctx->device) + " is " + std::to_string(ctx->cuda->cc_major) + "." +
                        std::to_string(ctx->cuda->cc_minor));
  return LSM_OK;
}

namespace {

void trim_workspace(lsm_context *) {}  // the device workspace is kept until the context goes

}  // namespace

// In the order of lsm_backend_ops's fields.
extern const lsm_backend_ops lsm_cuda_backend = {
    false,  // tensors: memory lsm_malloc gave on the context
    lsm_cuda_device_count,    lsm_cuda_device_name,  lsm_blas::describe,    lsm_cuda_context_init, lsm_cuda_context_release,
    lsm_cuda_check_precision, trim_workspace,        lsm_cuda_malloc,       lsm_cuda_free,
    lsm_cuda_copy,            lsm_cuda_synchronize,  lsm_cuda_forward,      lsm_cuda_backward,
    lsm_cuda_loss,            lsm_cuda_sgd,          lsm_cuda_sum,          lsm_cuda_topk,
    lsm_cuda_adam,            lsm_cuda_axpby,        lsm_cuda_sum_squares,  lsm_cuda_rows,
};
