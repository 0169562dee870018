// api.cpp: the C ABI. Validates every argument, then dispatches to the CPU or CUDA backend.
// No exception crosses this boundary; every failure is a status plus a message.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <memory>
#include <new>
#include <string>

#include "internal.h"
#include "margin.cuh"

#ifndef LSM_VERSION_STRING
#define LSM_VERSION_STRING "0.1.0"
#endif

namespace {

thread_local std::string g_last_error;

std::string str(int64_t v) { return std::to_string(v); }

// Runs body, turning any escaping C++ exception into a status.
template <typename F>
int32_t guarded(lsm_context *ctx, F body) {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    return lsm_fail(ctx, LSM_ERR_OUT_OF_MEMORY, "host allocation failed");
  } catch (...) {
    return lsm_fail(ctx, LSM_ERR_INTERNAL, "unexpected C++ exception");
  }
}

int32_t check_context(lsm_context *ctx) {
  if (ctx == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "ctx: expected a context, got NULL");
  return LSM_OK;
}

int32_t check_pointer(lsm_context *ctx, const void *p, const char *name) {
  if (p != nullptr) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, std::string(name) + ": expected a pointer, got NULL");
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

// On a CUDA context, tensors must lie inside memory this context allocated: a host pointer or a
// too-short buffer would otherwise fault inside a kernel and poison the device context. (A CPU
// context accepts any host memory, which cannot be checked.)
int32_t check_range(lsm_context *ctx, const void *p, int64_t elements, size_t element_bytes, const char *name) {
  if (ctx->backend != LSM_BACKEND_CUDA) return LSM_OK;
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

std::string num(double v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// The margin's kind and the fields it uses; every other field must be 0 (room to grow).
int32_t check_margin(lsm_context *ctx, const lsm_margin &m) {
  auto fail = [&](const std::string &msg) { return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, msg); };
  auto finite_at_least = [&](double v, double lo, const char *name, int32_t *s) {
    if (v >= lo && isfinite(v)) return true;
    *s = fail(std::string(name) + ": expected a finite number >= " + num(lo) + ", got " + num(v));
    return false;
  };
  static const char *const names[] = {"L-Softmax", "A-Softmax", "CosFace", "ArcFace", "the combined margin"};
  if (m.kind < LSM_MARGIN_LSOFTMAX || m.kind > LSM_MARGIN_COMBINED)
    return fail("margin.kind: expected LSM_MARGIN_LSOFTMAX (0), ASOFTMAX (1), COSFACE (2), ARCFACE (3) or "
                "COMBINED (4), got " + str(m.kind));
  // Which fields the kind reads: m and lambda; scale, m1, m2, m3; flags.
  const bool angular = m.kind <= LSM_MARGIN_ASOFTMAX;
  const bool uses_m1 = m.kind == LSM_MARGIN_COMBINED;
  const bool uses_m2 = m.kind == LSM_MARGIN_ARCFACE || m.kind == LSM_MARGIN_COMBINED;
  const bool uses_m3 = m.kind == LSM_MARGIN_COSFACE || m.kind == LSM_MARGIN_COMBINED;
  int32_t s = LSM_OK;
  if (angular) {
    if (m.m < 1 || m.m > LSM_MAX_MARGIN)
      return fail("margin.m: expected an integer in [1, " + str(LSM_MAX_MARGIN) + "], got " + str(m.m));
    if (!finite_at_least(m.lambda, 0.0, "margin.lambda", &s)) return s;
  } else {
    if (!(m.scale > 0.0) || !isfinite(m.scale))
      return fail("margin.scale: expected a finite number > 0, got " + num(m.scale));
    if (uses_m1 && !finite_at_least(m.m1, 1.0, "margin.m1", &s)) return s;
    if (uses_m2 && !finite_at_least(m.m2, 0.0, "margin.m2", &s)) return s;
    if (uses_m3 && !finite_at_least(m.m3, 0.0, "margin.m3", &s)) return s;
    if (m.kind == LSM_MARGIN_ARCFACE && !(m.m2 < LSM_PI / 2))
      return fail("margin.m2: expected ArcFace's margin below pi/2, got " + num(m.m2));
  }
  const uint32_t flags_allowed = m.kind == LSM_MARGIN_ARCFACE ? LSM_FLAG_EASY_MARGIN : 0u;
  bool unused_zero = (angular ? m.scale == 0.0 : m.m == 0 && m.lambda == 0.0) && (uses_m1 || m.m1 == 0.0) &&
                     (uses_m2 || m.m2 == 0.0) && (uses_m3 || m.m3 == 0.0) && (m.flags & ~flags_allowed) == 0 &&
                     m.reserved_flags == 0;
  for (double r : m.reserved) unused_zero = unused_zero && r == 0.0;
  if (!unused_zero)
    return fail(std::string("margin: expected 0 in the fields ") + names[m.kind] + " does not use (" +
                (angular ? "scale, m1, m2, m3, flags" : "m, lambda, and any of m1, m2, m3, flags it does not take") +
                ", reserved)");
  return LSM_OK;
}

int32_t check_tensor(lsm_context *ctx, const void *t, int64_t elements, size_t element_bytes, const char *name) {
  const int32_t s = check_pointer(ctx, t, name);
  return s != LSM_OK ? s : check_range(ctx, t, elements, element_bytes, name);
}

size_t element_bytes(int32_t dtype) { return dtype == LSM_FLOAT32 ? sizeof(float) : sizeof(double); }

// What every op takes: dtype, sizes, margin and the inputs x, w, labels. The backends check label
// values themselves.
int32_t check_inputs(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &margin,
                     const void *x, const void *w, const int32_t *labels) {
  int32_t s;
  if ((s = check_context(ctx))) return s;
  if (dtype != LSM_FLOAT32 && dtype != LSM_FLOAT64)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "dtype: expected LSM_FLOAT32 (0) or LSM_FLOAT64 (1), got " + str(dtype));
  if ((s = check_size(ctx, n, "n")) || (s = check_size(ctx, d, "d")) || (s = check_size(ctx, c, "c")) ||
      (s = check_product(ctx, n, c, "n*c")) || (s = check_product(ctx, n, d, "n*d")) ||
      (s = check_product(ctx, c, d, "c*d")))
    return s;
  if ((s = check_margin(ctx, margin))) return s;
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, x, n * d, e, "x")) || (s = check_tensor(ctx, w, c * d, e, "w")) ||
      (s = check_tensor(ctx, labels, n, sizeof(int32_t), "labels")))
    return s;
  return LSM_OK;
}

