// MarginHead's options and state: their types, the keys each accepts, and the checks of the
// head's own options (the optimizer, dtype, weights); src/resolve.ts reads them all.

import {
  describe,
  elementCount,
  type FloatArray,
  floatArrayName,
  type FloatDType,
  floatDType,
} from "../../ffi/arrays.ts";
import type { Precision } from "../../ffi/context.ts";
import type { SgdStruct } from "../../ffi/structs.ts";
import type { Backend } from "../backends.ts";
import { checkNumber, readOptions } from "../checks.ts";
import { MARGIN_KEYS, type MarginOptions } from "../kinds.ts";
import { type LambdaSchedule, SCHEDULE_KEYS } from "../schedule.ts";

/** SGD as PyTorch defines it (dampening 0). */
export interface SgdOptions {
  /** The learning rate, >= 0. */
  lr: number;
  /** Momentum, >= 0 (0 by default: plain SGD). */
  momentum?: number;
  /** L2 weight decay added to the gradient, >= 0 (0 by default). */
  weightDecay?: number;
  /** Nesterov momentum (needs momentum > 0); false by default. */
  nesterov?: boolean;
}

/**
 * What a step does when its loss or a gradient is not finite: skip the update (the default),
 * throw a RangeError, or apply it as computed.
 */
export type NonFinitePolicy = "skip" | "throw" | "apply";

/** Options of {@link MarginHead}. */
export interface HeadOptions extends MarginOptions, Partial<LambdaSchedule> {
  /** The class count C. */
  classes: number;
  /** The feature count D. */
  features: number;
  /**
   * The kinds with λ (L-Softmax, A-Softmax): a fixed λ >= 0, or else the schedule (base, gamma,
   * power, lambdaMin) anneals it.
   */
  lambda?: number;
  /** "float32" (the default) or "float64". */
  dtype?: FloatDType;
  /** Where W lives: a backend, or a list of them to split the classes across. "auto" by default. */
  backend?: Backend | Backend[];
  /** SGD; by default { lr: 0.01 }. */
  optimizer?: SgdOptions;
  /** Initial weights, C·D elements of the dtype (copied in); else drawn from `seed`. */
  weights?: FloatArray;
  /** The seed of the initial weights, uniform in ±1/√D (0 by default). */
  seed?: number;
  /** Float32 matrix products: "exact" (the default) or "tf32" (CUDA sm_80+). */
  precision?: Precision;
  /** The most bytes of scratch a step may hold per context (64 MiB by default). */
  workspace?: number;
  /** The iteration to resume the λ schedule from (0 by default; steps count on from it). */
  iteration?: number;
  /**
   * A step whose loss or gradients are not finite: "skip" (the default) leaves W and the momentum
   * unchanged, "throw" throws a RangeError naming the row and changes nothing, "apply" updates W
   * with them.
   */
  nonFinite?: NonFinitePolicy;
}

/** A step's SGD struct: its `lr` option (the optimizer's by default) and the optimizer's settings. */
export function sgdStruct(optimizer: Required<SgdOptions>, options: unknown): SgdStruct {
  const o = readOptions("options", options, ["lr"]);
  const lr = o.lr === undefined ? optimizer.lr : checkNumber("lr", o.lr, 0);
  const { momentum, weightDecay, nesterov } = optimizer;
  return { lr, momentum, weightDecay, nesterov: nesterov ? 1 : 0, first: 0, nonfinite: 0 };
}

/** Where {@link MarginHead.load} puts a saved head, instead of where it was. */
export type HeadPlacement = Pick<HeadOptions, "backend" | "precision" | "workspace">;

/** What {@link MarginHead.state} returns and {@link MarginHead.fromState} takes. */
export interface HeadState {
  /** The layout of this object: 1. */
  format: 1;
  /** The options the head was made with (weights, seed, iteration left out). */
  options: Omit<HeadOptions, "weights" | "seed" | "iteration">;
  /** Steps taken. */
  iteration: number;
  /** Steps skipped for a non-finite loss or gradient (counted in `iteration` too). */
  skippedSteps: number;
  /** W [C, D], a host copy. */
  weights: FloatArray;
  /** The momentum buffer [C, D], or null before the first step or without momentum. */
  velocity: FloatArray | null;
}

/** What a step returns. */
export interface StepResult<T extends FloatArray = FloatArray> {
  /** The mean loss over the batch (float64). */
  loss: number;
  /** λ of this step. */
  lambda: number;
  /** dL/dx [N, D]. */
  gradX: T;
  /** Whether W and the momentum were left unchanged for a non-finite loss or gradient. */
  skipped: boolean;
}

export const HEAD_KEYS = [
  "classes",
  "features",
  ...MARGIN_KEYS,
  ...SCHEDULE_KEYS,
  "dtype",
  "backend",
  "optimizer",
  "weights",
  "seed",
  "precision",
  "workspace",
  "iteration",
  "nonFinite",
] as const;
const SGD_KEYS = ["lr", "momentum", "weightDecay", "nesterov"] as const;

export function checkSgd(v: unknown): Required<SgdOptions> {
  const o = readOptions("optimizer", v ?? { lr: 0.01 }, SGD_KEYS);
  const sgd = {
    lr: checkNumber("optimizer.lr", o.lr, 0),
    momentum: checkNumber("optimizer.momentum", o.momentum ?? 0, 0),
    weightDecay: checkNumber("optimizer.weightDecay", o.weightDecay ?? 0, 0),
    nesterov: o.nesterov ?? false,
  };
  if (typeof sgd.nesterov !== "boolean") {
    throw new TypeError(
      `optimizer.nesterov: expected true or false, got ${describe(sgd.nesterov)}`,
    );
  }
  if (sgd.nesterov && sgd.momentum === 0) {
    throw new RangeError("optimizer.nesterov: expected momentum > 0 with Nesterov momentum, got 0");
  }
  return sgd as Required<SgdOptions>;
}

export function checkNonFinite(v: unknown): NonFinitePolicy {
  if (v === undefined || v === "skip" || v === "throw" || v === "apply") return v ?? "skip";
  throw new RangeError(`nonFinite: expected "skip", "throw" or "apply", got ${describe(v)}`);
}

export function checkDType(v: unknown): FloatDType {
  if (v === undefined || v === "float32" || v === "float64") return v ?? "float32";
  throw new RangeError(`dtype: expected "float32" or "float64", got ${describe(v)}`);
}

/** Initial weights: C·D elements of the head's dtype. */
export function checkWeights(
  v: unknown,
  dtype: FloatDType,
  classes: number,
  features: number,
): FloatArray | undefined {
  if (v === undefined) return undefined;
  if (floatDType(v) !== dtype) {
    throw new TypeError(
      `weights: expected a ${floatArrayName(dtype)} (dtype), got ${describe(v)}`,
    );
  }
  const count = classes * features, got = elementCount(v as FloatArray);
  if (got !== count) {
    throw new RangeError(
      `weights: expected classes * features = ${classes} * ${features} = ${count} ` +
        `elements, got ${got}`,
    );
  }
  return v as FloatArray;
}
