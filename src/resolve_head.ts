// MarginHead's options: read once, as resolve.ts reads the other entries'.

import type { FloatArray, FloatDType } from "../ffi/arrays.ts";
import type { Precision } from "../ffi/context.ts";
import type { Backend } from "./backends.ts";
import { checkInteger, readOptions } from "./checks.ts";
import { checkMargin, type Margin, subcentersOf } from "./kinds.ts";
import type { LambdaSchedule } from "./schedule.ts";
import { MAX_ELEMENTS } from "./tensors.ts";
import { checkCrossEntropy, type CrossEntropy } from "./cross_entropy.ts";
import {
  checkDistributed,
  checkDType,
  checkNonFinite,
  checkOptimizer,
  checkSampleRate,
  checkWeights,
  HEAD_KEYS,
  type NonFinitePolicy,
  type OptimizerSettings,
} from "./head/options.ts";
import {
  checkIteration,
  checkPrecision,
  checkPrecisionOn,
  checkWorkspace,
  resolveLambda,
  shardBackends,
} from "./resolve.ts";

/** A head's settings from its options: sizes, dtype, margin (λ 0) and λ, optimizer, backends. */
export interface HeadSettings {
  classes: number;
  /** The rows of W per class (sub-center ArcFace's K; 1 otherwise). */
  subcenters: number;
  features: number;
  dtype: FloatDType;
  margin: Margin;
  /** A fixed λ or its schedule; undefined for the kinds without λ. */
  lambda: number | LambdaSchedule | undefined;
  optimizer: OptimizerSettings;
  precision: Precision;
  workspace: number | undefined;
  seed: number;
  iteration: number;
  weights: FloatArray | undefined;
  nonFinite: NonFinitePolicy;
  /** The cross-entropy options of the head's loss. */
  crossEntropy: CrossEntropy;
  /** Partial FC's class sampling rate (1: every class). */
  sampleRate: number;
  /** "mpi" or "nccl": one rank of an MPI job; undefined: one process. */
  distributed: "mpi" | "nccl" | undefined;
  /** The backend as given, and one per shard. */
  backend: Backend | Backend[];
  backends: unknown[];
}

/** MarginHead's options. */
export function resolveHead(options: unknown): HeadSettings {
  const o = readOptions("options", options, HEAD_KEYS);
  const classes = checkInteger("classes", o.classes, 1, MAX_ELEMENTS);
  const features = checkInteger("features", o.features, 1, MAX_ELEMENTS);
  if (classes * features > MAX_ELEMENTS) {
    throw new RangeError(
      `classes * features: expected at most ${MAX_ELEMENTS} elements, got ${classes * features}`,
    );
  }
  const dtype = checkDType(o.dtype);
  const margin = checkMargin(o, ["lambda"]);
  const subcenters = subcentersOf(margin); // W holds C·K rows
  if (classes * subcenters * features > MAX_ELEMENTS) {
    throw new RangeError(
      `classes * subcenters * features: expected at most ${MAX_ELEMENTS} elements, got ` +
        `${classes * subcenters * features}`,
    );
  }
  const lambda = resolveLambda(margin.kind, o, true);
  const optimizer = checkOptimizer(o.optimizer);
  const precision = checkPrecision(o.precision);
  const workspace = checkWorkspace(o.workspace);
  const seed = o.seed === undefined ? 0 : checkInteger("seed", o.seed, 0, 2 ** 32 - 1);
  const iteration = checkIteration(o.iteration);
  const weights = checkWeights(o.weights, dtype, classes, features, subcenters);
  const nonFinite = checkNonFinite(o.nonFinite);
  const crossEntropy = checkCrossEntropy(o, classes);
  const sampleRate = checkSampleRate(o.sampleRate, crossEntropy);
  const distributed = checkDistributed(o.distributed, o.backend);
  const backends = Array.isArray(o.backend)
    ? shardBackends(o.backend, classes)
    : [o.backend ?? "auto"];
  checkPrecisionOn(precision, backends);
  const backend = (o.backend ?? "auto") as Backend | Backend[];
  return {
    ...{ classes, subcenters, features, dtype, margin, lambda, optimizer, precision, workspace },
    seed,
    ...{ iteration, weights, nonFinite, crossEntropy, sampleRate, distributed, backend, backends },
  };
}