// The gradient outputs grad_x [n, d] and grad_w [c, d], apart from each other.
int32_t check_gradients(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const void *gx,
                        const void *gw) {
  int32_t s;
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, gx, n * d, e, "grad_x")) || (s = check_tensor(ctx, gw, c * d, e, "grad_w"))) return s;
  if (gx == gw)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "grad_w: expected memory apart from grad_x, got the same pointer");
  return LSM_OK;
}

// Checks everything the forward or backward backends rely on.
int32_t check_problem(lsm_context *ctx, const lsm_problem &p, bool backward) {
  int32_t s;
  if ((s = check_inputs(ctx, p.dtype, p.n, p.d, p.c, p.margin, p.x, p.w, p.labels))) return s;
  if (!backward) return check_tensor(ctx, p.logits, p.n * p.c, element_bytes(p.dtype), "logits");
  if ((s = check_tensor(ctx, p.grad_logits, p.n * p.c, element_bytes(p.dtype), "grad_logits"))) return s;
  return check_gradients(ctx, p.dtype, p.n, p.d, p.c, p.grad_x, p.grad_w);
}

// The fused loss's arguments: the inputs, the shard, the row arrays and the gradients asked for.
int32_t check_loss(lsm_context *ctx, const lsm_loss_problem &p) {
  int32_t s;
  if ((s = check_inputs(ctx, p.dtype, p.n, p.d, p.c, p.margin, p.x, p.w, p.labels))) return s;
  const lsm_loss_args &a = p.args;
  if (a.class_offset < 0 || a.total_classes < 1 || a.total_classes > LSM_MAX_ELEMENTS ||
      a.class_offset > a.total_classes - p.c)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args: expected 0 <= class_offset and class_offset + c <= total_classes <= " + str(LSM_MAX_ELEMENTS) +
                        ", got class_offset " + str(a.class_offset) + ", c " + str(p.c) + ", total_classes " +
                        str(a.total_classes));
  if (!isfinite(a.grad_scale))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.grad_scale: expected a finite number, got " + num(a.grad_scale));
  if (a.reserved[0] != 0 || a.reserved[1] != 0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.reserved: expected 0");
  const size_t rows = (size_t)p.n * sizeof(double);
  struct named {
    const void *p;
    const char *name;
  };
  const named full[] = {{p.row_loss, "row_loss"}};
  const named partials[] = {{p.row_max, "row_max"}, {p.row_sum, "row_sum"}, {p.target, "target"}};
  const named gradients_in[] = {{p.lse, "lse"}};
  const named *arrays = p.stage == LSM_LOSS_FULL ? full : p.stage == LSM_LOSS_PARTIALS ? partials : gradients_in;
  const int count = p.stage == LSM_LOSS_PARTIALS ? 3 : 1;
  for (int k = 0; k < count; ++k) {
    if ((s = check_pointer(ctx, arrays[k].p, arrays[k].name)) ||
        (s = check_range(ctx, arrays[k].p, (int64_t)rows, 1, arrays[k].name)))
      return s;
  }
  if (p.stage == LSM_LOSS_PARTIALS && (p.row_max == p.row_sum || p.row_max == p.target || p.row_sum == p.target))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "row_max, row_sum, target: expected three separate arrays");
  if (p.stage == LSM_LOSS_FULL && p.grad_x == nullptr && p.grad_w == nullptr) return LSM_OK;  // the loss alone
  if (p.stage != LSM_LOSS_PARTIALS) return check_gradients(ctx, p.dtype, p.n, p.d, p.c, p.grad_x, p.grad_w);
  return LSM_OK;
}

}  // namespace

