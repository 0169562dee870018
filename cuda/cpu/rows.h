// cpu/rows.h: the fused loss's row kernels over float logits: the row max, exp(f - shift) with
// the row's sum, the sums of squares of W's rows, the direct path's column sums and the
// element-wise kinds' transform (cpu/loss.cpp).
// These touch all n x c logits or all of W, so they are written for the vectorizer (a
// branch-free exp, sums in lanes) and built twice: cpu/rows.cpp for the baseline instruction set
// and, on x86-64, cpu/rows_avx2.cpp for AVX2 + FMA; lsm_rows() picks one at run time. Both are
// built with -fno-trapping-math, without which the compiler does not vectorize the selects.
#ifndef LSOFTMAX_CPU_ROWS_H
#define LSOFTMAX_CPU_ROWS_H

#include <stdint.h>

struct lsm_row_kernels {
  // The largest of row[0..count) (NaNs are left to exp_sum, which turns them into a NaN sum).
  float (*max)(const float *row, int64_t count);
  // out[j] = exp(in[j] - shift) (in may be out); returns the sum of out in double.
  double (*exp_sum)(const float *in, float *out, int64_t count, float shift);
  // The sum of v[j]^2 in double, over 8 lanes in a fixed order.
  double (*sum_squares)(const float *v, int64_t count);
  // For j < count: acc[j] += k (e[j] row[j]) (the product in float, then double), and
  // row[j] = e[j] b[j]; the direct path's row pass (cpu/loss.cpp, fold_direct).
  void (*accumulate_columns)(double *acc, const float *e, float *row, const float *b, double k, int64_t count);
  // The element-wise kinds' row (math/margin_adaptive.cuh), in place: the products v[j] = s c_j
  // to the logits s AdaFace's clamp of c_j, or s CurricularFace's c_j (t + c_j) where c_j >
  // threshold, and d f / d v into deriv; each in double, rounded once to float.
  void (*adaptive_row)(float *v, float *deriv, int64_t count, int32_t kind, double s, double threshold, double t);
};

// The kernels for this processor.
const lsm_row_kernels &lsm_rows();

// The definitions, in a namespace of the including file's choosing (cpu/rows*.cpp).
#ifdef LSM_ROWS_NAMESPACE
#include <math.h>
#include <string.h>

#include "math/margin.cuh"

namespace LSM_ROWS_NAMESPACE {

constexpr int kLanes = 8;

// exp(x) to within 8e-8 relative: Cody-Waite reduction by ln 2, a degree-6 polynomial, the
// exponent put in by bits. Defined for every float, without calls or branches: the argument is
// clamped into [lo, hi] before the float-to-int conversion (written so that NaN takes lo: a NaN
// or infinite k would be undefined), so the exponent k + 127 lies in [1, 255] and the shift is
// of a positive value; then exp(x < lo) = 0 (-inf included), NaN stays NaN, and x >= 127.5 ln 2
// (k = 128, the infinity's exponent; +inf included) gives +inf: exp there is within a factor
// sqrt 2 of FLT_MAX, and the fused loss's arguments are <= 0.
inline float exp_approx(float x) {
  const float lo = -87.33654f, hi = 88.7f, magic = 12582912.0f;  // exp(lo) is the smallest normal float
  float xc = x > lo ? x : lo;  // NaN takes lo (one max instruction)
  xc = xc < hi ? xc : hi;
  const float k = (xc * 1.44269504088896341f + magic) - magic;  // round(x / ln 2), in [-126, 128]
  const float r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)k + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  const float y = x < lo ? 0.0f : q * scale;
  return x != x ? x : y;
}

inline float row_max(const float *row, int64_t count) {
  float lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];
  float m = -INFINITY;
  for (; j < count; ++j) m = row[j] > m ? row[j] : m;
  for (int l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// Summed in blocks of 256 in float lanes (values <= 1), the blocks added in double.
inline double exp_sum(const float *in, float *out, int64_t count, float shift) {
  for (int64_t j = 0; j < count; ++j) out[j] = exp_approx(in[j] - shift);
  double total = 0.0;
  int64_t j = 0;
  for (; j + 256 <= count; j += 256) {
    float lanes[kLanes] = {};
    for (int64_t u = 0; u < 256; u += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += out[j + u + l];
    for (int l = 0; l < kLanes; ++l) total += lanes[l];
  }
  for (; j < count; ++j) total += out[j];
  return total;
}

inline double sum_squares(const float *v, int64_t count) {
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += (double)v[j + l] * (double)v[j + l];
  double total = 0.0;
  for (; j < count; ++j) total += (double)v[j] * (double)v[j];
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

inline void accumulate_columns(double *__restrict acc, const float *__restrict e, float *__restrict row,
                               const float *__restrict b, double k, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    acc[j] += k * (double)(e[j] * row[j]);
    row[j] = e[j] * b[j];
  }
}

// One loop per kind, free of calls and branches once the math is inlined: the vectorizer's.
inline void adaptive_row(float *__restrict v, float *__restrict deriv, int64_t count, int32_t kind, double s,
                         double threshold, double t) {
  const double inv = 1.0 / s;
  if (kind == LSM_MARGIN_ADAFACE) {
    for (int64_t j = 0; j < count; ++j) {
      double dv;
      const double f = lsm_adaface_nontarget((double)v[j] * inv, &dv);
      v[j] = (float)(s * f), deriv[j] = (float)dv;
    }
    return;
  }
  for (int64_t j = 0; j < count; ++j) {
    double dv;
    const double f = lsm_curricular_nontarget((double)v[j] * inv, threshold, t, &dv);
    v[j] = (float)(s * f), deriv[j] = (float)dv;
  }
}

}  // namespace LSM_ROWS_NAMESPACE
#endif  // LSM_ROWS_NAMESPACE

#endif  // LSOFTMAX_CPU_ROWS_H
