// cpu/loss_op.cpp: the op of every kind through the fused loss's machinery (cpu/loss.h), all
// classes as one block: lsm_forward_args's logits are the loss's block of logits (the products,
// the element-wise kinds' transform, the targets; sub-center ArcFace's class logits), and
// lsm_backward_args makes dL/d(products) from the given dL/dlogits (times the transform's
// derivative; onto each class's winning sub-center) and runs the loss's products and corrections
// on it, with dL/df_iy as each target's gradient.
#include "cpu/loss.h"

namespace lsm_cpu_fused {

template <typename T>
int32_t loss_run<T>::op(lsm_context *ctx) {
  const int64_t classes = c / subs;
  const bool forward = p.stage == LSM_LOSS_LOGITS;
  const bool elementwise = lsm_elementwise(p.margin.kind);
  T *out = forward ? static_cast<T *>(p.logits) : nullptr;
  const T *g = forward ? nullptr : static_cast<const T *>(p.grad_logits);
  // Scratch: the products, n x c, where they are not the output (the forward of one row per
  // class writes them into the logits) or the given gradient (the backward of a kind without a
  // transform or sub-centers reads G as it is); the transform's derivatives (n x c); the forward's
  // winning sub-centers (n x classes).
  const bool products_needed = forward ? subs > 1 : (elementwise || subs > 1);
  const size_t prod = products_needed ? (size_t)(n * c) : 0, deriv = elementwise ? (size_t)(n * c) : 0;
  const size_t winners = forward && subs > 1 ? (size_t)(n * classes) : 0;
  const size_t bytes = (prod + deriv) * sizeof(T) + winners * sizeof(uint16_t);
  T *ws = nullptr;
  if (bytes > 0) {
    void *mem = nullptr;
    const int32_t s = lsm_cpu_workspace(ctx, bytes, &mem);
    if (s != LSM_OK) return s;
    ws = static_cast<T *>(mem);
  }
  buf = products_needed ? ws : forward ? out : const_cast<T *>(g);  // the backward only reads G
  aux = elementwise ? ws + prod : nullptr;
  if (forward) {
    logits(0, c);
    if (subs > 1) {
      cls = out, win = reinterpret_cast<uint16_t *>(ws + prod + deriv);
      parallel_for(n, 2 * c, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) class_logits(i, 0, c);
      });
    }
    if (p.regulariser != nullptr)
      for (int64_t i = 0; i < n; ++i)
        p.regulariser[i] = p.margin.kind == LSM_MARGIN_MAGFACE ? p.margin.lambda_g * lsm_magface_g(p.margin, mag[i].a)
                                                               : 0.0;
    return LSM_OK;
  }
  if (products_needed) logits(0, c);
  parallel_for(n, 2 * c, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T *gi = g + i * classes;
      T *row = buf + i * c;
      if (local[i] >= 0) g_target[i] = (double)gi[local[i]];
      if (elementwise) {  // dL/dv = dL/df f'(v), f'(v) = 1 at the target
        const T *a = aux + i * c;
        for (int64_t j = 0; j < c; ++j) row[j] = gi[j] * a[j];
      } else if (subs > 1) {  // each class's gradient onto its winner, read before it is written
        for (int64_t j = 0; j < classes; ++j) {
          T *r = row + j * subs;
          const int64_t best = j == local[i] ? trow[i] - j * subs : alias[j * subs + lsm_subcenter_best(r, subs)];
          for (int64_t q = 0; q < subs; ++q) r[q] = q == best ? gi[j] : T(0);
        }
      }
    }
  });
  products(0, c, true);
  corrections();
  return LSM_OK;
}

template int32_t loss_run<float>::op(lsm_context *ctx);
template int32_t loss_run<double>::op(lsm_context *ctx);

}  // namespace lsm_cpu_fused
