// cpu/optim.cpp: the CPU side of resident training: the SGD and Adam updates over W's memory,
// the sum of squares for clipping, the sum of the row losses, and top-k by blocks of classes (the CPU twins of optim_kernels.cuh).
#include <math.h>
#include <stdlib.h>

#include <atomic>

#include "cpu/common.h"
#include "math/optim.cuh"

namespace {

using namespace lsm_cpu;

// The loop with the optimizer's flags as constants: no branch inside, so it vectorises; cloned
// for AVX2 as Adam's loop below is.
template <typename T, bool kMomentum, bool kNesterov, bool kFirst>
LSM_CLONES void sgd_loop(int64_t b, int64_t e, const lsm_sgd &o, T *__restrict w, const T *__restrict g, T *__restrict v) {
  T unused = T(0);
  for (int64_t j = b; j < e; ++j)
    lsm_sgd_element(o, kMomentum, kNesterov, kFirst, w + j, g[j], kMomentum ? v + j : &unused);
}

// Whether g [count] holds a non-finite value: one pass over the gradient (not over W), split
// across cores like the update, the parts' answers OR-ed into one flag.
template <typename T>
bool has_nonfinite(int64_t count, const T *g) {
  std::atomic<bool> bad{false};
  parallel_for(count, 4, [&](int64_t b, int64_t e) {
    if (!(max_abs(g + b, e - b) < INFINITY)) bad.store(true, std::memory_order_relaxed);
  });
  return bad.load();
}

template <typename T>
void sgd(int64_t count, const lsm_sgd &o, T *w, const T *g, T *v, int32_t *nonfinite) {
  *nonfinite = 0;
  if (o.nonfinite != LSM_SGD_APPLY) {
    *nonfinite = has_nonfinite(count, g) ? 1 : 0;
    if (*nonfinite || o.nonfinite == LSM_SGD_CHECK) return;
  }
  // Element-wise and independent: a split across cores changes nothing in the results.
  parallel_for(count, 4, [&](int64_t b, int64_t e) {
    if (o.momentum == 0.0) return sgd_loop<T, false, false, false>(b, e, o, w, g, v);
    if (o.nesterov) {
      if (o.first) return sgd_loop<T, true, true, true>(b, e, o, w, g, v);
      return sgd_loop<T, true, true, false>(b, e, o, w, g, v);
    }
    if (o.first) return sgd_loop<T, true, false, true>(b, e, o, w, g, v);
    sgd_loop<T, true, false, false>(b, e, o, w, g, v);
  });
}

// Adam's loop with the mode and amsgrad as constants (no branch inside), cloned for AVX2 where
// the CPU has it (4 doubles a vector for the divisions and the square root; no FMA contraction
// in ISO C++, so the results are those of the baseline clone).
template <typename T, int kMode, bool kAmsgrad>
LSM_CLONES void adam_loop(int64_t b, int64_t e, const lsm_adam_coefs &k, T *__restrict w, const T *__restrict g,
               T *__restrict m, T *__restrict v, T *__restrict vmax) {
  T unused = T(0);
  for (int64_t j = b; j < e; ++j)
    lsm_adam_element(k, kMode, kAmsgrad, w + j, g[j], m + j, v + j, kAmsgrad ? vmax + j : &unused);
}

template <typename T, int kMode>
void adam_loop(bool amsgrad, int64_t b, int64_t e, const lsm_adam_coefs &k, T *w, const T *g, T *m, T *v, T *vmax) {
  if (amsgrad) return adam_loop<T, kMode, true>(b, e, k, w, g, m, v, vmax);
  adam_loop<T, kMode, false>(b, e, k, w, g, m, v, vmax);
}

template <typename T>
void adam(int64_t count, const lsm_adam &o, T *w, const T *g, T *m, T *v, T *vmax, int32_t *nonfinite) {
  *nonfinite = 0;
  if (o.nonfinite != LSM_SGD_APPLY) {
    *nonfinite = has_nonfinite(count, g) ? 1 : 0;
    if (*nonfinite || o.nonfinite == LSM_SGD_CHECK) return;
  }
  const lsm_adam_coefs k = lsm_adam_coefs_of(o);
  const bool ams = o.amsgrad != 0;
  parallel_for(count, 4, [&](int64_t b, int64_t e) {
    if (o.decoupled) return adam_loop<T, LSM_ADAM_DECOUPLED>(ams, b, e, k, w, g, m, v, vmax);
    if (o.weight_decay != 0.0) return adam_loop<T, LSM_ADAM_L2>(ams, b, e, k, w, g, m, v, vmax);
    adam_loop<T, LSM_ADAM_PLAIN>(ams, b, e, k, w, g, m, v, vmax);
  });
}

template <typename T, bool kX, bool kY>
void axpby_loop(int64_t b0, int64_t e, double a, const T *__restrict x, double b, T *__restrict y) {
  for (int64_t j = b0; j < e; ++j) lsm_axpby_element(a, kX, kX ? x + j : y + j, b, kY, y + j);
}

template <typename T>
void axpby(int64_t count, double a, const T *x, double b, T *y) {
  parallel_for(count, 4, [&](int64_t b0, int64_t e) {
    if (a == 0.0 && b == 0.0) return axpby_loop<T, false, false>(b0, e, a, x, b, y);  // zeros, y unread
    if (a == 0.0) return axpby_loop<T, false, true>(b0, e, a, x, b, y);
    if (b == 0.0) return axpby_loop<T, true, false>(b0, e, a, x, b, y);
    axpby_loop<T, true, true>(b0, e, a, x, b, y);
  });
}

// The sum of squares in double: per part, then the parts in their order (the same sum every run).
template <typename T>
double sum_squares(int64_t count, const T *x) {
  constexpr int64_t kParts = 64;
  double part[kParts] = {};
  const int64_t per = (count + kParts - 1) / kParts;
  parallel_for(kParts, per, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p * per, e = std::min(count, b + per);
      double s = 0.0;
      for (int64_t j = b; j < e; ++j) s += (double)x[j] * (double)x[j];
      part[p] = s;
    }
  });
  double total = 0.0;
  for (int64_t p = 0; p < kParts; ++p) total += part[p];
  return total;
}

}  // namespace

