// cpu/op.cpp: the CPU backend's forward and backward. The matrix products go through CBLAS
// (OpenBLAS), on normalised copies of the rows for the kinds that normalise; the margin on the n
// target entries goes through margin.cuh, the same code the CUDA kernels run, by way of the
// helpers the CPU ops share (cpu/common.h).
#include <vector>

#include "cpu/common.h"

namespace {

using namespace lsm_cpu;

template <typename T>
int32_t forward(lsm_context *ctx, const lsm_problem &p) {
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  T *logits = static_cast<T *>(p.logits);
  const int64_t n = p.n, d = p.d, c = p.c;
  std::vector<int32_t> labels;
  int32_t s = copy_labels(ctx, p.labels, n, c, &labels);
  if (s != LSM_OK) return s;
  const product_inputs<T> in(ctx, x, w, n, c, d, p.margin);
  gemm(CblasNoTrans, CblasTrans, (int)n, (int)c, (int)d, in.x, (int)d, in.w, (int)d, logits, (int)c);
  if (lsm_plain_margin(p.margin)) return LSM_OK;  // psi(c) = c: the target logit is the plain product
  parallel_for(n, 3 * d, [&](int64_t begin, int64_t end) {  // two or three passes over d per sample
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = labels[i];
      logits[i * c + y] = (T)lsm_target_logit(target_stats(x + i * d, w + y * d, d, p.margin), p.margin);
    }
  });
  return LSM_OK;
}

template <typename T>
int32_t backward(lsm_context *ctx, const lsm_problem &p) {
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  const T *g = static_cast<const T *>(p.grad_logits);
  T *gx = static_cast<T *>(p.grad_x);
  T *gw = static_cast<T *>(p.grad_w);
  const int64_t n = p.n, d = p.d, c = p.c;
  std::vector<int32_t> labels;
  int32_t s = copy_labels(ctx, p.labels, n, c, &labels);
  if (s != LSM_OK) return s;
  // The plain linear layer's gradients: dx = G W, dW = G^T x, of the products' inputs (normalised
  // rows for the kinds that normalise), then projected back to x and W.
  const product_inputs<T> in(ctx, x, w, n, c, d, p.margin);
  gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)c, g, (int)c, in.w, (int)d, gx, (int)d);
  gemm(CblasTrans, CblasNoTrans, (int)c, (int)d, (int)n, g, (int)c, in.x, (int)d, gw, (int)d);
  project_gradients(in, x, w, n, c, d, p.margin, gx, gw);
  if (lsm_plain_margin(p.margin)) return LSM_OK;
  // Per sample, the correction coefficients (label -1 for a zero vector: the plain gradients
  // stand); then the corrections, each element formed in double and added with one rounding to T
  // (the CUDA backend does the same, element for element, in the same order).
  std::vector<lsm_correction> coef((size_t)n);
  parallel_for(n, 3 * d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = labels[i];
      coef[i] = lsm_target_correction((double)g[i * c + y], target_stats(x + i * d, w + y * d, d, p.margin),
                                      p.margin, (int32_t)y);
    }
  });
  add_corrections(x, w, n, d, coef, gx, gw);
  return LSM_OK;
}

}  // namespace

int32_t lsm_cpu_forward(lsm_context *ctx, const lsm_problem &p) {
  return p.dtype == LSM_FLOAT32 ? forward<float>(ctx, p) : forward<double>(ctx, p);
}

int32_t lsm_cpu_backward(lsm_context *ctx, const lsm_problem &p) {
  return p.dtype == LSM_FLOAT32 ? backward<float>(ctx, p) : backward<double>(ctx, p);
}
