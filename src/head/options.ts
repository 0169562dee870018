// MarginHead's options and state: their types, the keys each accepts, and the checks of the
// head's own options (dtype, weights; optimizer_options.ts the optimizer); src/resolve.ts reads them.

import {
  describe,
  elementCount,
  type FloatArray,
  floatArrayName,
  type FloatDType,
  floatDType,
} from "../../ffi/arrays.ts";
import type { Precision } from "../../ffi/context.ts";
import type { AdamStruct, SgdStruct } from "../../ffi/structs.ts";
import type { Backend } from "../backends.ts";
import { checkNumber, readOptions } from "../checks.ts";
import {
  CROSS_ENTROPY_KEYS,
  type CrossEntropy,
  type CrossEntropyOptions,
} from "../cross_entropy.ts";
import { MARGIN_KEYS, type MarginOptions } from "../kinds.ts";
import { type LambdaSchedule, SCHEDULE_KEYS } from "../schedule.ts";

export { checkOptimizer } from "./optimizer_options.ts";

/** SGD as PyTorch defines it (dampening 0). */
export interface SgdOptions {
  /** "sgd" (the default). */
  type?: "sgd";
  /** The learning rate, >= 0. */
  lr: number;
  /** Momentum, >= 0 (0 by default: plain SGD). */
  momentum?: number;
  /** L2 weight decay added to the gradient, >= 0 (0 by default). */
  weightDecay?: number;
  /** Nesterov momentum (needs momentum > 0); false by default. */
  nesterov?: boolean;
  /** torch's clip_grad_norm_ on dL/dW before the update: the largest total 2-norm, > 0. */
  clipNorm?: number;
}

/**
 * Adam or AdamW as PyTorch defines them (torch.optim.Adam, torch.optim.AdamW): L2 weight decay
 * added to the gradient for "adam", decoupled (W scaled by 1 - lr·weightDecay) for "adamw".
 */
export interface AdamOptions {
  /** "adam" or "adamw". */
  type: "adam" | "adamw";
  /** The learning rate, >= 0 (1e-3 by default). */
  lr?: number;
  /** β1 and β2, each in [0, 1) ([0.9, 0.999] by default). */
  betas?: [number, number];
  /** Added to the denominator, >= 0 (1e-8 by default). */
  eps?: number;
  /** >= 0: 0 by default for "adam", 0.01 for "adamw". */
  weightDecay?: number;
  /** The AMSGrad variant (false by default). */
  amsgrad?: boolean;
  /** torch's clip_grad_norm_ on dL/dW before the update: the largest total 2-norm, > 0. */
  clipNorm?: number;
}

/** A head's optimizer: SGD (the default), Adam or AdamW. */
export type OptimizerOptions = SgdOptions | AdamOptions;

/** SGD's settings, resolved. */
export interface SgdSettings {
  /** "sgd". */
  type: "sgd";
  /** The learning rate of a step without its own. */
  lr: number;
  /** Momentum (0: plain SGD). */
  momentum: number;
  /** L2 weight decay added to the gradient. */
  weightDecay: number;
  /** Nesterov momentum. */
  nesterov: boolean;
  /** The largest total 2-norm of dL/dW; present when clipping. */
  clipNorm?: number;
}

/** Adam's or AdamW's settings, resolved. */
export interface AdamSettings {
  /** "adam" (L2 into the gradient) or "adamw" (decoupled decay). */
  type: "adam" | "adamw";
  /** The learning rate of a step without its own. */
  lr: number;
  /** β1 and β2. */
  betas: [number, number];
  /** Added to the denominator. */
  eps: number;
  /** The weight decay. */
  weightDecay: number;
  /** The AMSGrad variant. */
  amsgrad: boolean;
  /** The largest total 2-norm of dL/dW; present when clipping. */
  clipNorm?: number;
}

/** A head's optimizer settings, resolved: every option with its default. */
export type OptimizerSettings = SgdSettings | AdamSettings;

/**
 * What a step does when its loss or a gradient is not finite: skip the update (the default),
 * throw a RangeError, or apply it as computed.
 */
export type NonFinitePolicy = "skip" | "throw" | "apply";

