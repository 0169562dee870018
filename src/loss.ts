// The fused loss on host arrays: softmax cross-entropy over the margin logits, with its
// gradients, on one context (one native call) or with the classes split across several (the
// class-shard algorithm of shards.ts, each shard a view of the caller's arrays).

import { type FloatArray, newFloatArray } from "../ffi/arrays.ts";
import type { Call, NativeContext } from "../ffi/context.ts";
import { OPS } from "../ffi/ops.ts";
import type { LossCall, Reduction } from "./resolve.ts";
import { type HostShard, type Partials, shardBounds, shardedLoss } from "./shards.ts";

/** Row losses to the reduced loss, in float64. */
export function reduce(rowLoss: Float64Array, reduction: Reduction): number {
  let sum = 0;
  for (let i = 0; i < rowLoss.length; i++) sum += rowLoss[i];
  return reduction === "mean" ? sum / rowLoss.length : sum;
}

/** The loss and, when asked, its gradients (into the call's outX and outW arrays). */
export function runLoss(l: LossCall): { loss: number; gradX?: FloatArray; gradW?: FloatArray } {
  const [x, w, labels, rowLoss, gradX, gradW] = l.arrays;
  if (!Array.isArray(l.contexts)) {
    l.contexts.run(OPS.loss, l.call, l.arrays);
    const loss = reduce(rowLoss as Float64Array, l.reduction);
    return l.gradients
      ? { loss, gradX: gradX as FloatArray, gradW: gradW as FloatArray }
      : { loss };
  }
  const { n, d, c } = l.call;
  const bounds = shardBounds(c, l.contexts.length);
  const share = l.gradients ? newFloatArray(l.call.dtype, n * d) : null;
  const out = { gradW: gradW as FloatArray | null, share };
  const shards = l.contexts.map((ctx, s) =>
    new HostArrays(ctx, l.call, bounds[s], bounds[s + 1], out, x!, w as FloatArray, labels!)
  );
  const rows = shardedLoss(shards, labels as Int32Array, gradX as FloatArray | null);
  const loss = reduce(rows, l.reduction);
  return l.gradients ? { loss, gradX: gradX as FloatArray, gradW: gradW as FloatArray } : { loss };
}

// A shard of host arrays: views of w and dW for classes [c0, c0 + c), its share of dx in `share`.
class HostArrays implements HostShard {
  readonly c: number;
  readonly #call: Call;
  readonly #inputs: ArrayBufferView[];

  constructor(
    readonly ctx: NativeContext,
    whole: Call,
    readonly c0: number,
    c1: number,
    readonly arrays: { gradW: FloatArray | null; share: FloatArray | null },
    x: ArrayBufferView,
    w: FloatArray,
    labels: ArrayBufferView,
  ) {
    this.c = c1 - c0;
    this.#call = { ...whole, c: this.c, args: { ...whole.args!, classOffset: c0 } };
    this.#inputs = [x, w.subarray(c0 * whole.d, c1 * whole.d), labels];
  }

  partials(): Partials {
    const n = this.#call.n;
    const p = {
      rowMax: new Float64Array(n),
      rowSum: new Float64Array(n),
      target: new Float64Array(n),
    };
    this.ctx.run(OPS.lossPartials, this.#call, [...this.#inputs, p.rowMax, p.rowSum, p.target]);
    return p;
  }

  gradients(lse: Float64Array): FloatArray {
    const d = this.#call.d, { gradW, share } = this.arrays;
    const outW = gradW!.subarray(this.c0 * d, (this.c0 + this.c) * d);
    this.ctx.run(OPS.lossGradients, this.#call, [...this.#inputs, lse, share, outW]);
    return share!;
  }
}
