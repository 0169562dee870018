// The top-k merge of a head's shards: each shard's k best classes of every row, merged into the
// row's k best in the order the native top-k uses.

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";

/** One shard's k best of every row: indices (global classes) and scores, [N, k_s] each. */
export interface TopK<T extends FloatArray = FloatArray> {
  indices: Int32Array;
  scores: T;
}

// The order of top-k candidates (the native library's lsm_topk_before): higher score first,
// equal scores by lower index, NaN last.
function before(a: number, ia: number, b: number, ib: number): boolean {
  const na = a !== a, nb = b !== b;
  if (na !== nb) return nb;
  if (!na && a !== b) return a > b;
  return ia < ib;
}

/** The k best of every row of n among the shards' candidates. */
export function mergeTopK<T extends FloatArray>(
  results: readonly TopK[],
  n: number,
  k: number,
  dtype: "float32" | "float64",
): TopK<T> {
  if (results.length === 1) return results[0] as TopK<T>;
  const indices = new Int32Array(n * k), scores = newFloatArray<T>(dtype, n * k);
  for (let i = 0; i < n; i++) {
    const cand: [number, number][] = [];
    for (const r of results) {
      const ks = r.indices.length / n;
      for (let q = 0; q < ks; q++) cand.push([r.scores[i * ks + q], r.indices[i * ks + q]]);
    }
    cand.sort((a, b) => (before(a[0], a[1], b[0], b[1]) ? -1 : 1));
    for (let q = 0; q < k; q++) [scores[i * k + q], indices[i * k + q]] = cand[q];
  }
  return { indices, scores };
}

/**
 * The rows whose best class (k = 1 of the top-k) is their label, with a comparable score: a NaN
 * score, or a NaN row loss (a NaN logit somewhere in the row), is never correct.
 */
export function countCorrect(
  indices: Int32Array,
  scores: FloatArray,
  rowLoss: Float64Array | null,
  labels: Int32Array,
): number {
  let hits = 0;
  for (let i = 0; i < labels.length; i++) {
    const comparable = !Number.isNaN(scores[i]) && (rowLoss === null || !Number.isNaN(rowLoss[i]));
    hits += comparable && indices[i] === labels[i] ? 1 : 0;
  }
  return hits;
}
