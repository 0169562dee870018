// cpu/common.h: what the CPU backend's ops share: BLAS products, a thread split, the checked copy
// of the labels, the per-sample statistics and the margin's corrections to the plain gradients.
// Not installed, not ABI.
#ifndef LSOFTMAX_CPU_COMMON_H
#define LSOFTMAX_CPU_COMMON_H

#include <cblas.h>

#include <string.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "api/backend.h"
#include "math/margin.cuh"

// The CPU backend's parts (cpu/backend.cpp puts them in its table): the op (op.cpp), the fused
// loss (loss.cpp), the optimizer and top-k (optim.cpp); arguments checked by the api.
int32_t lsm_cpu_forward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cpu_backward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cpu_loss(lsm_context *ctx, const lsm_loss_problem &p);
int32_t lsm_cpu_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v,
                    int32_t *nonfinite);
int32_t lsm_cpu_adam(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, void *w, const void *g, void *m,
                     void *v, void *vmax, int32_t *nonfinite);
int32_t lsm_cpu_axpby(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b, void *y);
int32_t lsm_cpu_sum_squares(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out);
int32_t lsm_cpu_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                     const void *src, void *dst, bool scatter);
int32_t lsm_cpu_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k,
                     const void *x, const void *w, int32_t *indices, void *scores);
// The context's host scratch, grown to at least `bytes` and kept (backend.cpp).
int32_t lsm_cpu_workspace(lsm_context *ctx, size_t bytes, void **out);

namespace lsm_cpu {

// C = op(A) op(B) + beta C, row-major, through the BLAS of the element type.
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float *a, int lda,
                 const float *b, int ldb, float *c, int ldc, float beta = 0.0f) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const double *a, int lda,
                 const double *b, int ldb, double *c, int ldc, double beta = 0.0) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc);
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

// Clones of a loop for AVX2 where the CPU has it (picked at load time), beside the baseline one.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define LSM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LSM_CLONES
#endif

// The largest |v_j| of v [count] as a double (exact), or +inf where any v_j is not finite (a NaN
// too). Taken on the bits: without the sign, the order of the patterns as integers is the order
// of the magnitudes, the infinities and NaNs above every number. An integer maximum vectorises;
// a comparison of floats, which may trap on a NaN, does not.
template <typename T>
LSM_CLONES double max_abs(const T *v, int64_t count) {
  using U = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  constexpr U kMagnitude = std::numeric_limits<U>::max();  // every bit but the sign
  U m = 0;
  for (int64_t j = 0; j < count; ++j) {
    U b;
    memcpy(&b, v + j, sizeof b);
    b &= kMagnitude;
    m = b > m ? b : m;
  }
  T a;
  memcpy(&a, &m, sizeof a);
  return std::isfinite(a) ? (double)a : INFINITY;
}

// Labels are read as row indices: each must lie in [0, c) before any row is touched. They are
// copied first and only the copy is used, so memory another thread writes meanwhile (a
// SharedArrayBuffer) cannot slip an unchecked index past the check.
inline int32_t copy_labels(lsm_context *ctx, const int32_t *labels, int64_t n, int64_t c,
                           std::vector<int32_t> *out) {
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

// The row passes (normalise, project) count as 1/kRowPassWork of their elements' worth of
// parallel_for's work: they are memory-bound and short, and threads of theirs compete with
// OpenBLAS's spinning workers, so only passes over c x d (not n x d) split across threads.
constexpr int64_t kRowPassWork = 16;

// Grows a scratch buffer of the context (*buf, *have bytes) to at least `bytes`, 64-byte aligned,
// and keeps it for later calls. False when the allocation fails (the buffer is then empty).
inline bool grow_scratch(void **buf, size_t *have, size_t bytes) {
  if (*have >= bytes) return true;
  free(*buf);
  *have = 0;
  const size_t rounded = (bytes + 63) / 64 * 64;
  *buf = aligned_alloc(64, rounded);
  if (*buf == nullptr) return false;
  *have = rounded;
  return true;
}

// The context's scratch for normalised inputs, grown to `bytes` and kept for later calls; throws
// std::bad_alloc (which the C ABI layer turns into LSM_ERR_OUT_OF_MEMORY) when it cannot grow.
inline void *input_scratch(lsm_context *ctx, size_t bytes) {
  if (!grow_scratch(&ctx->host_inputs, &ctx->host_inputs_bytes, bytes)) throw std::bad_alloc();
  return ctx->host_inputs;
}

// The sample's statistics (margin.cuh, lsm_stats): the largest magnitudes first, then the sums
// of the vectors scaled by powers of two near them, in double; for ArcFace and the combined margin
// a third pass for sin t.
template <typename T>
lsm_stats target_stats(const T *x, const T *w, int64_t d, const lsm_margin &mg) {
  double amax_x = 0.0, amax_w = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    amax_x = lsm_absmax(amax_x, x[k]);
    amax_w = lsm_absmax(amax_w, w[k]);
  }
  lsm_stats s = lsm_stats_begin<T>(amax_x, amax_w, mg);
  for (int64_t k = 0; k < d; ++k) lsm_stats_add(s, x[k], w[k]);
  lsm_stats_finish(s, d);
  if (lsm_needs_residual(mg.kind) && !lsm_degenerate(s))
    for (int64_t k = 0; k < d; ++k) lsm_stats_add_residual(s, x[k], w[k]);
  return s;
}

