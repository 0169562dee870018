// ops.cpp: the C ABI's ops: forward, backward, the fused loss, and resident training (the SGD
// update, the sum of the row losses, top-k). Each checks every argument (checks.cpp), then calls
// the context's backend. The margin and the option structs are copied before the checks, so the
// backends see exactly what was checked.
#include <math.h>

#include "api/checks.h"

using namespace lsm_api;

namespace {

// Whether values [count] of dtype hold a NaN or an infinity: the update's own check (nothing
// written in LSM_SGD_CHECK mode), on whatever backend holds them.
int32_t find_nonfinite(lsm_context *ctx, int32_t dtype, int64_t count, const void *values, int32_t *flag) {
  lsm_sgd check = {};
  check.nonfinite = LSM_SGD_CHECK;
  return ctx->ops->sgd(ctx, dtype, count, check, nullptr, values, nullptr, flag);
}

// The step of lsm_loss's args.update after the loss, where the backend did not apply it: the
// row losses, grad_x and dL/dW checked (LSM_SGD_SKIP), then the update from grad_w.
int32_t apply_step(lsm_context *ctx, const lsm_loss_problem &p, lsm_loss_step &st) {
  int32_t s;
  st.flag = 0;
  if (st.nonfinite == LSM_SGD_SKIP) {
    if ((s = find_nonfinite(ctx, LSM_FLOAT64, p.n, p.row_loss, &st.flag)) || st.flag) return s;
    if ((s = find_nonfinite(ctx, p.dtype, p.n * p.d, p.grad_x, &st.flag)) || st.flag) return s;
  }
  const int64_t count = p.c * p.d;
  if (st.adam)
    return ctx->ops->adam(ctx, p.dtype, count, st.adam_o, st.w, p.grad_w, st.state[0], st.state[1], st.state[2],
                          &st.flag);
  return ctx->ops->sgd(ctx, p.dtype, count, st.sgd, st.w, p.grad_w, st.state[0], &st.flag);
}

// The three fused-loss entry points share one check and one call.
int32_t run_loss(lsm_context *ctx, const lsm_margin *margin, const lsm_loss_args *args, lsm_loss_problem p) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin")) ||
        (s = check_pointer(ctx, args, "args")))
      return s;
    p.margin = *margin;
    p.args = *args;
    if ((s = check_loss(ctx, p))) return s;
    lsm_loss_step step;
    int32_t *flag_out = nullptr;
    if (p.args.update != nullptr) {
      const lsm_loss_update u = *p.args.update;
      if ((s = check_loss_step(ctx, p, u, &step))) return s;
      flag_out = u.nonfinite;
      p.step = &step;
    }
    if ((s = ctx->ops->loss(ctx, p)) || p.step == nullptr) return s;
    if (!step.done && (s = apply_step(ctx, p, step))) return s;
    if (flag_out != nullptr) *flag_out = step.flag;
    return LSM_OK;
  });
}

// The forward and the backward share one check and differ in the backend's op.
int32_t run_op(lsm_context *ctx, const lsm_margin *margin, lsm_problem p, bool backward) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin"))) return s;
    p.margin = *margin;
    if ((s = check_problem(ctx, p, backward))) return s;
    return backward ? ctx->ops->backward(ctx, p) : ctx->ops->forward(ctx, p);
  });
}

// The gather and the scatter of rows share one check and one call.
int32_t run_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                 const void *src, void *dst, bool scatter) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_dtype(ctx, dtype)) || (s = check_size(ctx, c, "c")) ||
        (s = check_size(ctx, d, "d")) || (s = check_size(ctx, k, "k")) || (s = check_product(ctx, c, d, "c*d")))
      return s;
    if (k > c)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "k: expected at most c = " + str(c) + " rows (distinct indices), got " + str(k));
    const size_t e = element_bytes(dtype);
    if ((s = check_tensor(ctx, index, k, sizeof(int32_t), "index")) ||
        (s = check_tensor(ctx, src, (scatter ? k : c) * d, e, "src")) ||
        (s = check_tensor(ctx, dst, (scatter ? c : k) * d, e, "dst")))
      return s;
    if (src == dst)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "src, dst: expected separate arrays, got the same pointer");
    return ctx->ops->rows(ctx, dtype, c, d, k, index, src, dst, scatter);
  });
}

}  // namespace

extern "C" {

int32_t lsm_forward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                    const void *x, const void *w, const int32_t *labels, void *logits) {
  const lsm_problem p = {dtype, x, w, labels, nullptr, n, d, c, {}, logits, nullptr, nullptr};
  return run_op(ctx, margin, p, false);
}

int32_t lsm_backward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                     const void *x, const void *w, const int32_t *labels, const void *grad_logits, void *grad_x,
                     void *grad_w) {
  const lsm_problem p = {dtype, x, w, labels, grad_logits, n, d, c, {}, nullptr, grad_x, grad_w};
  return run_op(ctx, margin, p, true);
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
                          double *row_max, double *row_sum, double *target, double *row_smooth) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_PARTIALS, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.row_max = row_max, p.row_sum = row_sum, p.target = target;
  p.row_smooth = row_smooth;
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

