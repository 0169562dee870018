// The fused loss: softmax cross-entropy over the margin logits, with its gradients, on one
// backend (one native call) or with the classes split across a list of backends (class shards:
// per-row partials from each, combined here, then each shard's gradients given the combined
// log-sum-exp; docs/math.md).

import {
  elementCount,
  type FloatArray,
  floatArrayName,
  floatDType,
  newFloatArray,
} from "../ffi/arrays.ts";
import { type LossArgs, type NativeContext, sharesMemory } from "../ffi/context.ts";
import { OPS } from "../ffi/ops.ts";
import { sharedContext } from "./backends.ts";
import { checkInteger, describe } from "./checks.ts";
import { type Problem, runOp } from "./op.ts";

/** How the row losses combine: their mean (the default) or their sum. */
export type Reduction = "mean" | "sum";

/** What a loss call asks for besides its problem. */
export interface LossRequest {
  reduction: Reduction;
  gradients: boolean;
  outX: unknown;
  outW: unknown;
}

export function checkReduction(v: unknown): Reduction {
  if (v === undefined || v === "mean" || v === "sum") return v ?? "mean";
  throw new RangeError(`reduction: expected "mean" or "sum", got ${describe(v)}`);
}

export function checkGradients(v: unknown): boolean {
  if (v === undefined || typeof v === "boolean") return v ?? true;
  throw new TypeError(`gradients: expected true or false, got ${describe(v)}`);
}

export function checkWorkspace(v: unknown): number | undefined {
  return v === undefined ? undefined : checkInteger("workspace", v, 1, Number.MAX_SAFE_INTEGER);
}

// Row losses to the reduced loss, in float64.
function reduce(rowLoss: Float64Array, reduction: Reduction): number {
  let sum = 0;
  for (let i = 0; i < rowLoss.length; i++) sum += rowLoss[i];
  return reduction === "mean" ? sum / rowLoss.length : sum;
}

/** The contexts of a loss call's backend: one, or one per shard for a list. */
export function lossContexts(backend: unknown): NativeContext | NativeContext[] {
  if (!Array.isArray(backend)) return sharedContext(backend);
  return backend.map((b) => sharedContext(b));
}

/**
 * The loss and, when asked, its gradients (into outX and outW when given), on one context or
 * with the classes split across several.
 */
export function runLoss(
  p: Problem,
  on: NativeContext | NativeContext[],
  request: LossRequest,
): { loss: number; gradX?: FloatArray; gradW?: FloatArray } {
  const gradScale = request.reduction === "mean" ? 1 / p.n : 1;
  if (!Array.isArray(on)) {
    const ctx = on;
    const call = { ...p, args: { classOffset: 0, totalClasses: p.c, gradScale } };
    const given = request.gradients
      ? { outX: request.outX, outW: request.outW }
      : { outX: null, outW: null };
    const [rowLoss, gradX, gradW] = runOp(ctx, OPS.loss, call, given);
    const loss = reduce(rowLoss as Float64Array, request.reduction);
    return request.gradients ? { loss, gradX, gradW } : { loss };
  }
  return shardedLoss(p, on, request, gradScale);
}

function shardedLoss(
  p: Problem,
  contexts: NativeContext[],
  request: LossRequest,
  gradScale: number,
): { loss: number; gradX?: FloatArray; gradW?: FloatArray } {
  const k = contexts.length;
  if (k < 1 || k > p.c) {
    throw new RangeError(`backend: expected a list of 1 to C = ${p.c} backends, got ${k}`);
  }
  const { n, d, c } = p;
  const bounds = shardBounds(c, k);
  const shard = (s: number): Problem & { args: LossArgs } => ({
    ...p,
    w: p.w.subarray(bounds[s] * d, bounds[s + 1] * d) as FloatArray,
    c: bounds[s + 1] - bounds[s],
    args: { classOffset: bounds[s], totalClasses: c, gradScale },
  });
  const parts = contexts.map((ctx, s) => runOp(ctx, OPS.lossPartials, shard(s), {}));
  const { lse, rowLoss } = combineShards(parts as Float64Array[][], p.labels, bounds);
  const loss = reduce(rowLoss, request.reduction);
  if (!request.gradients) return { loss };
  // Each shard writes its rows of gradW and its share of gradX; the shares add up here.
  const gradW = outputOf("outW", request.outW, p, c * d);
  const gradX = outputOf("outX", request.outX, p, n * d);
  for (
    const [name, a] of [["x", p.x], ["w", p.w], ["labels", p.labels], ["outW", gradW]] as const
  ) {
    if (sharesMemory(gradX, a)) throw new RangeError(`outX: expected memory apart from ${name}`);
    if (name !== "outW" && sharesMemory(gradW, a)) {
      throw new RangeError(`outW: expected memory apart from ${name}`);
    }
  }
  const share = newFloatArray(p.dtype, n * d);
  const total = new Float64Array(n * d);
  for (let s = 0; s < k; s++) {
    const outW = gradW.subarray(bounds[s] * d, bounds[s + 1] * d);
    runOp(contexts[s], OPS.lossGradients, shard(s), { lse, outX: share, outW });
    for (let e = 0; e < n * d; e++) total[e] += share[e];
  }
  gradX.set(total);
  return { loss, gradX, gradW };
}

/** Contiguous class ranges of k shards, as even as they come: shard s is [b[s], b[s + 1]). */
export function shardBounds(c: number, k: number): number[] {
  return Array.from({ length: k + 1 }, (_, s) => Math.floor((s * c) / k));
}

/**
 * The shards' partials ([rowMax, rowSum, target] of each) combined: M = max m_s, S = sum s_s
 * exp(m_s - M), lse = M + log S, and each row's loss lse - f_iy from the shard owning its label.
 */
export function combineShards(
  parts: readonly (readonly Float64Array[])[],
  labels: Int32Array,
  bounds: readonly number[],
): { lse: Float64Array; rowLoss: Float64Array } {
  const n = labels.length;
  const lse = new Float64Array(n).fill(-Infinity);
  const target = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (const [rowMax] of parts) m = rowMax[i] > m || rowMax[i] !== rowMax[i] ? rowMax[i] : m;
    let total = 0;
    for (const [rowMax, rowSum] of parts) total += rowSum[i] * Math.exp(rowMax[i] - m);
    lse[i] = m + Math.log(total);
  }
  for (let s = 0; s < parts.length; s++) {
    const owned = parts[s][2];
    for (let i = 0; i < n; i++) {
      const y = labels[i];
      if (y >= bounds[s] && y < bounds[s + 1]) target[i] = owned[i];
    }
  }
  const rowLoss = new Float64Array(n);
  for (let i = 0; i < n; i++) rowLoss[i] = lse[i] - target[i];
  return { lse, rowLoss };
}

// The caller's output array for a sharded call, checked whole before it is split.
function outputOf(name: string, given: unknown, p: Problem, count: number): FloatArray {
  if (given === undefined) return newFloatArray(p.dtype, count);
  if (floatDType(given) !== p.dtype) {
    throw new TypeError(
      `${name}: expected a ${floatArrayName(p.dtype)} like x, got ${describe(given)}`,
    );
  }
  const got = elementCount(given as FloatArray);
  if (got !== count) throw new RangeError(`${name}: expected ${count} elements, got ${got}`);
  return given as FloatArray;
}
