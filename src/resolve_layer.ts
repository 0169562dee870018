// A layer's options and its forward's and loss's: read once, as resolve.ts reads the ops'.

import type { Call, Precision } from "../ffi/context.ts";
import { OPS, type OpSpec } from "../ffi/ops.ts";
import { type Backend, resolveBackend } from "./backends.ts";
import { checkInteger, readOptions } from "./checks.ts";
import { checkMargin, type Margin, MARGIN_KEYS, subcentersOf, withLambda } from "./kinds.ts";
import { type LambdaSchedule, SCHEDULE_KEYS } from "./schedule.ts";
import { checkFeatures, type Given } from "./tensors.ts";
import { checkCrossEntropy, CROSS_ENTROPY_KEYS, type CrossEntropy } from "./cross_entropy.ts";
import {
  bindCall,
  checkIteration,
  checkPrecision,
  checkPrecisionOn,
  checkReduction,
  lossArgs,
  opArgs,
  opOf,
  output,
  type Reduction,
  resolveLambda,
} from "./resolve.ts";

/** A layer's settings: its margin (λ 0, set per step), λ's schedule, where it computes. */
export interface LayerSettings {
  margin: Margin;
  schedule: LambdaSchedule | undefined;
  iteration: number;
  backend: Backend;
  precision: Precision;
}

const LAYER_KEYS = [
  ...MARGIN_KEYS.filter((k) => k !== "lambda"),
  ...SCHEDULE_KEYS,
  "iteration",
  "backend",
  "precision",
] as const;

/** The layer's options: the margin without λ, the schedule for the kinds with λ, and the rest. */
export function resolveLayer(options: unknown): LayerSettings {
  const o = readOptions("options", options, LAYER_KEYS);
  const margin = checkMargin(o, ["lambda"]);
  const schedule = resolveLambda(margin.kind, o, false) as LambdaSchedule | undefined;
  const iteration = checkIteration(o.iteration);
  const backend = (o.backend ?? "auto") as Backend;
  const precision = checkPrecision(o.precision);
  resolveBackend(backend); // a bad backend or "tf32" on the cpu fails now, not at the first forward
  checkPrecisionOn(precision, backend);
  return { margin, schedule, iteration, backend, precision };
}

/**
 * The step a layer's forward or loss runs at: the given one, or one past the iteration (as the
 * Caffe layer counts).
 */
function checkStep(v: unknown, iteration: number): number {
  if (v !== undefined) return checkInteger("step", v, 0, Number.MAX_SAFE_INTEGER);
  if (iteration < Number.MAX_SAFE_INTEGER) return iteration + 1;
  throw new RangeError(
    `iteration: expected below Number.MAX_SAFE_INTEGER to count one more exactly, got ` +
      `${iteration}; pass { step } to choose the step`,
  );
}

const LAYER_CALL_KEYS = {
  forward: ["step", "features", "out"],
  loss: ["step", "features", "reduction", ...CROSS_ENTROPY_KEYS, "outX", "outW"],
} as const;

/** A layer's forward or loss: its options and arrays, at λ of the step (`lambdaAt`). */
export function resolveLayerCall(
  name: "forward" | "loss",
  layer: LayerSettings & { iteration: number; lambdaAt: (step: number) => number },
  arrays: Given,
  options: unknown,
): {
  step: number;
  /** The op a forward runs (the fused loss's for a loss). */
  op: OpSpec;
  call: Call;
  arrays: (ArrayBufferView | null)[];
  reduction: Reduction;
  crossEntropy: CrossEntropy;
  denominator: number;
  subcenters: number;
  state?: Float64Array;
} {
  const o: Partial<Record<string, unknown>> = readOptions(
    "options",
    options,
    LAYER_CALL_KEYS[name],
  );
  const step = checkStep(o.step, layer.iteration);
  const features = checkFeatures(o.features);
  const reduction = checkReduction(o.reduction);
  const margin = withLambda(layer.margin, layer.lambdaAt(step));
  const given = name === "forward"
    ? { ...arrays, out: output(o.out) }
    : { ...arrays, outX: output(o.outX), outW: output(o.outW) };
  const op = name === "forward" ? opOf("forward", margin) : OPS.loss;
  const bound = bindCall(op, margin, layer.precision, given, features);
  if (name === "forward") {
    const crossEntropy = checkCrossEntropy({}, bound.call.c);
    const state = opArgs(margin, bound.call, true);
    return {
      step,
      op,
      ...bound,
      reduction,
      crossEntropy,
      denominator: 1,
      subcenters: subcentersOf(margin),
      ...(state === undefined ? {} : { state }),
    };
  }
  const labels = bound.arrays[2] as Int32Array;
  const r = lossArgs(margin, o, bound.call, labels, reduction);
  return { step, op, ...bound, reduction, ...r };
}
