// sanitize_driver.cpp: runs forward and backward through the C ABI on a CUDA context and compares
// them with the CPU backend, at shapes around the GEMM's tiles (fp32 128x128, fp64 64x64, BK 8),
// both dtypes and margins 1..6, and the other kinds of the margin family; then variants: tensors
// at a misaligned offset inside a larger allocation (the scalar fallback of the vector loads),
// repeated labels (many samples per class, all one class, label-sorted vs shuffled: the grad_w
// correction's per-row sums), TF32 precision
// (loose tolerance), and bitwise-repeatable backward results; then the numerics at the ends of
// the range (exact power-of-two homogeneity in float64 on both backends, float32 subnormal
// inputs on CUDA against the CPU), the fused loss (one call and the shard calls, in class
// blocks and row chunks; NaN and infinite rows; the adaptive kinds' op), and resident training (the SGD update, the sum, top-k). Built against the CPU execution layer with -fsanitize=address,undefined, so an
// out-of-bounds access or undefined behaviour in a kernel stops it; built with nvcc it is the
// compute-sanitizer target of scripts/gpu-check.sh. Device buffers have exactly the tensors'
// sizes, so any overrun is past an allocation. Exit status 0 when everything matches.
// Prints one line per failure and a count (a test driver, not library code).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "lsoftmax.h"
#include "sanitize_support.h"

