// context.cpp: the C ABI's version, errors, devices, contexts and context memory. Each entry
// point checks its arguments, then calls the context's backend (api/backend.h).
#include <string.h>

#include <memory>
#include <string>

#include "api/checks.h"

#ifndef LSM_VERSION_STRING
#define LSM_VERSION_STRING "0.1.0"
#endif

using namespace lsm_api;

namespace {

thread_local std::string g_last_error;

// Copies between host and context memory in either direction; counts the bytes moved.
int32_t copy(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_context) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (bytes == 0) return LSM_OK;
    if ((s = check_pointer(ctx, dst, "dst")) || (s = check_pointer(ctx, src, "src"))) return s;
    if ((s = check_range(ctx, to_context ? dst : src, (int64_t)bytes, 1, to_context ? "dst" : "src"))) return s;
    if ((s = ctx->ops->copy(ctx, dst, src, bytes, to_context)) != LSM_OK) return s;
    (to_context ? ctx->traffic_to : ctx->traffic_from) += bytes;
    return LSM_OK;
  });
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
    const lsm_backend_ops *ops = backend_of(backend);
    if (ops == nullptr) return LSM_ERR_INVALID_ARGUMENT;
    std::string why;
    const int32_t s = ops->device_count(count, &why);
    return s == LSM_OK ? s : lsm_fail(nullptr, s, why);
  });
}

int32_t lsm_device_name(int32_t backend, int32_t device, char *buf, size_t len) {
  return guarded(nullptr, [&]() -> int32_t {
    if (buf == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "buf: expected a pointer, got NULL");
    const lsm_backend_ops *ops = backend_of(backend);
    if (ops == nullptr) return LSM_ERR_INVALID_ARGUMENT;
    std::string name, why;
    const int32_t s = ops->device_name(device, &name, &why);
    if (s != LSM_OK) return lsm_fail(nullptr, s, why);
    if (name.size() + 1 > len)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "len: expected at least " + str((int64_t)name.size() + 1) + " bytes, got " + str((int64_t)len));
    memcpy(buf, name.c_str(), name.size() + 1);
    return LSM_OK;
  });
}

int32_t lsm_products_info(int32_t backend, char *buf, size_t len) {
  return guarded(nullptr, [&]() -> int32_t {
    if (buf == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "buf: expected a pointer, got NULL");
    const lsm_backend_ops *ops = backend_of(backend);
    if (ops == nullptr) return LSM_ERR_INVALID_ARGUMENT;
    const std::string what = ops->products();
    if (what.size() + 1 > len)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "len: expected at least " + str((int64_t)what.size() + 1) + " bytes, got " + str((int64_t)len));
    memcpy(buf, what.c_str(), what.size() + 1);
    return LSM_OK;
  });
}

int32_t lsm_context_create(int32_t backend, int32_t device, lsm_context **out) {
  return guarded(nullptr, [&]() -> int32_t {
    if (out == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "out: expected a pointer, got NULL");
    *out = nullptr;
    const lsm_backend_ops *ops = backend_of(backend);
    if (ops == nullptr) return LSM_ERR_INVALID_ARGUMENT;
    // Owned until handed out, so an exception from the backend's set-up cannot leak it.
    std::unique_ptr<lsm_context, int32_t (*)(lsm_context *)> ctx(new lsm_context(), lsm_context_destroy);
    ctx->backend = backend;
    ctx->device = device;
    ctx->ops = ops;
    const int32_t s = ops->context_init(ctx.get());
    if (s != LSM_OK) return lsm_fail(nullptr, s, ctx->error);
    *out = ctx.release();
    return LSM_OK;
  });
}

int32_t lsm_context_destroy(lsm_context *ctx) {
  if (ctx == nullptr) return LSM_OK;
  ctx->ops->context_release(ctx);  // frees its allocations and scratch too
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
    if (precision != LSM_PRECISION_EXACT && precision != LSM_PRECISION_TF32 && precision != LSM_PRECISION_BF16)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "precision: expected LSM_PRECISION_EXACT (0), LSM_PRECISION_TF32 (1) or LSM_PRECISION_BF16 (2), got " +
                          str(precision));
    if (precision != LSM_PRECISION_EXACT && (s = ctx->ops->check_precision(ctx, precision))) return s;
    ctx->precision = precision;
    return LSM_OK;
  });
}

int32_t lsm_context_set_workspace_limit(lsm_context *ctx, size_t bytes) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (bytes == 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "bytes: expected at least 1, got 0");
    ctx->workspace_limit = bytes;
    ctx->ops->trim_workspace(ctx);
    return LSM_OK;
  });
}

int32_t lsm_context_traffic(const lsm_context *ctx, uint64_t *to_context, uint64_t *from_context) {
  if (ctx == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "ctx: expected a context, got NULL");
  if (to_context != nullptr) *to_context = ctx->traffic_to;
  if (from_context != nullptr) *from_context = ctx->traffic_from;
  return LSM_OK;
}

int32_t lsm_malloc(lsm_context *ctx, size_t bytes, void **out) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, out, "out"))) return s;
    *out = nullptr;
    if (bytes == 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "bytes: expected at least 1, got 0");
    return ctx->ops->allocate(ctx, bytes, out);
  });
}

int32_t lsm_free(lsm_context *ctx, void *ptr) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx))) return s;
    if (ptr == nullptr) return LSM_OK;
    if (ctx->allocations.find(static_cast<const char *>(ptr)) == ctx->allocations.end())
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "ptr: expected memory allocated on this context, got another pointer");
    return ctx->ops->deallocate(ctx, ptr);
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
    return ctx->ops->synchronize(ctx);
  });
}

}  // extern "C"
