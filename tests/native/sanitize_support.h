// sanitize_support.h: what the cases of sanitize_driver.cpp share: the failure count, the
// random numbers, context buffers of exact sizes, comparisons, the margin of a case, and one
// forward and backward on a context; and the case of a bad label (an error, never an index). A
// test driver's header, included by that file alone.
#ifndef LSOFTMAX_SANITIZE_SUPPORT_H
#define LSOFTMAX_SANITIZE_SUPPORT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "lsoftmax.h"

namespace {


int g_failures = 0;
int g_cases = 0;

uint64_t g_rng = 0x243f6a8885a308d3ull;
double uniform() {  // in [-1, 1)
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(g_rng >> 11) / (double)(1ull << 52) - 1.0;
}

struct shape {
  int64_t n, d, c;
};

// A CUDA-context buffer of exactly `bytes`, filled from host memory.
void *upload(lsm_context *ctx, const void *src, size_t bytes) {
  void *p = nullptr;
  if (lsm_malloc(ctx, bytes, &p) != LSM_OK) return nullptr;
  if (src != nullptr && lsm_memcpy_to_context(ctx, p, src, bytes) != LSM_OK) return nullptr;
  return p;
}

// How a case departs from the plain one.
enum label_mode { kRandomLabels, kAllOneClass, kFewClasses, kSortedLabels };
struct variant {
  int offset = 0;         // elements: x, grad_logits and grad_w start this far into their buffers
  bool offset_all = false;  // ... and so do w, logits and grad_x
  label_mode labels = kRandomLabels;
  bool tf32 = false;
  bool repeat = false;    // run the backward twice: the results must be bitwise equal
};

// A tensor at `offset` elements into a buffer that ends exactly where the tensor does.
struct placed {
  void *base = nullptr;
  void *at = nullptr;
};
placed upload_at(lsm_context *ctx, const void *src, size_t bytes, size_t offset_bytes) {
  placed t;
  t.base = upload(ctx, nullptr, bytes + offset_bytes);
  if (t.base == nullptr) return t;
  t.at = static_cast<char *>(t.base) + offset_bytes;
  if (src != nullptr && lsm_memcpy_to_context(ctx, t.at, src, bytes) != LSM_OK) t.at = nullptr;
  return t;
}

template <typename T>
bool close(const std::vector<T> &got, const std::vector<T> &want, double tol, const std::string &what) {
  double scale = 1.0;
  for (T v : want) scale = fmax(scale, fabs((double)v));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = (double)got[i], w = (double)want[i];
    if (!(fabs(g - w) <= tol * scale)) {
      printf("FAIL %s: element %zu is %.17g, the CPU backend says %.17g (tolerance %g)\n", what.c_str(), i, g, w,
             tol * scale);
      return false;
    }
  }
  return true;
}

// The margin of a case: L-Softmax at m = code >= 1, or another kind of the family for code < 0
// (-1 A-Softmax m = 4, -2 CosFace, -3 ArcFace, -4 ArcFace's easy margin, -5 the combined margin).
lsm_margin margin_of(int code, double lambda) {
  lsm_margin mg = {};
  static const int32_t kinds[] = {LSM_MARGIN_ASOFTMAX, LSM_MARGIN_COSFACE, LSM_MARGIN_ARCFACE, LSM_MARGIN_ARCFACE,
                                  LSM_MARGIN_COMBINED};
  mg.kind = code >= 1 ? LSM_MARGIN_LSOFTMAX : kinds[-code - 1];
  if (mg.kind <= LSM_MARGIN_ASOFTMAX) {
    mg.m = code >= 1 ? code : 4, mg.lambda = lambda;
  } else {
    mg.scale = 30.0;
    if (mg.kind == LSM_MARGIN_COSFACE) mg.m3 = 0.35;
    if (mg.kind == LSM_MARGIN_ARCFACE) mg.m2 = 0.5, mg.flags = code == -4 ? LSM_FLAG_EASY_MARGIN : 0u;
    if (mg.kind == LSM_MARGIN_COMBINED) mg.m1 = 1.2, mg.m2 = 0.3, mg.m3 = 0.2;
  }
  return mg;
}

// One forward and backward on a context (device: the tensors go through context memory).
template <typename T>
struct outputs {
  std::vector<T> logits, gx, gw;
};