namespace {

template <typename T>
void run_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int margin, double lambda, const variant &v = {}) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  // TF32 (float32 only): inputs keep 10 mantissa bits, a relative 2^-11; the products' errors
  // stay near 1e-3 of the largest output, well inside 1e-2 of it.
  const double tol = (v.tf32 && sizeof(T) == 4) ? 1e-2 : sizeof(T) == 4 ? 2e-4 : 1e-9;
  const size_t nd = (size_t)(s.n * s.d), cd = (size_t)(s.c * s.d), nc = (size_t)(s.n * s.c);
  std::vector<T> x(nd), w(cd), g(nc);
  std::vector<int32_t> labels((size_t)s.n);
  for (auto &e : x) e = (T)uniform();
  for (auto &e : w) e = (T)uniform();
  for (auto &e : g) e = (T)uniform();
  for (size_t i = 0; i < labels.size(); ++i) {
    const int32_t r = (int32_t)((uniform() + 1.0) * 0.5 * (double)s.c) % (int32_t)s.c;
    labels[i] = v.labels == kAllOneClass ? (int32_t)(s.c - 1) : v.labels == kFewClasses ? r % 3 % (int32_t)s.c : r;
  }
  if (v.labels == kSortedLabels) std::sort(labels.begin(), labels.end());
  if (s.n > 2) {  // a zero feature row: the degenerate rule
    for (int64_t k = 0; k < s.d; ++k) x[(size_t)(s.d + k)] = T(0);
  }
  static const char *const label_names[] = {"", " labels=all-one", " labels=few", " labels=sorted"};
  const std::string name = std::string(sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(s.n) +
                           " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c) + " m=" + std::to_string(margin) +
                           " lambda=" + std::to_string(lambda) + label_names[v.labels] +
                           (v.offset ? " offset=" + std::to_string(v.offset) + (v.offset_all ? "(all)" : "") : "") +
                           (v.tf32 ? " tf32" : "");
  ++g_cases;

  const lsm_margin mg = margin_of(margin, lambda);
  std::vector<T> logits_cpu(nc), gx_cpu(nd), gw_cpu(cd);
  if (lsm_forward(cpu, dtype, s.n, s.d, s.c, &mg, x.data(), w.data(), labels.data(), logits_cpu.data()) !=
          LSM_OK ||
      lsm_backward(cpu, dtype, s.n, s.d, s.c, &mg, x.data(), w.data(), labels.data(), g.data(), gx_cpu.data(),
                   gw_cpu.data()) != LSM_OK) {
    printf("FAIL %s: CPU backend: %s\n", name.c_str(), lsm_last_error());
    ++g_failures;
    return;
  }

  const size_t e = sizeof(T), o1 = (size_t)v.offset * e, o2 = v.offset_all ? o1 : 0;
  const placed dx = upload_at(gpu, x.data(), nd * e, o1), dw = upload_at(gpu, w.data(), cd * e, o2),
               dg = upload_at(gpu, g.data(), nc * e, o1),
               dl = upload_at(gpu, labels.data(), labels.size() * sizeof(int32_t), 0),
               dlogits = upload_at(gpu, nullptr, nc * e, o2), dgx = upload_at(gpu, nullptr, nd * e, o2),
               dgw = upload_at(gpu, nullptr, cd * e, o1);
  bool ok = dx.at && dw.at && dg.at && dl.at && dlogits.at && dgx.at && dgw.at;
  std::vector<T> logits(nc), gx(nd), gw(cd);
  if (ok && v.tf32 && lsm_context_set_precision(gpu, LSM_PRECISION_TF32) != LSM_OK) {
    printf("FAIL %s: lsm_context_set_precision: %s\n", name.c_str(), lsm_last_error());
    ok = false;
  } else if (ok) {
    const int32_t *lab = static_cast<const int32_t *>(dl.at);
    ok = lsm_forward(gpu, dtype, s.n, s.d, s.c, &mg, dx.at, dw.at, lab, dlogits.at) == LSM_OK &&
         lsm_backward(gpu, dtype, s.n, s.d, s.c, &mg, dx.at, dw.at, lab, dg.at, dgx.at, dgw.at) ==
             LSM_OK &&
         lsm_memcpy_from_context(gpu, logits.data(), dlogits.at, nc * e) == LSM_OK &&
         lsm_memcpy_from_context(gpu, gx.data(), dgx.at, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(gpu, gw.data(), dgw.at, cd * e) == LSM_OK;
    if (ok && v.repeat) {  // no atomics in the backward: a second run gives the same bits
      std::vector<T> gx2(nd), gw2(cd);
      ok = lsm_backward(gpu, dtype, s.n, s.d, s.c, &mg, dx.at, dw.at, lab, dg.at, dgx.at, dgw.at) ==
               LSM_OK &&
           lsm_memcpy_from_context(gpu, gx2.data(), dgx.at, nd * e) == LSM_OK &&
           lsm_memcpy_from_context(gpu, gw2.data(), dgw.at, cd * e) == LSM_OK;
      if (ok && (memcmp(gx.data(), gx2.data(), nd * e) != 0 || memcmp(gw.data(), gw2.data(), cd * e) != 0)) {
        printf("FAIL %s: a repeated backward differs bitwise\n", name.c_str());
        ++g_failures;
      }
    }
    if (!ok) printf("FAIL %s: CUDA backend: %s\n", name.c_str(), lsm_last_error());
    if (v.tf32) lsm_context_set_precision(gpu, LSM_PRECISION_EXACT);
  } else {
    printf("FAIL %s: lsm_malloc: %s\n", name.c_str(), lsm_last_error());
  }
  if (ok) {
    ok = close(logits, logits_cpu, tol, name + " logits") && close(gx, gx_cpu, tol, name + " grad_x") &&
         close(gw, gw_cpu, tol, name + " grad_w");
  }
  if (!ok) ++g_failures;
  for (const placed &t : {dx, dw, dg, dl, dlogits, dgx, dgw}) lsm_free(gpu, t.base);
}

// The fused loss on both backends, in one call (lsm_loss) and in the shard calls (partials, then
// gradients given an lse), with the workspace limited to `block` classes: class blocks, chunks
// of a row (4096 classes) and their edges. The shard holds classes [offset, offset + c) of c + 3.
// With `ce`: the cross-entropy options (label smoothing, class weights, every fifth row ignored).
template <typename T>
void loss_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int margin, int64_t block, int64_t offset,
               bool ce = false) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const double tol = sizeof(T) == 4 ? 2e-4 : 1e-9;
  const size_t e = sizeof(T), nd = (size_t)(s.n * s.d), cd = (size_t)(s.c * s.d), n = (size_t)s.n;
  const std::string name = std::string("loss ") + (sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(s.n) +
                           " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c) + " m=" + std::to_string(margin) +
                           " block=" + std::to_string(block) + " offset=" + std::to_string(offset) +
                           (ce ? " ce" : "");
  ++g_cases;
  std::vector<T> x(nd), w(cd);
  std::vector<int32_t> labels(n);
  for (auto &v : x) v = (T)(2.0 * uniform());
  for (auto &v : w) v = (T)uniform();
  for (size_t i = 0; i < n; ++i) labels[i] = (int32_t)((uniform() + 1.0) * 0.5 * (double)(s.c + 3)) % (int32_t)(s.c + 3);
  const lsm_margin mg = margin_of(margin, 0.5);
  lsm_loss_args whole = {}, shard = {};
  whole.total_classes = s.c, whole.grad_scale = 1.0 / (double)s.n;
  shard.class_offset = offset, shard.total_classes = s.c + 3, shard.grad_scale = 1.0;
  std::vector<double> weights((size_t)s.c + 3);
  for (auto &v : weights) v = 1.0 + uniform();
  if (ce) {
    for (size_t i = 0; i < n; i += 5) labels[i] = -1;
    for (lsm_loss_args *a : {&whole, &shard}) {
      a->label_smoothing = 0.1, a->ignore_index = -1, a->flags = LSM_LOSS_IGNORE;
      for (int64_t j = 0; j < a->total_classes; ++j) a->weight_sum += weights[(size_t)j];
    }
  }
  std::vector<int32_t> within(labels);  // the one-call loss needs labels in [0, c)
  for (auto &y : within) y %= (int32_t)s.c;
  // [0] row_loss, [1..4] row_max, row_sum, target, row_smooth; then grad_x, grad_w of each call.
  std::vector<double> rows[2][5], lse(n);
  std::vector<T> gx[2][2], gw[2][2];
  bool ok = true;
  for (int b = 0; b < 2 && ok; ++b) {
    lsm_context *ctx = b == 0 ? cpu : gpu;
    for (auto &r : rows[b]) r.assign(n, 0.0);
    for (int k = 0; k < 2; ++k) gx[b][k].assign(nd, T(0)), gw[b][k].assign(cd, T(0));
    const size_t rb = n * 8;
    void *dx = upload(ctx, x.data(), nd * e), *dw = upload(ctx, w.data(), cd * e);
    void *dl = upload(ctx, within.data(), n * 4), *ds = upload(ctx, labels.data(), n * 4);
    void *dcw = ce ? upload(ctx, weights.data(), weights.size() * 8) : nullptr;
    whole.class_weights = shard.class_weights = static_cast<const double *>(dcw);
    void *dr[5], *dlse = upload(ctx, nullptr, rb), *dgx = upload(ctx, nullptr, nd * e), *dgw = upload(ctx, nullptr, cd * e);
    for (auto &r : dr) r = upload(ctx, nullptr, rb);
    const int32_t *yl = static_cast<const int32_t *>(dl), *ys = static_cast<const int32_t *>(ds);
    double *r0 = static_cast<double *>(dr[0]), *r1 = static_cast<double *>(dr[1]);
    double *r2 = static_cast<double *>(dr[2]), *r3 = static_cast<double *>(dr[3]);
    double *r4 = ce ? static_cast<double *>(dr[4]) : nullptr;
    ok = dx && dw && dl && ds && dr[0] && dr[1] && dr[2] && dr[3] && dr[4] && (dcw || !ce) && dlse && dgx && dgw &&
         lsm_context_set_workspace_limit(ctx, (size_t)(block * s.n) * e) == LSM_OK &&
         lsm_loss(ctx, dtype, s.n, s.d, s.c, &mg, &whole, dx, dw, yl, r0, dgx, dgw) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gx[b][0].data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gw[b][0].data(), dgw, cd * e) == LSM_OK &&
         lsm_loss_partials(ctx, dtype, s.n, s.d, s.c, &mg, &shard, dx, dw, ys, r1, r2, r3, r4) == LSM_OK;
    for (int k = 0; k < 5 && ok; ++k) ok = lsm_memcpy_from_context(ctx, rows[b][k].data(), dr[k], rb) == LSM_OK;
    // Both backends get the CPU's lse of this shard, raised as if other shards held more.
    if (b == 0)
      for (size_t i = 0; i < n; ++i) lse[i] = rows[0][1][i] + log(rows[0][2][i]) + 0.25;
    ok = ok && lsm_memcpy_to_context(ctx, dlse, lse.data(), rb) == LSM_OK &&
         lsm_loss_gradients(ctx, dtype, s.n, s.d, s.c, &mg, &shard, dx, dw, ys, static_cast<const double *>(dlse), dgx,
                            dgw) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gx[b][1].data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gw[b][1].data(), dgw, cd * e) == LSM_OK &&
         lsm_context_set_workspace_limit(ctx, LSM_DEFAULT_WORKSPACE_LIMIT) == LSM_OK;
    if (!ok) printf("FAIL %s: %s backend: %s\n", name.c_str(), b == 0 ? "CPU" : "CUDA", lsm_last_error());
    for (void *p : {dx, dw, dl, ds, dr[0], dr[1], dr[2], dr[3], dr[4], dlse, dgx, dgw, dcw}) lsm_free(ctx, p);
  }
  static const char *const row_names[] = {" row_loss", " row_max", " row_sum", " target", " row_smooth"};
  for (int k = 0; k < (ce ? 5 : 4) && ok; ++k) ok = close(rows[1][k], rows[0][k], tol, name + row_names[k]);
  for (int k = 0; k < 2 && ok; ++k)
    ok = close(gx[1][k], gx[0][k], tol, name + " grad_x") && close(gw[1][k], gw[0][k], tol, name + " grad_w");
  if (!ok) ++g_failures;
}

