// cpu/loss.cpp: the fused loss on the CPU (cpu/loss.h): the entry point, the checks of the
// labels and the class weights, the run over the paths (the class blocks: cpu/loss_blocks.cpp; the
// direct path: cpu/loss_direct.cpp) and the margin's corrections.
#include <stdio.h>

#include "cpu/loss.h"

namespace lsm_cpu_fused {

// The products' gradients projected back to x and W (normalised kinds), then the margin's
// corrections of the target rows.
template <typename T>
void loss_run<T>::corrections() {
  if (colscale.empty()) {
    project_gradients(in, x, w, n, c, d, p.margin, gx, gw);
  } else if (lsm_normalises_x(p.margin.kind)) {
    project_rows(x, n, d, p.margin.scale, gx, &in.x_norms);  // W's projection is in products_direct
  }
  if (!lsm_plain_margin(p.margin)) {
    correction_coefs();
    if (!x_corrected) add_corrections_x(x, w, n, d, coef, gx);
    add_corrections_w(x, w, n, d, coef, gw);
    if (p.margin.kind == LSM_MARGIN_MAGFACE) magnitude_gradient();
  }
  if (stepping) step_finish();
}

// MagFace's magnitude: dL/d|x_i| x^_i, through the target's margin m_i and the regulariser
// w_y g_i (weighted as the row's target), where |x_i| lies in [l_a, u_a] (the owner of the label
// adds it).
template <typename T>
void loss_run<T>::magnitude_gradient() {
  const lsm_margin &mg = p.margin;
  for (int64_t i = 0; i < n; ++i) {
    if (local[i] < 0 || !mag[i].inside || lsm_degenerate(stats[i])) continue;
    const double da = g_target[i] * mg.scale * lsm_magface_dphi_dm(stats[i], mag[i].m) * mag[i].dm +
                      regulariser_weight(i) * mg.lambda_g * lsm_magface_dg(mg, mag[i].a);
    const lsm_stats &st = stats[i];
    const double f = da * st.px * st.ux;  // x^_k = x_k px ux
    for (int64_t k = 0; k < d; ++k) gx[i * d + k] = (T)((double)gx[i * d + k] + f * (double)x[i * d + k]);
  }
}

// Each owned row's correction coefficients (formed once: the fused step needs them early).
template <typename T>
void loss_run<T>::correction_coefs() {
  if (!coef.empty()) return;
  coef.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    coef[i] = local[i] < 0 ? lsm_no_correction()
                           : lsm_target_correction(g_target[i], stats[i], p.margin, (int32_t)trow[i], rowq[i]);
  }
}

