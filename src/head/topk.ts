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

/**
 * Sub-center ArcFace's k best classes from the best rows of W (K a class, rows j·K … j·K+K−1): a
 * class's score is the max over its rows, so it is its first row in the rows' order, and the
 * first k distinct classes of that order are the k best (ties by lower class, as the rows'
 * order has them). (k − 1)·K + 1 rows hold k distinct classes whatever their scores.
 *
 * @param best the best rows of every row of x, [n, kr] with kr >= (k − 1)·K + 1
 * @param n the rows of x
 * @param k the classes wanted per row
 * @param subcenters K
 * @param dtype the scores' element type
 * @returns the classes [n, k] and their scores
 * @example
 * ```ts
 * import { classTopK } from "./topk.ts";
 * const best = { indices: new Int32Array([5, 4, 0]), scores: new Float64Array([0.9, 0.8, 0.1]) };
 * console.log(classTopK(best, 1, 2, 2, "float64").indices); // Int32Array [2, 0]
 * ```
 */
export function classTopK<T extends FloatArray>(
  best: TopK,
  n: number,
  k: number,
  subcenters: number,
  dtype: "float32" | "float64",
): TopK<T> {
  const kr = best.indices.length / n;
  const indices = new Int32Array(n * k), scores = newFloatArray<T>(dtype, n * k);
  for (let i = 0; i < n; i++) {
    let q = 0;
    for (let r = 0; r < kr && q < k; r++) {
      const j = Math.floor(best.indices[i * kr + r] / subcenters);
      let seen = false;
      for (let p = 0; p < q; p++) seen ||= indices[i * k + p] === j;
      if (seen) continue;
      indices[i * k + q] = j, scores[i * k + q] = best.scores[i * kr + r];
      q++;
    }
  }
  return { indices, scores };
}
