// kinds.h: the margin kinds as one table: a row per kind gives its names, which vectors the op
// normalises, whether its target takes the angle itself, the lsm_margin fields it reads and their
// ranges. The argument checks (api/checks.cpp) and the math (margin.cuh) read the row; nothing
// depends on the order of lsm_margin_kind. A new kind is a row here, its target in margin.cuh
// (lsm_phi for a normalised kind), its enum value in lsoftmax.h, and the bindings' own table.
#ifndef LSOFTMAX_KINDS_H
#define LSOFTMAX_KINDS_H

#include <stdint.h>

#include "lsoftmax.h"

// A translation unit built for another instruction set (cpu/rows_avx2.cpp) defines LSM_HD as
// `static inline` first: its copies of these functions stay its own, never the linker's pick.
#if defined(__CUDACC__)
#define LSM_HD __host__ __device__ __forceinline__
#elif !defined(LSM_HD)
#define LSM_HD inline
#endif

#define LSM_PI 3.14159265358979323846

// The lsm_margin fields a kind may read, in the order their checks run.
enum lsm_margin_field {
  LSM_FIELD_M, LSM_FIELD_LAMBDA, LSM_FIELD_SCALE, LSM_FIELD_M1, LSM_FIELD_M2, LSM_FIELD_M3, LSM_FIELD_H,
  LSM_FIELD_T_ALPHA, LSM_FIELD_BATCH_MEAN, LSM_FIELD_BATCH_STD, LSM_FIELD_T, LSM_FIELD_LOWER_NORM,
  LSM_FIELD_UPPER_NORM, LSM_FIELD_LAMBDA_G, LSM_FIELD_UPPER_MARGIN, LSM_FIELD_COUNT
};

// A field's range: unused (must be 0), an integer in [lo, hi], or a finite number >= lo (> lo when
// lo_open; any finite number when lo is -inf) and, where hi_text is set, < hi (<= hi when
// hi_closed; hi_text says the bound in a message).
struct lsm_range {
  bool used, integer, lo_open, hi_closed;
  double lo, hi;
  const char *hi_text;
};
constexpr lsm_range lsm_unused() { return {false, false, false, false, 0.0, 0.0, nullptr}; }
constexpr lsm_range lsm_integer(double lo, double hi) { return {true, true, false, false, lo, hi, nullptr}; }
constexpr lsm_range lsm_at_least(double lo) { return {true, false, false, false, lo, 0.0, nullptr}; }
constexpr lsm_range lsm_above(double lo) { return {true, false, true, false, lo, 0.0, nullptr}; }
constexpr lsm_range lsm_finite() { return {true, false, false, false, -__builtin_huge_val(), 0.0, nullptr}; }
constexpr lsm_range lsm_at_least_below(double lo, double hi, const char *hi_text) {
  return {true, false, false, false, lo, hi, hi_text};
}
constexpr lsm_range lsm_between(double lo, double hi, const char *hi_text) {
  return {true, false, false, true, lo, hi, hi_text};
}

// A kind's ranges, every field unused but those set: lsm_fields().set(F, range)...
struct lsm_fields {
  lsm_range r[LSM_FIELD_COUNT] = {};
  constexpr lsm_fields set(int f, lsm_range range) const {
    lsm_fields out = *this;
    out.r[f] = range;
    return out;
  }
};
constexpr lsm_fields lsm_old_fields(lsm_range m, lsm_range lambda, lsm_range scale, lsm_range m1, lsm_range m2,
                                    lsm_range m3) {
  return lsm_fields()
      .set(LSM_FIELD_M, m)
      .set(LSM_FIELD_LAMBDA, lambda)
      .set(LSM_FIELD_SCALE, scale)
      .set(LSM_FIELD_M1, m1)
      .set(LSM_FIELD_M2, m2)
      .set(LSM_FIELD_M3, m3);
}
#define LSM_ANGLE_MARGIN lsm_at_least_below(0.0, LSM_PI / 2, "pi/2")