// An adaptive kind's margin as the cases below take it (sub-center ArcFace: K = 3).
lsm_margin adaptive_margin(int32_t kind) {
  lsm_margin mg = {};
  mg.kind = kind, mg.scale = 16.0, mg.m2 = 0.5;
  if (kind == LSM_MARGIN_SUBCENTER) mg.m = 3;
  if (kind == LSM_MARGIN_ADAFACE) mg.m2 = 0.4, mg.h = 0.333, mg.t_alpha = 0.3, mg.batch_mean = 1, mg.batch_std = 1;
  if (kind == LSM_MARGIN_CURRICULARFACE) mg.t_alpha = 0.3, mg.t = 0.1;
  if (kind == LSM_MARGIN_MAGFACE) mg.m2 = 0.45, mg.upper_margin = 0.8, mg.lower_norm = 0.5, mg.upper_norm = 2, mg.lambda_g = 3;
  return mg;
}

// The adaptive kinds: the one call with its state, and the shard calls (CurricularFace's row
// targets first) in class blocks of `block` classes, on the CPU backend and on the CUDA backend in
// buffers of the tensors' exact sizes; each backend's shard calls give its one call's results
// (MagFace's regulariser on the partials' target), and the CUDA backend's equal the CPU's.
// Sub-center ArcFace (K = 3 rows a class; `ties`: each class's last two sub-centers equal, so the
// lower of the two takes every gradient and the other none).
template <typename T>
void adaptive_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int32_t kind, int64_t block,
                   bool ties = false) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const lsm_margin mg = adaptive_margin(kind);
  const int64_t rows = s.c * (kind == LSM_MARGIN_SUBCENTER ? 3 : 1);
  const size_t n = (size_t)s.n, nd = (size_t)(s.n * s.d), rd = (size_t)(rows * s.d), e = sizeof(T);
  const std::string name = std::string("adaptive kind ") + std::to_string(kind) + (sizeof(T) == 4 ? " f32" : " f64") +
                           " n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c) +
                           " block=" + std::to_string(block) + (ties ? " ties" : "");
  ++g_cases;
  std::vector<T> x(nd), w(rd);
  std::vector<int32_t> labels(n);
  for (auto &v : x) v = (T)(2.0 * uniform());
  for (auto &v : w) v = (T)uniform();
  for (size_t i = 0; i < n; ++i) labels[i] = (int32_t)((uniform() + 1.0) * 0.5 * (double)s.c) % (int32_t)s.c;
  if (s.d > 1) std::fill(x.begin(), x.begin() + s.d, T(0));  // a zero row
  for (int64_t r = 2; ties && r < rows; r += 3) std::copy_n(w.begin() + (r - 1) * s.d, s.d, w.begin() + r * s.d);
  // Per backend: [0] row_loss, [1] lse - target of the partials; grad_x, grad_w of the one call and the shard calls.
  std::vector<double> rows_out[2][2], state[2];
  std::vector<T> gx[2][2], gw[2][2];
  const double tol = sizeof(T) == 4 ? 2e-4 : 1e-10;
  bool ok = true;
  for (int b = 0; b < 2 && ok; ++b) {
    lsm_context *ctx = b == 0 ? cpu : gpu;
    state[b].assign(2, 0.0);
    for (auto &r : rows_out[b]) r.assign(n, 0.0);
    for (int k = 0; k < 2; ++k) gx[b][k].assign(nd, T(0)), gw[b][k].assign(rd, T(0));
    const size_t rb = n * 8;
    void *dx = upload(ctx, x.data(), nd * e), *dw = upload(ctx, w.data(), rd * e);
    void *dl = upload(ctx, labels.data(), n * 4), *dloss = upload(ctx, nullptr, rb), *dmax = upload(ctx, nullptr, rb);
    void *dsum = upload(ctx, nullptr, rb), *dtarget = upload(ctx, nullptr, rb), *dlse = upload(ctx, nullptr, rb);
    void *dtargets = upload(ctx, nullptr, 2 * rb), *dgx = upload(ctx, nullptr, nd * e), *dgw = upload(ctx, nullptr, rd * e);
    const int32_t *yl = static_cast<const int32_t *>(dl);
    lsm_loss_args a = {};
    a.total_classes = s.c, a.grad_scale = 1.0 / (double)s.n, a.state_out = state[b].data();
    std::vector<double> rmax(n), rsum(n), target(n), lse(n);
    ok = dx && dw && dl && dloss && dmax && dsum && dtarget && dlse && dtargets && dgx && dgw &&
         lsm_context_set_workspace_limit(ctx, (size_t)(block * (rows / s.c) * s.n) * e * 2) == LSM_OK &&
         lsm_loss(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, static_cast<double *>(dloss), dgx, dgw) == LSM_OK &&
         lsm_memcpy_from_context(ctx, rows_out[b][0].data(), dloss, rb) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gx[b][0].data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gw[b][0].data(), dgw, rd * e) == LSM_OK;
    if (ok && kind == LSM_MARGIN_CURRICULARFACE) {
      ok = lsm_loss_targets(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, static_cast<double *>(dtargets)) ==
           LSM_OK;
      a.row_targets = static_cast<const double *>(dtargets);
    }
    ok = ok &&
         lsm_loss_partials(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, static_cast<double *>(dmax),
                           static_cast<double *>(dsum), static_cast<double *>(dtarget), nullptr) == LSM_OK &&
         lsm_memcpy_from_context(ctx, rmax.data(), dmax, rb) == LSM_OK &&
         lsm_memcpy_from_context(ctx, rsum.data(), dsum, rb) == LSM_OK &&
         lsm_memcpy_from_context(ctx, target.data(), dtarget, rb) == LSM_OK;
    for (size_t i = 0; i < n && ok; ++i) lse[i] = rmax[i] + log(rsum[i]), rows_out[b][1][i] = lse[i] - target[i];
    ok = ok && lsm_memcpy_to_context(ctx, dlse, lse.data(), rb) == LSM_OK &&
         lsm_loss_gradients(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, static_cast<const double *>(dlse), dgx,
                            dgw) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gx[b][1].data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gw[b][1].data(), dgw, rd * e) == LSM_OK &&
         lsm_context_set_workspace_limit(ctx, LSM_DEFAULT_WORKSPACE_LIMIT) == LSM_OK;
    if (!ok) printf("FAIL %s: %s backend: %s\n", name.c_str(), b == 0 ? "CPU" : "CUDA", lsm_last_error());
    for (void *q : {dx, dw, dl, dloss, dmax, dsum, dtarget, dlse, dtargets, dgx, dgw}) lsm_free(ctx, q);
    for (size_t i = 0; i < n && ok; ++i) ok = isfinite(rows_out[b][0][i]);
    ok = ok && close(rows_out[b][1], rows_out[b][0], tol, name + " partials' row losses") &&
         close(gx[b][1], gx[b][0], tol, name + " shard grad_x") && close(gw[b][1], gw[b][0], tol, name + " shard grad_w");
  }
  if (ok)
    ok = close(rows_out[1][0], rows_out[0][0], tol, name + " row_loss") && close(state[1], state[0], tol, name + " state") &&
         close(gx[1][0], gx[0][0], tol, name + " grad_x") && close(gw[1][0], gw[0][0], tol, name + " grad_w");
  for (int b = 0; b < 2 && ok && ties; ++b) {  // the tied twin (row 3j + 2) never wins, on either backend
    for (int64_t r = 2; r < rows && ok; r += 3)
      for (int64_t k = 0; k < s.d && ok; ++k) ok = gw[b][0][(size_t)(r * s.d + k)] == T(0);
    if (!ok)
      printf("FAIL %s: %s backend: a tied sub-center above the lowest took a gradient\n", name.c_str(),
             b == 0 ? "CPU" : "CUDA");
  }
  if (!ok) ++g_failures;
}