template <typename T>
bool run_op(lsm_context *ctx, bool device, const shape &s, const std::vector<T> &x, const std::vector<T> &w,
            const std::vector<int32_t> &labels, const std::vector<T> &g, const lsm_margin &mg, outputs<T> *o) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const size_t e = sizeof(T);
  o->logits.assign((size_t)(s.n * s.c), T(0));
  o->gx.assign((size_t)(s.n * s.d), T(0));
  o->gw.assign((size_t)(s.c * s.d), T(0));
  if (!device) {
    return lsm_forward(ctx, dtype, s.n, s.d, s.c, &mg, x.data(), w.data(), labels.data(), o->logits.data()) == LSM_OK &&
           lsm_backward(ctx, dtype, s.n, s.d, s.c, &mg, x.data(), w.data(), labels.data(), g.data(), o->gx.data(),
                        o->gw.data()) == LSM_OK;
  }
  void *dx = upload(ctx, x.data(), x.size() * e), *dw = upload(ctx, w.data(), w.size() * e);
  void *dg = upload(ctx, g.data(), g.size() * e), *dl = upload(ctx, labels.data(), labels.size() * 4);
  void *dlogits = upload(ctx, nullptr, o->logits.size() * e), *dgx = upload(ctx, nullptr, o->gx.size() * e);
  void *dgw = upload(ctx, nullptr, o->gw.size() * e);
  const int32_t *lab = static_cast<const int32_t *>(dl);
  const bool ok = dx && dw && dg && dl && dlogits && dgx && dgw &&
                  lsm_forward(ctx, dtype, s.n, s.d, s.c, &mg, dx, dw, lab, dlogits) == LSM_OK &&
                  lsm_backward(ctx, dtype, s.n, s.d, s.c, &mg, dx, dw, lab, dg, dgx, dgw) == LSM_OK &&
                  lsm_memcpy_from_context(ctx, o->logits.data(), dlogits, o->logits.size() * e) == LSM_OK &&
                  lsm_memcpy_from_context(ctx, o->gx.data(), dgx, o->gx.size() * e) == LSM_OK &&
                  lsm_memcpy_from_context(ctx, o->gw.data(), dgw, o->gw.size() * e) == LSM_OK;
  for (void *p : {dx, dw, dg, dl, dlogits, dgx, dgw}) lsm_free(ctx, p);
  return ok;
}

// got against want * factor: every element within tol of the largest |want * factor| (plus an
// absolute floor `abs`), and finite where want is.
template <typename T>
bool close_scaled(const std::vector<T> &got, const std::vector<T> &want, double factor, double tol, double abs,
                  const std::string &what) {
  double scale = 0.0;
  for (T v : want) scale = fmax(scale, fabs((double)v * factor));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = (double)got[i], w = (double)want[i] * factor;
    if (!(fabs(g - w) <= tol * scale + abs)) {
      printf("FAIL %s: element %zu is %.17g, expected %.17g\n", what.c_str(), i, g, w);
      return false;
    }
  }
  return true;
}

// A label outside [0, c) is an error on the CUDA path too, and is never used as an index.
void bad_label(lsm_context *gpu) {
  const int64_t n = 5, d = 3, c = 4;
  std::vector<float> x((size_t)(n * d), 0.5f), w((size_t)(c * d), 0.25f);
  std::vector<int32_t> labels = {0, 1, 7, 2, -1};
  void *dx = upload(gpu, x.data(), x.size() * 4), *dw = upload(gpu, w.data(), w.size() * 4);
  void *dl = upload(gpu, labels.data(), labels.size() * 4), *dlogits = upload(gpu, nullptr, (size_t)(n * c) * 4);
  lsm_margin mg = {};
  mg.kind = LSM_MARGIN_LSOFTMAX, mg.m = 2;
  const int32_t st = lsm_forward(gpu, LSM_FLOAT32, n, d, c, &mg, dx, dw, static_cast<const int32_t *>(dl), dlogits);
  const bool ok = st == LSM_ERR_INVALID_ARGUMENT && strstr(lsm_last_error(), "labels[2]") != nullptr;
  if (!ok) {
    printf("FAIL bad label: status %d, message \"%s\"\n", st, lsm_last_error());
    ++g_failures;
  }
  for (void *p : {dx, dw, dl, dlogits}) lsm_free(gpu, p);
}

}  // namespace

#endif  // LSOFTMAX_SANITIZE_SUPPORT_H
