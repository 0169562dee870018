/**
 * Large-Margin Softmax (L-Softmax) for Deno: the op of Liu et al. (ICML 2016) computed by a
 * CUDA shared library through FFI, with a CPU backend for machines without a GPU, and the rest
 * of the margin family by the `kind` option: A-Softmax (SphereFace), CosFace, ArcFace and the
 * combined margin ({@link MarginOptions}).
 *
 * For sample i with label y, the non-target logits are the plain inner products W_j·x_i and the
 * target logit is (λ W_y·x_i + |W_y||x_i| ψ(cos θ)) / (1 + λ), ψ(c) = (-1)^k T_m(c) - 2k
 * (docs/math.md, which also has every other kind). Feed the logits to a softmax cross-entropy;
 * pass its gradient back through {@link backward}; or take both at once with {@link loss}.
 *
 * @example
 * ```ts
 * import { LargeMarginSoftmax } from "./mod.ts";
 * const layer = new LargeMarginSoftmax({
 *   margin: 4, base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0,
 * });
 * const x = new Float32Array([1, 2, 3, 4]); // N = 2 samples, D = 2 features
 * const w = new Float32Array([1, 0, 0, 1, 1, 1]); // C = 3 classes
 * const { logits, lambda } = layer.forward(x, w, new Int32Array([0, 2]));
 * const { gradX, gradW } = layer.backward(new Float32Array(logits.length).fill(1));
 * layer.close();
 * using arcface = new LargeMarginSoftmax({ kind: "arcface", scale: 64, margin: 0.5 });
 * console.log(arcface.loss(x, w, new Int32Array([0, 2])).loss);
 * ```
 * @module
 */

import type { FloatArray } from "./ffi/arrays.ts";
import type { Precision } from "./ffi/context.ts";
import { loadLibrary } from "./ffi/library.ts";
import {
  type Backend,
  type BackendsInfo,
  backendsInfo,
  releaseSharedContexts,
} from "./src/backends.ts";
import { checkNumber } from "./src/checks.ts";
import type { MarginOptions } from "./src/kinds.ts";
import { type AdaptiveState, adaptiveState, runLoss } from "./src/loss.ts";
export type { AdaptiveState } from "./src/loss.ts";
import { type CrossEntropyOptions, type Reduction, resolveLoss, resolveOp } from "./src/resolve.ts";
import { checkSchedule, lambdaOf, type LambdaSchedule } from "./src/schedule.ts";

export type { FloatArray, FloatDType } from "./ffi/arrays.ts";
export type { Precision } from "./ffi/context.ts";
export type { Backend, BackendsInfo } from "./src/backends.ts";
export type { LambdaSchedule } from "./src/schedule.ts";
export type { CrossEntropyOptions, Reduction } from "./src/resolve.ts";
export { LargeMarginSoftmax, type LayerOptions } from "./src/layer.ts";
export type { MarginKind, MarginOptions } from "./src/kinds.ts";
export { MarginHead } from "./src/head/head.ts";
export type {
  AdamOptions,
  AdamSettings,
  HeadOptions,
  HeadPlacement,
  HeadState,
  NonFinitePolicy,
  OptimizerOptions,
  OptimizerSettings,
  SgdOptions,
  SgdSettings,
  StepOptions,
  StepResult,
} from "./src/head/options.ts";
export { SafetensorsError } from "./src/safetensors.ts";
export { MAX_ELEMENTS } from "./src/tensors.ts";
export { MAX_MARGIN } from "./src/kinds.ts";

/** Options of {@link forward} and {@link backward}: the margin, and where and how to compute. */
export interface OpOptions extends MarginOptions {
  /** Where to compute; "auto" by default. */
  backend?: Backend;
  /** The feature count D; by default x.length / labels.length. */
  features?: number;
  /**
   * Float32 matrix products: "exact" (IEEE float32, the default), "tf32" (tensor cores with
   * TF32 inputs, about 1e-3 relative) or "bf16" (inputs rounded to bfloat16, float32
   * accumulation, about 4e-3 relative); both on CUDA devices of compute capability 8.0+ only.
   * Float64 calls are always exact.
   */
  precision?: Precision;
}

/**
 * Options of {@link loss}: besides the margin and where to compute, the cross-entropy options
 * of torch's `F.cross_entropy` (`labelSmoothing`, `classWeights`, `ignoreIndex`; see
 * {@link CrossEntropyOptions}) and `reduction` ("none" included).
 */
export interface LossOptions extends Omit<OpOptions, "backend">, CrossEntropyOptions {
  /**
   * Where to compute: a backend, or a list of them to split the classes across (contiguous
   * shards, one per entry; the same backend may repeat; any non-empty list: entries past the
   * C-th get no classes). "auto" by default.
   */
  backend?: Backend | Backend[];
  /**
   * "mean" (the default: the sum over the counted rows divided by their total target weight),
   * "sum", or "none": the row losses as `losses` (0 for ignored rows), `loss` their sum and the
   * gradients those of their sum.
   */
  reduction?: Reduction;
  /** false: the loss alone, no gradients computed (evaluation). true by default. */
  gradients?: boolean;
  /**
   * The most bytes of scratch the call may hold (the context's setting, kept for its later
   * calls): the logits are made in blocks of classes that fit. 64 MiB by default.
   */
  workspace?: number;
}

