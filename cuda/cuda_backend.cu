// cuda_backend.cu: the CUDA backend: devices, contexts, memory, and the launches of the kernels
// in target_kernels.cuh and gemm_kernels.cuh.
// Every CUDA error becomes a status and a message through lsm_fail; nothing prints or exits.
// Under LSM_EMU the same file compiles with the host compiler against the CPU execution layer.
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <string>

#include "internal.h"
#include "target_kernels.cuh"
#include "launch.cuh"

struct lsm_cuda_state {
  cudaStream_t stream = nullptr;
  int cc_major = 0, cc_minor = 0;  // compute capability
  void *workspace = nullptr;  // normalised inputs, per-sample correction records, bad-label slot
  size_t workspace_bytes = 0;
};

namespace {

std::string describe(cudaError_t e, const char *what) {
  return std::string(what) + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
}

int32_t cuda_fail(lsm_context *ctx, cudaError_t e, const char *what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  const int32_t status = e == cudaErrorMemoryAllocation ? LSM_ERR_OUT_OF_MEMORY : LSM_ERR_CUDA;
  return lsm_fail(ctx, status, describe(e, what));
}

#define LSM_CUDA_TRY(ctx, call)                           \
  do {                                                    \
    const cudaError_t lsm_e_ = (call);                    \
    if (lsm_e_ != cudaSuccess) return cuda_fail(ctx, lsm_e_, #call); \
  } while (0)

// Makes the context's device current for this thread (contexts may be used from any thread).
int32_t activate(lsm_context *ctx) {
  cudaGetLastError();  // a non-sticky error the host program left behind is not ours to report
  LSM_CUDA_TRY(ctx, cudaSetDevice(ctx->device));
  return LSM_OK;
}

// Grows the context's workspace to at least `bytes`.
int32_t workspace(lsm_context *ctx, size_t bytes, void **out) {
  lsm_cuda_state *st = ctx->cuda;
  if (st->workspace_bytes < bytes) {
    if (st->workspace != nullptr) {
      LSM_CUDA_TRY(ctx, cudaStreamSynchronize(st->stream));
      LSM_CUDA_TRY(ctx, cudaFree(st->workspace));
      st->workspace = nullptr;
      st->workspace_bytes = 0;
    }
    LSM_CUDA_TRY(ctx, cudaMalloc(&st->workspace, bytes));
    st->workspace_bytes = bytes;
  }
  *out = st->workspace;
  return LSM_OK;
}

// backward_target_w: threads per block (along d) and the most label slices (blockIdx.y).
constexpr int kColumnBlock = 128;
constexpr int kLabelSlices = 32;

// Enough blocks to cover `total` threads of work, capped: the loops are grid-strided.
unsigned int blocks_for(int64_t total, int threads) {
  const int64_t b = (total + threads - 1) / threads;
  return (unsigned int)std::min<int64_t>(std::max<int64_t>(b, 1), 65535);
}

template <typename T>
unsigned int gemm_blocks(int64_t m, int64_t n) {
  const int64_t t = lsm_kernels::gemm_shape<T>::BM;
  return (unsigned int)(((m + t - 1) / t) * ((n + t - 1) / t));
}

// Whether 16-byte vector access is safe for a row-major matrix at p with leading dimension ld:
// the library's allocations are 256-byte aligned, but the C ABI accepts any pointer into them.
template <typename T>
bool vectorizable(const void *p, int64_t ld) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % lsm_kernels::vec_traits<T>::V == 0;
}

// One product on the SIMT kernel, or on tensor cores for float32 in TF32 precision.
template <typename T, int MODE>
void launch_gemm(lsm_context *ctx, const lsm_kernels::gemm_args<T> &a) {
  using namespace lsm_kernels;
  using cfg = gemm_cfg<T, MODE>;
  const unsigned int blocks = gemm_blocks<T>(a.M, a.N);
  cudaStream_t s = ctx->cuda->stream;
  if constexpr (std::is_same<T, float>::value) {
    if (ctx->precision == LSM_PRECISION_TF32) {  // float64 stays exact whatever the precision
      LSM_LAUNCH(gemm_tf32<cfg>, blocks, kGemmThreads, s, a);
      return;
    }
  }
  LSM_LAUNCH(gemm<cfg>, blocks, kGemmThreads, s, a);
}

// Bytes rounded up to the workspace's alignment of its parts.
size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The products' inputs (CPU: product_inputs in cpu_common.h): x and W themselves, or copies with
// normalised rows, W^ for every kind but L-Softmax and scale x^ for the normalised kinds, in the
// workspace from `at` (inputs_bytes of it).
template <typename T>
struct device_inputs {
  const T *x, *w;
};

template <typename T>
size_t inputs_bytes(const lsm_problem &p) {
  return (lsm_normalises_x(p.margin.kind) ? aligned((size_t)(p.n * p.d) * sizeof(T)) : 0) +
         (lsm_normalises_w(p.margin.kind) ? aligned((size_t)(p.c * p.d) * sizeof(T)) : 0);
}

template <typename T>
device_inputs<T> normalise_inputs(lsm_context *ctx, const lsm_problem &p, char *at) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  device_inputs<T> in = {static_cast<const T *>(p.x), static_cast<const T *>(p.w)};
  if (lsm_normalises_x(p.margin.kind)) {
    T *xc = reinterpret_cast<T *>(at);
    LSM_LAUNCH(normalise_rows<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, in.x, n, d,
               p.margin.scale, xc);
    in.x = xc;
    at += aligned((size_t)n * d * sizeof(T));
  }
  if (lsm_normalises_w(p.margin.kind)) {
    T *wc = reinterpret_cast<T *>(at);
    LSM_LAUNCH(normalise_rows<T>, blocks_for((int64_t)c * kWarp, kSampleBlock), kSampleBlock, s, in.w, c, d, 1.0,
               wc);
    in.w = wc;
  }
  return in;
}

