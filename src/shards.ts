// The class-shard algorithm of the fused loss (docs/math.md): the classes split into contiguous
// shards, each shard's per-row partials (max, sum of exp, target logit) combined into every row's
// log-sum-exp, then each shard's gradients given it: dW of its own classes, and its share of dx,
// the shares summed. One algorithm wherever the tensors live: `loss()` with a list of backends
// (host arrays: HostShard) and MarginHead (context memory: ContextShard). The combine step is a
// function of the partial arrays alone, so that partials from other processes could be reduced
// the same way. Shards of host arrays run their calls at once; shards of context memory hand
// them to a driver (a generator of calls), the one form that can also run off the thread.

import type { FloatArray } from "../ffi/arrays.ts";
import type { NativeCall } from "./calls.ts";

/** Contiguous class ranges of k shards, as even as they come: shard s is [b[s], b[s + 1]). */
export function shardBounds(c: number, k: number): number[] {
  return Array.from({ length: k + 1 }, (_, s) => Math.floor((s * c) / k));
}

/** One shard's per-row partials, each [N] float64. */
export interface Partials {
  rowMax: Float64Array;
  rowSum: Float64Array;
  /** f_iy, rounded to the dtype, where the shard owns label y_i (0 elsewhere). */
  target: Float64Array;
  /** With label smoothing: sum over the shard's classes of w_j (rowMax - f_ij), >= 0. */
  rowSmooth?: Float64Array;
}

/**
 * The cross-entropy options as the combine step needs them (docs/math.md): ε, the class weights
 * (undefined: all 1), S_w and the ignored label. Without them the loss is plain cross-entropy.
 */
export interface RowOptions {
  labelSmoothing: number;
  classWeights: Float64Array | undefined;
  weightSum: number;
  ignoreIndex: number | undefined;
}

/** A shard of classes [c0, c0 + c); `Partials`, `Share`: how its work hands back its results. */
interface Shard<P, S> {
  readonly c0: number;
  readonly c: number;
  /** The shard's per-row partials, as host arrays. */
  partials(): P;
  /**
   * The shard's gradients given every row's log-sum-exp: dW of its classes written where W
   * lives (and whatever the shard does with it), its share of dx returned as a host array.
   */
  gradients(lse: Float64Array): S;
}

/** A shard of host arrays: its native calls run as its methods are called. */
export type HostShard = Shard<Partials, FloatArray>;

/**
 * A shard of context memory: its work is a sequence of native calls (a generator), so that the
 * caller runs them on the JavaScript thread or off it.
 */
export type ContextShard = Shard<
  Generator<NativeCall, Partials, void>,
  Generator<NativeCall, FloatArray, void>
>;

/**
 * The shards' partials combined: M = max m_s, S = sum s_s exp(m_s - M), lse = M + log S, and each
 * row's loss (M - f_iy) + log S from the shard owning its label (`bounds`: the shards' first
 * classes and then C); with cross-entropy options (`ce`), weighted by w_{y_i}, plus the smoothing
 * term (ε/C)(A + S_w log S), A = sum_s A_s + W_s (M - m_s), and 0 for an ignored row.
 */
export function combinePartials(
  parts: readonly Partials[],
  labels: Int32Array,
  bounds: readonly number[],
  ce?: RowOptions,
): { lse: Float64Array; rowLoss: Float64Array } {
  const n = labels.length;
  const lse = new Float64Array(n), top = new Float64Array(n), total = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (const { rowMax } of parts) m = rowMax[i] > m || rowMax[i] !== rowMax[i] ? rowMax[i] : m;
    let t = 0;
    for (const { rowMax, rowSum } of parts) t += rowSum[i] * Math.exp(rowMax[i] - m);
    top[i] = m, total[i] = t;
    lse[i] = m + Math.log(t);
  }
  const target = new Float64Array(n);
  for (let s = 0; s < parts.length; s++) {
    const owned = parts[s].target;
    for (let i = 0; i < n; i++) {
      const y = labels[i];
      if (y >= bounds[s] && y < bounds[s + 1]) target[i] = owned[i];
    }
  }
  // The loss (M - f_iy) + log S, as the native lsm_row_loss forms it: M >= f_iy (the owning
  // shard's max is at least its target, which its sum saw rounded to the dtype, as the partials
  // report it) and S >= 1 (the shard of the largest max holds a term exp(0) = 1), so both terms
  // are >= 0; the clamp keeps that from resting on the rounding of exp, and Math.max keeps a NaN.
  const rowLoss = new Float64Array(n);
  for (let i = 0; i < n; i++) rowLoss[i] = Math.max(0, top[i] - target[i] + Math.log(total[i]));
  if (ce !== undefined) applyOptions(rowLoss, parts, labels, bounds, top, total, ce);
  return { lse, rowLoss };
}

