// cpu/fused_update.cpp: lsm_loss's optimizer step (args.update) applied inside the fused loss,
// block of classes by block of classes right after each block's product of dL/dW, while that
// block is in cache: dL/dW is never written out and read again by a pass of its own.
//
// Where it goes: the one-block path without label smoothing (cpu/loss_blocks.cpp,
// products_from_exps), for the kinds whose products take x and W as they are (the normalised
// kinds project W's gradient afterwards). grad_x is complete before the first block of dL/dW (its
// product reads the old W), its corrections added early (they are independent of dL/dW's); the
// classes a correction reads or writes (the rows' targets) keep their dL/dW rows in grad_w and
// are updated last, after the corrections. Each element goes through the update's own loops
// (cpu/optim.cpp), so the results are those of the loss followed by the update, to the bit.
//
// The non-finite policy: LSM_SGD_SKIP must not update anything unless every row loss, grad_x and
// dL/dW are finite, but the first block is updated before the last is known. So it is decided a
// priori: with finite row losses every row's softmax sum is >= 1, its exponentials in [0, 1] and
// |G_ij| <= |a_i| (the row's gradient factor), so with x finite every product element of dL/dW
// is at most 4 sum_i |a_i| max|x_i| in size (rounding included while n eps <= 1/2), and the
// corrections at most their coefficients' bound; below half of T's largest value, every element
// is finite. grad_x is checked itself before the first block. Where the bound does not hold (or
// the path is another), the loss runs as without the step, and api/ops.cpp runs the step after.
#include <float.h>

#include <limits>

#include "cpu/loss.h"

namespace lsm_cpu_fused {

namespace {

// The bytes of one block of dL/dW: within the L3 cache, and few enough products that the split
// of dL/dW's one product costs little (256 KB to 16 MB measured within the loaded machine's
// noise; 4 MB among the best: five blocks at D=512 C=10,000).
constexpr int64_t kStepBlockBytes = 4 << 20;

}  // namespace

template <typename T>
int64_t loss_run<T>::dw_block_classes() const {
  return std::max<int64_t>(1, std::min<int64_t>(c, kStepBlockBytes / (d * (int64_t)sizeof(T))));
}

// The a-priori bound of every element of dL/dW (see above): finite and below half of T's
// largest value, or +inf where it cannot be had.
template <typename T>
static double dw_bound(loss_run<T> &r) {
  const double eps = std::numeric_limits<T>::epsilon();
  if ((double)r.n * eps > 0.5) return INFINITY;
  double products = 0.0, corrections = 0.0;
  for (int64_t i = 0; i < r.n; ++i) {
    if (!isfinite(r.p.row_loss[i])) return INFINITY;
    const double xmax = max_abs(r.in.x + i * r.d, r.d);
    if (!isfinite(xmax)) return INFINITY;  // 0 * NaN: even a row without gradient (ignored) spreads it
    products += fabs(r.factors[i].a) * xmax;
  }
  if (!lsm_plain_margin(r.p.margin)) {
    r.correction_coefs();
    for (int64_t i = 0; i < r.n; ++i) {
      const lsm_correction &q = r.coef[i];
      if (q.label < 0) continue;
      const double xmax = max_abs(r.x + i * r.d, r.d), wmax = max_abs(r.w + (int64_t)q.label * r.d, r.d);
      corrections += (fabs(q.aw) * (xmax * fabs(q.px)) + fabs(q.bw) * (wmax * fabs(q.pw))) * fabs(q.ow1) * fabs(q.ow2);
    }
  }
  const double bound = 2.0 * (4.0 * products + 2.0 * corrections);
  return bound < 0.5 * (double)std::numeric_limits<T>::max() ? bound : INFINITY;
}

template <typename T>
bool loss_run<T>::step_begin() {
  if (p.step == nullptr || lsm_normalises_x(p.margin.kind) || lsm_normalises_w(p.margin.kind)) return false;
  const bool skip = p.step->nonfinite == LSM_SGD_SKIP;
  if (skip && !isfinite(dw_bound(*this))) return false;
  if (!lsm_plain_margin(p.margin)) {
    correction_coefs();
    add_corrections_x(x, w, n, d, coef, gx);
    x_corrected = true;
  }
  if (skip && !(max_abs(gx, n * d) < INFINITY)) return false;  // the step is skipped: api/ops.cpp says so
  deferred.assign((size_t)c, 0);
  for (int64_t i = 0; i < n; ++i)
    if (local[i] >= 0) deferred[(size_t)local[i]] = 1;
  dw_block.reset(new T[(size_t)(dw_block_classes() * d)]);
  if (p.step->adam) adam_k = lsm_adam_coefs_of(p.step->adam_o);
  stepping = true;
  return true;
}

// The step over classes [c0, c0 + count) from their dL/dW rows g, on this thread.
template <typename T>
static void step_rows(loss_run<T> &r, int64_t c0, int64_t count, const T *g) {
  const lsm_loss_step &st = *r.p.step;
  const int64_t at = c0 * r.d;
  T *s[3];
  for (int k = 0; k < 3; ++k) s[k] = st.state[k] == nullptr ? nullptr : static_cast<T *>(st.state[k]) + at;
  step_range(st, r.adam_k, count * r.d, static_cast<T *>(st.w) + at, g, s[0], s[1], s[2]);
}

// The block's classes in stretches between the deferred classes, whose rows go to grad_w for
// the corrections; split across the cores (element-wise: the same results). Where OpenBLAS's
// workers spin long after a product (its default timeout) this gains nothing, and loses nothing.
template <typename T>
void loss_run<T>::step_block(int64_t c0, int64_t cb, const T *g) {
  parallel_for(cb, d, [&](int64_t b, int64_t e) {
    int64_t run = b;  // the first class of the stretch not yet updated
    for (int64_t j = b; j <= e; ++j) {
      if (j < e && !deferred[(size_t)(c0 + j)]) continue;
      if (j > run) step_rows(*this, c0 + run, j - run, g + run * d);
      if (j < e) std::copy(g + j * d, g + (j + 1) * d, gw + (c0 + j) * d);
      run = j + 1;
    }
  });
}

template <typename T>
void loss_run<T>::step_finish() {
  for (int64_t j = 0; j < c; ++j)
    if (deferred[(size_t)j]) step_rows(*this, j, 1, gw + j * d);
  p.step->done = true;
  p.step->flag = 0;
}

template bool loss_run<float>::step_begin();
template void loss_run<float>::step_block(int64_t c0, int64_t cb, const float *g);
template void loss_run<float>::step_finish();
template int64_t loss_run<float>::dw_block_classes() const;
template bool loss_run<double>::step_begin();
template void loss_run<double>::step_block(int64_t c0, int64_t cb, const double *g);
template void loss_run<double>::step_finish();
template int64_t loss_run<double>::dw_block_classes() const;

}  // namespace lsm_cpu_fused