// Reads the bad-label slot after the stream has drained; reports the first bad sample.
int32_t check_bad_label(lsm_context *ctx, const lsm_problem &p, const int *bad_slot) {
  int bad = 0;
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(&bad, bad_slot, sizeof bad, cudaMemcpyDeviceToHost, ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  if (bad >= p.n) return LSM_OK;
  // On the context's stream, not cudaMemcpy's legacy default stream (which would also wait for
  // other blocking streams on the device); the stack variable is read only after the sync.
  int32_t label = 0;
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(&label, p.labels + bad, sizeof label, cudaMemcpyDeviceToHost, ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  "labels[" + std::to_string(bad) + "]: expected an integer in [0, " + std::to_string(p.c) +
                      "), got " + std::to_string(label));
}

template <typename T>
int32_t forward(lsm_context *ctx, const lsm_problem &p) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  // Workspace: the normalised inputs (if any), then the bad-label slot.
  const size_t in_bytes = inputs_bytes<T>(p);
  void *ws = nullptr;
  int32_t st = workspace(ctx, in_bytes + sizeof(int), &ws);
  if (st != LSM_OK) return st;
  int *bad = reinterpret_cast<int *>(static_cast<char *>(ws) + in_bytes);
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(bad, &n, sizeof n, cudaMemcpyHostToDevice, s));
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  T *logits = static_cast<T *>(p.logits);
  const device_inputs<T> in = normalise_inputs<T>(ctx, p, static_cast<char *>(ws));
  gemm_args<T> a = {};
  a.M = n, a.N = c, a.K = d;
  a.A = in.x, a.lda = d, a.vec_a = vectorizable<T>(in.x, d);
  a.B = in.w, a.ldb = d, a.vec_b = vectorizable<T>(in.w, d);
  a.C = logits, a.vec_c = vectorizable<T>(logits, c);
  launch_gemm<T, kNT>(ctx, a);
  LSM_LAUNCH(forward_target<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, x, w, p.labels, n, d,
             c, p.margin, logits, bad);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  return check_bad_label(ctx, p, bad);
}

template <typename T>
int32_t backward(lsm_context *ctx, const lsm_problem &p) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  // Workspace: the normalised inputs (if any), the per-sample correction records (n, in double:
  // margin.cuh lsm_correction), then the bad-label slot.
  const size_t in_bytes = inputs_bytes<T>(p);
  const size_t coef_bytes = aligned((size_t)n * sizeof(lsm_correction));
  void *ws = nullptr;
  int32_t st = workspace(ctx, in_bytes + coef_bytes + sizeof(int), &ws);
  if (st != LSM_OK) return st;
  lsm_correction *coef = reinterpret_cast<lsm_correction *>(static_cast<char *>(ws) + in_bytes);
  int *bad = reinterpret_cast<int *>(static_cast<char *>(ws) + in_bytes + coef_bytes);
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(bad, &n, sizeof n, cudaMemcpyHostToDevice, s));
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  const T *g = static_cast<const T *>(p.grad_logits);
  T *gx = static_cast<T *>(p.grad_x);
  T *gw = static_cast<T *>(p.grad_w);
  const device_inputs<T> in = normalise_inputs<T>(ctx, p, static_cast<char *>(ws));
  const unsigned int sample_blocks = blocks_for((int64_t)n * kWarp, kSampleBlock);
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
  if (lsm_normalises_x(p.margin.kind))
    LSM_LAUNCH(project_rows<T>, sample_blocks, kSampleBlock, s, x, n, d, p.margin.scale, gx);
  LSM_LAUNCH(backward_target_x<T>, sample_blocks, kSampleBlock, s, x, w, p.labels, g, n, d, c, p.margin, gx, coef,
             bad);
  // grad_w[c,d] = G[n,c]^T x[n,d], then the samples' corrections of their label rows.
  a.M = c, a.N = d, a.K = n;
  a.A = g, a.lda = c, a.vec_a = vectorizable<T>(g, c);
  a.B = in.x, a.ldb = d, a.vec_b = vectorizable<T>(in.x, d);
  a.C = gw, a.vec_c = vectorizable<T>(gw, d);
  launch_gemm<T, kTN>(ctx, a);
  if (lsm_normalises_w(p.margin.kind))
    LSM_LAUNCH(project_rows<T>, blocks_for((int64_t)c * kWarp, kSampleBlock), kSampleBlock, s, w, c, d, 1.0, gw);
  if (!(p.margin.kind == LSM_MARGIN_LSOFTMAX && p.margin.m == 1)) {
    const int slices = std::min(c, kLabelSlices);
    const dim3 grid(blocks_for(d, kColumnBlock), (unsigned int)slices);
    LSM_LAUNCH(backward_target_w<T>, grid, kColumnBlock, s, x, w, coef, n, d, slices, gw);
  }
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  return check_bad_label(ctx, p, bad);
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
