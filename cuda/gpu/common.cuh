// common.cuh: what the CUDA backend's host code shares (backend.cu: devices, contexts, memory;
// op.cu: forward and backward; loss.cu: the fused loss; optim.cu: resident training): the
// per-context state, the error path, the workspace and the product launches. Not installed, not
// ABI.
#ifndef LSOFTMAX_CUDA_COMMON_CUH
#define LSOFTMAX_CUDA_COMMON_CUH

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "gpu/gemm_kernels.cuh"
#include "api/backend.h"
#include "gpu/bf16_kernels.cuh"
#include "gpu/blas.h"
#include "gpu/launch.cuh"
#include "gpu/target_kernels.cuh"

// The CUDA backend's functions, which backend.cu puts in its table (api/backend.h says what each
// does): devices, contexts and memory (backend.cu), the op (op.cu), the fused loss (loss.cu), the
// optimizer, the sum and top-k (optim.cu).
int32_t lsm_cuda_device_count(int32_t *count, std::string *why);
int32_t lsm_cuda_device_name(int32_t device, std::string *name, std::string *why);
int32_t lsm_cuda_context_init(lsm_context *ctx);
void lsm_cuda_context_release(lsm_context *ctx);
int32_t lsm_cuda_check_precision(lsm_context *ctx, int32_t precision);
int32_t lsm_cuda_malloc(lsm_context *ctx, size_t bytes, void **out);
int32_t lsm_cuda_free(lsm_context *ctx, void *ptr);
int32_t lsm_cuda_copy(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_device);
int32_t lsm_cuda_synchronize(lsm_context *ctx);
int32_t lsm_cuda_forward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cuda_backward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cuda_loss(lsm_context *ctx, const lsm_loss_problem &p);
int32_t lsm_cuda_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v,
                     int32_t *nonfinite);
int32_t lsm_cuda_sum(lsm_context *ctx, const double *values, int64_t count, double *out);
int32_t lsm_cuda_adam(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, void *w, const void *g,
                      void *m, void *v, void *vmax, int32_t *nonfinite);
int32_t lsm_cuda_axpby(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b, void *y);
int32_t lsm_cuda_sum_squares(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out);
int32_t lsm_cuda_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                      const void *src, void *dst, bool scatter);
int32_t lsm_cuda_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k,
                      const void *x, const void *w, int32_t *indices, void *scores);

struct lsm_cuda_state {
  cudaStream_t stream = nullptr;
  int cc_major = 0, cc_minor = 0;  // compute capability
  void *workspace = nullptr;       // per-call scratch: correction records, row arrays, loss blocks
  size_t workspace_bytes = 0;
  lsm_blas::handle_t blas = nullptr;  // cuBLAS on this context's stream, or null: the library's kernels
  void *blas_workspace = nullptr;
  void *rounded = nullptr;  // a product's inputs rounded to bf16 (precision "bf16")
  size_t rounded_bytes = 0;
  std::string failed;  // the first product of this call that could not run (launched() reports it)
};

