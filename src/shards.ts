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
 * classes and then C).
 */
export function combinePartials(
  parts: readonly Partials[],
  labels: Int32Array,
  bounds: readonly number[],
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
  return { lse, rowLoss };
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
 * null) every shard's gradients with their shares of dx summed. Returns the row losses.
 */
export function shardedLoss(
  shards: readonly HostShard[],
  labels: Int32Array,
  gradX: FloatArray | null,
): Float64Array {
  const parts = shards.map((s) => s.partials());
  const { lse, rowLoss } = combinePartials(parts, labels, boundsOf(shards));
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
): Generator<NativeCall, Float64Array, void> {
  const parts: Partials[] = [];
  for (const s of shards) parts.push(yield* s.partials());
  const { lse, rowLoss } = combinePartials(parts, labels, boundsOf(shards));
  if (gradX === null) return rowLoss;
  const shares = new Shares(gradX);
  for (const s of shards) shares.add(yield* s.gradients(lse));
  shares.done();
  return rowLoss;
}