// The table. X(kind, enum name, name, normalises x, normalises W rows, takes the angle, flags it
// takes, the ranges of its fields (lsm_fields)).
//   normalises x: the normalised kinds, f_ij = scale cos t_j, whose target is scale phi(cos t)
//     (lsm_phi); otherwise the target is L-Softmax's psi form with lambda (A-Softmax when W rows
//     are normalised, |W_y| = 1).
//   takes the angle: the target needs t itself, from sin t = |r| (a third pass over d).
// MagFace's upper_norm > lower_norm is checked apart (api/checks.cpp).
#define LSM_MARGIN_KINDS(X)                                                                                        \
  X(LSM_MARGIN_LSOFTMAX, "LSOFTMAX", "L-Softmax", false, false, false, 0u,                                        \
    lsm_old_fields(lsm_integer(1, LSM_MAX_MARGIN), lsm_at_least(0.0), lsm_unused(), lsm_unused(), lsm_unused(),   \
                   lsm_unused()))                                                                                  \
  X(LSM_MARGIN_ASOFTMAX, "ASOFTMAX", "A-Softmax", false, true, false, 0u,                                         \
    lsm_old_fields(lsm_integer(1, LSM_MAX_MARGIN), lsm_at_least(0.0), lsm_unused(), lsm_unused(), lsm_unused(),   \
                   lsm_unused()))                                                                                  \
  X(LSM_MARGIN_COSFACE, "COSFACE", "CosFace", true, true, false, 0u,                                              \
    lsm_fields().set(LSM_FIELD_SCALE, lsm_above(0.0)).set(LSM_FIELD_M3, lsm_at_least(0.0)))                       \
  X(LSM_MARGIN_ARCFACE, "ARCFACE", "ArcFace", true, true, true, LSM_FLAG_EASY_MARGIN,                             \
    lsm_fields().set(LSM_FIELD_SCALE, lsm_above(0.0)).set(LSM_FIELD_M2, LSM_ANGLE_MARGIN))                        \
  X(LSM_MARGIN_COMBINED, "COMBINED", "the combined margin", true, true, true, 0u,                                 \
    lsm_fields()                                                                                                   \
        .set(LSM_FIELD_SCALE, lsm_above(0.0))                                                                      \
        .set(LSM_FIELD_M1, lsm_at_least(1.0))                                                                      \
        .set(LSM_FIELD_M2, lsm_at_least(0.0))                                                                      \
        .set(LSM_FIELD_M3, lsm_at_least(0.0)))                                                                     \
  X(LSM_MARGIN_SUBCENTER, "SUBCENTER", "sub-center ArcFace", true, true, true, 0u,                                \
    lsm_fields()                                                                                                   \
        .set(LSM_FIELD_SCALE, lsm_above(0.0))                                                                      \
        .set(LSM_FIELD_M2, LSM_ANGLE_MARGIN)                                                                       \
        .set(LSM_FIELD_M, lsm_integer(1, 65536)))                                                                  \
  X(LSM_MARGIN_ADAFACE, "ADAFACE", "AdaFace", true, true, true, 0u,                                               \
    lsm_fields()                                                                                                   \
        .set(LSM_FIELD_SCALE, lsm_above(0.0))                                                                      \
        .set(LSM_FIELD_M2, lsm_at_least(0.0))                                                                      \
        .set(LSM_FIELD_H, lsm_at_least(0.0))                                                                       \
        .set(LSM_FIELD_T_ALPHA, lsm_between(0.0, 1.0, "1"))                                                        \
        .set(LSM_FIELD_BATCH_MEAN, lsm_finite())                                                                   \
        .set(LSM_FIELD_BATCH_STD, lsm_at_least(0.0)))                                                              \
  X(LSM_MARGIN_CURRICULARFACE, "CURRICULARFACE", "CurricularFace", true, true, true, 0u,                          \
    lsm_fields()                                                                                                   \
        .set(LSM_FIELD_SCALE, lsm_above(0.0))                                                                      \
        .set(LSM_FIELD_M2, LSM_ANGLE_MARGIN)                                                                       \
        .set(LSM_FIELD_T_ALPHA, lsm_between(0.0, 1.0, "1"))                                                        \
        .set(LSM_FIELD_T, lsm_finite()))                                                                           \
  X(LSM_MARGIN_MAGFACE, "MAGFACE", "MagFace", true, true, true, 0u,                                               \
    lsm_fields()                                                                                                   \
        .set(LSM_FIELD_SCALE, lsm_above(0.0))                                                                      \
        .set(LSM_FIELD_M2, LSM_ANGLE_MARGIN)                                                                       \
        .set(LSM_FIELD_UPPER_MARGIN, LSM_ANGLE_MARGIN)                                                             \
        .set(LSM_FIELD_LOWER_NORM, lsm_above(0.0))                                                                 \
        .set(LSM_FIELD_UPPER_NORM, lsm_above(0.0))                                                                 \
        .set(LSM_FIELD_LAMBDA_G, lsm_at_least(0.0)))