// The adaptive kinds' pre-pass (docs/math.md), after the labels: AdaFace's norms and batch
// statistics over the rows not ignored (every shard holds all of x and the labels), MagFace's
// magnitudes, sub-center ArcFace's winning target sub-center, CurricularFace's target cosines, T_i
// and t (over the rows not ignored); then the owned rows' statistics and target logits; the
// updated state into args.state_out.
template <typename T>
int32_t loss_run<T>::prepass() {
  const lsm_margin &mg = p.margin;
  const int64_t classes = c / subs;
  rowq.assign((size_t)n, 0.0);
  trow.assign((size_t)n, -1);
  double state[2] = {0.0, 0.0};
  if (mg.kind == LSM_MARGIN_ADAFACE || mg.kind == LSM_MARGIN_MAGFACE) {
    std::vector<double> len((size_t)n);
    parallel_for(n, 2 * d, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) len[i] = row_length(x + i * d, d);
    });
    if (mg.kind == LSM_MARGIN_ADAFACE) {  // the statistics of the counted rows (ignored: left out)
      double sum = 0.0, sq = 0.0, mu, sigma;
      const int64_t rows = counted();
      for (int64_t i = 0; i < n; ++i) {
        len[i] = lsm_adaface_norm(len[i]);
        if (local[i] != LSM_CE_IGNORED) sum += len[i];
      }
      const double mean = rows == 0 ? 0.0 : sum / (double)rows;
      for (int64_t i = 0; i < n; ++i)
        if (local[i] != LSM_CE_IGNORED) sq += (len[i] - mean) * (len[i] - mean);
      lsm_adaface_update(mg, mean, sq, rows, &mu, &sigma);
      for (int64_t i = 0; i < n; ++i) rowq[i] = lsm_adaface_z(mg, len[i], mu, sigma);
      state[0] = mu, state[1] = sigma;
    } else {
      mag.resize((size_t)n);
      for (int64_t i = 0; i < n; ++i) mag[i] = lsm_magface_of(mg, len[i]), rowq[i] = mag[i].m;
    }
  }
  if (subs > 1) {  // equal sub-centers tie exactly (math/margin_adaptive.cuh)
    alias.resize((size_t)c);
    parallel_for(c, 2 * subs, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) alias[r] = (uint16_t)lsm_subcenter_alias(w, r, d, subs);
    });
  }
  parallel_for(n, 3 * d * subs, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t y = labels[i] - p.args.class_offset;
      if (local[i] == LSM_CE_IGNORED || y < 0 || y >= classes) continue;
      local[i] = y;
      // The sub-center of largest cosine (the lowest on a tie), in float64.
      int64_t best = y * subs;
      stats[i] = target_stats(x + i * d, w + best * d, d, mg);
      for (int64_t k = 1; k < subs; ++k) {
        const lsm_stats sk = target_stats(x + i * d, w + (y * subs + k) * d, d, mg);
        if (sk.c > stats[i].c) stats[i] = sk, best = y * subs + k;
      }
      trow[i] = best;
      target[i] = lsm_softmax_target<T>(lsm_target_logit(stats[i], mg, rowq[i]));
    }
  });
  if (mg.kind == LSM_MARGIN_CURRICULARFACE) {
    // Every row's c_iy and T_i: this call's own, or from the label owners (args.row_targets).
    const double *given = p.args.row_targets;
    std::vector<double> own;
    if (given == nullptr || p.stage == LSM_LOSS_TARGETS) {
      own.assign((size_t)(2 * n), 0.0);
      // Without row_targets the call holds every class (api/checks.cpp): every row is owned.
      for (int64_t i = 0; i < n; ++i)
        if (local[i] >= 0) own[i] = stats[i].c, own[n + i] = lsm_curricular_threshold(stats[i], mg);
      if (p.stage == LSM_LOSS_TARGETS) {
        std::copy(own.begin(), own.end(), p.row_targets);
        return LSM_OK;
      }
      given = own.data();
    }
    double sum = 0.0;  // over the counted rows (an ignored row's c_iy is 0 from every shard)
    thresh.assign(given + n, given + 2 * n);
    for (int64_t i = 0; i < n; ++i)
      if (local[i] != LSM_CE_IGNORED) sum += given[i];
    t_now = lsm_curricular_update_rows(mg, sum, counted());
    state[0] = t_now;
  }
  if (p.args.state_out != nullptr && (mg.kind == LSM_MARGIN_ADAFACE || mg.kind == LSM_MARGIN_CURRICULARFACE))
    p.args.state_out[0] = state[0], p.args.state_out[1] = state[1];
  return LSM_OK;
}

// The labels, copied first (memory another thread writes meanwhile cannot slip an unchecked
// index past the check): each in [0, total_classes), or the ignored label.
template <typename T>
int32_t loss_run<T>::read_labels(lsm_context *ctx) {
  labels.assign(p.labels, p.labels + n);
  const int64_t total = p.args.total_classes;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t y = labels[i];
    if ((y >= 0 && y < total) || lsm_ce_ignored(ce, y)) continue;
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "labels[" + std::to_string(i) + "]: expected an integer in [0, " + std::to_string(total) + ")" +
                        (ce.ignoring ? " or the ignore index " + std::to_string(ce.ignore) : std::string()) +
                        ", got " + std::to_string(y));
  }
  return LSM_OK;
}

// Every class weight finite and >= 0.
template <typename T>
int32_t loss_run<T>::check_weights(lsm_context *ctx) const {
  if (ce.weights == nullptr) return LSM_OK;
  for (int64_t j = 0; j < p.args.total_classes; ++j) {
    const double v = ce.weights[j];
    if (v >= 0.0 && isfinite(v)) continue;
    char text[32];
    snprintf(text, sizeof text, "%.17g", v);
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "class_weights[" + std::to_string(j) + "]: expected a finite number >= 0, got " + text);
  }
  return LSM_OK;
}

