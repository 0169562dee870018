// gpu/adaptive_kernels.cuh: the fused loss's kernels for the adaptive kinds (docs/math.md), the
// CPU backend's cpu/loss.cpp pre-pass and element transform step for step: the rows' norms, the
// state (one thread, the rows in order) and the per-row quantities, the non-target transform and
// its derivative, MagFace's regulariser on the row losses, and sub-center ArcFace's class logits
// and the scatter of their gradients onto the winning sub-centers (cpu/loss_blocks.cpp). The math
// is math/margin.cuh's.
#ifndef LSOFTMAX_ADAPTIVE_KERNELS_CUH
#define LSOFTMAX_ADAPTIVE_KERNELS_CUH

#include "gpu/target_kernels.cuh"
#include "math/ce.cuh"

namespace lsm_kernels {

// |x_i| per row (one warp per row), as the CPU's row_length: scaled by a power of two near the
// largest magnitude; 0 for a zero row, NaN for a row holding a NaN or an infinity.
template <typename T>
__global__ void adaptive_lengths(const T *x, int n, int d, double *len) {
  const int lane = threadIdx.x % kWarp;
  const int warps = (int)(gridDim.x * blockDim.x / kWarp);
  for (int i = (int)((blockIdx.x * blockDim.x + threadIdx.x) / kWarp); i < n; i = next_index(i, warps, n)) {
    const T *xi = x + (int64_t)i * d;
    double amax = 0.0;
    for (int k = lane; k < d; k += kWarp) amax = lsm_absmax(amax, xi[k]);
    for (int off = kWarp / 2; off > 0; off /= 2) amax = lsm_absmax(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    int e;
    double sc, pw;
    lsm_scale(amax, &e, &sc, &pw);
    double ss = 0.0;
    for (int k = lane; k < d; k += kWarp) {
      const double a = xi[k] * pw;
      ss += a * a;
    }
    ss = warp_sum(ss);
    if (lane == 0) len[i] = sc > 0.0 ? ldexp(sqrt(ss), e) : sc;
  }
}

// The state, by one thread, summing the rows in order as the CPU backend does (the same sums, no
// barrier; n such terms are nothing next to the products), over the rows not ignored (an ignored
// row is left out of the batch). AdaFace: the clipped norms' mean and unbiased std from len
// (|x_i|) to the updated moving averages; CurricularFace: the updated t from the target cosines
// cos_y. Into state[0], state[1]; with no row counted, the state as it was.
__global__ void adaptive_state(lsm_margin mg, lsm_ce ce, const int32_t *labels, int n, const double *len,
                               const double *cos_y, double *state) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t rows = 0;
  for (int i = 0; i < n; ++i) rows += lsm_ce_ignored(ce, labels[i]) ? 0 : 1;
  if (mg.kind == LSM_MARGIN_CURRICULARFACE) {
    double sum = 0.0;
    for (int i = 0; i < n; ++i)
      if (!lsm_ce_ignored(ce, labels[i])) sum += cos_y[i];
    state[0] = lsm_curricular_update_rows(mg, sum, rows), state[1] = 0.0;
    return;
  }
  double sum = 0.0, sq = 0.0, mu, sigma;
  for (int i = 0; i < n; ++i)
    if (!lsm_ce_ignored(ce, labels[i])) sum += lsm_adaface_norm(len[i]);
  const double mean = rows == 0 ? 0.0 : sum / (double)rows;
  for (int i = 0; i < n; ++i) {
    if (lsm_ce_ignored(ce, labels[i])) continue;
    const double a = lsm_adaface_norm(len[i]);
    sq += (a - mean) * (a - mean);
  }
  lsm_adaface_update(mg, mean, sq, rows, &mu, &sigma);
  state[0] = mu, state[1] = sigma;
}

// The per-row quantities from |x_i| in rowq (thread per row). AdaFace: z_i with the updated state;
// MagFace: m_i, with a_i, dm_i/d|x_i| and whether |x_i| is inside [l_a, u_a] (1 or 0) in mag.
__global__ void adaptive_rows(lsm_margin mg, int n, double *rowq, double *mag, const double *state) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    if (mg.kind == LSM_MARGIN_ADAFACE) {
      rowq[i] = lsm_adaface_z(mg, lsm_adaface_norm(rowq[i]), state[0], state[1]);
    } else {
      const lsm_magface_row r = lsm_magface_of(mg, rowq[i]);
      rowq[i] = r.m, mag[i] = r.a, mag[n + i] = r.dm, mag[2 * (int64_t)n + i] = r.inside ? 1.0 : 0.0;
    }
  }
}

// The element-wise kinds' non-target logits from the products s c in z (AdaFace's clamp,
// CurricularFace's hard negatives with T_i = thresh[i] and the updated t = state[0]), their
// derivatives into zd (1 at the target, whose logit the log-sum-exp takes from target[]).
template <typename T>
__global__ void adaptive_transform(T *z, T *zd, int n, int cb, int c0, const int32_t *local, lsm_margin mg,
                                   const double *thresh, const double *state) {
  const int64_t total = (int64_t)n * cb;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  const double s = mg.scale, inv = 1.0 / mg.scale;
  const bool ada = mg.kind == LSM_MARGIN_ADAFACE;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cb), j = (int)(e % cb);
    if (local[i] - c0 == j) {
      zd[e] = T(1);
      continue;
    }
    double deriv;
    const double cj = (double)z[e] * inv;
    const double f = ada ? lsm_adaface_nontarget(cj, &deriv) : lsm_curricular_nontarget(cj, thresh[i], state[0], &deriv);
    z[e] = (T)(s * f);
    zd[e] = (T)deriv;
  }
}

