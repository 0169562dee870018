// The fused loss on host arrays: softmax cross-entropy over the margin logits, with its
// gradients, on one context (one native call) or with the classes split across several (the
// class-shard algorithm of shards.ts, each shard a view of the caller's arrays). The
// cross-entropy options travel in the call's lsm_loss_args; the class weights' address is each
// context's (host memory on the CPU, a copy in context memory on CUDA).

import { type FloatArray, newFloatArray } from "../ffi/arrays.ts";
import type { Call, NativeContext } from "../ffi/context.ts";
import { OPS } from "../ffi/ops.ts";
import type { LossArgs } from "../ffi/structs.ts";
import { KINDS } from "./kinds.ts";
import type { LossCall, Reduction } from "./resolve.ts";
import { type HostShard, type Partials, shardBounds, shardedLoss } from "./shards.ts";

/**
 * Row losses to the reduced loss, in float64: their sum, divided by `denominator` for a mean
 * (the number of rows by default; 0 when it is 0: a mean over no counted row); "none" sums.
 */
export function reduce(
  rowLoss: Float64Array,
  reduction: Reduction,
  denominator: number = rowLoss.length,
): number {
  let sum = 0;
  for (let i = 0; i < rowLoss.length; i++) sum += rowLoss[i];
  if (reduction !== "mean") return sum;
  return denominator === 0 ? 0 : sum / denominator;
}

/**
 * A call's lsm_loss_args with the class weights' address on a context: the array itself on a
 * CPU context (it must stay alive and unchanged for the call), a copy in the context's memory
 * (kept under "classWeights") elsewhere.
 */
export function withClassWeights(
  ctx: NativeContext,
  args: LossArgs,
  weights: Float64Array | undefined,
): LossArgs {
  if (weights === undefined) return args;
  let ptr: Deno.PointerValue;
  if (ctx.backend === "cpu") {
    ptr = Deno.UnsafePointer.of(weights);
  } else {
    ptr = ctx.buffer("classWeights", weights.byteLength);
    ctx.upload(ptr, weights);
  }
  return { ...args, classWeights: Number(Deno.UnsafePointer.value(ptr)) };
}

/** The adaptive kinds' state after a step (pass it to the next step). */
export interface AdaptiveState {
  /** AdaFace: the moving mean of the clipped feature norms. */
  batchMean?: number;
  /** AdaFace: the moving standard deviation of the norms. */
  batchStd?: number;
  /** CurricularFace: the moving mean of the target cosines. */
  t?: number;
}

/** The updated state a call of AdaFace or CurricularFace wrote into `state`, by name. */
export function adaptiveState(call: Call, state: Float64Array): AdaptiveState {
  if (call.margin?.kind === KINDS.adaface.code) return { batchMean: state[0], batchStd: state[1] };
  return { t: state[0] };
}

/** What a fused loss call returns: the adaptive kinds add their updated state. */
export interface LossResult extends AdaptiveState {
  loss: number;
  losses?: Float64Array;
  gradX?: FloatArray;
  gradW?: FloatArray;
}

/** The loss and, when asked, its gradients (into the call's outX and outW arrays). */
export function runLoss(l: LossCall): LossResult {
  const [x, w, labels, rowLoss, gradX, gradW] = l.arrays;
  const weights = l.crossEntropy.classWeights;
  const result = (rows: Float64Array) => {
    const loss = reduce(rows, l.reduction, l.denominator);
    const r: LossResult = { loss };
    if (l.reduction === "none") r.losses = rows;
    if (l.gradients) r.gradX = gradX as FloatArray, r.gradW = gradW as FloatArray;
    return l.state === undefined ? r : Object.assign(r, adaptiveState(l.call, l.state));
  };
  if (!Array.isArray(l.contexts)) {
    const call = { ...l.call, args: withClassWeights(l.contexts, l.call.args!, weights) };
    l.contexts.run(OPS.loss, call, l.arrays);
    return result(rowLoss as Float64Array);
  }
  const { n, d, c } = l.call;
  const k = l.subcenters ?? 1; // shards hold whole classes: K rows each
  const bounds = shardBounds(c / k, l.contexts.length);
  const share = l.gradients ? newFloatArray(l.call.dtype, n * d) : null;
  const out = { gradW: gradW as FloatArray | null, share };
  const targets = l.call.margin?.kind === KINDS.curricularface.code
    ? rowTargets(l, bounds, k)
    : undefined;
  const shards = l.contexts.map((ctx, s) =>
    new HostArrays(
      ctx,
      targets === undefined
        ? l.call
        : { ...l.call, args: withRowTargets(ctx, l.call.args!, targets) },
      bounds[s],
      bounds[s + 1],
      k,
      out,
      x!,
      w as FloatArray,
      labels!,
      weights,
    )
  );
  const rows = shardedLoss(
    shards,
    labels as Int32Array,
    gradX as FloatArray | null,
    l.crossEntropy,
  );
  return result(rows);
}

