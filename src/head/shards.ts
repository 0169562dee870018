// A head's shards: its classes split across its contexts, each shard's W, dL/dW and momentum
// buffer in context memory there, and the native calls of one shard (the fused loss's, the SGD
// update, the byte copies), as the class-shard algorithm (../shards.ts) and the head run them.

import { type FloatArray, type FloatDType, newFloatArray } from "../../ffi/arrays.ts";
import {
  type Call,
  type NativeContext,
  NO_CALL,
  type Precision,
  type Tensor,
} from "../../ffi/context.ts";
import { OPS } from "../../ffi/ops.ts";
import type { AdamStruct, LossArgs, MarginStruct, SgdStruct } from "../../ffi/structs.ts";
import { openContext } from "../backends.ts";
import type { CrossEntropy } from "../cross_entropy.ts";
import type { NativeCall } from "../calls.ts";
import { type ContextShard, type Partials, shardBounds } from "../shards.ts";

type Ptr = Deno.PointerValue;

/** What every call of a head shares: the dtype, D, C, the contexts' settings. */
export interface HeadShape {
  dtype: FloatDType;
  features: number;
  classes: number;
  precision: Precision;
  workspace: number | undefined;
  /** The cross-entropy options of the head's loss. */
  crossEntropy: CrossEntropy;
  /** The rows of W per class (sub-center ArcFace's K; 1 otherwise). */
  subcenters: number;
  /**
   * Across processes: this process's rows [rows, D] of a [C, D] tensor into all of it (every
   * rank's, gathered); undefined in one process.
   */
  gatherRows?: (local: FloatArray) => FloatArray;
}

/**
 * One batch's call settings: N, the margin at the step's λ, and with labels the loss's args
 * (crossEntropyArgs: the mean's factor, the options' flags) and the mean's denominator.
 */
export interface Batch {
  n: number;
  margin: MarginStruct;
  loss?: { args: LossArgs; denominator: number };
  /**
   * AdaFace, CurricularFace: host memory (float64 [2]) the step's updated state comes back in;
   * absent where the call does not move the state (evaluate).
   */
  state?: Float64Array;
  /** CurricularFace on shards: every row's target cosine and T_i are in each shard's scratch. */
  rowTargets?: boolean;
}

/** The optimizer buffers a shard holds beside W: SGD's momentum, or Adam's moments. */
export interface ShardBuffers {
  velocity: boolean;
  adam: boolean;
  amsgrad: boolean;
}

/**
 * A shard: classes [c0, c0 + c), and W, its gradient and the optimizer's buffers on its context
 * (SGD's momentum buffer, or Adam's exp_avg, exp_avg_sq and max_exp_avg_sq), zeroed.
 */
export class HeadShard {
  readonly w: Ptr;
  readonly gw: Ptr;
  readonly v: Ptr | null;
  readonly expAvg: Ptr | null;
  readonly expAvgSq: Ptr | null;
  readonly maxExpAvgSq: Ptr | null;
  /** The C class weights (float64, every class: labels index them globally), or null. */
  readonly classWeights: Ptr | null;

  constructor(
    readonly ctx: NativeContext,
    readonly c0: number,
    readonly c: number,
    readonly head: HeadShape,
    buffers: ShardBuffers,
  ) {
    ctx.setPrecision(head.precision);
    ctx.setWorkspace(head.workspace);
    const count = c * head.subcenters * head.features;
    const zeroed = (on: boolean) => {
      if (!on) return null;
      const p = ctx.allocate(this.bytes(count));
      ctx.upload(p, newFloatArray(head.dtype, count));
      return p;
    };
    this.w = ctx.allocate(this.bytes(count));
    this.gw = ctx.allocate(this.bytes(count));
    this.v = buffers.velocity ? ctx.allocate(this.bytes(count)) : null;
    this.expAvg = zeroed(buffers.adam);
    this.expAvgSq = zeroed(buffers.adam);
    this.maxExpAvgSq = zeroed(buffers.amsgrad);
    const weights = head.crossEntropy.classWeights;
    this.classWeights = weights === undefined ? null : ctx.allocate(weights.byteLength);
    if (weights !== undefined) ctx.upload(this.classWeights, weights);
  }

  /** The shard's first row of W (c0·K, K sub-centers per class; views of it have their own c0). */
  get r0(): number {
    return this.c0 * this.head.subcenters;
  }

  /** The shard's rows of W (c·K). */
  get rows(): number {
    return this.c * this.head.subcenters;
  }