namespace lsm_cpu {

// A stretch of a fused loss's step (cpu/fused_update.cpp): elements [0, count) of w, its state
// and g, through the loops above (one thread; the caller splits).
template <typename T>
void step_range(const lsm_loss_step &st, const lsm_adam_coefs &k, int64_t count, T *w, const T *g, T *s0, T *s1,
                T *s2) {
  if (st.adam) {
    const lsm_adam &o = st.adam_o;
    const bool ams = o.amsgrad != 0;
    if (o.decoupled) return adam_loop<T, LSM_ADAM_DECOUPLED>(ams, 0, count, k, w, g, s0, s1, s2);
    if (o.weight_decay != 0.0) return adam_loop<T, LSM_ADAM_L2>(ams, 0, count, k, w, g, s0, s1, s2);
    return adam_loop<T, LSM_ADAM_PLAIN>(ams, 0, count, k, w, g, s0, s1, s2);
  }
  const lsm_sgd &o = st.sgd;
  if (o.momentum == 0.0) return sgd_loop<T, false, false, false>(0, count, o, w, g, s0);
  if (o.nesterov) {
    if (o.first) return sgd_loop<T, true, true, true>(0, count, o, w, g, s0);
    return sgd_loop<T, true, true, false>(0, count, o, w, g, s0);
  }
  if (o.first) return sgd_loop<T, true, false, true>(0, count, o, w, g, s0);
  sgd_loop<T, true, false, false>(0, count, o, w, g, s0);
}

template void step_range<float>(const lsm_loss_step &, const lsm_adam_coefs &, int64_t, float *, const float *,
                                float *, float *, float *);
template void step_range<double>(const lsm_loss_step &, const lsm_adam_coefs &, int64_t, double *, const double *,
                                 double *, double *, double *);

}  // namespace lsm_cpu

