// A head's native sequences, each written once as a generator of calls (../calls.ts runs them on
// the JavaScript thread or off it): a training step, the loss alone, the top-k classes.

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";
import { OPS } from "../../ffi/ops.ts";
import type { SgdStruct } from "../../ffi/structs.ts";
import type { NativeCall } from "../calls.ts";
import { reduce } from "../loss.ts";
import { shardedLossCalls } from "../shards.ts";
import { type Batch, type HeadShard, ShardCalls } from "./shards.ts";
import type { TopK } from "./topk.ts";

// The batch's inputs onto every shard's context (labels null: prediction).
function* upload(
  shards: readonly HeadShard[],
  x: FloatArray,
  labels: Int32Array | null,
): Generator<NativeCall, void, void> {
  for (const s of shards) {
    yield s.upload(s.scratch("x", s.bytes(x.length)), x);
    if (labels !== null) yield s.upload(s.scratch("labels", labels.length * 4), labels);
  }
}

/**
 * One training step: the fused loss and dL/dW on each shard, the SGD update of W where it lives,
 * dL/dx back into gradX. Returns the mean loss.
 */
export function* stepCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  sgd: SgdStruct,
  gradX: FloatArray,
): Generator<NativeCall, number, void> {
  yield* upload(shards, x, labels);
  if (shards.length > 1) {
    const parts = shards.map((s) => new ShardCalls(s, b, sgd));
    return reduce(yield* shardedLossCalls(parts, labels, gradX), "mean");
  }
  const s = shards[0], n = b.n;
  const rowLoss = s.scratch("rowLoss", n * 8), gx = s.scratch("gradX", s.bytes(gradX.length));
  yield s.loss(OPS.loss, b, [rowLoss, gx, s.gw]);
  yield s.sgd(sgd);
  const sum = new Float64Array(1);
  yield s.sum(rowLoss, n, sum);
  yield s.download(gradX, gx);
  return sum[0] / n;
}

/** The mean loss alone: the row losses summed on the context (one shard) or from the partials. */
export function* evaluateCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
): Generator<NativeCall, number, void> {
  yield* upload(shards, x, labels);
  if (shards.length > 1) {
    const parts = shards.map((s) => new ShardCalls(s, b));
    return reduce(yield* shardedLossCalls(parts, labels, null), "mean");
  }
  const s = shards[0], rowLoss = s.scratch("rowLoss", b.n * 8);
  yield s.loss(OPS.loss, b, [rowLoss, null, null]);
  const sum = new Float64Array(1);
  yield s.sum(rowLoss, b.n, sum);
  return sum[0] / b.n;
}

/** Each shard's k best classes of every row (global class indices), to merge. */
export function* topkCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  k: number,
): Generator<NativeCall, TopK[], void> {
  yield* upload(shards, x, null);
  const out: TopK[] = [];
  for (const s of shards) {
    const ks = Math.min(k, s.c), count = b.n * ks;
    const ip = s.scratch("indices", count * 4), sp = s.scratch("scores", s.bytes(count));
    yield s.op(OPS.topk, { ...s.call(b), k: ks }, [s.scratch("x", 0), s.w, ip, sp]);
    const indices = new Int32Array(count), scores = newFloatArray(s.head.dtype, count);
    yield s.download(indices, ip);
    yield s.download(scores, sp);
    for (let e = 0; e < count; e++) indices[e] += s.c0;
    out.push({ indices, scores });
  }
  return out;
}
