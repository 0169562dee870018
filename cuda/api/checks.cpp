// checks.cpp: the argument checks of the C ABI (checks.h). Everything a backend relies on is
// checked here, once, before it runs; the label values are the backends' (they read the labels).
#include "api/checks.h"

#include <math.h>
#include <stdio.h>

#include "math/kinds.h"

namespace lsm_api {

std::string str(int64_t v) { return std::to_string(v); }

std::string num(double v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

const lsm_backend_ops *backend_of(int32_t backend) {
  if (backend == LSM_BACKEND_CPU) return &lsm_cpu_backend;
  if (backend == LSM_BACKEND_CUDA) return &lsm_cuda_backend;
  lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
           "backend: expected LSM_BACKEND_CPU (0) or LSM_BACKEND_CUDA (1), got " + str(backend));
  return nullptr;
}

int32_t check_context(lsm_context *ctx) {
  if (ctx == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "ctx: expected a context, got NULL");
  return LSM_OK;
}

int32_t check_pointer(lsm_context *ctx, const void *p, const char *name) {
  if (p != nullptr) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, std::string(name) + ": expected a pointer, got NULL");
}

int32_t check_dtype(lsm_context *ctx, int32_t dtype) {
  if (dtype == LSM_FLOAT32 || dtype == LSM_FLOAT64) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  "dtype: expected LSM_FLOAT32 (0) or LSM_FLOAT64 (1), got " + str(dtype));
}

int32_t check_size(lsm_context *ctx, int64_t v, const char *name) {
  if (v >= 1 && v <= LSM_MAX_ELEMENTS) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  std::string(name) + ": expected an integer in [1, " + str(LSM_MAX_ELEMENTS) + "], got " + str(v));
}

int32_t check_product(lsm_context *ctx, int64_t a, int64_t b, const char *name) {
  // a, b <= 2^31 - 1, so the product fits in int64.
  if (a * b <= LSM_MAX_ELEMENTS) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  std::string(name) + ": expected at most " + str(LSM_MAX_ELEMENTS) +
                      " elements (32-bit kernel indexing), got " + str(a * b));
}

// On a device backend, tensors must lie inside memory this context allocated: a host pointer or
// a too-short buffer would otherwise fault inside a kernel and poison the device context. (The
// CPU accepts any host memory, which cannot be checked.)
int32_t check_range(lsm_context *ctx, const void *p, int64_t elements, size_t element_bytes, const char *name) {
  if (ctx->ops->any_host_memory) return LSM_OK;
  const char *q = static_cast<const char *>(p);
  const size_t bytes = (size_t)elements * element_bytes;
  auto it = ctx->allocations.upper_bound(q);
  if (it != ctx->allocations.begin()) {
    --it;
    const size_t offset = (size_t)(q - it->first);
    if (offset <= it->second && bytes <= it->second - offset) return LSM_OK;
  }
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  std::string(name) + ": expected " + std::to_string(bytes) +
                      " bytes inside memory allocated on this context (lsm_malloc), got a pointer outside it");
}

int32_t check_tensor(lsm_context *ctx, const void *t, int64_t elements, size_t element_bytes, const char *name) {
  const int32_t s = check_pointer(ctx, t, name);
  return s != LSM_OK ? s : check_range(ctx, t, elements, element_bytes, name);
}

size_t element_bytes(int32_t dtype) { return dtype == LSM_FLOAT32 ? sizeof(float) : sizeof(double); }

// One field of the margin against the kind's range for it (math/kinds.h).
static int32_t check_field(lsm_context *ctx, const lsm_kind_traits &k, const lsm_range &r, const char *name,
                           double v) {
  // The messages are built only on a failure: the check runs on every call.
  const auto field = [name] { return std::string("margin.") + name; };
  if (r.integer) {
    if (v >= r.lo && v <= r.hi) return LSM_OK;
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    field() + ": expected an integer in [" + str((int64_t)r.lo) + ", " + str((int64_t)r.hi) +
                        "], got " + str((int64_t)v));
  }
  const bool any = isinf(r.lo);
  if (!((r.lo_open ? v > r.lo : v >= r.lo) && isfinite(v)))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    field() + ": expected a finite number" +
                        (any ? std::string() : std::string(r.lo_open ? " > " : " >= ") + num(r.lo)) + ", got " +
                        num(v));
  if (r.hi_text != nullptr && r.hi_closed && !(v <= r.hi))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    field() + ": expected a number in [" + num(r.lo) + ", " + r.hi_text + "], got " + num(v));
  if (r.hi_text != nullptr && !r.hi_closed && !(v < r.hi))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    field() + ": expected " + k.name + "'s margin below " + r.hi_text + ", got " + num(v));
  return LSM_OK;
}