// The adaptive kinds' op (lsm_forward_args, lsm_backward_args): logits [n, c], MagFace's
// regulariser, the state, and the gradients of random dL/dlogits and dL/dregulariser, in buffers
// of the tensors' exact sizes, the CUDA backend's against the CPU's.
template <typename T>
void adaptive_op_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int32_t kind) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const lsm_margin mg = adaptive_margin(kind);
  const int64_t rows = s.c * (kind == LSM_MARGIN_SUBCENTER ? 3 : 1);
  const size_t n = (size_t)s.n, nd = (size_t)(s.n * s.d), rd = (size_t)(rows * s.d), nc = (size_t)(s.n * s.c);
  const size_t e = sizeof(T), rb = n * 8;
  const std::string name = std::string("adaptive op kind ") + std::to_string(kind) + (sizeof(T) == 4 ? " f32" : " f64") +
                           " n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c);
  ++g_cases;
  std::vector<T> x(nd), w(rd), g(nc);
  std::vector<double> gr(n);
  std::vector<int32_t> labels(n);
  for (auto &v : x) v = (T)(2.0 * uniform());
  for (auto &v : w) v = (T)uniform();
  for (auto &v : g) v = (T)uniform();
  for (auto &v : gr) v = uniform();
  for (size_t i = 0; i < n; ++i) labels[i] = (int32_t)((uniform() + 1.0) * 0.5 * (double)s.c) % (int32_t)s.c;
  if (s.d > 1) std::fill(x.begin(), x.begin() + s.d, T(0));  // a zero row
  std::vector<T> logits[2], gx[2], gw[2];
  std::vector<double> reg[2], state[2];
  const double tol = sizeof(T) == 4 ? 2e-4 : 1e-10;
  bool ok = true;
  for (int b = 0; b < 2 && ok; ++b) {
    lsm_context *ctx = b == 0 ? cpu : gpu;
    logits[b].assign(nc, T(0)), gx[b].assign(nd, T(0)), gw[b].assign(rd, T(0));
    reg[b].assign(n, 0.0), state[b].assign(2, 0.0);
    void *dx = upload(ctx, x.data(), nd * e), *dw = upload(ctx, w.data(), rd * e), *dl = upload(ctx, labels.data(), n * 4);
    void *dg = upload(ctx, g.data(), nc * e), *dgr = upload(ctx, gr.data(), rb), *dlogits = upload(ctx, nullptr, nc * e);
    void *dreg = upload(ctx, nullptr, rb), *dgx = upload(ctx, nullptr, nd * e), *dgw = upload(ctx, nullptr, rd * e);
    const int32_t *yl = static_cast<const int32_t *>(dl);
    lsm_loss_args a = {};
    a.total_classes = s.c, a.grad_scale = 1.0, a.state_out = state[b].data();
    ok = dx && dw && dl && dg && dgr && dlogits && dreg && dgx && dgw &&
         lsm_forward_args(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, dlogits, static_cast<double *>(dreg)) ==
             LSM_OK &&
         lsm_backward_args(ctx, dtype, s.n, s.d, rows, &mg, &a, dx, dw, yl, dg, static_cast<const double *>(dgr), dgx,
                           dgw) == LSM_OK &&
         lsm_memcpy_from_context(ctx, logits[b].data(), dlogits, nc * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, reg[b].data(), dreg, rb) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gx[b].data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, gw[b].data(), dgw, rd * e) == LSM_OK;
    if (!ok) printf("FAIL %s: %s backend: %s\n", name.c_str(), b == 0 ? "CPU" : "CUDA", lsm_last_error());
    for (void *q : {dx, dw, dl, dg, dgr, dlogits, dreg, dgx, dgw}) lsm_free(ctx, q);
  }
  ok = ok && close(logits[1], logits[0], tol, name + " logits") && close(reg[1], reg[0], tol, name + " regulariser") &&
       close(state[1], state[0], tol, name + " state") && close(gx[1], gx[0], tol, name + " grad_x") &&
       close(gw[1], gw[0], tol, name + " grad_w");
  if (!ok) ++g_failures;
}

