// backend.h: what the C ABI layer (api/) and the backends (cpu/, gpu/) share: the checked calls,
// the context, and the one interface every backend implements. Not installed, not ABI.
#ifndef LSOFTMAX_BACKEND_H
#define LSOFTMAX_BACKEND_H

#include <stdint.h>

#include <map>
#include <string>

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

// The optimizer step of an lsm_loss call (args.update), checked and copied: w is the loss's w.
// A backend that applies it itself (the CPU, class block by class block) sets done and flag
// (1: skipped); else the api runs it after the loss (api/ops.cpp).
struct lsm_loss_step {
  bool adam;
  lsm_sgd sgd;
  lsm_adam adam_o;
  void *w;
  void *state[3];  // SGD: velocity; Adam: exp_avg, exp_avg_sq, max_exp_avg_sq
  int32_t nonfinite;  // the policy: LSM_SGD_APPLY or LSM_SGD_SKIP
  bool done;
  int32_t flag;
};
// One validated fused-loss call (lsm_loss, lsm_loss_partials, lsm_loss_gradients, lsm_loss_targets),
// or the op through the loss's machinery (lsm_forward_args: LOGITS, lsm_backward_args: BACKWARD).
enum lsm_loss_stage {
  LSM_LOSS_FULL = 0,
  LSM_LOSS_PARTIALS = 1,
  LSM_LOSS_GRADIENTS = 2,
  LSM_LOSS_TARGETS = 3,
  LSM_LOSS_LOGITS = 4,
  LSM_LOSS_BACKWARD = 5
};

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
  double *row_smooth;                   // PARTIALS with label smoothing
  const double *lse;                    // GRADIENTS
  double *row_targets;                  // TARGETS
  void *grad_x, *grad_w;                // GRADIENTS, BACKWARD, and FULL unless both are null
  void *logits;                         // LOGITS: [n, c/K]
  double *regulariser;                  // LOGITS: [n] or null
  const void *grad_logits;              // BACKWARD: [n, c/K]
  const double *grad_regulariser;       // BACKWARD: [n] or null (0)
  lsm_loss_step *step;                  // FULL with args.update, else null
};

struct lsm_backend_ops;
struct lsm_cuda_state;  // defined by the CUDA backend

struct lsm_context {
  int32_t backend;
  int32_t device;
  const lsm_backend_ops *ops;  // the backend's functions, chosen once at creation
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

// A backend: the api checks every argument (sizes, pointers, ranges of context memory, margins),
// then calls one of these. Each returns a status and, on failure, has called lsm_fail; none
// throws past the api's guard. Label values are the backends' to check (they read the labels).
struct lsm_backend_ops {
  // Tensors may be any host memory (the CPU), which cannot be checked; else they must lie inside
  // memory lsm_malloc gave on the context.
  bool any_host_memory;
  // Devices: without a usable one, device_count reports LSM_ERR_UNAVAILABLE and why.
  int32_t (*device_count)(int32_t *count, std::string *why);
  int32_t (*device_name)(int32_t device, std::string *name, std::string *why);
  // What the backend's matrix products run on (a library and its version, where it was found).
  std::string (*products)();
  // Sets up ctx->device (checked here) on a fresh context; release frees everything the context
  // still holds, also after a failed init.
  int32_t (*context_init)(lsm_context *ctx);
  void (*context_release)(lsm_context *ctx);
  // LSM_OK if the context can run `precision` (TF32 or bf16), else a failure saying why.
  int32_t (*check_precision)(lsm_context *ctx, int32_t precision);
  // Gives back scratch the context's (lowered) workspace_limit no longer allows.
  void (*trim_workspace)(lsm_context *ctx);
  // Memory: allocations are recorded in ctx->allocations; copy moves bytes in (to_context) or out.
  int32_t (*allocate)(lsm_context *ctx, size_t bytes, void **out);
  int32_t (*deallocate)(lsm_context *ctx, void *ptr);
  int32_t (*copy)(lsm_context *ctx, void *dst, const void *src, size_t bytes, bool to_context);
  int32_t (*synchronize)(lsm_context *ctx);
  // The ops.
  int32_t (*forward)(lsm_context *ctx, const lsm_problem &p);
  int32_t (*backward)(lsm_context *ctx, const lsm_problem &p);
  int32_t (*loss)(lsm_context *ctx, const lsm_loss_problem &p);
  // *nonfinite: 1 when o.nonfinite asked for the check and g holds a non-finite value (nothing
  // written then), else 0.
  int32_t (*sgd)(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, void *w, const void *g, void *v,
                 int32_t *nonfinite);
  int32_t (*sum)(lsm_context *ctx, const double *values, int64_t count, double *out);
  // The scores of top-k: the plain logits with the kind's normalisations (scale 1).
  int32_t (*topk)(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &unit,
                  int64_t k, const void *x, const void *w, int32_t *indices, void *scores);
  // As sgd; vmax null unless o.amsgrad.
  int32_t (*adam)(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, void *w, const void *g, void *m,
                  void *v, void *vmax, int32_t *nonfinite);
  // y = a x + b y; a term with a zero factor is not read.
  int32_t (*axpby)(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b, void *y);
  int32_t (*sum_squares)(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out);
  // dst rows index[i] <- src rows i (scatter), or dst rows i <- src rows index[i]; index [k] in
  // context memory, the backend's to check (strictly ascending in [0, c)).
  int32_t (*rows)(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                  const void *src, void *dst, bool scatter);
};

// The backends: cpu/backend.cpp; gpu/backend.cu, or gpu/none.cpp where the library is built
// without the CUDA toolkit.
extern const lsm_backend_ops lsm_cpu_backend;
extern const lsm_backend_ops lsm_cuda_backend;

#endif  // LSOFTMAX_BACKEND_H