template <typename T>
int32_t loss_run<T>::run(lsm_context *ctx) {
  int32_t s = read_labels(ctx);
  if (s != LSM_OK || (s = check_weights(ctx)) != LSM_OK) return s;
  local.assign((size_t)n, -1);
  factors.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    factors[i] = lsm_ce_row_of(ce, labels[i]);
    if (lsm_ce_ignored(ce, labels[i])) local[i] = LSM_CE_IGNORED;
  }
  if (lsm_ce_smoothing(ce)) smooth.assign((size_t)n, 0.0);
  stats.resize((size_t)n);
  target.assign((size_t)n, 0.0);
  g_target.assign((size_t)n, 0.0);
  if ((s = prepass()) != LSM_OK || p.stage == LSM_LOSS_TARGETS) return s;
  if (p.stage == LSM_LOSS_LOGITS || p.stage == LSM_LOSS_BACKWARD) return op(ctx);
  // Blocks of equal size within the limit (whole classes: multiples of K rows): the last one,
  // whose exponentials the gradients reuse, is then as large as any. The element-wise kinds keep
  // their derivatives beside (aux), sub-center ArcFace its class logits (cls).
  const bool second = lsm_elementwise(p.margin.kind) || subs > 1;
  const size_t per_class = (size_t)n * sizeof(T) * (second ? 2 : 1);
  const int64_t classes = c / subs;
  block = std::max<int64_t>(1, std::min<int64_t>(classes, (int64_t)(ctx->workspace_limit / per_class / subs)));
  const int64_t blocks = (classes + block - 1) / block;
  block = (classes + blocks - 1) / blocks * subs;
  void *ws = nullptr;
  if ((s = lsm_cpu_workspace(ctx, (size_t)block * per_class, &ws)) != LSM_OK) return s;
  buf = static_cast<T *>(ws);
  if (lsm_elementwise(p.margin.kind)) aux = buf + (size_t)block * n;
  if (subs > 1) {  // cls takes n x block/K of the second half, the winners fit in the rest
    cls = buf + (size_t)block * n;
    win = reinterpret_cast<uint16_t *>(cls + (size_t)(block / subs) * n);
  }

  std::vector<double> lse((size_t)n), maxes((size_t)n, -INFINITY), sums((size_t)n, 0.0);
  if (!colscale.empty()) {  // the direct path: one block, the loss and its gradients
    std::vector<double> beta;
    gemm(CblasNoTrans, CblasTrans, (int)n, (int)c, (int)d, in.x, (int)d, w, (int)d, buf, (int)c);
    fold_direct(maxes.data(), sums.data(), &beta);
    for (int64_t i = 0; i < n; ++i) p.row_loss[i] = row_loss(i, maxes[i], sums[i]);
    products_direct(sums.data(), beta);
    corrections();
    return LSM_OK;
  }
  if (p.stage != LSM_LOSS_GRADIENTS) {
    double seen = 0.0;  // the weight of the classes folded so far
    for (int64_t c0 = 0; c0 < c; c0 += block) {
      const int64_t cb = std::min(block, c - c0);
      logits(c0, cb);
      if (subs > 1) {
        fold_classes(c0, cb, seen, maxes.data(), sums.data());
      } else {
        fold(c0, cb, seen, maxes.data(), sums.data());
      }
      if (lsm_ce_smoothing(ce))  // over the block's classes (K rows each)
        for (int64_t j = c0 / subs; j < (c0 + cb) / subs; ++j) seen += weight(j);
    }
    if (p.stage == LSM_LOSS_PARTIALS) {
      for (int64_t i = 0; i < n; ++i) {
        p.row_max[i] = maxes[i];
        p.row_sum[i] = sums[i];
        p.target[i] = local[i] >= 0 ? target[i] : 0.0;
        // MagFace: the owner's regulariser rides on the target, so that the combine step's
        // (1 - eps) w_y (lse - target) holds its w_y lambda g (eps < 1).
        if (local[i] >= 0 && p.margin.kind == LSM_MARGIN_MAGFACE)
          p.target[i] -= p.margin.lambda_g * lsm_magface_g(p.margin, mag[i].a) / ce.keep;
        if (p.row_smooth != nullptr) p.row_smooth[i] = smooth[i];
      }
      return LSM_OK;
    }
    for (int64_t i = 0; i < n; ++i) {
      lse[i] = maxes[i] + log(sums[i]);
      p.row_loss[i] = row_loss(i, maxes[i], sums[i]);
    }
    if (gx == nullptr) return LSM_OK;  // the loss alone
    if (block == c && !lsm_ce_smoothing(ce) && subs == 1) {
      products_from_exps(sums.data(), lse.data());
      corrections();
      return LSM_OK;
    }
  } else {
    lse.assign(p.lse, p.lse + n);
  }
  // The last block first: after the fold its exponentials are still in buf.
  const int64_t last = (c - 1) / block * block;
  for (int64_t c0 = last; c0 >= 0; c0 -= block) {
    const int64_t cb = std::min(block, c - c0);
    if (subs > 1) {
      const bool kept = p.stage != LSM_LOSS_GRADIENTS && c0 == last;  // buf and cls hold this block
      if (!kept) logits(c0, cb);
      gradient_classes(c0, cb, lse.data(), kept ? sums.data() : nullptr);
    } else if (p.stage != LSM_LOSS_GRADIENTS && c0 == last) {
      gradient_from_exps(c0, cb, sums.data(), lse.data());
    } else {
      logits(c0, cb);
      gradient(c0, cb, lse.data());
    }
    products(c0, cb, c0 == last);
  }
  corrections();
  return LSM_OK;
}

}  // namespace lsm_cpu_fused

int32_t lsm_cpu_loss(lsm_context *ctx, const lsm_loss_problem &p) {
  if (p.dtype == LSM_FLOAT32) return lsm_cpu_fused::loss_run<float>(ctx, p).run(ctx);
  return lsm_cpu_fused::loss_run<double>(ctx, p).run(ctx);
}