namespace {

using namespace lsm_cpu;

// Scores of classes in blocks of the workspace, each row's k best kept in indices/scores.
template <typename T>
int32_t topk(lsm_context *ctx, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k, const T *x,
             const T *w, int32_t *indices, T *scores) {
  const product_inputs<T> in(ctx, x, w, n, c, d, mg);  // normalised rows where the kind has them
  const size_t per_class = (size_t)n * sizeof(T);
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(c, (int64_t)(ctx->workspace_limit / per_class)));
  void *ws = nullptr;
  int32_t s = lsm_cpu_workspace(ctx, (size_t)block * per_class, &ws);
  if (s != LSM_OK) return s;
  T *buf = static_cast<T *>(ws);
  std::vector<int> sizes((size_t)n, 0);
  for (int64_t c0 = 0; c0 < c; c0 += block) {
    const int64_t cb = std::min(block, c - c0);
    gemm(CblasNoTrans, CblasTrans, (int)n, (int)cb, (int)d, in.x, (int)d, in.w + c0 * d, (int)d, buf, (int)cb);
    parallel_for(n, cb, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T *row = buf + i * cb;
        for (int64_t j = 0; j < cb; ++j)
          sizes[i] = lsm_topk_insert(scores + i * k, indices + i * k, sizes[i], (int)k, row[j], (int)(c0 + j));
      }
    });
  }
  return LSM_OK;
}

}  // namespace

int32_t lsm_cpu_sgd(lsm_context *, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v,
                    int32_t *nonfinite) {
  if (dtype == LSM_FLOAT32) {
    sgd<float>(count, o, static_cast<float *>(w), static_cast<const float *>(g), static_cast<float *>(v), nonfinite);
  } else {
    sgd<double>(count, o, static_cast<double *>(w), static_cast<const double *>(g), static_cast<double *>(v),
                nonfinite);
  }
  return LSM_OK;
}

int32_t lsm_cpu_adam(lsm_context *, int32_t dtype, int64_t count, const lsm_adam &o, void *w, const void *g, void *m,
                     void *v, void *vmax, int32_t *nonfinite) {
  if (dtype == LSM_FLOAT32) {
    adam<float>(count, o, static_cast<float *>(w), static_cast<const float *>(g), static_cast<float *>(m),
                static_cast<float *>(v), static_cast<float *>(vmax), nonfinite);
  } else {
    adam<double>(count, o, static_cast<double *>(w), static_cast<const double *>(g), static_cast<double *>(m),
                 static_cast<double *>(v), static_cast<double *>(vmax), nonfinite);
  }
  return LSM_OK;
}

int32_t lsm_cpu_axpby(lsm_context *, int32_t dtype, int64_t count, double a, const void *x, double b, void *y) {
  if (dtype == LSM_FLOAT32)
    axpby(count, a, static_cast<const float *>(x), b, static_cast<float *>(y));
  else
    axpby(count, a, static_cast<const double *>(x), b, static_cast<double *>(y));
  return LSM_OK;
}

int32_t lsm_cpu_sum_squares(lsm_context *, int32_t dtype, const void *values, int64_t count, double *out) {
  *out = dtype == LSM_FLOAT32 ? sum_squares(count, static_cast<const float *>(values))
                              : sum_squares(count, static_cast<const double *>(values));
  return LSM_OK;
}

int32_t lsm_cpu_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k, const void *x,
                     const void *w, int32_t *indices, void *scores) {
  if (dtype == LSM_FLOAT32)
    return topk<float>(ctx, n, d, c, mg, k, static_cast<const float *>(x), static_cast<const float *>(w), indices,
                       static_cast<float *>(scores));
  return topk<double>(ctx, n, d, c, mg, k, static_cast<const double *>(x), static_cast<const double *>(w), indices,
                      static_cast<double *>(scores));
}