// CurricularFace on shards: every row's target cosine and T_i, from the shard that owns its label
// (each gives its own rows, 0 elsewhere: the sum over the shards).
function rowTargets(l: LossCall, bounds: number[], k: number): Float64Array {
  const { n, d } = l.call, contexts = l.contexts as NativeContext[];
  const [x, w, labels] = l.arrays, weights = l.crossEntropy.classWeights;
  const sum = new Float64Array(2 * n), part = new Float64Array(2 * n);
  contexts.forEach((ctx, s) => {
    const c0 = bounds[s], c1 = bounds[s + 1];
    const args = { ...l.call.args!, classOffset: c0 };
    const call = { ...l.call, c: (c1 - c0) * k, args: withClassWeights(ctx, args, weights) };
    const ws = (w as FloatArray).subarray(c0 * k * d, c1 * k * d);
    ctx.run(OPS.lossTargets, call, [x, ws, labels, part]);
    for (let i = 0; i < 2 * n; i++) sum[i] += part[i];
  });
  return sum;
}

// The row targets' address on a context: the array itself on the CPU, a copy elsewhere.
function withRowTargets(ctx: NativeContext, args: LossArgs, targets: Float64Array): LossArgs {
  let ptr: Deno.PointerValue;
  if (ctx.backend === "cpu") {
    ptr = Deno.UnsafePointer.of(targets);
  } else {
    ptr = ctx.buffer("rowTargets", targets.byteLength);
    ctx.upload(ptr, targets);
  }
  return { ...args, rowTargets: Number(Deno.UnsafePointer.value(ptr)) };
}

// A shard of host arrays: views of w and dW for classes [c0, c0 + c) (rows [c0 K, (c0 + c) K)
// with K sub-centers per class), its share of dx in `share`.
class HostArrays implements HostShard {
  readonly c: number;
  readonly #call: Call;
  readonly #inputs: ArrayBufferView[];
  readonly #smoothing: boolean;

  constructor(
    readonly ctx: NativeContext,
    whole: Call,
    readonly c0: number,
    c1: number,
    readonly k: number,
    readonly arrays: { gradW: FloatArray | null; share: FloatArray | null },
    x: ArrayBufferView,
    w: FloatArray,
    labels: ArrayBufferView,
    weights: Float64Array | undefined,
  ) {
    this.c = c1 - c0;
    const args = withClassWeights(ctx, { ...whole.args!, classOffset: c0 }, weights);
    this.#call = { ...whole, c: this.c * k, args };
    this.#inputs = [x, w.subarray(c0 * k * whole.d, c1 * k * whole.d), labels];
    this.#smoothing = (args.labelSmoothing ?? 0) > 0;
  }

  partials(): Partials {
    const n = this.#call.n;
    const p: Partials = {
      rowMax: new Float64Array(n),
      rowSum: new Float64Array(n),
      target: new Float64Array(n),
    };
    if (this.#smoothing) p.rowSmooth = new Float64Array(n);
    this.ctx.run(OPS.lossPartials, this.#call, [
      ...this.#inputs,
      p.rowMax,
      p.rowSum,
      p.target,
      p.rowSmooth ?? null,
    ]);
    return p;
  }

  gradients(lse: Float64Array): FloatArray {
    const d = this.#call.d, { gradW, share } = this.arrays;
    const outW = gradW!.subarray(this.c0 * this.k * d, (this.c0 + this.c) * this.k * d);
    this.ctx.run(OPS.lossGradients, this.#call, [...this.#inputs, lse, share, outW]);
    return share!;
  }
}
