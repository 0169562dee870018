// checks_optim.cpp: the argument checks of the optimizers' calls (lsm_sgd_update, lsm_adam_update)
// and of the optimizer step a fused loss applies (lsm_loss_args.update); checks.h declares them.
#include <math.h>

#include "api/checks.h"

namespace lsm_api {

static int32_t check_finite_nonnegative(lsm_context *ctx, double v, const char *name) {
  if (v >= 0.0 && isfinite(v)) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, std::string(name) + ": expected a finite number >= 0, got " + num(v));
}

int32_t check_sgd(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd &o, const void *w, const void *grad,
                  const void *velocity, const int32_t *nonfinite) {
  int32_t s;
  if ((s = check_dtype(ctx, dtype)) || (s = check_size(ctx, count, "count")) ||
      (s = check_finite_nonnegative(ctx, o.lr, "sgd.lr")) ||
      (s = check_finite_nonnegative(ctx, o.momentum, "sgd.momentum")) ||
      (s = check_finite_nonnegative(ctx, o.weight_decay, "sgd.weight_decay")))
    return s;
  if ((o.nesterov != 0 && o.nesterov != 1) || (o.first != 0 && o.first != 1) || o.reserved != 0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "sgd: expected nesterov and first 0 or 1, reserved 0");
  if (o.nesterov && o.momentum == 0.0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "sgd.nesterov: expected momentum > 0 with Nesterov momentum, got 0");
  if (o.nonfinite != LSM_SGD_APPLY && o.nonfinite != LSM_SGD_SKIP && o.nonfinite != LSM_SGD_CHECK)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "sgd.nonfinite: expected LSM_SGD_APPLY, LSM_SGD_SKIP or LSM_SGD_CHECK (0, 1, 2), got " +
                        std::to_string(o.nonfinite));
  if (o.nonfinite != LSM_SGD_APPLY && nonfinite == nullptr)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "nonfinite: expected a flag (int32_t *) with sgd.nonfinite LSM_SGD_SKIP or LSM_SGD_CHECK, got NULL");
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, w, count, e, "w")) || (s = check_tensor(ctx, grad, count, e, "grad"))) return s;
  if (o.momentum != 0.0 && (s = check_tensor(ctx, velocity, count, e, "velocity"))) return s;
  if (w == grad || w == velocity || grad == velocity)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "w, grad, velocity: expected three separate arrays");
  return LSM_OK;
}

static int32_t check_beta(lsm_context *ctx, double v, const char *name) {
  if (v >= 0.0 && v < 1.0) return LSM_OK;
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, std::string(name) + ": expected a number in [0, 1), got " + num(v));
}

int32_t check_adam(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam &o, const void *w, const void *grad,
                   const void *m, const void *v, const void *vmax, const int32_t *nonfinite) {
  int32_t s;
  if ((s = check_dtype(ctx, dtype)) || (s = check_size(ctx, count, "count")) ||
      (s = check_finite_nonnegative(ctx, o.lr, "adam.lr")) || (s = check_beta(ctx, o.beta1, "adam.beta1")) ||
      (s = check_beta(ctx, o.beta2, "adam.beta2")) || (s = check_finite_nonnegative(ctx, o.eps, "adam.eps")) ||
      (s = check_finite_nonnegative(ctx, o.weight_decay, "adam.weight_decay")) ||
      (s = check_finite_nonnegative(ctx, o.grad_scale, "adam.grad_scale")))
    return s;
  if (o.step < 1)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "adam.step: expected an integer >= 1, got " + std::to_string(o.step));
  if ((o.decoupled != 0 && o.decoupled != 1) || (o.amsgrad != 0 && o.amsgrad != 1) || o.reserved != 0)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "adam: expected decoupled and amsgrad 0 or 1, reserved 0");
  if (o.nonfinite != LSM_SGD_APPLY && o.nonfinite != LSM_SGD_SKIP && o.nonfinite != LSM_SGD_CHECK)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "adam.nonfinite: expected LSM_SGD_APPLY, LSM_SGD_SKIP or LSM_SGD_CHECK (0, 1, 2), got " +
                        std::to_string(o.nonfinite));
  if (o.nonfinite != LSM_SGD_APPLY && nonfinite == nullptr)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "nonfinite: expected a flag (int32_t *) with adam.nonfinite LSM_SGD_SKIP or LSM_SGD_CHECK, got NULL");
  const size_t e = element_bytes(dtype);
  if ((s = check_tensor(ctx, w, count, e, "w")) || (s = check_tensor(ctx, grad, count, e, "grad")) ||
      (s = check_tensor(ctx, m, count, e, "exp_avg")) || (s = check_tensor(ctx, v, count, e, "exp_avg_sq")))
    return s;
  if (o.amsgrad && (s = check_tensor(ctx, vmax, count, e, "max_exp_avg_sq"))) return s;
  const void *arrays[] = {w, grad, m, v, o.amsgrad ? vmax : nullptr};
  for (int a = 0; a < 5; ++a)
    for (int b = a + 1; b < 5; ++b)
      if (arrays[a] != nullptr && arrays[a] == arrays[b])
        return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                        "w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq: expected separate arrays");
  return LSM_OK;
}

int32_t check_loss_step(lsm_context *ctx, const lsm_loss_problem &p, const lsm_loss_update &u, lsm_loss_step *step) {
  int32_t s;
  if (p.grad_x == nullptr || p.grad_w == nullptr)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "grad_x, grad_w: expected both with args.update, got NULL");
  if (u.reserved != 0) return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.update.reserved: expected 0");
  if ((u.sgd == nullptr) == (u.adam == nullptr))
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "args.update: expected exactly one of sgd and adam, got " +
                        std::string(u.sgd == nullptr ? "neither" : "both"));
  *step = {};
  step->adam = u.adam != nullptr;
  step->w = const_cast<void *>(p.w);
  const int64_t count = p.c * p.d;
  if (step->adam) {
    step->adam_o = *u.adam;
    step->nonfinite = step->adam_o.nonfinite;
    step->state[0] = u.exp_avg, step->state[1] = u.exp_avg_sq, step->state[2] = u.max_exp_avg_sq;
    s = check_adam(ctx, p.dtype, count, step->adam_o, p.w, p.grad_w, u.exp_avg, u.exp_avg_sq, u.max_exp_avg_sq,
                   u.nonfinite);
  } else {
    step->sgd = *u.sgd;
    step->nonfinite = step->sgd.nonfinite;
    step->state[0] = u.velocity;
    s = check_sgd(ctx, p.dtype, count, step->sgd, p.w, p.grad_w, u.velocity, u.nonfinite);
  }
  if (s != LSM_OK) return s;
  if (step->nonfinite == LSM_SGD_CHECK)
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    std::string(step->adam ? "adam" : "sgd") +
                        ".nonfinite: expected LSM_SGD_APPLY or LSM_SGD_SKIP with args.update, got LSM_SGD_CHECK");
  const void *outputs[] = {p.grad_x, p.row_loss, u.nonfinite};
  for (const void *o : outputs)
    for (const void *a : step->state)
      if (a != nullptr && a == o)
        return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "args.update: expected state arrays apart from the outputs");
  return LSM_OK;
}

}  // namespace lsm_api