int32_t check_margin(lsm_context *ctx, const lsm_margin &m) {
  const lsm_kind_traits *k = lsm_kind_of(m.kind);
  if (k == nullptr) {
    std::string kinds;
    for (int i = 0; i < lsm_kind_count; ++i) {
      if (i > 0) kinds += i + 1 == lsm_kind_count ? " or " : ", ";
      kinds += std::string(i == 0 ? "LSM_MARGIN_" : "") + lsm_kinds[i].enum_name + " (" + str(lsm_kinds[i].kind) + ")";
    }
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "margin.kind: expected " + kinds + ", got " + str(m.kind));
  }
  // In the order of lsm_margin_field.
  static const char *const names[LSM_FIELD_COUNT] = {
      "m",         "lambda", "scale",      "m1",         "m2",       "m3",          "h",           "t_alpha",
      "batch_mean", "batch_std", "t", "lower_norm", "upper_norm", "lambda_g", "upper_margin"};
  const double values[LSM_FIELD_COUNT] = {(double)m.m, m.lambda,  m.scale, m.m1,         m.m2,
                                          m.m3,        m.h,       m.t_alpha, m.batch_mean, m.batch_std,
                                          m.t,         m.lower_norm, m.upper_norm, m.lambda_g, m.upper_margin};
  bool zero = true;
  for (int f = 0; f < LSM_FIELD_COUNT; ++f) {
    const lsm_range &r = k->fields.r[f];
    if (r.used) {
      const int32_t s = check_field(ctx, *k, r, names[f], values[f]);
      if (s != LSM_OK) return s;
    } else {
      zero = zero && values[f] == 0.0;
    }
  }
  zero = zero && (m.flags & ~k->flags) == 0 && m.reserved_flags == 0;
  for (double r : m.reserved) zero = zero && r == 0.0;
  if (zero && m.kind == LSM_MARGIN_MAGFACE && !(m.upper_norm > m.lower_norm))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "margin.upper_norm: expected a number > lower_norm (" + num(m.lower_norm) + "), got " +
                        num(m.upper_norm));
  if (zero) return LSM_OK;
  std::string unused;  // the fields the kind does not read
  for (int f = 0; f < LSM_FIELD_COUNT; ++f)
    if (!k->fields.r[f].used) unused += std::string(names[f]) + ", ";
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  std::string("margin: expected 0 in the fields ") + k->name + " does not use (" + unused +
                      (k->flags == 0 ? "flags" : "other flags") + ", reserved_flags, reserved)");
}

int32_t check_head(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &margin,
                   const void *x, const void *w) {
  int32_t s;
  if ((s = check_context(ctx)) || (s = check_dtype(ctx, dtype))) return s;
  // No n*c check here: the fused loss and top-k hold no n x c tensor (class blocks within the
  // workspace, 64-bit offsets); the op's logits are checked in check_problem.
  if ((s = check_size(ctx, n, "n")) || (s = check_size(ctx, d, "d")) || (s = check_size(ctx, c, "c")) ||
      (s = check_product(ctx, n, d, "n*d")) || (s = check_product(ctx, c, d, "c*d")))
    return s;
  if ((s = check_margin(ctx, margin))) return s;
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, x, n * d, e, "x")) || (s = check_tensor(ctx, w, c * d, e, "w"))) return s;
  return LSM_OK;
}

// The head and the labels [n].
static int32_t check_inputs(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                            const lsm_margin &margin, const void *x, const void *w, const int32_t *labels) {
  const int32_t s = check_head(ctx, dtype, n, d, c, margin, x, w);
  return s != LSM_OK ? s : check_tensor(ctx, labels, n, sizeof(int32_t), "labels");
}

// The gradient outputs grad_x [n, d] and grad_w [c, d], apart from each other.
static int32_t check_gradients(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const void *gx,
                               const void *gw) {
  int32_t s;
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, gx, n * d, e, "grad_x")) || (s = check_tensor(ctx, gw, c * d, e, "grad_w"))) return s;
  if (gx == gw)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "grad_w: expected memory apart from grad_x, got the same pointer");
  return LSM_OK;
}

// The adaptive kinds' batch statistics and state belong to the fused loss (lsm_loss*).
static int32_t check_not_adaptive(lsm_context *ctx, const lsm_margin &m, const char *op) {
  if (!lsm_adaptive(m.kind)) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  std::string("margin.kind: expected a kind ") + op + " serves (" + lsm_kind_of(m.kind)->name +
                      " is served by lsm_loss), got " + str(m.kind));
}

