// checks.h: the argument checks of the C ABI (checks.cpp) and the guard every entry point runs
// in. Each check returns LSM_OK or the status of a failure it has recorded (lsm_fail) with a
// message naming the argument, what was expected and what came.
#ifndef LSOFTMAX_CHECKS_H
#define LSOFTMAX_CHECKS_H

#include <stdint.h>

#include <new>
#include <string>

#include "api/backend.h"

namespace lsm_api {

// Runs body, turning any escaping C++ exception into a status: none crosses the C ABI.
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

std::string str(int64_t v);
std::string num(double v);

// The backend of an lsm_backend value; nullptr (and a failure recorded) for any other value.
const lsm_backend_ops *backend_of(int32_t backend);

int32_t check_context(lsm_context *ctx);
int32_t check_pointer(lsm_context *ctx, const void *p, const char *name);
int32_t check_dtype(lsm_context *ctx, int32_t dtype);
int32_t check_size(lsm_context *ctx, int64_t v, const char *name);
int32_t check_product(lsm_context *ctx, int64_t a, int64_t b, const char *name);
// A pointer to at least elements * element_bytes of context memory (where the backend needs it).
int32_t check_range(lsm_context *ctx, const void *p, int64_t elements, size_t element_bytes, const char *name);
int32_t check_tensor(lsm_context *ctx, const void *t, int64_t elements, size_t element_bytes, const char *name);
size_t element_bytes(int32_t dtype);

// The margin's kind and the fields it uses (math/kinds.h); every other field must be 0.
int32_t check_margin(lsm_context *ctx, const lsm_margin &m);
// What every op takes: dtype, sizes, margin and the matrices x [n, d] and w [c, d].
int32_t check_head(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin &margin,
                   const void *x, const void *w);
// Everything the forward or the backward relies on.
int32_t check_problem(lsm_context *ctx, const lsm_problem &p, bool backward);
// The fused loss's arguments: the inputs, the shard, the row arrays and the gradients asked for.
int32_t check_loss(lsm_context *ctx, const lsm_loss_problem &p);
// An SGD step's options and arrays.
int32_t check_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, const void *w, const void *grad,
                  const void *velocity, const int32_t *nonfinite);
// An Adam step's options and arrays.
int32_t check_adam(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, const void *w, const void *grad,
                   const void *m, const void *v, const void *vmax, const int32_t *nonfinite);

// lsm_loss's optimizer step (args.update): its settings and arrays, copied into *step.
int32_t check_loss_step(lsm_context *ctx, const lsm_loss_problem &p, const lsm_loss_update &u, lsm_loss_step *step);

}  // namespace lsm_api

#endif  // LSOFTMAX_CHECKS_H