// |v| in double, scaled by a power of two near its largest element (no overflow or underflow of
// the sum of squares); 0 for the zero vector, NaN where v holds a NaN or an infinity.
template <typename T>
double row_length(const T *v, int64_t d) {
  double amax = 0.0;
  for (int64_t k = 0; k < d; ++k) amax = lsm_absmax(amax, v[k]);
  int e;
  double sc, pw;
  lsm_scale(amax, &e, &sc, &pw);
  if (!(sc > 0.0)) return sc;
  double ss = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    const double a = v[k] * pw;
    ss += a * a;
  }
  return ldexp(sqrt(ss), e);
}

// sum_k (a[k] p q) b[k] in double over 8 lanes (which the compiler vectorizes; a fixed order).
// With p q = 1/|a| (lsm_norm), the dot product of the unit vector of a with b, formed without
// overflow wherever the result is finite.
template <typename T>
double lane_dot(const T *a, const T *b, int64_t d, double p = 1.0, double q = 1.0) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += (double)a[k + l] * p * q * (double)b[k + l];
  double total = 0.0;
  for (; k < d; ++k) total += (double)a[k] * p * q * (double)b[k];
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// A row's normalisation (margin.cuh, lsm_norm) for a row entering the products times f: the
// plain sum of squares where it is safe (lsm_norm_direct), else the largest magnitude and the
// scaled sum of squares.
template <typename T>
lsm_norm row_norm(const T *v, int64_t d, double f) {
  lsm_norm r;
  if (lsm_norm_direct<T>(lane_dot(v, v, d), d, f, &r)) return r;
  double amax = 0.0;
  for (int64_t k = 0; k < d; ++k) amax = lsm_absmax(amax, v[k]);
  r = lsm_norm_begin<T>(amax, f);
  double ss = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    const double a = v[k] * r.p;
    ss += a * a;
  }
  lsm_norm_finish(r, ss);
  return r;
}

// The products' inputs: x and W themselves (L-Softmax), or copies of them with rows normalised:
// W^ for every other kind, scale x^ for the normalised kinds (O(n d + c d), no pass over n x c).
// The copies live in the context's input scratch, kept between calls (no page faults per call).
template <typename T>
struct product_inputs {
  const T *x, *w;
  // The rows' normalisations where a copy was made (else empty), for project_gradients.
  std::vector<lsm_norm> x_norms, w_norms;

  // copy_w false: W as it is (the fused loss's direct path, which scales columns instead).
  product_inputs(lsm_context *ctx, const T *x0, const T *w0, int64_t n, int64_t c, int64_t d, const lsm_margin &mg,
                 bool copy_w = true)
      : x(x0), w(w0) {
    const bool nx = lsm_normalises_x(mg.kind), nw = copy_w && lsm_normalises_w(mg.kind);
    if (!nx && !nw) return;
    const size_t xs = nx ? (size_t)(n * d) : 0, ws = nw ? (size_t)(c * d) : 0;
    T *buf = static_cast<T *>(input_scratch(ctx, (xs + ws) * sizeof(T)));
    if (nx) x = normalised(x0, n, d, mg.scale, buf, &x_norms);
    if (nw) w = normalised(w0, c, d, 1.0, buf + xs, &w_norms);
  }

