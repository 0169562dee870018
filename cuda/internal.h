// internal.h: what the C ABI layer (api.cpp) and the backends share. Not installed, not ABI.
#ifndef LSOFTMAX_INTERNAL_H
#define LSOFTMAX_INTERNAL_H

#include <stdint.h>

#include <string>
#include <map>

#include "lsoftmax.h"

// One validated call: pointers are context memory, sizes are checked against LSM_MAX_ELEMENTS.
struct lsm_problem {
  int32_t dtype;
  const void *x;
  const void *w;
  const int32_t *labels;
  const void *grad_logits;  // backward only
  int64_t n, d, c;
  lsm_margin margin;
  void *logits;  // forward only
  void *grad_x;  // backward only
  void *grad_w;  // backward only
};

// One validated fused-loss call (lsm_loss, lsm_loss_partials, lsm_loss_gradients).
enum lsm_loss_stage { LSM_LOSS_FULL = 0, LSM_LOSS_PARTIALS = 1, LSM_LOSS_GRADIENTS = 2 };

struct lsm_loss_problem {
  int32_t stage;  // lsm_loss_stage
  int32_t dtype;
  int64_t n, d, c;
  lsm_margin margin;
  lsm_loss_args args;
  const void *x;
  const void *w;
  const int32_t *labels;
  double *row_loss;                     // FULL
  double *row_max, *row_sum, *target;   // PARTIALS
  const double *lse;                    // GRADIENTS
  void *grad_x, *grad_w;                // GRADIENTS, and FULL unless both are null
};

struct lsm_cuda_state;  // defined by the CUDA backend

struct lsm_context {
  int32_t backend;
  int32_t device;
  std::string error;
  std::map<const char *, size_t> allocations;  // lsm_malloc'd and not yet freed: base -> bytes
  int32_t precision = LSM_PRECISION_EXACT;
  size_t workspace_limit = LSM_DEFAULT_WORKSPACE_LIMIT;  // fused loss scratch (lsm_loss*)
  void *host_workspace = nullptr;                        // the CPU backend's scratch, kept
  size_t host_workspace_bytes = 0;
  void *host_inputs = nullptr;                           // the CPU backend's normalised inputs, kept
  size_t host_inputs_bytes = 0;
  lsm_cuda_state *cuda = nullptr;
  uint64_t traffic_to = 0, traffic_from = 0;  // bytes copied host -> context, context -> host
};

// Records a failure on the context (may be null) and this thread; returns status.
int32_t lsm_fail(lsm_context *ctx, int32_t status, const std::string &message);

// CPU backend (cpu_backend.cpp).
int32_t lsm_cpu_forward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cpu_backward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cpu_loss(lsm_context *ctx, const lsm_loss_problem &p);
// The context's host scratch, grown to at least `bytes` and kept (cpu_loss.cpp).
int32_t lsm_cpu_workspace(lsm_context *ctx, size_t bytes, void **out);
// Resident training (cpu_optim.cpp): arguments checked by api.cpp.
int32_t lsm_cpu_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v);
int32_t lsm_cpu_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k, const void *x,
                     const void *w, int32_t *indices, void *scores);

// CUDA backend (cuda_backend.cu). Every function returns a status and, on failure, has called
// lsm_fail; none throws. Without a driver or GPU, device_count reports LSM_ERR_UNAVAILABLE.
int32_t lsm_cuda_device_count(int32_t *count, std::string *why);
int32_t lsm_cuda_device_name(int32_t device, std::string *name, std::string *why);
int32_t lsm_cuda_context_init(lsm_context *ctx);
void lsm_cuda_context_release(lsm_context *ctx);
int32_t lsm_cuda_malloc(lsm_context *ctx, size_t bytes, void **out);
int32_t lsm_cuda_free(lsm_context *ctx, void *ptr);
int32_t lsm_cuda_copy(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_device);
int32_t lsm_cuda_synchronize(lsm_context *ctx);
// LSM_OK if the context's device can run `precision`, else a failure saying why.
int32_t lsm_cuda_check_precision(lsm_context *ctx, int32_t precision);
int32_t lsm_cuda_forward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cuda_backward(lsm_context *ctx, const lsm_problem &p);
int32_t lsm_cuda_loss(lsm_context *ctx, const lsm_loss_problem &p);
// Resident training (cuda_optim.cu).
int32_t lsm_cuda_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v);
int32_t lsm_cuda_sum(lsm_context *ctx, const double *values, int64_t count, double *out);
int32_t lsm_cuda_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &mg, int64_t k, const void *x,
                      const void *w, int32_t *indices, void *scores);

#endif  // LSOFTMAX_INTERNAL_H