int32_t lsm_fail(lsm_context *ctx, int32_t status, const std::string &message) {
  try {
    g_last_error = message;
    if (ctx != nullptr) ctx->error = message;
  } catch (...) {
    // Out of memory while recording the message: the status alone still tells.
  }
  return status;
}

extern "C" {

const char *lsm_version(void) { return LSM_VERSION_STRING; }

int32_t lsm_abi_version(void) { return LSM_ABI_VERSION; }

const char *lsm_last_error(void) { return g_last_error.c_str(); }

int32_t lsm_device_count(int32_t backend, int32_t *count) {
  return guarded(nullptr, [&]() -> int32_t {
    if (count == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "count: expected a pointer, got NULL");
    *count = 0;
    if (backend == LSM_BACKEND_CPU) {
      *count = 1;
      return LSM_OK;
    }
    if (backend != LSM_BACKEND_CUDA)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "backend: expected LSM_BACKEND_CPU (0) or LSM_BACKEND_CUDA (1), got " + str(backend));
    std::string why;
    const int32_t s = lsm_cuda_device_count(count, &why);
    if (s != LSM_OK) return lsm_fail(nullptr, s, why);
    return LSM_OK;
  });
}

int32_t lsm_device_name(int32_t backend, int32_t device, char *buf, size_t len) {
  return guarded(nullptr, [&]() -> int32_t {
    if (buf == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "buf: expected a pointer, got NULL");
    std::string name, why;
    if (backend == LSM_BACKEND_CPU) {
      if (device != 0)
        return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "device: expected 0 for the cpu backend, got " + str(device));
      name = "cpu (OpenBLAS)";
    } else if (backend == LSM_BACKEND_CUDA) {
      const int32_t s = lsm_cuda_device_name(device, &name, &why);
      if (s != LSM_OK) return lsm_fail(nullptr, s, why);
    } else {
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "backend: expected LSM_BACKEND_CPU (0) or LSM_BACKEND_CUDA (1), got " + str(backend));
    }
    if (name.size() + 1 > len)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "len: expected at least " + str((int64_t)name.size() + 1) + " bytes, got " + str((int64_t)len));
    memcpy(buf, name.c_str(), name.size() + 1);
    return LSM_OK;
  });
}