namespace lsm_cuda {

inline std::string describe(cudaError_t e, const char *what) {
  return std::string(what) + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
}

inline int32_t cuda_fail(lsm_context *ctx, cudaError_t e, const char *what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  const int32_t status = e == cudaErrorMemoryAllocation ? LSM_ERR_OUT_OF_MEMORY : LSM_ERR_CUDA;
  return lsm_fail(ctx, status, describe(e, what));
}

#define LSM_CUDA_TRY(ctx, call)                                        \
  do {                                                                 \
    const cudaError_t lsm_e_ = (call);                                 \
    if (lsm_e_ != cudaSuccess) return lsm_cuda::cuda_fail(ctx, lsm_e_, #call); \
  } while (0)

// Makes the context's device current for this thread (contexts may be used from any thread).
inline int32_t activate(lsm_context *ctx) {
  cudaGetLastError();  // a non-sticky error the host program left behind is not ours to report
  if (ctx->cuda != nullptr) ctx->cuda->failed.clear();
  LSM_CUDA_TRY(ctx, cudaSetDevice(ctx->device));
  return LSM_OK;
}

// Grows one of the context's scratch buffers (*buf of *have bytes) to at least `bytes` (256-byte
// aligned, as cudaMalloc's are), once the work queued on the stream no longer reads it.
inline int32_t grow(lsm_context *ctx, void **buf, size_t *have, size_t bytes) {
  if (*have >= bytes) return LSM_OK;
  if (*buf != nullptr) {
    LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
    LSM_CUDA_TRY(ctx, cudaFree(*buf));
    *buf = nullptr;
    *have = 0;
  }
  LSM_CUDA_TRY(ctx, cudaMalloc(buf, bytes));
  *have = bytes;
  return LSM_OK;
}

// Grows the context's workspace to at least `bytes`.
inline int32_t workspace(lsm_context *ctx, size_t bytes, void **out) {
  lsm_cuda_state *st = ctx->cuda;
  const int32_t s = grow(ctx, &st->workspace, &st->workspace_bytes, bytes);
  if (s == LSM_OK) *out = st->workspace;
  return s;
}

// Enough blocks to cover `total` threads of work, capped: the loops are grid-strided.
inline unsigned int blocks_for(int64_t total, int threads) {
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

// The end of an op's launches: the first product that could not run, else a launch's error.
inline int32_t launched(lsm_context *ctx) {
  if (!ctx->cuda->failed.empty()) return lsm_fail(ctx, LSM_ERR_CUDA, ctx->cuda->failed);
  LSM_CUDA_TRY(ctx, cudaGetLastError());
  return LSM_OK;
}

// Where a product's A and B lie: rows x ld, the last row only `width` long.
template <int MODE>
struct gemm_extent {
  static int64_t a(int64_t m, int64_t k, int64_t lda) { return MODE == lsm_kernels::kTN ? (k - 1) * lda + m : (m - 1) * lda + k; }
  static int64_t b(int64_t n, int64_t k, int64_t ldb) { return MODE == lsm_kernels::kNT ? (n - 1) * ldb + k : (k - 1) * ldb + n; }
};

// Copies of a float32 product's A and B rounded to bf16 (bf16_kernels.cuh), with their leading
// dimensions, in the context's second scratch (the workspace holds the product's own operands).
template <typename OUT, int MODE>
bool round_inputs(lsm_context *ctx, const lsm_kernels::gemm_args<float> &a, OUT **ra, OUT **rb) {
  lsm_cuda_state *st = ctx->cuda;
  const int64_t na = gemm_extent<MODE>::a(a.M, a.K, a.lda), nb = gemm_extent<MODE>::b(a.N, a.K, a.ldb);
  const size_t off = ((size_t)na * sizeof(OUT) + 255) / 256 * 256, bytes = off + (size_t)nb * sizeof(OUT);
  if (grow(ctx, &st->rounded, &st->rounded_bytes, bytes) != LSM_OK) {
    st->failed = "the bf16 copies of a product's inputs: " + ctx->error;
    return false;
  }
  *ra = static_cast<OUT *>(st->rounded);
  *rb = reinterpret_cast<OUT *>(static_cast<char *>(st->rounded) + off);
  LSM_LAUNCH(lsm_kernels::round_bf16<OUT>, blocks_for(na, 256), 256, st->stream, a.A, na, *ra);
  LSM_LAUNCH(lsm_kernels::round_bf16<OUT>, blocks_for(nb, 256), 256, st->stream, a.B, nb, *rb);
  return true;
}

// One product through cuBLAS, which is column-major: the row-major C = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T, so B comes first and the row-major operands are read as
// their transposes (NT: B^T is B read column-major, transposed once more by OP_T).
template <typename T, int MODE>
void blas_gemm(lsm_context *ctx, const lsm_kernels::gemm_args<T> &a) {
  using namespace lsm_blas;
  lsm_cuda_state *st = ctx->cuda;
  const api *calls = load().calls;
  const int op_b = MODE == lsm_kernels::kNT ? kOpT : kOpN, op_a = MODE == lsm_kernels::kTN ? kOpT : kOpN;
  int status;
  if constexpr (std::is_same<T, double>::value) {
    const double one = 1.0, beta = a.accumulate ? 1.0 : 0.0;
    status = calls->gemm_ex(st->blas, op_b, op_a, a.N, a.M, a.K, &one, a.B, kR64F, a.ldb, a.A, kR64F, a.lda, &beta,
                            a.C, kR64F, a.N, kCompute64F, kGemmDefault);
  } else {
    const float one = 1.0f, beta = a.accumulate ? 1.0f : 0.0f;
    const void *pa = a.A, *pb = a.B;
    int type = kR32F, compute = ctx->precision == LSM_PRECISION_TF32 ? kCompute32FFastTF32 : kCompute32F;
    if (ctx->precision == LSM_PRECISION_BF16) {
      uint16_t *ra, *rb;
      if (!round_inputs<uint16_t, MODE>(ctx, a, &ra, &rb)) return;
      pa = ra, pb = rb, type = kR16BF;
    }
    status = calls->gemm_ex(st->blas, op_b, op_a, a.N, a.M, a.K, &one, pb, type, a.ldb, pa, type, a.lda, &beta, a.C,
                            kR32F, a.N, compute, kGemmDefault);
  }
  if (status != kStatusSuccess)
    st->failed = std::string("cublasGemmEx (") + std::to_string(a.M) + " x " + std::to_string(a.N) + " x " +
                 std::to_string(a.K) + "): " + status_name(status);
}

// One product: through cuBLAS where the context has it; else the library's SIMT kernel, or its
// tensor-core kernel for float32 in TF32 precision. A failure is kept for launched().
template <typename T, int MODE>
void launch_gemm(lsm_context *ctx, const lsm_kernels::gemm_args<T> &a) {
  using namespace lsm_kernels;
  using cfg = gemm_cfg<T, MODE>;
  if (!ctx->cuda->failed.empty()) return;  // the call has failed already
  if (ctx->cuda->blas != nullptr) return blas_gemm<T, MODE>(ctx, a);
  const unsigned int blocks = gemm_blocks<T>(a.M, a.N);
  cudaStream_t s = ctx->cuda->stream;
  if constexpr (std::is_same<T, float>::value) {
    if (ctx->precision == LSM_PRECISION_TF32) {  // float64 stays exact whatever the precision
      LSM_LAUNCH(gemm_tf32<cfg>, blocks, kGemmThreads, s, a);
      return;
    }
    if (ctx->precision == LSM_PRECISION_BF16) {
      gemm_args<float> r = a;
      float *ra, *rb;
      if (!round_inputs<float, MODE>(ctx, a, &ra, &rb)) return;
      r.A = ra, r.B = rb, r.vec_a = vectorizable<float>(ra, a.lda), r.vec_b = vectorizable<float>(rb, a.ldb);
      LSM_LAUNCH(gemm<cfg>, blocks, kGemmThreads, s, r);
      return;
    }
  }
  LSM_LAUNCH(gemm<cfg>, blocks, kGemmThreads, s, a);
}

// Adds every active record's correction to its label's row of grad_w (after grad_w = G^T x):
// threads per block along d, and up to kLabelSlices label slices (target_kernels.cuh).
constexpr int kColumnBlock = 128;
constexpr int kLabelSlices = 32;

template <typename T>
void launch_target_w(lsm_context *ctx, const T *x, const T *w, const lsm_correction *coef, int n, int d, int c,
                     T *grad_w) {
  const int slices = std::min(c, kLabelSlices);
  const dim3 grid(blocks_for(d, kColumnBlock), (unsigned int)slices);
  LSM_LAUNCH(lsm_kernels::backward_target_w<T>, grid, kColumnBlock, ctx->cuda->stream, x, w, coef, n, d, slices,
             grad_w);
}

// The first bad element a kernel noted in bad_slot (limit or more: none) into *index and, where
// there is one, its value from values into *value: read on the context's stream after it has
// drained (not cudaMemcpy's legacy default stream, which would also wait for other blocking
// streams on the device); the stack variables are read only after the sync.
template <typename V>
inline int32_t read_bad(lsm_context *ctx, const int *bad_slot, const V *values, int64_t limit, int *index,
                        V *value) {
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(index, bad_slot, sizeof *index, cudaMemcpyDeviceToHost, ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  ctx->traffic_from += sizeof *index;
  if (*index >= limit) return LSM_OK;
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(value, values + *index, sizeof *value, cudaMemcpyDeviceToHost, ctx->cuda->stream));
  LSM_CUDA_TRY(ctx, cudaStreamSynchronize(ctx->cuda->stream));
  return LSM_OK;
}

// Reports the first sample whose label is outside [0, classes), once the stream has drained.
inline int32_t check_bad_label(lsm_context *ctx, const int32_t *labels, int64_t n, int64_t classes,
                               const int *bad_slot) {
  int bad = 0;
  int32_t label = 0;
  const int32_t s = read_bad(ctx, bad_slot, labels, n, &bad, &label);
  if (s != LSM_OK || bad >= n) return s;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  "labels[" + std::to_string(bad) + "]: expected an integer in [0, " + std::to_string(classes) +
                      "), got " + std::to_string(label));
}

// Sets the bad-label slot to n ("none yet"; kernels atomicMin the first bad sample into it).
inline int32_t reset_bad_label(lsm_context *ctx, int *bad_slot, int n) {
  LSM_CUDA_TRY(ctx, cudaMemcpyAsync(bad_slot, &n, sizeof n, cudaMemcpyHostToDevice, ctx->cuda->stream));
  ctx->traffic_to += sizeof n;
  return LSM_OK;
}

// Bytes rounded up to the workspace's alignment of its parts.
inline size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The products' inputs (CPU: product_inputs in cpu/common.h): x and W themselves, or copies with
// normalised rows, W^ for every kind but L-Softmax and scale x^ for the normalised kinds, in the
// workspace from `at` (inputs_bytes of it), one warp per row.
template <typename T>
struct device_inputs {
  const T *x, *w;
};

template <typename T>
size_t inputs_bytes(const lsm_margin &mg, int64_t n, int64_t d, int64_t c) {
  return (lsm_normalises_x(mg.kind) ? aligned((size_t)(n * d) * sizeof(T)) : 0) +
         (lsm_normalises_w(mg.kind) ? aligned((size_t)(c * d) * sizeof(T)) : 0);
}

template <typename T>
device_inputs<T> normalise_inputs(lsm_context *ctx, const lsm_margin &mg, const T *x, const T *w, int n, int d, int c,
                                  char *at) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  device_inputs<T> in = {x, w};
  if (lsm_normalises_x(mg.kind)) {
    T *xc = reinterpret_cast<T *>(at);
    LSM_LAUNCH(normalise_rows<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, x, n, d, mg.scale,
               xc);
    in.x = xc;
    at += aligned((size_t)n * d * sizeof(T));
  }
  if (lsm_normalises_w(mg.kind)) {
    T *wc = reinterpret_cast<T *>(at);
    LSM_LAUNCH(normalise_rows<T>, blocks_for((int64_t)c * kWarp, kSampleBlock), kSampleBlock, s, w, c, d, 1.0, wc);
    in.w = wc;
  }
  return in;
}

// The products' gradients, taken with respect to the normalised inputs, back to x and W
// (CPU: project_gradients): rows of grad_x, and rows of grad_w (of the c rows of w).
template <typename T>
void project_gradients(lsm_context *ctx, const lsm_margin &mg, const T *x, const T *w, int n, int d, int c, T *gx,
                       T *gw) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  if (gx != nullptr && lsm_normalises_x(mg.kind))
    LSM_LAUNCH(project_rows<T>, blocks_for((int64_t)n * kWarp, kSampleBlock), kSampleBlock, s, x, n, d, mg.scale, gx);
  if (gw != nullptr && lsm_normalises_w(mg.kind))
    LSM_LAUNCH(project_rows<T>, blocks_for((int64_t)c * kWarp, kSampleBlock), kSampleBlock, s, w, c, d, 1.0, gw);
}

}  // namespace lsm_cuda

#endif  // LSOFTMAX_CUDA_COMMON_CUH
