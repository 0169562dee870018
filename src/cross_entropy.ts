// The cross-entropy options of the fused loss (torch's F.cross_entropy: label smoothing, class
// weights, an ignored label), checked once, and what a loss call's lsm_loss_args take from them:
// the mean's denominator (the counted rows' target weights) and the flags.

import { LOSS_IGNORE, type LossArgs } from "../ffi/structs.ts";
import { checkInteger, describe } from "./checks.ts";
import type { Reduction } from "./resolve.ts";
import { checkClassWeights } from "./tensors.ts";

/**
 * The cross-entropy options of the fused loss, as torch's `F.cross_entropy` defines them
 * (docs/math.md): with p = softmax of the margin logits, row i's loss is
 * (1 − ε) w_{y_i} (−log p_{i y_i}) + (ε / C) Σ_j w_j (−log p_ij).
 */
export interface CrossEntropyOptions {
  /** ε in [0, 1): torch's `label_smoothing` (0 by default). */
  labelSmoothing?: number;
  /**
   * C class weights w_j, finite and >= 0 (torch's `weight`), as a Float32Array or Float64Array
   * whatever the call's dtype (read in float64). The mean divides by the sum of the counted
   * rows' target weights.
   */
  classWeights?: Float32Array | Float64Array;
  /**
   * Rows with this label (any integer, e.g. torch's −100) contribute no loss and no gradient and
   * are not counted in the mean; a mean over no counted row (or rows of total weight 0) is 0
   * with zero gradients (torch gives NaN there).
   */
  ignoreIndex?: number;
}

/** The cross-entropy options of a loss call (torch's F.cross_entropy), checked. */
export interface CrossEntropy {
  /** ε in [0, 1); 0 without smoothing. */
  labelSmoothing: number;
  /** The C class weights as float64 (a copy, checked), or undefined (every weight 1). */
  classWeights: Float64Array | undefined;
  /** S_w: the sum of the class weights (C without them). */
  weightSum: number;
  /** The label of rows left out, or undefined (none). */
  ignoreIndex: number | undefined;
}

/** The options keys of the cross-entropy options. */
export const CROSS_ENTROPY_KEYS = ["labelSmoothing", "classWeights", "ignoreIndex"] as const;

/**
 * The cross-entropy options from a call's options (`labelSmoothing`, `classWeights`,
 * `ignoreIndex`), for C classes.
 *
 * @param o The call's options, read.
 * @param c The number of classes (the length classWeights must have).
 * @returns The checked options.
 */
export function checkCrossEntropy(o: Partial<Record<string, unknown>>, c: number): CrossEntropy {
  let labelSmoothing = 0;
  if (o.labelSmoothing !== undefined) {
    const v = o.labelSmoothing;
    if (typeof v !== "number") {
      throw new TypeError(`labelSmoothing: expected a number in [0, 1), got ${describe(v)}`);
    }
    if (!(v >= 0 && v < 1)) {
      throw new RangeError(`labelSmoothing: expected a number in [0, 1), got ${v}`);
    }
    labelSmoothing = v;
  }
  const classWeights = o.classWeights === undefined
    ? undefined
    : checkClassWeights(o.classWeights, c);
  let weightSum = c;
  if (classWeights !== undefined) {
    weightSum = 0;
    for (let j = 0; j < c; j++) weightSum += classWeights[j];
    if (!Number.isFinite(weightSum)) {
      throw new RangeError(`classWeights: expected a finite sum, got ${weightSum}`);
    }
  }
  const ignoreIndex = o.ignoreIndex === undefined
    ? undefined
    : checkInteger("ignoreIndex", o.ignoreIndex, -(2 ** 31), 2 ** 31 - 1);
  return { labelSmoothing, classWeights, weightSum, ignoreIndex };
}

/**
 * The weight the mean divides by: the sum of the counted rows' target weights (their count
 * without weights). Labels outside [0, C) count 0 here (the native call names them).
 */
function meanDenominator(ce: CrossEntropy, labels: Int32Array, c: number): number {
  let total = 0;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (y === ce.ignoreIndex || !(y >= 0 && y < c)) continue;
    total += ce.classWeights === undefined ? 1 : ce.classWeights[y];
  }
  return total;
}

/**
 * The lsm_loss_args of an unsharded loss call with cross-entropy options (the weights' address
 * is the run's: `classWeights` 0 here), and the denominator of its mean (1 for "sum" and
 * "none"). A mean over rows of total weight 0 (every row ignored) is 0 with zero gradients.
 *
 * @param ce The checked options.
 * @param labels The call's labels.
 * @param c The number of classes.
 * @param reduction The reduction.
 * @returns The args (gradScale 1/denominator for a mean, 0 where the denominator is 0) and the
 *   denominator.
 */
export function crossEntropyArgs(
  ce: CrossEntropy,
  labels: Int32Array,
  c: number,
  reduction: Reduction,
): { args: LossArgs; denominator: number } {
  const denominator = reduction === "mean" ? meanDenominator(ce, labels, c) : 1;
  const args: LossArgs = {
    classOffset: 0,
    totalClasses: c,
    gradScale: denominator === 0 ? 0 : 1 / denominator,
    labelSmoothing: ce.labelSmoothing,
    weightSum: ce.classWeights === undefined ? 0 : ce.weightSum,
    ignoreIndex: ce.ignoreIndex ?? 0,
    flags: ce.ignoreIndex === undefined ? 0 : LOSS_IGNORE,
  };
  return { args, denominator };
}
