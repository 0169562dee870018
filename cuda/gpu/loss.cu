// gpu/loss.cu: the fused loss on a CUDA device (lsm_loss, lsm_loss_partials, lsm_loss_gradients),
// the CPU backend's cpu/loss.cpp step for step, without an n x c buffer:
//
//   per class block b (n x cb logits within the context's workspace limit):
//     z = x W_b^T                         gemm NT into the workspace
//     per row chunk: online (max, sum)    loss_chunk_lse, a block per (row, 4096 classes)
//     fold the chunks into each row       loss_fold
//   lse, and the row losses or partials   loss_rows
//   per class block, the last one first (its logits are still in the workspace; the others are
//   made again, one more product each):
//     z -> G = scale (softmax - onehot)   loss_gradient
//     grad_x (+)= G W_b, grad_w_b = G^T x gemm NN (accumulating after the first), gemm TN
//   the margin's corrections              loss_target_x, backward_target_w
//
// The cross-entropy options (math/ce.cuh): each row's coefficients from loss_targets, the class
// weights checked by loss_check_weights, A folded beside the max with label smoothing.
//
// The kinds that normalise run the products on normalised copies of the rows (normalise_rows
// into the workspace: W^, and scale x^ for the normalised kinds) and project the gradients back
// (project_rows) before the corrections, as the op does: O(n d + c d) more, nothing over n x c.
//
// Sub-center ArcFace (K > 1 rows of W per class) blocks whole classes: the products of a block's
// rows make its class logits (subcenter_classes, n x cb/K beside the block), which the
// log-sum-exp and the gradient kernels take as the other kinds' logits; the class gradients then
// go back onto the rows, each to its class's winning sub-center (subcenter_scatter), and the
// products and the corrections (at the target's winning row) run on the rows as for the others.
//
// Blocks of whole rows (all n rows, cb classes) keep the products as large as the op's own; the
// chunked reduction keeps every SM busy whatever n is.
//
// The op of every kind (lsm_forward_args, lsm_backward_args; cpu/loss_op.cpp) runs the same
// pre-pass and one block of all classes: its logits out (op_logits), or the given dL/dlogits to
// dL/d(products) (op_gradient, subcenter_scatter) for the products and corrections above.
#include <cuda_runtime.h>

#include <stdio.h>

#include <algorithm>

#include "gpu/common.cuh"
#include "gpu/adaptive_kernels.cuh"
#include "gpu/loss_kernels.cuh"

namespace {

using namespace lsm_cuda;

// The first class weight that is not a finite number >= 0 (bad_slot: total when none), named.
int32_t check_bad_weight(lsm_context *ctx, const double *weights, int total, const int *bad_slot) {
  int bad = 0;
  double v = 0.0;
  const int32_t s = read_bad(ctx, bad_slot, weights, total, &bad, &v);
  if (s != LSM_OK || bad >= total) return s;
  char buf[32];
  snprintf(buf, sizeof buf, "%.17g", v);
  return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                  "class_weights[" + std::to_string(bad) + "]: expected a finite number >= 0, got " + buf);
}

// Places 256-byte aligned regions one after the other from base (0: only sizes them).
struct carver {
  uintptr_t base;
  size_t used = 0;
  template <typename U>
  U *take(int64_t count) {
    U *p = reinterpret_cast<U *>(base + used);
    used += ((size_t)count * sizeof(U) + 255) / 256 * 256;
    return p;
  }
};