int32_t check_problem(lsm_context *ctx, const lsm_problem &p, bool backward) {
  int32_t s;
  if ((s = check_inputs(ctx, p.dtype, p.n, p.d, p.c, p.margin, p.x, p.w, p.labels))) return s;
  if ((s = check_not_adaptive(ctx, p.margin, backward ? "lsm_backward" : "lsm_forward"))) return s;
  if (p.n * p.c > LSM_MAX_ELEMENTS)  // n, c <= 2^31 - 1: the product fits in int64
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string(backward ? "grad_logits" : "logits") + ": expected at most " + str(LSM_MAX_ELEMENTS) +
                        " elements (n*c: the op's [n, c] tensor; lsm_loss holds none), got " + str(p.n * p.c));
  if (!backward) return check_tensor(ctx, p.logits, p.n * p.c, element_bytes(p.dtype), "logits");
  if ((s = check_tensor(ctx, p.grad_logits, p.n * p.c, element_bytes(p.dtype), "grad_logits"))) return s;
  return check_gradients(ctx, p.dtype, p.n, p.d, p.c, p.grad_x, p.grad_w);
}

// lsm_forward_args and lsm_backward_args: unsharded, none of the loss's options, and their
// tensors ([n, c/K] logits or their gradient; the regulariser's [n], optional).
static int32_t check_op_args(lsm_context *ctx, const lsm_loss_problem &p, int64_t classes) {
  const lsm_loss_args &a = p.args;
  const char *op = p.stage == LSM_LOSS_LOGITS ? "lsm_forward_args" : "lsm_backward_args";
  if (a.class_offset != 0 || a.total_classes != classes)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string("args: expected class_offset 0 and total_classes ") + str(classes) + " (" + op +
                        " holds every class), got " + str(a.class_offset) + ", " + str(a.total_classes));
  const char *set = a.label_smoothing != 0.0 ? "label_smoothing"
                    : a.class_weights != nullptr || a.weight_sum != 0.0 ? "class_weights"
                    : a.flags != 0 || a.ignore_index != 0 ? "flags"
                    : a.update != nullptr ? "update"
                    : a.row_targets != nullptr ? "row_targets"
                                               : nullptr;
  if (set != nullptr)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string("args.") + set + ": expected 0 / NULL for " + op +
                        " (the loss's options; its logits are what a loss takes)");
  if (p.n * classes > LSM_MAX_ELEMENTS)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string(p.stage == LSM_LOSS_LOGITS ? "logits" : "grad_logits") + ": expected at most " +
                        str(LSM_MAX_ELEMENTS) + " elements (n*c/K: the op's [n, c/K] tensor), got " +
                        str(p.n * classes));
  const size_t e = element_bytes(p.dtype);
  int32_t s;
  if (p.stage == LSM_LOSS_LOGITS) {
    if ((s = check_tensor(ctx, p.logits, p.n * classes, e, "logits"))) return s;
    if (p.regulariser != nullptr && (s = check_tensor(ctx, p.regulariser, p.n, sizeof(double), "regulariser")))
      return s;
    if ((const void *)p.regulariser == p.logits)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "regulariser: expected memory apart from logits, got the same pointer");
    return LSM_OK;
  }
  if ((s = check_tensor(ctx, p.grad_logits, p.n * classes, e, "grad_logits"))) return s;
  if (p.grad_regulariser != nullptr &&
      (s = check_tensor(ctx, p.grad_regulariser, p.n, sizeof(double), "grad_regulariser")))
    return s;
  return check_gradients(ctx, p.dtype, p.n, p.d, p.c, p.grad_x, p.grad_w);
}