// The cross-entropy options on the plain row losses (math/ce.cuh's lsm_ce_row_loss, on the
// combined partials): each term >= 0, so the loss stays >= 0; NaN kept.
function applyOptions(
  rowLoss: Float64Array,
  parts: readonly Partials[],
  labels: Int32Array,
  bounds: readonly number[],
  top: Float64Array,
  total: Float64Array,
  ce: RowOptions,
): void {
  const w = ce.classWeights, eps = ce.labelSmoothing, c = bounds[bounds.length - 1];
  const shardWeight = parts.map((_, s) => {
    if (w === undefined) return bounds[s + 1] - bounds[s];
    let t = 0;
    for (let j = bounds[s]; j < bounds[s + 1]; j++) t += w[j];
    return t;
  });
  for (let i = 0; i < rowLoss.length; i++) {
    const y = labels[i];
    if (ce.ignoreIndex !== undefined && y === ce.ignoreIndex) {
      rowLoss[i] = 0;
      continue;
    }
    const keep = (1 - eps) * (w === undefined ? 1 : w[y]);
    let l = keep === 0 ? 0 : keep * rowLoss[i];
    if (eps > 0) {
      let a = 0;
      for (let s = 0; s < parts.length; s++) {
        const m = parts[s].rowMax[i], wt = shardWeight[s];
        a += parts[s].rowSmooth![i] + (wt === 0 || m === top[i] ? 0 : wt * (top[i] - m));
      }
      const logS = Math.log(total[i]);
      let sm = a + (ce.weightSum === 0 ? 0 : ce.weightSum * (logS < 0 ? 0 : logS));
      if (sm < 0) sm = 0;
      l += (eps / c) * sm;
    }
    rowLoss[i] = l;
  }
}

// The classes' bounds of the shards: their first classes, then C.
function boundsOf(shards: readonly { c0: number; c: number }[]): number[] {
  const last = shards[shards.length - 1];
  return [...shards.map((s) => s.c0), last.c0 + last.c];
}

// The shares of dx summed in float64, into gradX.
class Shares {
  #total: Float64Array;
  constructor(readonly gradX: FloatArray) {
    this.#total = new Float64Array(gradX.length);
  }
  add(share: FloatArray): void {
    const total = this.#total;
    for (let e = 0; e < total.length; e++) total[e] += share[e];
  }
  done(): void {
    this.gradX.set(this.#total);
  }
}

/**
 * The sharded loss on host arrays: every shard's partials, combined, then (into gradX, unless
 * null) every shard's gradients with their shares of dx summed. Returns the row losses. The
 * cross-entropy options (`ce`) enter the combine step; each shard's calls carry them too.
 */
export function shardedLoss(
  shards: readonly HostShard[],
  labels: Int32Array,
  gradX: FloatArray | null,
  ce?: RowOptions,
): Float64Array {
  const parts = shards.map((s) => s.partials());
  const { lse, rowLoss } = combinePartials(parts, labels, boundsOf(shards), ce);
  if (gradX === null) return rowLoss;
  const shares = new Shares(gradX);
  for (const s of shards) shares.add(s.gradients(lse));
  shares.done();
  return rowLoss;
}

/** The same on context memory, as one sequence of native calls. */
export function* shardedLossCalls(
  shards: readonly ContextShard[],
  labels: Int32Array,
  gradX: FloatArray | null,
  ce?: RowOptions,
): Generator<NativeCall, Float64Array, void> {
  const parts: Partials[] = [];
  for (const s of shards) parts.push(yield* s.partials());
  const { lse, rowLoss } = combinePartials(parts, labels, boundsOf(shards), ce);
  if (gradX === null) return rowLoss;
  const shares = new Shares(gradX);
  for (const s of shards) shares.add(yield* s.gradients(lse));
  shares.done();
  return rowLoss;
}