/** Options of {@link MarginHead}. */
export interface HeadOptions extends MarginOptions, Partial<LambdaSchedule>, CrossEntropyOptions {
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
  /** SGD (by default { lr: 0.01 }), Adam or AdamW. */
  optimizer?: OptimizerOptions;
  /** Initial weights, C·D elements of the dtype (copied in); else drawn from `seed`. */
  weights?: FloatArray;
  /** The seed of the initial weights, uniform in ±1/√D (0 by default). */
  seed?: number;
  /** Float32 matrix products: "exact" (the default), "tf32" or "bf16" (CUDA sm_80+). */
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
  /**
   * Partial FC's class sampling, 0 < r <= 1 (1 by default: every class): a step uses the classes
   * that are labels in its batch and others drawn uniformly without replacement per shard, up to
   * max(ceil(r · C_shard), the shard's positives), from a generator seeded by `seed` and kept in
   * the state. The loss and dL/dW are over those; the optimizer updates all of W (dL/dW zero on
   * the rest). Not with the cross-entropy options.
   */
  sampleRate?: number;
  /**
   * "mpi": this process is one rank of an MPI job (`mpirun -np K`), holding shard `rank` of the
   * classes on its backend; each step gathers the ranks' batches (Partial FC's model
   * parallelism). Needs Open MPI at run time (libmpi.so.40). "nccl": the same on CUDA backends,
   * the collectives through NCCL (libnccl.so.2 at run time, `LSOFTMAX_NCCL` another path) on the
   * rank's device, the rendezvous through MPI.
   */
  distributed?: "mpi" | "nccl";
}

/** What a step takes besides its batch. */
export interface StepOptions {
  /** This step's learning rate (the optimizer's by default). */
  lr?: number;
  /**
   * Add this micro-batch's dL/dW (as its rows' share of the mean over every micro-batch's rows)
   * and leave W as it is, for the next step without it to apply the sum: the result equals one
   * step on the concatenated batch. The micro-batches belong to that step: its λ, one iteration
   * in all (counted when applied). A micro-batch returns its own mean loss and the dL/dx of it.
   * AdaFace and CurricularFace take each micro-batch's own batch statistics, each moving the state
   * the next one starts from (docs/math.md).
   */
  accumulate?: boolean;
}

/** A step's options, checked: its learning rate and whether it only accumulates dL/dW. */
export interface StepSettings {
  lr: number;
  accumulate: boolean;
}

/** A step's options: `lr` (the optimizer's by default) and `accumulate` (false by default). */
export function stepSettings(
  optimizer: OptimizerSettings,
  options: unknown,
  iteration: number,
): StepSettings {
  if (iteration >= Number.MAX_SAFE_INTEGER) {
    throw new RangeError(
      `iteration: expected below Number.MAX_SAFE_INTEGER to count one more exactly, got ` +
        `${iteration}`,
    );
  }
  const o = readOptions("options", options, ["lr", "accumulate"]);
  const lr = o.lr === undefined ? optimizer.lr : checkNumber("lr", o.lr, 0);
  const accumulate = o.accumulate ?? false;
  if (typeof accumulate !== "boolean") {
    throw new TypeError(`accumulate: expected true or false, got ${describe(accumulate)}`);
  }
  return { lr, accumulate };
}

/** A step's SGD struct from the settings and the step's learning rate. */
export function sgdStruct(optimizer: SgdSettings, lr: number): SgdStruct {
  const { momentum, weightDecay, nesterov } = optimizer;
  return { lr, momentum, weightDecay, nesterov: nesterov ? 1 : 0, first: 0, nonfinite: 0 };
}

/** A step's Adam struct: update number `step` (1 first), the gradient's factor `gradScale`. */
export function adamStruct(
  optimizer: AdamSettings,
  lr: number,
  step: number,
  gradScale: number,
): AdamStruct {
  return {
    lr,
    beta1: optimizer.betas[0],
    beta2: optimizer.betas[1],
    eps: optimizer.eps,
    weightDecay: optimizer.weightDecay,
    gradScale,
    step,
    decoupled: optimizer.type === "adamw" ? 1 : 0,
    amsgrad: optimizer.amsgrad ? 1 : 0,
    nonfinite: 0,
  };
}

/** Where {@link MarginHead.load} puts a saved head, instead of where it was. */
export type HeadPlacement = Pick<
  HeadOptions,
  "backend" | "precision" | "workspace" | "distributed"
