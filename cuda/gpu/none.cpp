// none.cpp: the CUDA backend of a library built without the CUDA toolkit (no nvcc): no device,
// and every call says so. It stands in for backend.cu's table; no context is ever created on it,
// so its ops are never reached, and answer as its devices do should that change.
#include <string>

#include "api/backend.h"

namespace {

const char kWhy[] = "CUDA backend unavailable: this library was built without CUDA (no CUDA toolkit where it was built)";

int32_t unavailable(lsm_context *ctx) { return lsm_fail(ctx, LSM_ERR_UNAVAILABLE, kWhy); }

int32_t device_count(int32_t *count, std::string *why) {
  *count = 0;
  *why = kWhy;
  return LSM_ERR_UNAVAILABLE;
}

int32_t device_name(int32_t, std::string *, std::string *why) {
  *why = kWhy;
  return LSM_ERR_UNAVAILABLE;
}

}  // namespace

extern const lsm_backend_ops lsm_cuda_backend = {
    false,
    device_count,
    device_name,
    [] { return std::string(kWhy); },             // products
    unavailable,                                  // context_init
    [](lsm_context *) {},                         // context_release: nothing was set up
    [](lsm_context *ctx, int32_t) { return unavailable(ctx); },
    [](lsm_context *) {},                         // trim_workspace
    [](lsm_context *ctx, size_t, void **) { return unavailable(ctx); },
    [](lsm_context *ctx, void *) { return unavailable(ctx); },
    [](lsm_context *ctx, void *, const void *, size_t, bool) { return unavailable(ctx); },
    unavailable,                                  // synchronize
    [](lsm_context *ctx, const lsm_problem &) { return unavailable(ctx); },
    [](lsm_context *ctx, const lsm_problem &) { return unavailable(ctx); },
    [](lsm_context *ctx, const lsm_loss_problem &) { return unavailable(ctx); },
    [](lsm_context *ctx, int32_t, int64_t, const lsm_sgd &, void *, const void *, void *, int32_t *) {
      return unavailable(ctx);
    },
    [](lsm_context *ctx, const double *, int64_t, double *) { return unavailable(ctx); },
    [](lsm_context *ctx, int32_t, int64_t, int64_t, int64_t, const lsm_margin &, int64_t, const void *, const void *,
       int32_t *, void *) { return unavailable(ctx); },
    [](lsm_context *ctx, int32_t, int64_t, const lsm_adam &, void *, const void *, void *, void *, void *, int32_t *) {
      return unavailable(ctx);
    },
    [](lsm_context *ctx, int32_t, int64_t, double, const void *, double, void *) { return unavailable(ctx); },
    [](lsm_context *ctx, int32_t, const void *, int64_t, double *) { return unavailable(ctx); },
    [](lsm_context *ctx, int32_t, int64_t, int64_t, int64_t, const int32_t *, const void *, void *, bool) {
      return unavailable(ctx);
    },
};
