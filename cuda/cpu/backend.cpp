// backend.cpp: the CPU backend's table (api/backend.h): its one device, its contexts and their
// memory (any host memory serves as context memory; lsm_malloc's is 256-byte aligned host
// memory), the host scratch, and the sum. The ops are in op.cpp, loss.cpp and optim.cpp.
#include <stdlib.h>
#include <string.h>

#include <string>

#include "cpu/common.h"

namespace {

int32_t device_count(int32_t *count, std::string *) {
  *count = 1;
  return LSM_OK;
}

int32_t check_device(int32_t device, std::string *why) {
  if (device == 0) return LSM_OK;
  *why = "device: expected 0 for the cpu backend, got " + std::to_string(device);
  return LSM_ERR_INVALID_ARGUMENT;
}

int32_t device_name(int32_t device, std::string *name, std::string *why) {
  const int32_t s = check_device(device, why);
  if (s == LSM_OK) *name = "cpu (OpenBLAS)";
  return s;
}

extern "C" char *openblas_get_config(void);
std::string products() { return openblas_get_config(); }

int32_t context_init(lsm_context *ctx) {
  std::string why;
  const int32_t s = check_device(ctx->device, &why);
  return s == LSM_OK ? s : lsm_fail(ctx, s, why);
}

void context_release(lsm_context *ctx) {
  for (auto &a : ctx->allocations) free(const_cast<char *>(a.first));
  ctx->allocations.clear();
  free(ctx->host_workspace);
  free(ctx->host_inputs);
  ctx->host_workspace = ctx->host_inputs = nullptr;
  ctx->host_workspace_bytes = ctx->host_inputs_bytes = 0;
}

int32_t check_precision(lsm_context *ctx, int32_t precision) {
  return lsm_fail(ctx, LSM_ERR_UNAVAILABLE,
                  std::string("precision: ") + (precision == LSM_PRECISION_BF16 ? "bf16" : "TF32") +
                      " needs a CUDA device of compute capability 8.0 or newer, and this context is on "
                  "the cpu");
}

void trim_workspace(lsm_context *ctx) {
  if (ctx->host_workspace_bytes <= ctx->workspace_limit) return;
  free(ctx->host_workspace);
  ctx->host_workspace = nullptr;
  ctx->host_workspace_bytes = 0;
}

int32_t allocate(lsm_context *ctx, size_t bytes, void **out) {
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
}

int32_t deallocate(lsm_context *ctx, void *ptr) {
  ctx->allocations.erase(static_cast<const char *>(ptr));
  free(ptr);
  return LSM_OK;
}

int32_t copy(lsm_context *, void *dst, const void *src, size_t bytes, bool) {
  memmove(dst, src, bytes);
  return LSM_OK;
}

int32_t synchronize(lsm_context *) { return LSM_OK; }  // every call returns with its work done

int32_t sum(lsm_context *ctx, const double *values, int64_t count, double *out) {
  double total = 0.0;
  for (int64_t j = 0; j < count; ++j) total += values[j];
  *out = total;
  ctx->traffic_from += sizeof(double);
  return LSM_OK;
}

}  // namespace

int32_t lsm_cpu_workspace(lsm_context *ctx, size_t bytes, void **out) {
  if (!lsm_cpu::grow_scratch(&ctx->host_workspace, &ctx->host_workspace_bytes, bytes))
    return lsm_fail(ctx, LSM_ERR_OUT_OF_MEMORY, "workspace: host allocation of " + std::to_string(bytes) + " bytes failed");
  *out = ctx->host_workspace;
  return LSM_OK;
}

// In the order of lsm_backend_ops's fields.
extern const lsm_backend_ops lsm_cpu_backend = {
    true,  // any host memory is context memory
    device_count,     device_name,      products,         context_init, context_release, check_precision, trim_workspace,
    allocate,         deallocate,       copy,         synchronize,     lsm_cpu_forward, lsm_cpu_backward,
    lsm_cpu_loss,     lsm_cpu_sgd,      sum,          lsm_cpu_topk,    lsm_cpu_adam,    lsm_cpu_axpby,
    lsm_cpu_sum_squares, lsm_cpu_rows,
};