int32_t lsm_loss_targets(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                         const lsm_loss_args *args, const void *x, const void *w, const int32_t *labels,
                         double *row_targets) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_TARGETS, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.row_targets = row_targets;
  return run_loss(ctx, margin, args, p);
}

int32_t lsm_forward_args(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                         const lsm_loss_args *args, const void *x, const void *w, const int32_t *labels, void *logits,
                         double *regulariser) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_LOGITS, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.logits = logits, p.regulariser = regulariser;
  return run_loss(ctx, margin, args, p);
}

int32_t lsm_backward_args(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                          const lsm_loss_args *args, const void *x, const void *w, const int32_t *labels,
                          const void *grad_logits, const double *grad_regulariser, void *grad_x, void *grad_w) {
  lsm_loss_problem p = {};
  p.stage = LSM_LOSS_BACKWARD, p.dtype = dtype, p.n = n, p.d = d, p.c = c;
  p.x = x, p.w = w, p.labels = labels, p.grad_logits = grad_logits, p.grad_regulariser = grad_regulariser;
  p.grad_x = grad_x, p.grad_w = grad_w;
  return run_loss(ctx, margin, args, p);
}

int32_t lsm_sgd_update(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd *sgd, void *w, const void *grad,
                       void *velocity, int32_t *nonfinite) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, sgd, "sgd"))) return s;
    const lsm_sgd o = *sgd;
    if ((s = check_sgd(ctx, dtype, count, o, w, grad, velocity, nonfinite))) return s;
    int32_t flag = 0;
    if ((s = ctx->ops->sgd(ctx, dtype, count, o, w, grad, velocity, &flag))) return s;
    if (nonfinite != nullptr) *nonfinite = flag;
    return LSM_OK;
  });
}

int32_t lsm_adam_update(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam *adam, void *w,
                        const void *grad, void *exp_avg, void *exp_avg_sq, void *max_exp_avg_sq, int32_t *nonfinite) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, adam, "adam"))) return s;
    const lsm_adam o = *adam;
    if ((s = check_adam(ctx, dtype, count, o, w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, nonfinite))) return s;
    int32_t flag = 0;
    if ((s = ctx->ops->adam(ctx, dtype, count, o, w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, &flag))) return s;
    if (nonfinite != nullptr) *nonfinite = flag;
    return LSM_OK;
  });
}

int32_t lsm_axpby(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b, void *y) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_dtype(ctx, dtype)) || (s = check_size(ctx, count, "count")))
      return s;
    if (!isfinite(a) || !isfinite(b))
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "a, b: expected finite numbers, got " + std::to_string(a) + ", " + std::to_string(b));
    const size_t e = element_bytes(dtype);
    if ((s = check_tensor(ctx, y, count, e, "y"))) return s;
    if (a != 0.0 && ((s = check_tensor(ctx, x, count, e, "x")))) return s;
    if (a != 0.0 && x == y)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT, "x, y: expected separate arrays, got the same pointer");
    return ctx->ops->axpby(ctx, dtype, count, a, x, b, y);
  });
}

int32_t lsm_sum_squares(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, out, "out")) || (s = check_dtype(ctx, dtype)) ||
        (s = check_size(ctx, count, "count")) || (s = check_tensor(ctx, values, count, element_bytes(dtype), "values")))
      return s;
    return ctx->ops->sum_squares(ctx, dtype, values, count, out);
  });
}

int32_t lsm_sum(lsm_context *ctx, const double *values, int64_t count, double *out) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, out, "out")) || (s = check_size(ctx, count, "count")) ||
        (s = check_tensor(ctx, values, count, sizeof(double), "values")))
      return s;
    return ctx->ops->sum(ctx, values, count, out);
  });
}

int32_t lsm_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c, const lsm_margin *margin,
                 int64_t k, const void *x, const void *w, int32_t *indices, void *scores) {
  return guarded(ctx, [&]() -> int32_t {
    int32_t s;
    if ((s = check_context(ctx)) || (s = check_pointer(ctx, margin, "margin"))) return s;
    const lsm_margin m = *margin;
    if ((s = check_head(ctx, dtype, n, d, c, m, x, w))) return s;  // no labels: prediction has none
    if (m.kind == LSM_MARGIN_SUBCENTER)
      return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                      "margin.kind: expected a kind lsm_topk serves (sub-center ArcFace's classes are not yet), got " +
                          str(m.kind));
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
    return ctx->ops->topk(ctx, dtype, n, d, c, unit, k, x, w, indices, scores);
  });
}

int32_t lsm_gather_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                        const void *src, void *dst) {
  return run_rows(ctx, dtype, c, d, k, index, src, dst, false);
}

int32_t lsm_scatter_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                         const void *src, void *dst) {
  return run_rows(ctx, dtype, c, d, k, index, src, dst, true);
}

}  // extern "C"