// Resident training: two SGD steps (the first, then one with the momentum; Nesterov on odd
// cases), the sum of float64 values and top-k through class blocks of `block`, each against the
// CPU backend, in buffers of the tensors' exact sizes.
template <typename T>
void resident_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int64_t k, int64_t block, bool nesterov) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const double tol = sizeof(T) == 4 ? 2e-4 : 1e-9;
  const size_t e = sizeof(T), nd = (size_t)(s.n * s.d), cd = (size_t)(s.c * s.d), nk = (size_t)(s.n * k);
  const std::string name = std::string("resident ") + (sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(s.n) +
                           " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c) + " k=" + std::to_string(k) +
                           " block=" + std::to_string(block);
  ++g_cases;
  std::vector<T> x(nd), w(cd), g(cd);
  std::vector<double> vals(nd);
  for (auto &v : x) v = (T)uniform();
  for (auto &v : w) v = (T)uniform();
  for (auto &v : g) v = (T)uniform();
  for (auto &v : vals) v = uniform();
  lsm_margin mg = {};
  mg.kind = LSM_MARGIN_LSOFTMAX, mg.m = 4, mg.lambda = 0.5;
  std::vector<T> w_out[2], v_out[2], scores[2], aw_out[2], am_out[2], avmax_out[2];
  double squares[2] = {0.0, 0.0};
  std::vector<int32_t> idx[2];
  double sums[2] = {0.0, 0.0};
  bool ok = true;
  for (int b = 0; b < 2 && ok; ++b) {
    lsm_context *ctx = b == 0 ? cpu : gpu;
    w_out[b].assign(cd, T(0)), v_out[b].assign(cd, T(0)), scores[b].assign(nk, T(0)), idx[b].assign(nk, 0);
    void *dx = upload(ctx, x.data(), nd * e), *dw = upload(ctx, w.data(), cd * e), *dg = upload(ctx, g.data(), cd * e);
    void *dv = upload(ctx, nullptr, cd * e), *dvals = upload(ctx, vals.data(), nd * 8);
    void *di = upload(ctx, nullptr, nk * 4), *ds = upload(ctx, nullptr, nk * e);
    // Adam (AdamW with amsgrad and clipping's factor) over zeroed moments, two steps.
    aw_out[b].assign(cd, T(0)), am_out[b].assign(cd, T(0)), avmax_out[b].assign(cd, T(0));
    void *aw = upload(ctx, w.data(), cd * e), *am = upload(ctx, am_out[b].data(), cd * e);
    void *av = upload(ctx, am_out[b].data(), cd * e), *avmax = upload(ctx, am_out[b].data(), cd * e);
    lsm_adam a = {};
    a.lr = 0.01, a.beta1 = 0.9, a.beta2 = 0.999, a.eps = 1e-8, a.weight_decay = 0.01, a.grad_scale = 0.5;
    a.decoupled = nesterov ? 1 : 0, a.amsgrad = 1, a.nonfinite = LSM_SGD_SKIP;
    int32_t flag = -1;
    for (a.step = 1; a.step <= 2 && aw && am && av && avmax; ++a.step)
      if (lsm_adam_update(ctx, dtype, (int64_t)cd, &a, aw, dg, am, av, avmax, &flag) != LSM_OK || flag != 0) break;
    // Then the accumulation's y = a x + b y, and y = b y (clipping in place), over Adam's W.
    const bool adam_ok = a.step == 3 && lsm_axpby(ctx, dtype, (int64_t)cd, 0.5, dg, 2.0, aw) == LSM_OK &&
                         lsm_axpby(ctx, dtype, (int64_t)cd, 0.0, nullptr, 0.25, aw) == LSM_OK &&
                         lsm_sum_squares(ctx, dtype, dg, (int64_t)cd, &squares[b]) == LSM_OK &&
                         lsm_memcpy_from_context(ctx, aw_out[b].data(), aw, cd * e) == LSM_OK &&
                         lsm_memcpy_from_context(ctx, am_out[b].data(), am, cd * e) == LSM_OK &&
                         lsm_memcpy_from_context(ctx, avmax_out[b].data(), avmax, cd * e) == LSM_OK;
    for (void *p : {aw, am, av, avmax}) lsm_free(ctx, p);
    if (!adam_ok) printf("FAIL %s: %s backend: adam: %s\n", name.c_str(), b == 0 ? "CPU" : "CUDA", lsm_last_error());
    ok = adam_ok;
    lsm_sgd o = {};
    o.lr = 0.1, o.momentum = 0.9, o.weight_decay = 0.01, o.nesterov = nesterov ? 1 : 0, o.first = 1;
    ok = ok && dx && dw && dg && dv && dvals && di && ds &&
         lsm_sgd_update(ctx, dtype, (int64_t)cd, &o, dw, dg, dv, nullptr) == LSM_OK;
    o.first = 0;
    ok = ok && lsm_sgd_update(ctx, dtype, (int64_t)cd, &o, dw, dg, dv, nullptr) == LSM_OK &&
         lsm_memcpy_from_context(ctx, w_out[b].data(), dw, cd * e) == LSM_OK &&
         lsm_memcpy_from_context(ctx, v_out[b].data(), dv, cd * e) == LSM_OK &&
         lsm_sum(ctx, static_cast<const double *>(dvals), (int64_t)nd, &sums[b]) == LSM_OK &&
         lsm_context_set_workspace_limit(ctx, (size_t)(block * s.n) * e) == LSM_OK &&
         lsm_topk(ctx, dtype, s.n, s.d, s.c, &mg, k, dx, dw, static_cast<int32_t *>(di), ds) == LSM_OK &&
         lsm_memcpy_from_context(ctx, idx[b].data(), di, nk * 4) == LSM_OK &&
         lsm_memcpy_from_context(ctx, scores[b].data(), ds, nk * e) == LSM_OK &&
         lsm_context_set_workspace_limit(ctx, LSM_DEFAULT_WORKSPACE_LIMIT) == LSM_OK;
    if (!ok) printf("FAIL %s: %s backend: %s\n", name.c_str(), b == 0 ? "CPU" : "CUDA", lsm_last_error());
    for (void *p : {dx, dw, dg, dv, dvals, di, ds}) lsm_free(ctx, p);
  }
  ok = ok && close(w_out[1], w_out[0], tol, name + " w") && close(v_out[1], v_out[0], tol, name + " velocity") &&
       close(scores[1], scores[0], tol, name + " scores") && close(aw_out[1], aw_out[0], tol, name + " adam w") &&
       close(am_out[1], am_out[0], tol, name + " exp_avg") && close(avmax_out[1], avmax_out[0], tol, name + " vmax");
  if (ok && fabs(squares[1] - squares[0]) > 1e-12 * (double)cd) {
    printf("FAIL %s sum of squares: %.17g, CPU %.17g\n", name.c_str(), squares[1], squares[0]);
    ok = false;
  }
  if (ok && fabs(sums[1] - sums[0]) > 1e-12 * (double)nd) {
    printf("FAIL %s sum: %.17g, CPU %.17g\n", name.c_str(), sums[1], sums[0]);
    ok = false;
  }
  // Float64 scores of random inputs do not tie: the classes must agree too.
  if (ok && sizeof(T) == 8 && idx[1] != idx[0]) {
    printf("FAIL %s indices differ from the CPU's\n", name.c_str());
    ok = false;
  }
  if (!ok) ++g_failures;
}