int32_t check_loss(lsm_context *ctx, const lsm_loss_problem &p) {
  int32_t s;
  if ((s = check_inputs(ctx, p.dtype, p.n, p.d, p.c, p.margin, p.x, p.w, p.labels))) return s;
  const lsm_loss_args &a = p.args;
  const int64_t subs = lsm_subcenters(p.margin);
  if (p.c % subs != 0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "c: expected a multiple of the sub-centers margin.m = " + str(subs) + " (whole classes), got " +
                        str(p.c));
  const int64_t classes = p.c / subs;
  if (a.class_offset < 0 || a.total_classes < 1 || a.total_classes > LSM_MAX_ELEMENTS ||
      a.class_offset > a.total_classes - classes)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string("args: expected 0 <= class_offset and class_offset + ") + (subs > 1 ? "c/K" : "c") +
                        " <= total_classes <= " + str(LSM_MAX_ELEMENTS) + ", got class_offset " +
                        str(a.class_offset) + ", " + (subs > 1 ? "c/K " : "c ") + str(classes) + ", total_classes " +
                        str(a.total_classes));
  if (!isfinite(a.grad_scale))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.grad_scale: expected a finite number, got " + num(a.grad_scale));
  if (a.reserved != 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.reserved: expected 0");
  if (p.stage == LSM_LOSS_LOGITS || p.stage == LSM_LOSS_BACKWARD) return check_op_args(ctx, p, classes);
  if (a.update != nullptr && p.stage != LSM_LOSS_FULL)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.update: expected NULL (a step goes with lsm_loss only)");
  // The cross-entropy options; the weights' values are the backends' to check (they read them).
  if (!(a.label_smoothing >= 0.0 && a.label_smoothing < 1.0))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args.label_smoothing: expected a number in [0, 1), got " + num(a.label_smoothing));
  if (a.class_weights == nullptr ? a.weight_sum != 0.0 : !(a.weight_sum >= 0.0 && isfinite(a.weight_sum)))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string("args.weight_sum: expected ") +
                        (a.class_weights == nullptr ? "0 without class_weights" : "a finite number >= 0") + ", got " +
                        num(a.weight_sum));
  if (a.class_weights != nullptr &&
      (s = check_tensor(ctx, a.class_weights, a.total_classes, sizeof(double), "args.class_weights")))
    return s;
  if (a.flags != 0 && a.flags != LSM_LOSS_IGNORE)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args.flags: expected 0 or LSM_LOSS_IGNORE (1), got " + str(a.flags));
  if (a.flags == 0 && a.ignore_index != 0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args.ignore_index: expected 0 without LSM_LOSS_IGNORE, got " + str(a.ignore_index));
  const size_t rows = (size_t)p.n * sizeof(double);
  struct named {
    const void *p;
    const char *name;
  };
  const named full[] = {{p.row_loss, "row_loss"}};
  const named partials[] = {{p.row_max, "row_max"}, {p.row_sum, "row_sum"}, {p.target, "target"}};
  const named gradients_in[] = {{p.lse, "lse"}};
  if (a.row_targets != nullptr && p.margin.kind != LSM_MARGIN_CURRICULARFACE)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.row_targets: expected NULL but with CurricularFace");
  if (a.row_targets != nullptr &&
      (s = check_tensor(ctx, a.row_targets, 2 * p.n, sizeof(double), "args.row_targets")))
    return s;
  if (p.margin.kind == LSM_MARGIN_CURRICULARFACE && a.row_targets == nullptr && p.stage != LSM_LOSS_TARGETS &&
      (a.class_offset != 0 || a.total_classes != classes))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args.row_targets: expected every row's c_iy and T_i (lsm_loss_targets) on a shard with "
                    "CurricularFace (class_offset " + str(a.class_offset) + ", total_classes " + str(a.total_classes) +
                        "), got NULL");
  if (p.stage == LSM_LOSS_TARGETS) {
    if (p.margin.kind != LSM_MARGIN_CURRICULARFACE)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "margin.kind: expected LSM_MARGIN_CURRICULARFACE for lsm_loss_targets, got " + str(p.margin.kind));
    return check_tensor(ctx, p.row_targets, 2 * p.n, sizeof(double), "row_targets");
  }
  const named *arrays = p.stage == LSM_LOSS_FULL ? full : p.stage == LSM_LOSS_PARTIALS ? partials : gradients_in;
  const int count = p.stage == LSM_LOSS_PARTIALS ? 3 : 1;
  for (int k = 0; k < count; ++k) {
    if ((s = check_tensor(ctx, arrays[k].p, (int64_t)rows, 1, arrays[k].name))) return s;
  }
  if (p.stage == LSM_LOSS_PARTIALS && (p.row_max == p.row_sum || p.row_max == p.target || p.row_sum == p.target))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "row_max, row_sum, target: expected three separate arrays");
  if (p.stage == LSM_LOSS_PARTIALS) {
    if (a.label_smoothing > 0.0 && (s = check_tensor(ctx, p.row_smooth, (int64_t)rows, 1, "row_smooth"))) return s;
    if (a.label_smoothing == 0.0 && p.row_smooth != nullptr)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "row_smooth: expected NULL without label smoothing");
    if (p.row_smooth != nullptr &&
        (p.row_smooth == p.row_max || p.row_smooth == p.row_sum || p.row_smooth == p.target))
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "row_smooth: expected an array of its own");
  }
  if (p.stage == LSM_LOSS_FULL && p.grad_x == nullptr && p.grad_w == nullptr) return LSM_OK;  // the loss alone
  if (p.stage != LSM_LOSS_PARTIALS) return check_gradients(ctx, p.dtype, p.n, p.d, p.c, p.grad_x, p.grad_w);
  return LSM_OK;
}

}  // namespace lsm_api