  /** The bytes of count elements of the head's dtype. */
  bytes(count: number): number {
    return count * (this.head.dtype === "float32" ? 4 : 8);
  }

  /** A scratch tensor on the shard's context, kept under its name between calls. */
  scratch(name: string, bytes: number): Ptr {
    return this.ctx.buffer(`head.${name}`, bytes);
  }

  /** The call of a margin op on the shard's classes for a batch (the fused loss's args too). */
  call(b: Batch): Call {
    const { dtype, features: d, classes, precision, workspace } = this.head;
    const base = b.loss?.args ?? { classOffset: 0, totalClasses: classes, gradScale: 1 / b.n };
    const weights = this.classWeights === null
      ? {}
      : { classWeights: Number(Deno.UnsafePointer.value(this.classWeights)) };
    const moves = b.loss !== undefined && b.state !== undefined
      ? { stateOut: Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b.state!))) }
      : {};
    const targets = b.loss !== undefined && b.rowTargets
      ? { rowTargets: Number(Deno.UnsafePointer.value(this.scratch("rowTargets", 0))) }
      : {};
    const args: LossArgs = { ...base, classOffset: this.c0, ...weights, ...moves, ...targets };
    return { dtype, n: b.n, d, c: this.rows, margin: b.margin, args, precision, workspace };
  }

  /** A native call on the shard's context (context memory, host arrays where the op says). */
  op(op: NativeCall["op"], call: Call, tensors: Tensor[]): NativeCall {
    return { ctx: this.ctx, op, call, tensors };
  }

  /** A host array into the shard's context memory. */
  upload(dst: Ptr, src: ArrayBufferView): NativeCall {
    return this.op(OPS.toContext, NO_CALL, [dst, src]);
  }

  /** Context memory into a host array (its whole length). */
  download(dst: ArrayBufferView, src: Ptr): NativeCall {
    return this.op(OPS.fromContext, NO_CALL, [dst, src]);
  }

  /** One of the fused loss's ops on the batch uploaded as head.x, head.labels. */
  loss(op: NativeCall["op"], b: Batch, outputs: Tensor[]): NativeCall {
    const x = this.scratch("x", 0), labels = this.scratch("labels", 0);
    return this.op(op, this.call(b), [x, this.w, labels, ...outputs]);
  }

  /** The sum of values [count] (float64, context memory) into out[0] (host). */
  sum(values: Ptr, count: number, out: Float64Array): NativeCall {
    return this.op(OPS.sum, { ...NO_CALL, count }, [values, out]);
  }

  /**
   * The SGD update of the shard's W from its gradient; `flag[0]` set to 1 where sgd.nonfinite
   * asks for the gradient's check and it holds a non-finite value.
   */
  sgd(sgd: SgdStruct, flag: Int32Array | null = null): NativeCall {
    const { dtype, features } = this.head;
    const call: Call = { dtype, n: 0, d: 0, c: 0, count: this.rows * features, sgd };
    return this.op(OPS.sgd, call, [this.w, this.gw, this.v, flag]);
  }

  /** The Adam update of the shard's W from its gradient; `flag` as {@link HeadShard.sgd}'s. */
  adam(adam: AdamStruct, flag: Int32Array | null = null): NativeCall {
    const { dtype, features } = this.head;
    const call: Call = { dtype, n: 0, d: 0, c: 0, count: this.rows * features, adam };
    const tensors = [this.w, this.gw, this.expAvg, this.expAvgSq, this.maxExpAvgSq, flag];
    return this.op(OPS.adam, call, tensors);
  }

  /** The shard's dL/dW accumulator (context memory kept between calls), for micro-batches. */
  accumulator(): Ptr {
    return this.scratch("accumulator", this.bytes(this.rows * this.head.features));
  }

  /** y = alpha x + beta y over the shard's C·D elements (x null when alpha is 0). */
  axpby(alpha: number, x: Ptr | null, beta: number, y: Ptr): NativeCall {
    const { dtype, features } = this.head;
    const call: Call = { dtype, n: 0, d: 0, c: 0, count: this.rows * features, alpha, beta };
    return this.op(OPS.axpby, call, [x, y]);
  }

  /** The sum of squares of the shard's dL/dW into out[0] (float64, host): 8 bytes back. */
  gradSquares(out: Float64Array): NativeCall {
    const { dtype, features } = this.head;
    const call: Call = { dtype, n: 0, d: 0, c: 0, count: this.rows * features };
    return this.op(OPS.sumSquares, call, [this.gw, out]);
  }
}

