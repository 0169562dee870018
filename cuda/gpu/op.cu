// op.cu: the CUDA backend's forward and backward: the products (gemm_kernels.cuh) on the inputs,
// or on copies with normalised rows for the kinds that normalise, and the margin's target logits
// and corrections (target_kernels.cuh), the CPU backend's cpu/op.cpp step for step.
#include <cuda_runtime.h>

#include "gpu/common.cuh"

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
  if ((st = launched(ctx)) != LSM_OK) return st;
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
  if (!lsm_plain_margin(p.margin)) {
    launch_target_w<T>(ctx, x, w, coef, n, d, c, gw);
  }
  if ((st = launched(ctx)) != LSM_OK) return st;
  return check_bad_label(ctx, p.labels, p.n, p.c, bad);
}

}  // namespace

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