int32_t lsm_context_create(int32_t backend, int32_t device, lsm_context **out) {
  return guarded(nullptr, [&]() -> int32_t {
    if (out == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "out: expected a pointer, got NULL");
    *out = nullptr;
    if (backend == LSM_BACKEND_CPU) {
      if (device != 0)
        return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "device: expected 0 for the cpu backend, got " + str(device));
    } else if (backend != LSM_BACKEND_CUDA) {
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "backend: expected LSM_BACKEND_CPU (0) or LSM_BACKEND_CUDA (1), got " + str(backend));
    }
    // Owned until handed out, so an exception from the CUDA set-up cannot leak it.
    std::unique_ptr<lsm_context, int32_t (*)(lsm_context *)> ctx(new lsm_context(), lsm_context_destroy);
    ctx->backend = backend;
    ctx->device = device;
    if (backend == LSM_BACKEND_CUDA) {
      const int32_t s = lsm_cuda_context_init(ctx.get());
      if (s != LSM_OK) return lsm_fail(nullptr, s, ctx->error);
    }
    *out = ctx.release();
    return LSM_OK;
  });
}

int32_t lsm_context_destroy(lsm_context *ctx) {
  if (ctx == nullptr) return LSM_OK;
  if (ctx->backend == LSM_BACKEND_CUDA) {
    lsm_cuda_context_release(ctx);  // frees its allocations too
  } else {
    for (auto &a : ctx->allocations) free(const_cast<char *>(a.first));
  }
  free(ctx->host_workspace);
  free(ctx->host_inputs);
  delete ctx;
  return LSM_OK;
}

const char *lsm_context_last_error(const lsm_context *ctx) { return ctx == nullptr ? "" : ctx->error.c_str(); }

int32_t lsm_context_info(const lsm_context *ctx, int32_t *backend, int32_t *device) {
  if (ctx == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "ctx: expected a context, got NULL");
  if (backend != nullptr) *backend = ctx->backend;
  if (device != nullptr) *device = ctx->device;
  return LSM_OK;
}

int32_t lsm_context_set_precision(lsm_context *ctx, int32_t precision) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (precision != LSM_PRECISION_EXACT && precision != LSM_PRECISION_TF32)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "precision: expected LSM_PRECISION_EXACT (0) or LSM_PRECISION_TF32 (1), got " + str(precision));
    if (precision == LSM_PRECISION_TF32) {
      if (ctx->backend != LSM_BACKEND_CUDA)
        return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                        "precision: TF32 needs a CUDA device of compute capability 8.0 or newer, and this "
                        "context is on the cpu");
      if ((s = lsm_cuda_check_precision(ctx, precision))) return s;
    }
    ctx->precision = precision;
    return LSM_OK;
  });
}

int32_t lsm_malloc(lsm_context *ctx, size_t bytes, void **out) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, out, "out"))) return s;
    *out = nullptr;
    if (bytes == 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "bytes: expected at least 1, got 0");
    if (ctx->backend == LSM_BACKEND_CUDA) return lsm_cuda_malloc(ctx, bytes, out);
    const size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded < bytes) return lsm_fail(ctx, LSM_ERR_OUT_OF_MEMORY, "bytes: " + std::to_string(bytes) + " is too large");
    void *p = aligned_alloc(256, rounded);
    if (p == nullptr)
      return lsm_fail(ctx, LSM_ERR_OUT_OF_MEMORY, "host allocation of " + std::to_string(bytes) + " bytes failed");
    try {
      ctx->allocations.emplace(static_cast<const char *>(p), bytes);
    } catch (...) {
      free(p);
      throw;
    }
    *out = p;
    return LSM_OK;
  });
}

int32_t lsm_free(lsm_context *ctx, void *ptr) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (ptr == nullptr) return LSM_OK;
    if (ctx->allocations.find(static_cast<const char *>(ptr)) == ctx->allocations.end())
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "ptr: expected memory allocated on this context, got another pointer");
    if (ctx->backend == LSM_BACKEND_CUDA) return lsm_cuda_free(ctx, ptr);
    ctx->allocations.erase(static_cast<const char *>(ptr));
    free(ptr);
    return LSM_OK;
  });
}