/**
 * The head's shards on new contexts (its own, closed with it), one per backend, splitting the
 * classes [range[0], range[1]) (all of them by default; a rank's own across processes).
 */
export function openShards(
  backends: readonly unknown[],
  head: HeadShape,
  buffers: ShardBuffers,
  range: readonly [number, number] = [0, head.classes],
) {
  const bounds = shardBounds(range[1] - range[0], backends.length).map((b) => b + range[0]);
  const shards: HeadShard[] = [];
  try {
    for (let s = 0; s < backends.length; s++) {
      const ctx = openContext(backends[s]);
      try {
        shards.push(new HeadShard(ctx, bounds[s], bounds[s + 1] - bounds[s], head, buffers));
      } catch (e) {
        ctx.close();
        throw e;
      }
    }
  } catch (e) {
    for (const s of shards) s.ctx.close();
    throw e;
  }
  return shards;
}

/**
 * A head shard in the class-shard algorithm: partials of the batch, then dL/dW of its classes
 * (kept where W lives, for the step's update once every shard's gradient is known to be finite),
 * and its share of dx back on the host.
 */
export class ShardCalls implements ContextShard {
  constructor(readonly s: HeadShard, readonly b: Batch) {}

  get c0(): number {
    return this.s.c0;
  }

  get c(): number {
    return this.s.c;
  }

  *partials(): Generator<NativeCall, Partials, void> {
    const { s, b } = this, n = b.n;
    const names = ["rowMax", "rowSum", "target"];
    if (s.head.crossEntropy.labelSmoothing > 0) names.push("rowSmooth");
    const ptrs = names.map((name) => s.scratch(name, n * 8));
    yield s.loss(OPS.lossPartials, b, ptrs.length === 3 ? [...ptrs, null] : ptrs);
    const host = ptrs.map(() => new Float64Array(n));
    for (let k = 0; k < ptrs.length; k++) yield s.download(host[k], ptrs[k]);
    return { rowMax: host[0], rowSum: host[1], target: host[2], rowSmooth: host[3] };
  }

  *gradients(lse: Float64Array): Generator<NativeCall, FloatArray, void> {
    const { s, b } = this, count = b.n * s.head.features;
    const lp = s.scratch("lse", b.n * 8), gx = s.scratch("gradX", s.bytes(count));
    yield s.upload(lp, lse);
    yield s.loss(OPS.lossGradients, b, [lp, gx, s.gw]);
    const share = newFloatArray(s.head.dtype, count);
    yield s.download(share, gx);
    return share;
  }
}

/** A [C, D] tensor of every shard (W or the momentum buffer) into one host array. */
export function gatherShards(
  shards: readonly HeadShard[],
  pick: (s: HeadShard) => Ptr,
): FloatArray {
  const { dtype, features: d, classes, gatherRows } = shards[0].head;
  if (gatherRows !== undefined) { // this process's rows, then every rank's
    const r0 = shards[0].r0, last = shards[shards.length - 1];
    const local = newFloatArray(dtype, (last.r0 + last.rows - r0) * d);
    for (const s of shards) {
      s.ctx.download(local.subarray((s.r0 - r0) * d, (s.r0 - r0 + s.rows) * d), pick(s));
    }
    return gatherRows(local);
  }
  const out = newFloatArray(dtype, classes * shards[0].head.subcenters * d);
  for (const s of shards) s.ctx.download(out.subarray(s.r0 * d, (s.r0 + s.rows) * d), pick(s));
  return out;
}

/** A host [C, D] array into every shard's rows of a tensor (W or the momentum buffer). */
export function scatterShards(
  shards: readonly HeadShard[],
  pick: (s: HeadShard) => Ptr,
  a: FloatArray,
) {
  const d = shards[0].head.features;
  for (const s of shards) s.ctx.upload(pick(s), a.subarray(s.r0 * d, (s.r0 + s.rows) * d));
}

/** Bytes moved between the host and the shards' contexts since they were opened. */
export function shardTraffic(
  shards: readonly HeadShard[],
): { toDevice: number; fromDevice: number } {
  let toDevice = 0, fromDevice = 0;
  for (const s of shards) {
    const t = s.ctx.traffic();
    toDevice += t.toDevice;
    fromDevice += t.fromDevice;
  }
  return { toDevice, fromDevice };
}
