// Options to a resolved call: every public entry (forward, backward, loss, the layer, MarginHead,
// and through them the TensorFlow.js adapter) reads its options here, once, into what the native
// call takes: the kind and its lsm_margin, the dtype and sizes (from the arrays, checked once:
// tensors.ts), the context or contexts, the outputs, precision, reduction, gradients and the
// workspace. Each option's check is beside it: the call's options below, the margin's in its
// kind's row (kinds.ts), λ's schedule in schedule.ts, the head's own in head/options.ts.

import type { Call, NativeContext, Precision } from "../ffi/context.ts";
import { OPS, type OpSpec } from "../ffi/ops.ts";
import { resolveBackend, sharedContext } from "./backends.ts";
import { checkInteger, describe, isPlain, type OwnOptions, readOptions } from "./checks.ts";
import { typedArrayName } from "../ffi/arrays.ts";
import {
  checkMargin,
  hasLambda,
  isAdaptive,
  KINDS,
  type Margin,
  MARGIN_KEYS,
  type MarginKind,
  subcentersOf,
} from "./kinds.ts";
import { checkSchedule, type LambdaSchedule, SCHEDULE_KEYS } from "./schedule.ts";
import { bindArrays, checkFeatures, type Given } from "./tensors.ts";
import {
  checkCrossEntropy,
  CROSS_ENTROPY_KEYS,
  type CrossEntropy,
  crossEntropyArgs,
} from "./cross_entropy.ts";

export type { CrossEntropy, CrossEntropyOptions } from "./cross_entropy.ts";

/**
 * How the row losses combine: their (weighted) mean (the default), their sum, or none (the row
 * losses themselves, with the gradients of their sum).
 */
export type Reduction = "mean" | "sum" | "none";

export function checkPrecision(v: unknown): Precision {
  if (v === undefined || v === "exact" || v === "tf32" || v === "bf16") return v ?? "exact";
  throw new RangeError(`precision: expected "exact", "tf32" or "bf16", got ${describe(v)}`);
}

/**
 * "tf32" or "bf16" where a backend is the CPU: the same RangeError from every entry (loss, the ops, the
 * layer, the head), before any context is opened.
 */
export function checkPrecisionOn(precision: Precision, backend: unknown): void {
  if (precision === "exact") return;
  for (const b of Array.isArray(backend) ? backend : [backend]) {
    if (resolveBackend(b).kind !== "cpu") continue;
    throw new RangeError(
      `precision: expected "exact" on the cpu ("${precision}" needs a CUDA device of compute ` +
        `capability 8.0+), got "${precision}" with backend ${
          JSON.stringify(b ?? "auto")
        }, which is ` +
        `the cpu here`,
    );
  }
}

// An output option: null or undefined both mean "a new array" (given arrays are checked after).
export const output = (v: unknown) => (v === null ? undefined : v);

export function checkReduction(v: unknown): Reduction {
  if (v === undefined || v === "mean" || v === "sum" || v === "none") return v ?? "mean";
  throw new RangeError(`reduction: expected "mean", "sum" or "none", got ${describe(v)}`);
}

function checkGradients(v: unknown): boolean {
  if (v === undefined || typeof v === "boolean") return v ?? true;
  throw new TypeError(`gradients: expected true or false, got ${describe(v)}`);
}

export function checkWorkspace(v: unknown): number | undefined {
  return v === undefined ? undefined : checkInteger("workspace", v, 1, Number.MAX_SAFE_INTEGER);
}

/** The `iteration` option of the layer and the head (0 by default). */
export function checkIteration(v: unknown): number {
  return checkInteger("iteration", v ?? 0, 0, Number.MAX_SAFE_INTEGER);
}

/**
 * λ of a kind with λ where it is set per step: a fixed λ (`fixed`: the head) or else the schedule;
 * the layer takes the schedule alone. For the other kinds none of those options may be given.
 */
export function resolveLambda(
  kind: MarginKind,
  o: Partial<Record<string, unknown>>,
  fixed: boolean,
): number | LambdaSchedule | undefined {
  const scheduled = SCHEDULE_KEYS.some((k) => o[k] !== undefined);
  if (!hasLambda(kind)) {
    for (const key of fixed ? ["lambda", ...SCHEDULE_KEYS] : SCHEDULE_KEYS) {
      if (o[key] !== undefined) {
        throw new TypeError(
          `${key}: not an option of kind "${kind}", which has no λ${fixed ? "" : " schedule"}`,
        );
      }
    }
    return undefined;
  }
  if (!fixed) return checkSchedule(o);
  if (o.lambda !== undefined && scheduled) {
    throw new TypeError(
      "lambda: expected either lambda or the schedule (base, gamma, ...), got both",
    );
  }
  if (o.lambda !== undefined || !scheduled) {
    return KINDS[kind].options.lambda.check(o.lambda, "lambda");
  }
  return checkSchedule(o);
}