// The numerics at the ends of the range (tests/numerics_test.ts has the full matrix).
void numerics(lsm_context *cpu, lsm_context *gpu) {
  const shape s = {6, 5, 4};
  std::vector<double> x((size_t)(s.n * s.d)), w((size_t)(s.c * s.d)), g((size_t)(s.n * s.c));
  for (auto &e : x) e = uniform();
  for (auto &e : w) e = uniform();
  for (auto &e : g) e = uniform();
  const std::vector<int32_t> labels = {0, 3, 1, 1, 2, 0};
  // float64: x * 2^k gives logits * 2^k, the same gradX and gradW * 2^k, from ~1e-301 to ~1e301
  // (squared norms out of range, lambda = 1e30 times logits near 1e301).
  for (int device = 0; device < 2; ++device) {
    lsm_context *ctx = device ? gpu : cpu;
    for (int m : {2, 4, 16}) {
      for (double lambda : {0.5, 1e30}) {
        lsm_margin mg = {};
        mg.kind = LSM_MARGIN_LSOFTMAX, mg.m = m, mg.lambda = lambda;
        outputs<double> base, o;
        ++g_cases;
        if (!run_op(ctx, device, s, x, w, labels, g, mg, &base)) {
          printf("FAIL numerics f64 m=%d: %s\n", m, lsm_last_error());
          ++g_failures;
          continue;
        }
        for (int k : {-1000, -540, 540, 1000}) {
          std::vector<double> xs(x);
          for (auto &e : xs) e = ldexp(e, k);
          char buf[96];
          snprintf(buf, sizeof buf, "%s f64 x*2^%d m=%d lambda=%g", device ? "cuda" : "cpu", k, m, lambda);
          const std::string what = buf;
          const double sk = ldexp(1.0, k);
          ++g_cases;
          const bool ok = run_op(ctx, device, s, xs, w, labels, g, mg, &o) &&
                          close_scaled(o.logits, base.logits, sk, 1e-12, 0.0, what + " logits") &&
                          close_scaled(o.gx, base.gx, 1.0, 1e-12, 0.0, what + " grad_x") &&
                          close_scaled(o.gw, base.gw, sk, 1e-12, 0.0, what + " grad_w");
          if (!ok) ++g_failures;
        }
      }
    }
  }
  // float32: features or weights of subnormal size (no 1/|x| may overflow on the CUDA path).
  for (double size : {1e-44, 1e-40, 1e-38}) {
    for (int which = 0; which < 2; ++which) {
      std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), gf(g.begin(), g.end());
      for (auto &e : which == 0 ? xf : wf) e = (float)(e * size);
      lsm_margin mg = {};
      mg.kind = LSM_MARGIN_LSOFTMAX, mg.m = 4;
      outputs<float> a, b;
      char buf[64];
      snprintf(buf, sizeof buf, "cuda f32 %s ~%g m=4", which == 0 ? "x" : "w", size);
      const std::string what = buf;
      ++g_cases;
      const double abs = 16 * ldexp(1.0, -149);  // rounding of subnormal products
      const bool ok = run_op(gpu, true, s, xf, wf, labels, gf, mg, &a) &&
                      run_op(cpu, false, s, xf, wf, labels, gf, mg, &b) &&
                      close_scaled(a.logits, b.logits, 1.0, 1e-5, abs, what + " logits") &&
                      close_scaled(a.gx, b.gx, 1.0, 1e-5, abs, what + " grad_x") &&
                      close_scaled(a.gw, b.gw, 1.0, 1e-5, abs, what + " grad_w");
      if (!ok) ++g_failures;
    }
  }
}