template <typename T>
int32_t loss(lsm_context *ctx, const lsm_loss_problem &p) {
  using namespace lsm_kernels;
  cudaStream_t s = ctx->cuda->stream;
  const int n = (int)p.n, d = (int)p.d, c = (int)p.c;
  const T *x = static_cast<const T *>(p.x);
  const T *w = static_cast<const T *>(p.w);
  T *gx = static_cast<T *>(p.grad_x);
  T *gw = static_cast<T *>(p.grad_w);
  const bool gradients = p.stage == LSM_LOSS_GRADIENTS || (p.stage == LSM_LOSS_FULL && gx != nullptr);

  // Class blocks of n x block logits within the limit; chunks of one row of a block per CUDA block.
  // Blocks of equal size: the last one, kept for the gradients, is as large as any. The
  // element-wise kinds keep their derivatives (zd) beside the block, sub-center ArcFace its class
  // logits (zc); its blocks are of whole classes, K rows each, sized as the CPU backend's.
  // The op (lsm_forward_args, lsm_backward_args) holds every class in one block, as its n x c/K
  // output or input does.
  const bool elementwise = lsm_elementwise(p.margin.kind);
  const bool op = p.stage == LSM_LOSS_LOGITS || p.stage == LSM_LOSS_BACKWARD;
  const int subs = (int)lsm_subcenters(p.margin), classes = c / subs;
  const size_t per_class = (size_t)n * sizeof(T) * (elementwise || subs > 1 ? 2 : 1);
  const int limit = op ? classes
                       : (int)std::max<int64_t>(
                             1, std::min<int64_t>(classes, (int64_t)(ctx->workspace_limit / per_class / subs)));
  const int block = ceil_div(classes, ceil_div(classes, limit)) * subs;  // rows of W
  const int columns = block / subs;  // the logits of a block per row: its classes
  const int chunk = std::max(kChunkColumns, ceil_div(columns, 65535));
  const int max_chunks = ceil_div(columns, chunk);

  // The workspace: per-row arrays, the chunk pairs, the bad-label slot, then the logits block.
  int32_t *local;
  char *inputs;
  double *target, *g_target, *maxes, *sums, *lse, *factor, *part_m, *part_s, *smooth, *seen, *part_a, *part_w;
  T *shift, *z, *zd, *zc;
  int32_t *trow, *alias;
  double *rowq, *mag, *cos_y, *thresh, *state;
  lsm_correction *coef;
  lsm_ce_row *factors;
  int *bad, *bad_weight;
  const lsm_ce ce = lsm_ce_of(p.args);
  const bool smoothing = lsm_ce_smoothing(ce) && p.stage != LSM_LOSS_GRADIENTS;
  const double *weights = ce.weights == nullptr ? nullptr : ce.weights + p.args.class_offset;
  auto place = [&](uintptr_t base) {
    carver r{base};
    inputs = r.take<char>((int64_t)inputs_bytes<T>(p.margin, n, d, c));
    local = r.take<int32_t>(n);
    target = r.take<double>(n), g_target = r.take<double>(n), maxes = r.take<double>(n);
    sums = r.take<double>(n), lse = r.take<double>(n), factor = r.take<double>(n);
    shift = r.take<T>(n);
    coef = r.take<lsm_correction>(n);
    factors = r.take<lsm_ce_row>(n);
    part_m = r.take<double>((int64_t)n * max_chunks), part_s = r.take<double>((int64_t)n * max_chunks);
    smooth = seen = part_a = part_w = nullptr;
    if (smoothing) {
      smooth = r.take<double>(n), seen = r.take<double>(n);
      part_a = r.take<double>((int64_t)n * max_chunks), part_w = r.take<double>((int64_t)n * max_chunks);
    }
    bad = r.take<int>(1);
    bad_weight = r.take<int>(1);
    z = r.take<T>((int64_t)n * block);
    rowq = mag = cos_y = thresh = state = nullptr, zd = nullptr;
    if (lsm_adaptive(p.margin.kind)) {
      rowq = r.take<double>(n), mag = r.take<double>(3 * (int64_t)n), cos_y = r.take<double>(n);
      thresh = r.take<double>(n), state = r.take<double>(2);
    }
    if (elementwise) zd = r.take<T>((int64_t)n * block);
    zc = nullptr, trow = nullptr, alias = nullptr;
    if (subs > 1) zc = r.take<T>((int64_t)n * columns), trow = r.take<int32_t>(n), alias = r.take<int32_t>(c);
    return r.used;
  };
  void *mem = nullptr;
  int32_t st = workspace(ctx, place(0), &mem);
  if (st != LSM_OK) return st;
  place(reinterpret_cast<uintptr_t>(mem));

  if ((st = reset_bad_label(ctx, bad, n)) != LSM_OK) return st;
  const int total = (int)p.args.total_classes;
  if (ce.weights != nullptr) {
    if ((st = reset_bad_label(ctx, bad_weight, total)) != LSM_OK) return st;
    LSM_LAUNCH(loss_check_weights, blocks_for(total, kSampleBlock), kSampleBlock, s, ce.weights, total, bad_weight);
  }
  const unsigned int sample_blocks = blocks_for((int64_t)n * kWarp, kSampleBlock);
  const unsigned int row_blocks = blocks_for(n, kSampleBlock);
  // The adaptive kinds' pre-pass (cpu/loss.cpp prepass): AdaFace's and MagFace's norms first,
  // CurricularFace's target cosines and T_i from loss_targets or from the label owners.
  const int32_t kind = p.margin.kind;
  const bool curricular = kind == LSM_MARGIN_CURRICULARFACE;
  const double *q = kind == LSM_MARGIN_ADAFACE || kind == LSM_MARGIN_MAGFACE ? rowq : nullptr;
  if (q != nullptr) {
    LSM_LAUNCH(adaptive_lengths<T>, sample_blocks, kSampleBlock, s, x, n, d, rowq);
    if (kind == LSM_MARGIN_ADAFACE)
      LSM_LAUNCH(adaptive_state, 1, 1, s, p.margin, ce, p.labels, n, rowq, nullptr, state);
    LSM_LAUNCH(adaptive_rows, row_blocks, kSampleBlock, s, p.margin, n, rowq, mag, state);
  }
  double *own_cos = nullptr, *own_thresh = nullptr;
  const double *row_cos = cos_y, *row_thresh = thresh;
  if (p.stage == LSM_LOSS_TARGETS) {
    LSM_CUDA_TRY(ctx, cudaMemsetAsync(p.row_targets, 0, 2 * (size_t)n * sizeof(double), s));
    own_cos = p.row_targets, own_thresh = p.row_targets + n;
  } else if (curricular && p.args.row_targets != nullptr) {
    row_cos = p.args.row_targets, row_thresh = p.args.row_targets + n;
  } else if (curricular) {
    // an ignored row's stay 0: loss_targets writes only the counted rows'
    LSM_CUDA_TRY(ctx, cudaMemsetAsync(cos_y, 0, (size_t)n * sizeof(double), s));
    LSM_CUDA_TRY(ctx, cudaMemsetAsync(thresh, 0, (size_t)n * sizeof(double), s));
    own_cos = cos_y, own_thresh = thresh;
  }
  LSM_LAUNCH(loss_targets<T>, sample_blocks, kSampleBlock, s, x, w, p.labels, n, d, c, subs, p.args.class_offset,
             p.args.total_classes, p.margin, ce, local, target, factors, bad, q, own_cos, own_thresh, trow);
  if (p.stage == LSM_LOSS_TARGETS) {
    LSM_CUDA_TRY(ctx, cudaGetLastError());
    return check_bad_label(ctx, p.labels, p.n, p.args.total_classes, bad);
  }
  if (curricular) LSM_LAUNCH(adaptive_state, 1, 1, s, p.margin, ce, p.labels, n, nullptr, row_cos, state);
  if (subs > 1) LSM_LAUNCH(subcenter_aliases<T>, blocks_for(c, kSampleBlock), kSampleBlock, s, w, c, d, subs, alias);
  const device_inputs<T> in = normalise_inputs<T>(ctx, p.margin, x, w, n, d, c, inputs);

  // The logits the softmax sees: the products z, or sub-center ArcFace's class logits zc (a
  // block's classes start at c0 / K).
  T *const lz = subs > 1 ? zc : z;
  gemm_args<T> logits = {};  // z = x W_b^T for the block at c0 (B and N set per block)
  logits.M = n, logits.K = d;
  logits.A = in.x, logits.lda = d, logits.vec_a = vectorizable<T>(in.x, d);
  logits.ldb = d;
  logits.C = z;
  auto make_logits = [&](int c0, int cb) {
    logits.N = cb;
    logits.B = in.w + (int64_t)c0 * d, logits.vec_b = vectorizable<T>(logits.B, d);
    logits.vec_c = vectorizable<T>(z, cb);
    launch_gemm<T, kNT>(ctx, logits);
    if (elementwise)
      LSM_LAUNCH(adaptive_transform<T>, blocks_for((int64_t)n * cb, kSampleBlock), kSampleBlock, s, z, zd, n, cb, c0,
                 local, p.margin, row_thresh, state);
    if (subs > 1)
      LSM_LAUNCH(subcenter_classes<T>, blocks_for((int64_t)n * (cb / subs), kSampleBlock), kSampleBlock, s, z, zc, n,
                 cb, subs);
  };

  // What every call ends with: the launches' status, the state to the host, the checks read back.
  auto finish = [&]() -> int32_t {
    int32_t f;
    if ((f = launched(ctx)) != LSM_OK) return f;
    if (p.args.state_out != nullptr && (kind == LSM_MARGIN_ADAFACE || curricular)) {  // host memory
      LSM_CUDA_TRY(ctx, cudaMemcpyAsync(p.args.state_out, state, 2 * sizeof(double), cudaMemcpyDeviceToHost, s));
      LSM_CUDA_TRY(ctx, cudaStreamSynchronize(s));
      ctx->traffic_from += 2 * sizeof(double);
    }
    // Read after the work, as the labels are: a bad weight only ever changes values, never an index.
    if (ce.weights != nullptr && (f = check_bad_weight(ctx, ce.weights, total, bad_weight)) != LSM_OK) return f;
    return check_bad_label(ctx, p.labels, p.n, p.args.total_classes, bad);
  };
  // The op (cpu/loss_op.cpp): the block's logits out, or dL/d(products) from the given dL/dlogits
  // through the loss's products and corrections.
  gemm_args<T> a = {};
  auto products = [&](int c0, int cb, bool first) {
    a = {};  // grad_x (+)= G_b W_b
    a.M = n, a.N = d, a.K = cb;
    a.A = z, a.lda = cb, a.vec_a = vectorizable<T>(z, cb);
    a.B = in.w + (int64_t)c0 * d, a.ldb = d, a.vec_b = vectorizable<T>(a.B, d);
    a.C = gx, a.vec_c = vectorizable<T>(gx, d), a.accumulate = !first;
    launch_gemm<T, kNN>(ctx, a);
    a = {};  // grad_w[c0 : c0 + cb] = G_b^T x
    a.M = cb, a.N = d, a.K = n;
    a.A = z, a.lda = cb, a.vec_a = vectorizable<T>(z, cb);
    a.B = in.x, a.ldb = d, a.vec_b = vectorizable<T>(in.x, d);
    a.C = gw + (int64_t)c0 * d, a.vec_c = vectorizable<T>(a.C, d);
    launch_gemm<T, kTN>(ctx, a);
  };
  auto corrections = [&](const double *reg_weight) {
    project_gradients<T>(ctx, p.margin, x, w, n, d, c, gx, gw);
    if (!lsm_plain_margin(p.margin)) {
      LSM_LAUNCH(loss_target_x<T>, sample_blocks, kSampleBlock, s, x, w, local, trow, g_target, n, d, p.margin, gx,
                 coef, q, kind == LSM_MARGIN_MAGFACE ? mag : nullptr, factors, p.args.grad_scale, reg_weight);
      launch_target_w<T>(ctx, x, w, coef, n, d, c, gw);
    }
  };
  const unsigned int op_blocks = blocks_for((int64_t)n * classes, kSampleBlock);
  if (p.stage == LSM_LOSS_LOGITS) {
    make_logits(0, c);
    LSM_LAUNCH(op_logits<T>, op_blocks, kSampleBlock, s, lz, static_cast<T *>(p.logits), n, classes, local, target);
    if (p.regulariser != nullptr) {
      LSM_CUDA_TRY(ctx, cudaMemsetAsync(p.regulariser, 0, (size_t)n * sizeof(double), s));
      if (kind == LSM_MARGIN_MAGFACE)
        LSM_LAUNCH(magface_rows, row_blocks, kSampleBlock, s, local, mag, factors, ce, p.margin, n, p.regulariser,
                   nullptr);
    }
    return finish();
  }
  if (p.stage == LSM_LOSS_BACKWARD) {
    const T *g = static_cast<const T *>(p.grad_logits);
    if (elementwise || subs > 1) make_logits(0, c);
    LSM_LAUNCH(op_gradient<T>, op_blocks, kSampleBlock, s, g, z, zd, n, classes, subs > 1, local, g_target);
    if (subs > 1)
      LSM_LAUNCH(subcenter_scatter<T>, op_blocks, kSampleBlock, s, z, g, n, c, 0, subs, local, trow, alias);
    products(0, c, true);
    corrections(p.grad_regulariser);
    return finish();
  }

  const double *row_lse = p.lse;
  if (p.stage != LSM_LOSS_GRADIENTS) {
    for (int c0 = 0; c0 < c; c0 += block) {
      const int cb = std::min(block, c - c0), cbk = cb / subs;
      const int chunks = ceil_div(cbk, chunk);
      make_logits(c0, cb);
      LSM_LAUNCH(loss_chunk_lse<T>, dim3((unsigned int)n, (unsigned int)chunks), kRowBlock, s, lz, cbk, c0 / subs,
                 chunk, local, target, weights, part_m, part_s, part_a, part_w);
      LSM_LAUNCH(loss_fold, row_blocks, kSampleBlock, s, part_m, part_s, part_a, part_w, n, chunks, c0 == 0, maxes,
                 sums, smooth, seen);
    }
    LSM_LAUNCH(loss_rows, row_blocks, kSampleBlock, s, maxes, sums, smooth, local, target, factors, ce, n, lse,
               p.row_loss, p.row_max, p.row_sum, p.target, p.row_smooth);
    if (kind == LSM_MARGIN_MAGFACE)
      LSM_LAUNCH(magface_rows, row_blocks, kSampleBlock, s, local, mag, factors, ce, p.margin, n, p.row_loss,
                 p.target);
    row_lse = lse;
  }
  if (gradients) {
    LSM_LAUNCH(loss_shifts<T>, row_blocks, kSampleBlock, s, row_lse, n, factors, shift, factor);
    const int last = (c - 1) / block * block;
    for (int c0 = last; c0 >= 0; c0 -= block) {
      const int cb = std::min(block, c - c0), cbk = cb / subs;
      if (p.stage == LSM_LOSS_GRADIENTS || c0 != last) make_logits(c0, cb);
      LSM_LAUNCH(loss_gradient<T>, blocks_for((int64_t)n * cbk, kSampleBlock), kSampleBlock, s, lz, n, cbk, c0 / subs,
                 local, target, row_lse, shift, factor, factors, ce, weights, g_target);
      if (subs > 1)
        LSM_LAUNCH(subcenter_scatter<T>, blocks_for((int64_t)n * cbk, kSampleBlock), kSampleBlock, s, z, zc, n, cb, c0,
                   subs, local, trow, alias);
      if (elementwise)
        LSM_LAUNCH(adaptive_scale<T>, blocks_for((int64_t)n * cb, kSampleBlock), kSampleBlock, s, z, zd,
                   (int64_t)n * cb);
      products(c0, cb, c0 == last);
    }
    corrections(nullptr);
  }
  return finish();
}

}  // namespace

int32_t lsm_cuda_loss(lsm_context *ctx, const lsm_loss_problem &p) {
  const int32_t s = activate(ctx);
  if (s != LSM_OK) return s;
  return p.dtype == LSM_FLOAT32 ? loss<float>(ctx, p) : loss<double>(ctx, p);
}
