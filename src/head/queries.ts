// A head's queries, which read W without changing it: evaluate (the loss and the accuracy of the
// best class) and predict (each sample's k best classes), in one process or across ranks. Their
// native calls are in query_calls.ts; the merge of the shards' best classes in topk.ts.

import type { FloatArray } from "../../ffi/arrays.ts";
import { MAX_TOPK } from "../../ffi/symbols.ts";
import { runCalls } from "../calls.ts";
import { checkInteger, readOptions } from "../checks.ts";
import { checkBatch } from "../tensors.ts";
import { batchAt, type HeadCore } from "./core.ts";
import { evaluateCalls, topkCalls } from "./query_calls.ts";
import { gatherBatch } from "./rank_batch.ts";
import { classTopK, countCorrect, mergeTopK } from "./topk.ts";

/** MarginHead.evaluate: the mean loss at λ of the current iteration, and the fraction correct. */
export function evaluateHead(
  core: HeadCore,
  x: FloatArray,
  labels: Int32Array,
): { loss: number; accuracy: number } {
  if (core.ranks !== null) {
    const g = gatherBatch(core, x, labels, () => checkBatch(x, labels, core.dtype, core.features));
    const ys = g.labels!, b = batchAt(core, ys.length, core.iteration);
    const { loss, rowLoss } = runCalls(evaluateCalls(core.shards, b, g.x, ys, g.peers));
    const results = runCalls(core.ranks.topk(core.shards[0], b, g.x, 1));
    const best = mergeTopK(results, ys.length, 1, core.dtype); // k = 1: the best row's class
    const { indices, scores } = core.subcenters === 1
      ? best
      : classTopK(best, ys.length, 1, core.subcenters, core.dtype);
    return { loss, accuracy: countCorrect(indices, scores, rowLoss, ys) / ys.length };
  }
  const { n } = checkBatch(x, labels, core.dtype, core.features);
  const b = batchAt(core, n, core.iteration);
  const { loss, rowLoss } = runCalls(evaluateCalls(core.shards, b, x, labels));
  const { indices, scores } = predictHead(core, x, { k: 1 });
  return { loss, accuracy: countCorrect(indices, scores, rowLoss, labels) / n };
}

/** MarginHead.predict: each sample's k best classes, best first, and their scores. */
export function predictHead<T extends FloatArray>(
  core: HeadCore,
  x: T,
  options: { k?: number },
): { indices: Int32Array; scores: T } {
  const K = core.subcenters;
  // sub-centers: the classes from the best (k − 1)·K + 1 rows, at most MAX_TOPK of them
  const most = K === 1 ? MAX_TOPK : Math.floor((MAX_TOPK - 1) / K) + 1;
  if (core.ranks !== null) {
    let k = 1;
    const g = gatherBatch(core, x, null, () => {
      checkBatch(x, null, core.dtype, core.features);
      const o = readOptions("options", options, ["k"]);
      k = checkInteger("k", o.k ?? 1, 1, Math.min(core.classes, most));
    });
    const n = g.x.length / core.features, { rows, offset } = g.peers;
    const kr = K === 1 ? k : (k - 1) * K + 1;
    const results = runCalls(
      core.ranks.topk(core.shards[0], batchAt(core, n, core.iteration), g.x, kr),
    );
    const all = K === 1
      ? mergeTopK<T>(results, n, k, core.dtype)
      : classTopK<T>(mergeTopK(results, n, kr, core.dtype), n, k, K, core.dtype);
    return {
      indices: all.indices.slice(offset * k, (offset + rows) * k),
      scores: all.scores.slice(offset * k, (offset + rows) * k) as T,
    };
  }
  const { n } = checkBatch(x, null, core.dtype, core.features);
  const o = readOptions("options", options, ["k"]);
  const k = checkInteger("k", o.k ?? 1, 1, Math.min(core.classes, most));
  const kr = K === 1 ? k : (k - 1) * K + 1;
  const results = runCalls(topkCalls(core.shards, batchAt(core, n, core.iteration), x, kr));
  if (K === 1) return mergeTopK<T>(results, n, k, core.dtype);
  return classTopK<T>(mergeTopK(results, n, kr, core.dtype), n, k, K, core.dtype);
}