/**
 * Loads the native library explicitly (else it is found on first use: `LSOFTMAX_LIB`, then
 * `build/liblsoftmax.so` beside this module, or the prebuilt library fetched when this module was
 * imported over http(s)). An explicit path wins over a fetched library, which is then not opened.
 *
 * @param path The library's path; by default `LSOFTMAX_LIB`, then the build beside mod.ts (or the
 * fetched prebuilt library).
 * @returns What {@link backends} returns.
 *
 * @example
 * ```ts
 * import { useLibrary } from "./mod.ts";
 * const info = useLibrary(Deno.env.get("LSOFTMAX_LIB"));
 * console.log(info.library, info.cuda.available);
 * ```
 */
export function useLibrary(path?: string): BackendsInfo {
  loadLibrary(path);
  return backendsInfo();
}

/**
 * What can compute here: the CPU always; each CUDA device with its name, or why there is none.
 *
 * @returns The library's version and path, the CPU, and the CUDA devices or the reason.
 *
 * @example
 * ```ts
 * import { backends } from "./mod.ts";
 * const info = backends();
 * console.log(info.cuda.available ? info.cuda.devices : info.cuda.reason);
 * ```
 */
export function backends(): BackendsInfo {
  return backendsInfo();
}

/**
 * The margin cross-entropy loss and its gradients in one call, without the N×C logits: mean
 * (or sum) over samples of log Σ_j exp(f_ij) − f_iy, f the logits of the margin's kind
 * (L-Softmax by default).
 *
 * @param x Features, a Float32Array or Float64Array of N·D elements.
 * @param w Class weights, the dtype of x, C·D elements.
 * @param labels The N class indices, each in [0, C).
 * @param options The margin (`kind` and its parameters; L-Softmax's `margin` and `lambda` by
 * default); optionally backend (or a list of backends to shard the
 * classes across), features, precision, reduction, the cross-entropy options (labelSmoothing,
 * classWeights, ignoreIndex), gradients, workspace, and `outX` (N·D), `outW` (C·D) arrays to
 * write the gradients into (null or left out: new arrays; none may be given with
 * `gradients: false`).
 * @returns The loss (float64), the row losses as `losses` with reduction "none", and dL/dx,
 * dL/dw unless `gradients` is false; AdaFace's updated `batchMean` and `batchStd`,
 * CurricularFace's updated `t` (also with `gradients: false`).
 *
 * @example
 * ```ts
 * import { loss } from "./mod.ts";
 * const x = new Float32Array([0.5, 1, -1, 2]); // N = 2, D = 2
 * const w = new Float32Array([1, 0, 0, 1, -1, 1]); // C = 3
 * const r = loss(x, w, new Int32Array([1, 2]), { margin: 4, lambda: 0.5 });
 * console.log(r.loss, r.gradX.length, r.gradW.length);
 * const arc = loss(x, w, new Int32Array([1, 2]), { kind: "arcface", scale: 64, margin: 0.5 });
 * console.log(arc.loss);
 * const smooth = loss(x, w, new Int32Array([1, -100]), {
 *   labelSmoothing: 0.1,
 *   classWeights: new Float32Array([1, 2, 0.5]),
 *   ignoreIndex: -100,
 *   reduction: "none",
 * });
 * console.log(smooth.losses);
 * ```
 */
export function loss<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  options: LossOptions & { gradients?: true; outX?: T; outW?: T },
): { loss: number; losses?: Float64Array; gradX: T; gradW: T } & AdaptiveState;
/**
 * The loss alone, for evaluation: with `gradients: false` no gradient is computed.
 *
 * @param x Features, a Float32Array or Float64Array of N·D elements.
 * @param w Class weights, the dtype of x, C·D elements.
 * @param labels The N class indices, each in [0, C).
 * @param options As for the call with gradients, with `gradients: false`.
 * @returns The loss (float64).
 *
 * @example
 * ```ts
 * import { loss } from "./mod.ts";
 * const x = new Float64Array([0.5, 1, -1, 2]);
 * const w = new Float64Array([1, 0, 0, 1, -1, 1]);
 * console.log(loss(x, w, new Int32Array([1, 2]), { margin: 4, lambda: 0.5, gradients: false }).loss);
 * ```
 */
export function loss<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  options: LossOptions & { gradients: false },
): { loss: number; losses?: Float64Array } & AdaptiveState;
export function loss<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  options: LossOptions & { outX?: T; outW?: T },
): { loss: number; losses?: Float64Array; gradX?: T; gradW?: T } & AdaptiveState {
  return runLoss(resolveLoss(x, w, labels, options)) as {
    loss: number;
    losses?: Float64Array;
    gradX?: T;
    gradW?: T;
  } & AdaptiveState;
}