// G times the transform's derivative, element-wise.
template <typename T>
__global__ void adaptive_scale(T *z, const T *zd, int64_t total) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) z[e] *= zd[e];
}

// MagFace: the label owner's regulariser lambda_g g(a_i), weighted as its row's target (w_y), onto
// its row loss, and off its target partial divided by 1 - eps (so that the partials' (1 - eps)
// w_y (lse - target) carries it), as cpu/loss.cpp does.
__global__ void magface_rows(const int32_t *local, const double *mag_a, const lsm_ce_row *factors, lsm_ce ce,
                             lsm_margin mg, int n, double *row_loss, double *row_target) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i = next_index(i, step, n)) {
    if (local[i] < 0) continue;
    const double g = mg.lambda_g * lsm_magface_g(mg, mag_a[i]);
    if (row_loss != nullptr) row_loss[i] += factors[i].wy * g;
    if (row_target != nullptr) row_target[i] -= g / ce.keep;
  }
}

// Sub-center ArcFace: a block's class logits zc (n x cb/K) from its products z (n x cb, class j's
// K sub-centers at columns jK ... jK + K - 1), each the largest of its K (lsm_subcenter_max); the
// target's column is read from target[] wherever it is used, as for the other kinds. A thread per
// (row, class).
template <typename T>
__global__ void subcenter_classes(const T *z, T *zc, int n, int cb, int subs) {
  const int cbk = cb / subs;
  const int64_t total = (int64_t)n * cbk;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cbk), j = (int)(e % cbk);
    zc[e] = lsm_subcenter_max(z + (int64_t)i * cb + (int64_t)j * subs, (int64_t)subs);
  }
}

// Sub-center ArcFace: each row's alias (lsm_subcenter_alias: the sub-center of the lowest equal row
// of its class), a thread per row.
template <typename T>
__global__ void subcenter_aliases(const T *w, int rows, int d, int subs, int32_t *alias) {
  const int step = (int)(gridDim.x * blockDim.x);
  for (int r = (int)(blockIdx.x * blockDim.x + threadIdx.x); r < rows; r = next_index(r, step, rows))
    alias[r] = lsm_subcenter_alias(w, (int64_t)r, (int64_t)d, (int64_t)subs);
}

// Sub-center ArcFace: the block's class gradients gc (n x cb/K) onto its rows, in place of the
// products z: each class's to its winning sub-center, 0 to the other K - 1. The target's winner is
// the pre-pass's (trow[i], a row of W; the block starts at row c0, a multiple of K), another
// class's the largest of its products in z (lsm_subcenter_best; equal sub-centers: the lowest, by
// alias), read before the thread overwrites them. A thread per (row, class).
template <typename T>
__global__ void subcenter_scatter(T *z, const T *gc, int n, int cb, int c0, int subs, const int32_t *local,
                                  const int32_t *trow, const int32_t *alias) {
  const int cbk = cb / subs;
  const int64_t total = (int64_t)n * cbk;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cbk), j = (int)(e % cbk);
    T *r = z + (int64_t)i * cb + (int64_t)j * subs;
    const bool target = local[i] >= 0 && local[i] - c0 / subs == j;
    const int64_t best =
        target ? (int64_t)trow[i] - ((int64_t)c0 + (int64_t)j * subs)
               : (int64_t)alias[(int64_t)c0 + (int64_t)j * subs + lsm_subcenter_best(r, (int64_t)subs)];
    const T g = gc[e];
    for (int q = 0; q < subs; ++q) r[q] = q == best ? g : T(0);
  }
}

// lsm_forward_args: the logits lz (n x cols: the products, transformed, or sub-center ArcFace's
// class logits) into out, each target's from target[].
template <typename T>
__global__ void op_logits(const T *lz, T *out, int n, int cols, const int32_t *local, const double *target) {
  const int64_t total = (int64_t)n * cols;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cols), j = (int)(e % cols);
    out[e] = local[i] == j ? (T)target[i] : lz[e];
  }
}

// lsm_backward_args: each target's dL/df_iy from G (n x cols) into g_target, and unless sub-center
// ArcFace (whose scatter reads G itself) dL/d(products) into z: G times the transform's derivative
// zd (1 at the target; null: none).
template <typename T>
__global__ void op_gradient(const T *g, T *z, const T *zd, int n, int cols, bool scatter, const int32_t *local,
                            double *g_target) {
  const int64_t total = (int64_t)n * cols;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    const int i = (int)(e / cols), j = (int)(e % cols);
    if (local[i] == j) g_target[i] = (double)g[e];
    if (!scatter) z[e] = zd == nullptr ? g[e] : g[e] * zd[e];
  }
}

}  // namespace lsm_kernels

#endif  // LSOFTMAX_ADAPTIVE_KERNELS_CUH