/** A call of one op on one context with its checked host arrays. */
export interface OpCall {
  ctx: NativeContext;
  op: OpSpec;
  call: Call;
  arrays: (ArrayBufferView | null)[];
  /** AdaFace's and CurricularFace's forward: the array their updated state comes back in. */
  state?: Float64Array;
}

const OP_KEYS = [...MARGIN_KEYS, "backend", "features", "precision"] as const;
const KEYS = {
  forward: [...OP_KEYS, "out"],
  backward: [...OP_KEYS, "gradRegulariser", "outX", "outW"],
  loss: [
    ...OP_KEYS,
    "reduction",
    ...CROSS_ENTROPY_KEYS,
    "gradients",
    "workspace",
    "outX",
    "outW",
  ],
} as const;

/** The call of an op at a margin, its arrays bound and checked (the sizes measured from them). */
export function bindCall(
  op: OpSpec,
  margin: Margin,
  precision: Precision,
  given: Given,
  features: number | undefined,
): { call: Call; arrays: (ArrayBufferView | null)[] } {
  const { shape, arrays } = bindArrays(op, undefined, given, features, subcentersOf(margin));
  const { dtype, n, d, c } = shape;
  return { call: { dtype, n, d, c, margin: margin.struct, precision }, arrays };
}

/**
 * The op of a margin's forward or backward: lsm_forward and lsm_backward, or for the adaptive
 * kinds their twins with lsm_loss_args (the fused loss's pre-pass and state; MagFace's
 * regulariser beside the logits).
 */
export function opOf(name: "forward" | "backward", margin: Margin): OpSpec {
  if (!isAdaptive(margin.kind)) return OPS[name];
  return name === "forward" ? OPS.forwardArgs : OPS.backwardArgs;
}

/**
 * The lsm_loss_args of an adaptive kind's op (every class, no cross-entropy option) on its call,
 * and with `state` (a forward of AdaFace or CurricularFace) the array the updated state comes
 * back in.
 */
export function opArgs(margin: Margin, call: Call, state: boolean): Float64Array | undefined {
  if (!isAdaptive(margin.kind)) return undefined;
  const args = { classOffset: 0, totalClasses: call.c / subcentersOf(margin), gradScale: 1 };
  call.args = args;
  if (!state || (margin.kind !== "adaface" && margin.kind !== "curricularface")) return undefined;
  const out = new Float64Array(2);
  call.args = { ...args, stateOut: Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(out))) };
  return out;
}

/** backward's `gradRegulariser`: none but for MagFace, the only kind with a regulariser. */
export function checkGradRegulariser(v: unknown, kind: MarginKind): void {
  if (v === undefined || kind === "magface") return;
  throw new TypeError(
    `gradRegulariser: expected none but with kind "magface" (the only kind with a ` +
      `regulariser), got kind "${kind}"`,
  );
}

/** forward() and backward(): their options and arrays (gradLogits for backward). */
export function resolveOp(
  name: "forward" | "backward",
  arrays: Given,
  options: unknown,
): OpCall {
  const { o, margin, precision, features, op } = opOptions(name, options);
  const given = name === "forward"
    ? {
      x: arrays.x,
      w: arrays.w,
      labels: arrays.labels,
      out: output(o.out),
      regulariser: margin.kind === "magface" ? undefined : null,
    }
    : {
      ...arrays,
      gradRegulariser: o.gradRegulariser ?? null,
      outX: output(o.outX),
      outW: output(o.outW),
    };
  const { call, arrays: bound } = bindCall(op, margin, precision, given, features);
  checkPrecisionOn(precision, o.backend);
  const state = opArgs(margin, call, name === "forward");
  const resolved: OpCall = { ctx: sharedContext(o.backend), op, call, arrays: bound };
  if (state !== undefined) resolved.state = state;
  return resolved;
}

/** An op's options, checked. */
interface OpOptions {
  o: Partial<Record<string, unknown>>;
  margin: Margin;
  precision: Precision;
  features: number | undefined;
  op: OpSpec;
  /** The options object's own keys and their values when it was checked. */
  keys: string[];
  values: unknown[];
}

// The checked options of the op calls by their object, for a caller that passes one object call
// after call: the checks are most of a small call's time. A plain object whose own keys hold the
// same values (numbers, strings, booleans, and typed arrays, which bindArrays checks each call)
// resolves as it did; any other object is checked each call.
// One map per op: one object may serve a forward and its backward in turn.
const CHECKED = {
  forward: new WeakMap<object, OpOptions>(),
  backward: new WeakMap<object, OpOptions>(),
};

function opOptions(name: "forward" | "backward", options: unknown): OpOptions {
  const plain = isPlain(options);
  const keys = plain ? Object.keys(options as object) : [];
  const hit = plain ? CHECKED[name].get(options as object) : undefined;
  let own: OwnOptions | undefined;
  if (hit !== undefined && sameKeys(keys, hit.keys)) {
    // Keys the call knows (they were checked): their values may be read before the checks.
    own = { keys, values: keys.map((k) => (options as Record<string, unknown>)[k]) };
    if (own.values.every((v, i) => Object.is(v, hit.values[i]))) return hit;
  }
  if (hit !== undefined) CHECKED[name].delete(options as object);
  const o = readOptions("options", options, KEYS[name], own);
  const margin = checkMargin(o);
  const precision = checkPrecision(o.precision);
  const features = checkFeatures(o.features);
  const op = opOf(name, margin);
  checkGradRegulariser(o.gradRegulariser, margin.kind);
  const values = keys.map((k) => o[k]);
  const checked = { o, margin, precision, features, op, keys, values };
  if (plain && values.every(comparable)) CHECKED[name].set(options as object, checked);
  return checked;
}