  static const T *normalised(const T *v, int64_t rows, int64_t d, double f, T *out, std::vector<lsm_norm> *norms) {
    norms->resize((size_t)rows);
    parallel_for(rows, d / kRowPassWork, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T *vr = v + r * d;
        const lsm_norm nr = (*norms)[r] = row_norm(vr, d, f);
        for (int64_t k = 0; k < d; ++k) out[r * d + k] = (T)lsm_unit(nr, vr[k], f);
      }
    });
    return out;
  }
};

// Gradients g with respect to f v^ (rows of a normalised input) to gradients with respect to v,
// in place: g = f (g - v^ (v^ . g)) / |v| (margin.cuh, lsm_project); 0 for a zero row. norms:
// the rows' own, where the normalised copy kept them (one pass over v fewer), else null.
template <typename T>
void project_rows(const T *v, int64_t rows, int64_t d, double f, T *g, const std::vector<lsm_norm> *norms = nullptr) {
  const bool kept = norms != nullptr && (int64_t)norms->size() == rows;
  parallel_for(rows, d / kRowPassWork, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T *vr = v + r * d;
      T *gr = g + r * d;
      const lsm_norm nr = kept ? (*norms)[r] : row_norm(vr, d, f);
      const double dot = lane_dot(vr, gr, d, nr.p, nr.inv);  // v^ . g
      for (int64_t k = 0; k < d; ++k) gr[k] = (T)lsm_project(nr, gr[k], vr[k], dot, f);
    }
  });
}

// The plain products' gradients, taken with respect to the normalised inputs, back to x and W.
template <typename T>
void project_gradients(const product_inputs<T> &in, const T *x, const T *w, int64_t n, int64_t c, int64_t d,
                       const lsm_margin &mg, T *gx, T *gw) {
  if (lsm_normalises_x(mg.kind)) project_rows(x, n, d, mg.scale, gx, &in.x_norms);
  if (lsm_normalises_w(mg.kind)) project_rows(w, c, d, 1.0, gw, &in.w_norms);
}

// Adds the margin's corrections (one lsm_correction per sample, label -1 where none applies) to
// the plain products' gradients: grad_x row by row, grad_w split by columns, so that each thread
// owns a slice of every row and adds the samples in order (deterministic). w and gw are the rows
// of the classes the corrections' labels index (a shard's, for the fused loss). Each element's
// correction is formed in double and added with one rounding to T (as the CUDA backend does).
template <typename T>
void add_corrections_x(const T *x, const T *w, int64_t n, int64_t d, const std::vector<lsm_correction> &coef, T *gx) {
  parallel_for(n, d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const lsm_correction &r = coef[i];
      if (r.label < 0) continue;
      const T *xi = x + i * d, *wy = w + (int64_t)r.label * d;
      T *gxi = gx + i * d;
      for (int64_t k = 0; k < d; ++k) gxi[k] = (T)(gxi[k] + lsm_correction_x(r, xi[k], wy[k]));
    }
  });
}
template <typename T>
void add_corrections_w(const T *x, const T *w, int64_t n, int64_t d, const std::vector<lsm_correction> &coef, T *gw) {
  parallel_for(d, 2 * n, [&](int64_t k0, int64_t k1) {
    for (int64_t i = 0; i < n; ++i) {
      const lsm_correction &r = coef[i];
      if (r.label < 0) continue;
      const T *xi = x + i * d, *wy = w + (int64_t)r.label * d;
      T *gwy = gw + (int64_t)r.label * d;
      for (int64_t k = k0; k < k1; ++k) gwy[k] = (T)(gwy[k] + lsm_correction_w(r, xi[k], wy[k]));
    }
  });
}
// Both: the two parts are independent (each reads x and w only).
template <typename T>
void add_corrections(const T *x, const T *w, int64_t n, int64_t d, const std::vector<lsm_correction> &coef, T *gx,
                     T *gw) {
  add_corrections_x(x, w, n, d, coef, gx);
  add_corrections_w(x, w, n, d, coef, gw);
}

}  // namespace lsm_cpu

#endif  // LSOFTMAX_CPU_COMMON_H