// The fused loss with a NaN row and an infinite row of x (float32, one block and blocks of 2
// classes, gradients on): the row kernels' exp must be defined for NaN and infinite arguments
// (UBSan stops here otherwise); those rows' losses are NaN, the other rows' finite and >= 0.
void nonfinite_loss(lsm_context *cpu, lsm_context *gpu) {
  const int64_t n = 4, d = 3, c = 5;
  std::vector<float> x((size_t)(n * d)), w((size_t)(c * d));
  for (auto &v : x) v = (float)uniform();
  for (auto &v : w) v = (float)uniform();
  x[1 * d + 1] = NAN;
  x[2 * d + 0] = INFINITY;
  const std::vector<int32_t> labels = {0, 1, 2, 4};
  for (int device = 0; device < 2; ++device) {
    lsm_context *ctx = device ? gpu : cpu;
    for (int code : {4, -3}) {
      for (int64_t block : {c, (int64_t)2}) {
        ++g_cases;
        const lsm_margin mg = margin_of(code, 0.5);
        lsm_loss_args a = {};
        a.total_classes = c, a.grad_scale = 1.0;
        std::vector<double> rows((size_t)n);
        void *dx = upload(ctx, x.data(), x.size() * 4), *dw = upload(ctx, w.data(), w.size() * 4);
        void *dl = upload(ctx, labels.data(), labels.size() * 4), *dr = upload(ctx, nullptr, (size_t)n * 8);
        void *dgx = upload(ctx, nullptr, x.size() * 4), *dgw = upload(ctx, nullptr, w.size() * 4);
        bool ok = dx && dw && dl && dr && dgx && dgw &&
                  lsm_context_set_workspace_limit(ctx, (size_t)(block * n) * 4) == LSM_OK &&
                  lsm_loss(ctx, LSM_FLOAT32, n, d, c, &mg, &a, dx, dw, static_cast<const int32_t *>(dl),
                           static_cast<double *>(dr), dgx, dgw) == LSM_OK &&
                  lsm_memcpy_from_context(ctx, rows.data(), dr, (size_t)n * 8) == LSM_OK &&
                  lsm_context_set_workspace_limit(ctx, LSM_DEFAULT_WORKSPACE_LIMIT) == LSM_OK;
        if (!ok) printf("FAIL non-finite loss: %s\n", lsm_last_error());
        for (int64_t i = 0; i < n && ok; ++i) {
          const bool bad = i == 1 || i == 2;
          if (bad ? !isnan(rows[(size_t)i]) : !(rows[(size_t)i] >= 0.0 && isfinite(rows[(size_t)i]))) {
            printf("FAIL non-finite loss %s code=%d block=%lld: row %lld loss %g\n", device ? "cuda" : "cpu", code,
                   (long long)block, (long long)i, rows[(size_t)i]);
            ok = false;
          }
        }
        for (void *p : {dx, dw, dl, dr, dgx, dgw}) lsm_free(ctx, p);
        if (!ok) ++g_failures;
      }
    }
  }
}

}  // namespace

