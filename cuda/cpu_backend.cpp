// cpu_backend.cpp: the CPU backend. The matrix products go through CBLAS (OpenBLAS); the margin
// on the n target entries goes through margin.cuh, the same code the CUDA kernels run.
#include <cblas.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "internal.h"
#include "margin.cuh"

namespace {

// C = op(A) op(B), row-major, through the BLAS of the element type.
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float *a, int lda, const float *b,
          int ldb, float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const double *a, int lda, const double *b,
          int ldb, double *c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc);
}

// Runs fn(begin, end) over [0, total) split across the cores, or inline when the work is too
// small to pay for starting threads (about 10 us each). OpenMP would leave its workers spinning
// into the next call's BLAS, which then shares the cores with them.
template <typename F>
void parallel_for(int64_t total, int64_t work_per_item, F fn) {
  const int64_t kMinWork = 1 << 16;  // multiply-adds per thread worth a thread start
  const int64_t wanted = std::min<int64_t>(total, total * work_per_item / kMinWork);
  if (wanted <= 1) {  // before asking for the core count: glibc reads /sys for it
    fn(int64_t(0), total);
    return;
  }
  static const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min<int64_t>(cores, wanted);
  if (threads <= 1) {
    fn(int64_t(0), total);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (total + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = t * chunk, e = std::min(total, b + chunk);
    if (b >= e) break;
    try {
      pool.emplace_back(fn, b, e);
    } catch (...) {
      fn(b, e);  // no thread to be had: do that chunk here rather than fail
    }
  }
  fn(int64_t(0), std::min(total, chunk));
  for (auto &th : pool) th.join();
}

// Labels are read as row indices: each must lie in [0, c) before any row is touched. They are
// copied first and only the copy is used, so memory another thread writes meanwhile (a
// SharedArrayBuffer) cannot slip an unchecked index past the check.
int32_t copy_labels(lsm_context *ctx, const int32_t *labels, int64_t n, int64_t c, std::vector<int32_t> *out) {
  out->assign(labels, labels + n);
  const int32_t *y = out->data();
  for (int64_t i = 0; i < n; ++i) {
    if (y[i] < 0 || y[i] >= c)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "labels[" + std::to_string(i) + "]: expected an integer in [0, " + std::to_string(c) +
                          "), got " + std::to_string(y[i]));
  }
  return LSM_OK;
}

// x_i . w, |x_i|^2 and |w|^2 in double, in one pass over d.
template <typename T>
void target_stats(const T *x, const T *w, int64_t d, double *dot, double *xx, double *ww) {
  double s_dot = 0.0, s_xx = 0.0, s_ww = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    const double a = x[k], b = w[k];
    s_dot += a * b;
    s_xx += a * a;
    s_ww += b * b;
  }
  *dot = s_dot;
  *xx = s_xx;
  *ww = s_ww;
}

template <typename T>
int32_t forward(lsm_context *ctx, const lsm_problem &p) {
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  T *logits = static_cast<T *>(p.logits);
  const int64_t n = p.n, d = p.d, c = p.c;
  std::vector<int32_t> labels;
  int32_t s = copy_labels(ctx, p.labels, n, c, &labels);
  if (s != LSM_OK) return s;
  gemm(CblasNoTrans, CblasTrans, (int)n, (int)c, (int)d, x, (int)d, w, (int)d, logits, (int)c);
  if (p.margin == 1) return LSM_OK;  // psi(c) = c: the target logit is the plain inner product
  parallel_for(n, d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = labels[i];
      double dot, xx, ww;
      target_stats(x + i * d, w + y * d, d, &dot, &xx, &ww);
      logits[i * c + y] = (T)lsm_target_logit(dot, xx, ww, p.margin, p.lambda);
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
  // The plain linear layer's gradients: dx = G W, dW = G^T x.
  gemm(CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)c, g, (int)c, w, (int)d, gx, (int)d);
  gemm(CblasTrans, CblasNoTrans, (int)c, (int)d, (int)n, g, (int)c, x, (int)d, gw, (int)d);
  if (p.margin == 1) return LSM_OK;
  // Per sample: the correction coefficients, then its own row of grad_x (rows are disjoint).
  std::vector<lsm_correction> coef((size_t)n);
  parallel_for(n, 3 * d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t y = labels[i];
      const T *xi = x + i * d;
      const T *wy = w + y * d;
      double dot, xx, ww;
      target_stats(xi, wy, d, &dot, &xx, &ww);
      const lsm_correction r = lsm_target_correction((double)g[i * c + y], dot, xx, ww, p.margin, p.lambda);
      coef[i] = r;
      T *gxi = gx + i * d;
      for (int64_t k = 0; k < d; ++k) gxi[k] = (T)(gxi[k] + (r.alpha * wy[k] + r.beta_x * (xi[k] * r.inv_nx)));
    }
  });
  // grad_w rows are shared by samples of one label: split by columns instead, so each thread
  // owns a slice of every row and adds the samples in order (deterministic).
  parallel_for(d, 2 * n, [&](int64_t k0, int64_t k1) {
    for (int64_t i = 0; i < n; ++i) {
      const lsm_correction &r = coef[i];
      if (r.alpha == 0.0 && r.beta_w == 0.0) continue;
      const int64_t y = labels[i];
      const T *xi = x + i * d;
      const T *wy = w + y * d;
      T *gwy = gw + y * d;
      for (int64_t k = k0; k < k1; ++k) gwy[k] = (T)(gwy[k] + (r.alpha * xi[k] + r.beta_w * (wy[k] * r.inv_nw)));
    }
  });
  return LSM_OK;
}

}  // namespace

int32_t lsm_cpu_forward(lsm_context *ctx, const lsm_problem &p) {
  return p.dtype == LSM_FLOAT32 ? forward<float>(ctx, p) : forward<double>(ctx, p);
}

int32_t lsm_cpu_backward(lsm_context *ctx, const lsm_problem &p) {
  return p.dtype == LSM_FLOAT32 ? backward<float>(ctx, p) : backward<double>(ctx, p);
}