/**
 * The margin logits [N, C] of features x [N, D] for classes w [C, D] (both row-major): L-Softmax
 * by default, any kind of the family with `kind`. The adaptive kinds give the logits their fused
 * loss takes: sub-center ArcFace's C classes from W's C·K rows (each class's largest cosine);
 * AdaFace's and CurricularFace's with the state updated over this batch, returned beside them
 * (pass it to the next call's options); MagFace's with its regulariser per row beside them
 * (λ_g·g(a_i), which its loss adds: the mean of `regulariser` for a mean).
 *
 * @param x Features, a Float32Array or Float64Array of N·D elements.
 * @param w Class weights, the dtype of x, C·D elements (C·K for `kind: "subcenter"`).
 * @param labels The N class indices, each in [0, C).
 * @param options The margin (`kind` and its parameters, as for {@link loss}); optionally
 * backend, features (D), precision, and `out`: an
 * array of N·C elements (dtype of x, apart from the inputs) to write the logits into.
 * @returns The logits, row-major [N, C]; for AdaFace `batchMean` and `batchStd`, for
 * CurricularFace `t` (the state after this batch); for MagFace `regulariser` (N values).
 *
 * @example
 * ```ts
 * import { forward } from "./mod.ts";
 * const x = new Float64Array([0.5, 1, -1, 2]); // N = 2, D = 2
 * const w = new Float64Array([1, 0, 0, 1, -1, 1]); // C = 3
 * const { logits } = forward(x, w, new Int32Array([1, 2]), { margin: 2, lambda: 0 });
 * console.log(logits.length); // 6
 * const ada = forward(x, w, new Int32Array([1, 2]), { kind: "adaface" });
 * console.log(ada.batchMean, ada.batchStd); // the moving averages after this batch
 * ```
 */
export function forward<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  options: OpOptions & { out?: T },
): { logits: T; regulariser?: Float64Array } & AdaptiveState {
  const { ctx, op, call, arrays, state } = resolveOp("forward", { x, w, labels }, options);
  ctx.run(op, call, arrays);
  const out: { logits: T; regulariser?: Float64Array } & AdaptiveState = {
    logits: arrays[3] as T,
  };
  if (arrays[4]) out.regulariser = arrays[4] as Float64Array;
  return state === undefined ? out : Object.assign(out, adaptiveState(call, state));
}

/**
 * The gradients of a loss L with respect to x and w, given gradLogits = dL/dlogits [N, C]: those
 * of {@link forward}'s logits at the same inputs and options (the adaptive kinds' state as given
 * to that forward, so that the margins are its own; the quantities a kind holds constant held so).
 *
 * @param x Features, as for {@link forward}.
 * @param w Class weights, as for {@link forward}.
 * @param labels The N class indices.
 * @param gradLogits dL/dlogits, N·C elements of the dtype of x.
 * @param options As for {@link forward}, with `outX` (N·D) and `outW` (C·D) arrays to write the
 * gradients into instead of `out`; for MagFace `gradRegulariser`, dL/dregulariser (a
 * Float64Array of N; none: L without the regulariser).
 * @returns dL/dx [N, D] and dL/dw [C, D].
 *
 * @example
 * ```ts
 * import { backward } from "./mod.ts";
 * const x = new Float64Array([0.5, 1, -1, 2]);
 * const w = new Float64Array([1, 0, 0, 1, -1, 1]);
 * const g = new Float64Array(6).fill(0.1);
 * const { gradX, gradW } = backward(x, w, new Int32Array([1, 2]), g, { margin: 2, lambda: 0 });
 * console.log(gradX.length, gradW.length); // 4 6
 * ```
 */
export function backward<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  gradLogits: T,
  options: OpOptions & { gradRegulariser?: Float64Array; outX?: T; outW?: T },
): { gradX: T; gradW: T } {
  const { ctx, op, call, arrays } = resolveOp("backward", { x, w, labels, gradLogits }, options);
  ctx.run(op, call, arrays);
  const at = arrays.length - 2; // outX, outW come last
  return { gradX: arrays[at] as T, gradW: arrays[at + 1] as T };
}

/**
 * λ at a step: max(base·(1 + gamma·step)^(-power), lambdaMin), the Caffe layer's schedule.
 *
 * @param step The training step, >= 0.
 * @param schedule base, gamma, power and lambdaMin.
 * @returns λ at that step.
 *
 * @example
 * ```ts
 * import { lambdaAt } from "./mod.ts";
 * const s = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };
 * console.log(lambdaAt(0, s)); // 1000
 * ```
 */
export function lambdaAt(step: number, schedule: LambdaSchedule): number {
  return lambdaOf(checkNumber("step", step, 0), checkSchedule(schedule));
}

/**
 * Closes the contexts shared by {@link forward} and {@link backward} (they reopen on use).
 *
 * @example
 * ```ts
 * import { releaseContexts } from "./mod.ts";
 * releaseContexts();
 * ```
 */
export function releaseContexts(): void {
  releaseSharedContexts();
}