// One row, for host code (the checks).
struct lsm_kind_traits {
  int32_t kind;
  const char *enum_name, *name;
  bool normalises_x, normalises_w, needs_angle;
  uint32_t flags;
  lsm_fields fields;
};

#define LSM_KIND_ROW(kind, enum_name, name, nx, nw, angle, flags, fields) \
  {kind, enum_name, name, nx, nw, angle, flags, fields},
inline constexpr lsm_kind_traits lsm_kinds[] = {LSM_MARGIN_KINDS(LSM_KIND_ROW)};
#undef LSM_KIND_ROW
inline constexpr int lsm_kind_count = (int)(sizeof lsm_kinds / sizeof lsm_kinds[0]);

// The row of a kind; nullptr for a value no row has.
inline const lsm_kind_traits *lsm_kind_of(int32_t kind) {
  for (const lsm_kind_traits &k : lsm_kinds)
    if (k.kind == kind) return &k;
  return nullptr;
}

// The row's properties the kernels read, as switches over the same table (device code cannot
// index a host array).
#define LSM_KIND_NX(kind, e, n, nx, ...) \
  case kind:                             \
    return nx;
#define LSM_KIND_NW(kind, e, n, nx, nw, ...) \
  case kind:                                 \
    return nw;
#define LSM_KIND_ANGLE(kind, e, n, nx, nw, angle, ...) \
  case kind:                                           \
    return angle;
// x normalised (and scaled by lsm_margin.scale) inside the op: the normalised kinds.
LSM_HD bool lsm_normalises_x(int kind) {
  switch (kind) { LSM_MARGIN_KINDS(LSM_KIND_NX) }
  return false;
}
// Every W row normalised inside the op.
LSM_HD bool lsm_normalises_w(int kind) {
  switch (kind) { LSM_MARGIN_KINDS(LSM_KIND_NW) }
  return false;
}
// The target takes the angle itself, from sin t = |r| (lsm_stats_add_residual).
LSM_HD bool lsm_needs_residual(int kind) {
  switch (kind) { LSM_MARGIN_KINDS(LSM_KIND_ANGLE) }
  return false;
}
#undef LSM_KIND_NX
#undef LSM_KIND_NW
#undef LSM_KIND_ANGLE

// The adaptive kinds (docs/math.md): served by the fused loss only.
LSM_HD bool lsm_adaptive(int kind) {
  return kind == LSM_MARGIN_SUBCENTER || kind == LSM_MARGIN_ADAFACE || kind == LSM_MARGIN_CURRICULARFACE ||
         kind == LSM_MARGIN_MAGFACE;
}
// The rows of W per class: K for sub-center ArcFace, else 1.
LSM_HD int64_t lsm_subcenters(const lsm_margin &mg) { return mg.kind == LSM_MARGIN_SUBCENTER ? mg.m : 1; }
// The non-target logits are not scale cos t_j: AdaFace clamps them, CurricularFace modulates the hard
// ones; the fused loss transforms each product element (lsm_nontarget).
LSM_HD bool lsm_elementwise(int kind) { return kind == LSM_MARGIN_ADAFACE || kind == LSM_MARGIN_CURRICULARFACE; }

// The plain linear layer: L-Softmax's psi form with margin 1 and nothing normalised, whose target
// logit is the plain product (no correction to its gradients).
LSM_HD bool lsm_plain_margin(const lsm_margin &mg) {
  return !lsm_normalises_x(mg.kind) && !lsm_normalises_w(mg.kind) && mg.m == 1;
}

// x_i enters the products as lsm_x_factor x_i / |x_i| for the normalised kinds (the scale s).
LSM_HD double lsm_x_factor(const lsm_margin &mg) { return lsm_normalises_x(mg.kind) ? mg.scale : 1.0; }

#endif  // LSOFTMAX_KINDS_H