function sameKeys(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// A value the same whenever it is identical: not an object, or a typed array.
const comparable = (v: unknown) =>
  v === null || typeof v !== "object" || typedArrayName(v) !== undefined;

/** A fused loss call: one context, or one per class shard. */
export interface LossCall {
  call: Call;
  /** x, w, labels, rowLoss, outX, outW (the gradients null with `gradients: false`). */
  arrays: (ArrayBufferView | null)[];
  contexts: NativeContext | NativeContext[];
  reduction: Reduction;
  /** The cross-entropy options; `call.args` holds them but for the weights' address. */
  crossEntropy: CrossEntropy;
  /** What the sum of the row losses is divided by (1 unless a mean). */
  denominator: number;
  gradients: boolean;
  /** The rows of W per class (sub-center ArcFace's K; 1 when absent). */
  subcenters?: number;
  /** The adaptive kinds' updated state (AdaFace: mean, std; CurricularFace: t), written by the call. */
  state?: Float64Array;
}

/**
 * A fused loss call's lsm_loss_args: the cross-entropy options over the classes (C·K rows of W for
 * sub-center ArcFace, K per class), and for AdaFace and CurricularFace the array their updated
 * state comes back in.
 */
export function lossArgs(
  margin: Margin,
  o: Partial<Record<string, unknown>>,
  call: Call,
  labels: Int32Array,
  reduction: Reduction,
): {
  subcenters: number;
  classes: number;
  crossEntropy: CrossEntropy;
  denominator: number;
  state?: Float64Array;
} {
  const subcenters = subcentersOf(margin);
  if (call.c % subcenters !== 0) {
    throw new RangeError(
      `w: expected C·K rows (whole classes of subcenters K = ${subcenters}), got ${call.c} rows`,
    );
  }
  const classes = call.c / subcenters;
  const crossEntropy = checkCrossEntropy(o, classes);
  const { args, denominator } = crossEntropyArgs(crossEntropy, labels, classes, reduction);
  if (margin.kind !== "adaface" && margin.kind !== "curricularface") {
    call.args = args;
    return { subcenters, classes, crossEntropy, denominator };
  }
  const state = new Float64Array(2);
  call.args = { ...args, stateOut: Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(state))) };
  return { subcenters, classes, crossEntropy, denominator, state };
}

/** loss(): its options and arrays. */
export function resolveLoss(x: unknown, w: unknown, labels: unknown, options: unknown): LossCall {
  const o = readOptions("options", options, KEYS.loss);
  const margin = checkMargin(o);
  const precision = checkPrecision(o.precision);
  const features = checkFeatures(o.features);
  const workspace = checkWorkspace(o.workspace);
  const reduction = checkReduction(o.reduction);
  const gradients = checkGradients(o.gradients);
  if (!gradients) {
    for (const key of ["outX", "outW"] as const) {
      if (o[key] === undefined || o[key] === null) continue;
      throw new TypeError(
        `${key}: expected none with gradients: false (no gradient is computed), got ` +
          describe(o[key]),
      );
    }
  }
  const outs = gradients
    ? { outX: output(o.outX), outW: output(o.outW) }
    : { outX: null, outW: null };
  const { call, arrays } = bindCall(
    OPS.loss,
    margin,
    precision,
    { x, w, labels, ...outs },
    features,
  );
  call.workspace = workspace;
  const { subcenters, classes, crossEntropy, denominator, state } = lossArgs(
    margin,
    o,
    call,
    arrays[2] as Int32Array,
    reduction,
  );
  checkPrecisionOn(precision, o.backend);
  const contexts = lossContexts(o.backend, classes);
  return {
    call,
    arrays,
    contexts,
    reduction,
    crossEntropy,
    denominator,
    gradients,
    subcenters,
    ...(state === undefined ? {} : { state }),
  };
}

/**
 * The shards of a list of backends: any non-empty list; entries past the C-th get no classes
 * (each is still checked), so that one list fits every class count.
 */
export function shardBackends(backend: unknown[], c: number): unknown[] {
  if (backend.length === 0) {
    throw new RangeError("backend: expected a list of at least 1 backend, got an empty list");
  }
  for (const b of backend.slice(c)) resolveBackend(b);
  return backend.slice(0, c);
}

// The contexts of a loss call's backend: one, or one per shard for a list.
function lossContexts(backend: unknown, c: number): NativeContext | NativeContext[] {
  if (!Array.isArray(backend)) return sharedContext(backend);
  return shardBackends(backend, c).map((b) => sharedContext(b));
}