static int32_t copy(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_context) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (bytes == 0) return LSM_OK;
    if ((s = check_pointer(ctx, dst, "dst")) || (s = check_pointer(ctx, src, "src"))) return s;
    if ((s = check_range(ctx, to_context ? dst : src, (int64_t)bytes, 1, to_context ? "dst" : "src"))) return s;
    if (ctx->backend == LSM_BACKEND_CUDA) {
      if ((s = lsm_cuda_copy(ctx, dst, src, bytes, to_context)) != LSM_OK) return s;
    } else {
      memmove(dst, src, bytes);
    }
    (to_context ? ctx->traffic_to : ctx->traffic_from) += bytes;
    return LSM_OK;
  });
}

int32_t lsm_memcpy_to_context(lsm_context *ctx, void *dst, const void *src, size_t bytes) {
  return copy(ctx, dst, src, bytes, true);
}

int32_t lsm_memcpy_from_context(lsm_context *ctx, void *dst, const void *src, size_t bytes) {
  return copy(ctx, dst, src, bytes, false);
}

int32_t lsm_synchronize(lsm_context *ctx) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_synchronize(ctx) : LSM_OK;
  });
}

// The ops: the margin is copied before the checks, so the backends see exactly what was checked.
int32_t lsm_forward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                    const void *x, const void *w, const int32_t *labels, void *logits) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin"))) return s;
    const lsm_problem p = {dtype, x, w, labels, nullptr, n, d, c, *margin, logits, nullptr, nullptr};
    if ((s = check_problem(ctx, p, false))) return s;
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_forward(ctx, p) : lsm_cpu_forward(ctx, p);
  });
}

int32_t lsm_backward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                     const void *x, const void *w, const int32_t *labels, const void *grad_logits, void *grad_x,
                     void *grad_w) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin"))) return s;
    const lsm_problem p = {dtype, x, w, labels, grad_logits, n, d, c, *margin, nullptr, grad_x, grad_w};
    if ((s = check_problem(ctx, p, true))) return s;
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_backward(ctx, p) : lsm_cpu_backward(ctx, p);
  });
}

int32_t lsm_context_set_workspace_limit(lsm_context *ctx, size_t bytes) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (bytes == 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "bytes: expected at least 1, got 0");
    ctx->workspace_limit = bytes;
    if (ctx->host_workspace_bytes > bytes) {  // give back what the new limit no longer allows
      free(ctx->host_workspace);
      ctx->host_workspace = nullptr;
      ctx->host_workspace_bytes = 0;
    }
    return LSM_OK;
  });
}

// The three fused-loss entry points share one check and one dispatch.
static int32_t run_loss(lsm_context *ctx, const lsm_margin *margin, const lsm_loss_args *args, lsm_loss_problem p) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin")) ||
        (s = check_pointer(ctx, args, "args")))
      return s;
    p.margin = *margin;
    p.args = *args;
    if ((s = check_loss(ctx, p))) return s;
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_loss(ctx, p) : lsm_cpu_loss(ctx, p);
  });
}

int32_t lsm_loss(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                 const lsm_loss_args *args, const void *x, const void *w, const int32_t *labels, double *row_loss,
                 void *grad_x, void *grad_w) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_FULL, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.row_loss = row_loss, p.grad_x = grad_x, p.grad_w = grad_w;
  return run_loss(ctx, margin, args, p);
}

int32_t lsm_loss_partials(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                          const lsm_loss_args *args, const void *x, const void *w, const int32_t *labels,
                          double *row_max, double *row_sum, double *target) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_PARTIALS, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.row_max = row_max, p.row_sum = row_sum, p.target = target;
  return run_loss(ctx, margin, args, p);
}

int32_t lsm_loss_gradients(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                           const lsm_margin *margin, const lsm_loss_args *args, const void *x, const void *w,
                           const int32_t *labels, const double *lse, void *grad_x, void *grad_w) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_GRADIENTS, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.lse = lse, p.grad_x = grad_x, p.grad_w = grad_w;
  return run_loss(ctx, margin, args, p);
}

// Resident training (issue 13): the optimizer update, the sum of the row losses, top-k, traffic.
static int32_t check_finite_nonnegative(lsm_context *ctx, double v, const char *name) {
  if (v >= 0.0 && isfinite(v)) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, std::string(name) + ": expected a finite number >= 0, got " + num(v));
}