// `sanitize_driver quick`: margins 1 and 4 only, for the slower compute-sanitizer tools.
int main(int argc, char **argv) {
  const bool quick = argc > 1 && strcmp(argv[1], "quick") == 0;
  lsm_context *cpu = nullptr, *gpu = nullptr;
  if (lsm_context_create(LSM_BACKEND_CPU, 0, &cpu) != LSM_OK) {
    printf("FAIL CPU context: %s\n", lsm_last_error());
    return 1;
  }
  if (lsm_context_create(LSM_BACKEND_CUDA, 0, &gpu) != LSM_OK) {
    printf("FAIL CUDA context: %s\n", lsm_last_error());
    lsm_context_destroy(cpu);
    return 1;
  }
  // Below one tile, exactly one, between tiles, and the degenerate sizes D = 1, N = 1, C = 1.
  const shape shapes[] = {{1, 1, 1},   {1, 7, 5},    {9, 1, 6},   {8, 5, 1},    {3, 17, 4},   {31, 33, 47},
                          {64, 16, 64}, {65, 65, 65}, {130, 9, 3}, {5, 130, 70}, {66, 20, 130}};
  const double lambdas[] = {0.0, 0.5, 3.0};
  int i = 0;
  for (const shape &s : shapes) {
    for (int m = 1; m <= 6; ++m) {
      if (quick && m != 1 && m != 4) continue;
      const double lambda = lambdas[(i++) % 3];
      run_case<float>(cpu, gpu, s, m, lambda);
      run_case<double>(cpu, gpu, s, m, lambda);
    }
  }
  // The other kinds of the margin family (margin_of), at every shape.
  for (const shape &s : shapes) {
    for (int code = -1; code >= -5; --code) {
      if (quick && code != -3) continue;
      run_case<float>(cpu, gpu, s, code, 0.5);
      run_case<double>(cpu, gpu, s, code, 0.5);
    }
  }
  // Variants, at shapes that cross the block tiles (129, 130, 131), with D = 1 and D not a multiple
  // of the vector width: margins 1 and 4.
  const shape edge[] = {{129, 3, 130}, {130, 129, 2}, {2, 130, 129}, {33, 1, 129}, {17, 6, 131}, {200, 10, 3}};
  variant vs[6];
  vs[0].offset = 1;
  vs[1].offset = 1, vs[1].offset_all = true;
  vs[2].labels = kAllOneClass, vs[2].repeat = true;
  vs[3].labels = kFewClasses, vs[3].repeat = true;
  vs[4].labels = kSortedLabels;
  vs[5].tf32 = true, vs[5].offset = quick ? 0 : 1;
  for (const shape &s : edge) {
    for (int m : {1, 4}) {
      for (const variant &v : vs) {
        if (quick && (v.offset_all || v.labels == kFewClasses)) continue;
        run_case<float>(cpu, gpu, s, m, 0.5, v);
        if (!v.tf32) run_case<double>(cpu, gpu, s, m, 0.5, v);
      }
    }
  }
  // The fused loss: sizes around the tiles; one block, and blocks of 1, 3 and 24 classes; a row
  // of 4101 classes in two chunks (4096 + 5), in one block and in two.
  struct loss_shape {
    shape s;
    int64_t blocks[3];  // classes per block (0: none)
  };
  const loss_shape loss_shapes[] = {{{1, 1, 1}, {1, 0, 0}},      {{5, 3, 7}, {7, 1, 3}},
                                    {{65, 9, 70}, {70, 24, 0}},  {{130, 33, 131}, {131, 0, 0}},
                                    {{3, 4, 4101}, {4101, 2051, 0}}};
  for (const loss_shape &l : loss_shapes) {
    for (int m : {1, 4, -1, -2, -3, -5}) {
      for (int64_t block : l.blocks) {
        if (block == 0 || (quick && m != 4 && m != -3)) continue;
        loss_case<float>(cpu, gpu, l.s, m, block, 2);
        loss_case<double>(cpu, gpu, l.s, m, block, 0);
        loss_case<double>(cpu, gpu, l.s, m, block, 1, true);
      }
    }
  }
  // Resident training: below and across a tile, k of 1, some, all classes and LSM_MAX_TOPK; class
  // blocks of all classes and of k (the least top-k takes).
  const struct {
    shape s;
    int64_t k, block;
  } resident[] = {{{1, 1, 1}, 1, 1},     {{3, 5, 7}, 7, 3},          {{9, 17, 300}, 16, 16},
                  {{130, 9, 131}, 1, 131}, {{4, 33, 260}, LSM_MAX_TOPK, 200}};
  int r = 0;
  for (const auto &c : resident) {
    resident_case<float>(cpu, gpu, c.s, c.k, c.block, (r % 2) == 0);
    resident_case<double>(cpu, gpu, c.s, c.k, c.block, (r++ % 2) == 1);
  }
  for (const shape &s : {shape{1, 1, 1}, shape{5, 3, 7}, shape{65, 9, 70}}) {
    for (int32_t kind : {LSM_MARGIN_SUBCENTER, LSM_MARGIN_ADAFACE, LSM_MARGIN_CURRICULARFACE, LSM_MARGIN_MAGFACE}) {
      for (int64_t block : {s.c, (int64_t)3}) {
        adaptive_case<float>(cpu, gpu, s, kind, block);
        adaptive_case<double>(cpu, gpu, s, kind, block);
      }
    }
    for (int64_t block : {s.c, (int64_t)2}) {
      adaptive_case<float>(cpu, gpu, s, LSM_MARGIN_SUBCENTER, block, true);
      adaptive_case<double>(cpu, gpu, s, LSM_MARGIN_SUBCENTER, block, true);
    }
  }
  // The op of the adaptive kinds, after the loss's cases (whose random inputs stay as they were).
  for (const shape &s : {shape{1, 1, 1}, shape{5, 3, 7}, shape{65, 9, 70}}) {
    for (int32_t kind : {LSM_MARGIN_SUBCENTER, LSM_MARGIN_ADAFACE, LSM_MARGIN_CURRICULARFACE, LSM_MARGIN_MAGFACE}) {
      adaptive_op_case<float>(cpu, gpu, s, kind);
      adaptive_op_case<double>(cpu, gpu, s, kind);
    }
  }
  bad_label(gpu);
  nonfinite_loss(cpu, gpu);
  numerics(cpu, gpu);
  lsm_context_destroy(gpu);
  lsm_context_destroy(cpu);
  printf("sanitize_driver: %d case(s), %d failure(s)\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