>;

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
  /** Adam and AdamW only: the updates applied (torch's `step`; skipped steps not counted). */
  optimizerStep?: number;
  /** Adam and AdamW only: torch's `exp_avg` [C, D] (zeros before the first update). */
  expAvg?: FloatArray | null;
  /** Adam and AdamW only: torch's `exp_avg_sq` [C, D]. */
  expAvgSq?: FloatArray | null;
  /** Adam and AdamW with amsgrad only: torch's `max_exp_avg_sq` [C, D]; else null. */
  maxExpAvgSq?: FloatArray | null;
  /** With sampleRate < 1 only: the class sampler's generator, four uint32 words. */
  sampler?: [number, number, number, number];
}

/** Adam's state in a {@link HeadState}. */
export interface AdamState {
  optimizerStep: number;
  expAvg: FloatArray;
  expAvgSq: FloatArray;
  maxExpAvgSq: FloatArray | null;
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
  /** With sampleRate < 1: the global class ids the step used, ascending. */
  sampled?: Int32Array;
}

export const HEAD_KEYS = [
  "classes",
  "features",
  ...MARGIN_KEYS,
  ...SCHEDULE_KEYS,
  ...CROSS_ENTROPY_KEYS,
  "dtype",
  "backend",
  "optimizer",
  "weights",
  "seed",
  "precision",
  "workspace",
  "iteration",
  "nonFinite",
  "sampleRate",
  "distributed",
] as const;

export function checkNonFinite(v: unknown): NonFinitePolicy {
  if (v === undefined || v === "skip" || v === "throw" || v === "apply") return v ?? "skip";
  throw new RangeError(`nonFinite: expected "skip", "throw" or "apply", got ${describe(v)}`);
}

/** Partial FC's sampling rate: a number in (0, 1], 1 by default; not with the cross-entropy options. */
export function checkSampleRate(v: unknown, ce: CrossEntropy): number {
  if (v === undefined) return 1;
  if (typeof v !== "number" || !(v > 0 && v <= 1)) {
    throw new RangeError(`sampleRate: expected a number in (0, 1], got ${describe(v)}`);
  }
  if (v < 1) {
    const given = [
      ce.labelSmoothing !== 0 ? "labelSmoothing" : "",
      ce.classWeights !== undefined ? "classWeights" : "",
      ce.ignoreIndex !== undefined ? "ignoreIndex" : "",
    ].filter((name) => name !== "");
    if (given.length > 0) {
      throw new TypeError(
        `sampleRate: expected 1 with ${given.join(", ")} (class sampling takes plain ` +
          `cross-entropy), got ${v}`,
      );
    }
  }
  return v;
}

/** The processes of a head: none (one process), "mpi" or "nccl"; not with a backend list. */
export function checkDistributed(v: unknown, backend: unknown): "mpi" | "nccl" | undefined {
  if (v === undefined) return undefined;
  if (v !== "mpi" && v !== "nccl") {
    throw new RangeError(`distributed: expected "mpi" or "nccl" (or none), got ${describe(v)}`);
  }
  if (Array.isArray(backend)) {
    throw new TypeError(
      `backend: expected one backend per rank with distributed: "${v}", got a list of ${backend.length}`,
    );
  }
  return v;
}

export function checkDType(v: unknown): FloatDType {
  if (v === undefined || v === "float32" || v === "float64") return v ?? "float32";
  throw new RangeError(`dtype: expected "float32" or "float64", got ${describe(v)}`);
}

/** Initial weights: C·D elements of the head's dtype (C·K·D with K sub-centers a class). */
export function checkWeights(
  v: unknown,
  dtype: FloatDType,
  classes: number,
  features: number,
  subcenters = 1,
): FloatArray | undefined {
  if (v === undefined) return undefined;
  if (floatDType(v) !== dtype) {
    throw new TypeError(
      `weights: expected a ${floatArrayName(dtype)} (dtype), got ${describe(v)}`,
    );
  }
  const count = classes * subcenters * features, got = elementCount(v as FloatArray);
  if (got !== count) {
    const of = subcenters === 1
      ? `classes * features = ${classes} * ${features}`
      : `classes * subcenters * features = ${classes} * ${subcenters} * ${features}`;
    throw new RangeError(`weights: expected ${of} = ${count} elements, got ${got}`);
  }
  return v as FloatArray;
}