int32_t lsm_sgd_update(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd *sgd, void *w, const void *grad,
                       void *velocity) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, sgd, "sgd"))) return s;
    const lsm_sgd o = *sgd;
    if (dtype != LSM_FLOAT32 && dtype != LSM_FLOAT64)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "dtype: expected LSM_FLOAT32 (0) or LSM_FLOAT64 (1), got " + str(dtype));
    if ((s = check_size(ctx, count, "count")) || (s = check_finite_nonnegative(ctx, o.lr, "sgd.lr")) ||
        (s = check_finite_nonnegative(ctx, o.momentum, "sgd.momentum")) ||
        (s = check_finite_nonnegative(ctx, o.weight_decay, "sgd.weight_decay")))
      return s;
    if ((o.nesterov != 0 && o.nesterov != 1) || (o.first != 0 && o.first != 1) || o.reserved != 0)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "sgd: expected nesterov and first 0 or 1, reserved 0");
    if (o.nesterov && o.momentum == 0.0)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "sgd.nesterov: expected momentum > 0 with Nesterov momentum, got 0");
    const size_t e = element_bytes(dtype);
    if ((s = check_tensor(ctx, w, count, e, "w")) || (s = check_tensor(ctx, grad, count, e, "grad"))) return s;
    if (o.momentum != 0.0 && (s = check_tensor(ctx, velocity, count, e, "velocity"))) return s;
    if (w == grad || w == velocity || grad == velocity)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "w, grad, velocity: expected three separate arrays");
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_sgd(ctx, dtype, count, o, w, grad, velocity)
                                            : lsm_cpu_sgd(ctx, dtype, count, o, w, grad, velocity);
  });
}

int32_t lsm_sum(lsm_context *ctx, const double *values, int64_t count, double *out) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, out, "out")) || (s = check_size(ctx, count, "count")) ||
        (s = check_tensor(ctx, values, count, sizeof(double), "values")))
      return s;
    if (ctx->backend == LSM_BACKEND_CUDA) return lsm_cuda_sum(ctx, values, count, out);
    double total = 0.0;
    for (int64_t j = 0; j < count; ++j) total += values[j];
    *out = total;
    ctx->traffic_from += sizeof(double);
    return LSM_OK;
  });
}

int32_t lsm_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                 int64_t k, const void *x, const void *w, int32_t *indices, void *scores) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin"))) return s;
    const lsm_margin m = *margin;
    // No labels: x, at least n int32 long, stands in for them in the shared check.
    if ((s = check_inputs(ctx, dtype, n, d, c, m, x, w, static_cast<const int32_t *>(x)))) return s;
    if (k < 1 || k > c || k > LSM_MAX_TOPK)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "k: expected an integer in [1, min(c, " + str(LSM_MAX_TOPK) + ")] = [1, " +
                          str(c < LSM_MAX_TOPK ? c : LSM_MAX_TOPK) + "], got " + str(k));
    if ((s = check_product(ctx, n, k, "n*k")) ||
        (s = check_tensor(ctx, indices, n * k, sizeof(int32_t), "indices")) ||
        (s = check_tensor(ctx, scores, n * k, element_bytes(dtype), "scores")))
      return s;
    if ((const void *)indices == scores)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "scores: expected memory apart from indices, got the same pointer");
    // The score of a class is its plain logit with the kind's normalisations and no margin: x.w_j
    // for L-Softmax, |x| cos t_j for A-Softmax, cos t_j for the normalised kinds (scale 1, so a
    // score is a cosine whatever s is).
    lsm_margin unit = m;
    unit.scale = 1.0;
    return ctx->backend == LSM_BACKEND_CUDA ? lsm_cuda_topk(ctx, dtype, n, d, c, unit, k, x, w, indices, scores)
                                            : lsm_cpu_topk(ctx, dtype, n, d, c, unit, k, x, w, indices, scores);
  });
}

int32_t lsm_context_traffic(const lsm_context *ctx, uint64_t *to_context, uint64_t *from_context) {
  if (ctx == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "ctx: expected a context, got NULL");
  if (to_context != nullptr) *to_context = ctx->traffic_to;
  if (from_context != nullptr) *from_context = ctx->traffic_from;
  return LSM_OK;
}

}  // extern "C"
