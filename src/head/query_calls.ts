// query_calls.ts: the head's calls that read W without changing it: the mean loss alone
// (evaluate) and each shard's best classes (predict, top-k).

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";
import { OPS } from "../../ffi/ops.ts";
import type { NativeCall } from "../calls.ts";
import { reduce } from "../loss.ts";
import { KINDS } from "../kinds.ts";
import { shardedLossCalls } from "../shards.ts";
import { labelled, mean, type Peers, rowTargets, upload } from "./calls.ts";
import { type Batch, type HeadShard, ShardCalls } from "./shards.ts";
import type { TopK } from "./topk.ts";

/**
 * The mean loss alone: the row losses summed on the context (one shard) or from the partials; the
 * row losses themselves come back (N·8 bytes) only when the mean is NaN, to tell which rows are.
 */
export function* evaluateCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  peers: Peers | null = null,
): Generator<NativeCall, { loss: number; rowLoss: Float64Array | null }, void> {
  if (peers !== null) return yield* peers.loss(shards, b, x, labels, null);
  yield* upload(shards, x, labels);
  const ce = shards[0].head.crossEntropy;
  b = labelled(shards, b, labels);
  if (shards.length > 1) {
    b = yield* rowTargets(shards, b);
    const parts = shards.map((s) => new ShardCalls(s, b));
    const rowLoss = yield* shardedLossCalls(parts, labels, null, ce);
    return { loss: reduce(rowLoss, "mean", b.loss!.denominator), rowLoss };
  }
  const s = shards[0], rows = s.scratch("rowLoss", b.n * 8);
  yield s.loss(OPS.loss, b, [rows, null, null]);
  const sum = new Float64Array(1);
  yield s.sum(rows, b.n, sum);
  if (!Number.isNaN(sum[0])) return { loss: mean(sum[0], b), rowLoss: null };
  const rowLoss = new Float64Array(b.n);
  yield s.download(rowLoss, rows);
  return { loss: mean(sum[0], b), rowLoss };
}

/**
 * Each shard's k best classes of every row (global class indices), to merge. With sub-centers
 * (K > 1), the k best rows of W instead (global rows) by their cosine, which lsm_topk gives
 * (ArcFace's score) where it serves no sub-center kind: `k` is then the rows wanted.
 */
export function* topkCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  k: number,
): Generator<NativeCall, TopK[], void> {
  yield* upload(shards, x, null);
  const out: TopK[] = [];
  const rows = shards[0].head.subcenters > 1;
  const margin = rows ? { ...b.margin, kind: KINDS.arcface.code, m: 0 } : b.margin;
  for (const s of shards) {
    const ks = Math.min(k, rows ? s.rows : s.c), count = b.n * ks;
    const ip = s.scratch("indices", count * 4), sp = s.scratch("scores", s.bytes(count));
    const call = { ...s.call({ ...b, margin }), k: ks };
    yield s.op(OPS.topk, call, [s.scratch("x", 0), s.w, ip, sp]);
    const indices = new Int32Array(count), scores = newFloatArray(s.head.dtype, count);
    yield s.download(indices, ip);
    yield s.download(scores, sp);
    const first = rows ? s.r0 : s.c0;
    for (let e = 0; e < count; e++) indices[e] += first;
    out.push({ indices, scores });
  }
  return out;
}
