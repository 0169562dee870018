// The margin layer: the op with the λ annealing state of the Caffe layer (for the kinds with λ),
// on a context of its own. It runs the same internal op as forward() and backward().

import type { FloatArray } from "../ffi/arrays.ts";
import type { Call, NativeContext, Precision } from "../ffi/context.ts";
import { OPS, type OpSpec } from "../ffi/ops.ts";
import { type Backend, openContext } from "./backends.ts";
import { readOptions } from "./checks.ts";
import { type Margin, type MarginKind, type MarginOptions, marginOptions } from "./kinds.ts";
import { type AdaptiveState, adaptiveState, runLoss } from "./loss.ts";
import { bindArrays, type Shape } from "./tensors.ts";
import { checkGradRegulariser, type CrossEntropyOptions, type Reduction } from "./resolve.ts";
import { type LayerSettings, resolveLayer, resolveLayerCall } from "./resolve_layer.ts";
import { lambdaOf, type LambdaSchedule } from "./schedule.ts";

/**
 * Options of {@link LargeMarginSoftmax}: the margin (as for `forward`, without `lambda`), the λ
 * schedule (L-Softmax and A-Softmax only, and required there), state and backend.
 */
export interface LayerOptions extends Omit<MarginOptions, "lambda">, Partial<LambdaSchedule> {
  /** The iteration the layer resumes from (0 for a new layer). */
  iteration?: number;
  /** Where to compute; "auto" by default. */
  backend?: Backend;
  /** Float32 matrix products: "exact" (default), "tf32" or "bf16" (CUDA sm_80+). */
  precision?: Precision;
}

/**
 * The margin layer (any kind, L-Softmax by default) with its λ annealing state. Without a step,
 * each forward first increments the iteration (as the Caffe layer does); with `{ step }` it uses
 * λ at that step (as the TensorFlow L-Softmax op this module reimplements does with its
 * global_step). Kinds without λ (CosFace,
 * ArcFace, combined) take no schedule; their λ reads 0. Backward uses the last forward's inputs
 * and λ: keep those arrays unchanged in between.
 *
 * @example
 * ```ts
 * import { LargeMarginSoftmax } from "./mod.ts";
 * using layer = new LargeMarginSoftmax({
 *   margin: 4, base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0, backend: "cpu",
 * });
 * const x = new Float64Array([1, 2, 3, 4]);
 * const w = new Float64Array([1, 0, 0, 1, 1, 1]);
 * layer.forward(x, w, new Int32Array([0, 2]));
 * const { gradX } = layer.backward(new Float64Array(6).fill(1));
 * const saved = JSON.stringify(layer); // resume later: new LargeMarginSoftmax(JSON.parse(saved))
 * using arc = new LargeMarginSoftmax({ kind: "arcface", scale: 64, margin: 0.5, backend: "cpu" });
 * const { loss } = arc.loss(x, w, new Int32Array([0, 2]));
 * ```
 */
export class LargeMarginSoftmax {
  /** The margin kind. */
  readonly kind: MarginKind;
  /** The kind's `margin` parameter (m); undefined for the combined margin. */
  readonly margin: number | undefined;
  /** The λ schedule; undefined for the kinds without λ. */
  readonly schedule: LambdaSchedule | undefined;
  #margin: Margin;
  /** Where the layer computes, as given. */
  readonly backend: Backend;
  /** The float32 matrix-product precision. */
  readonly precision: Precision;
  #iteration: number;
  #lambda: number | undefined;
  #context: NativeContext | undefined;
  #last:
    | { op: OpSpec; call: Call; shape: Shape; x: unknown; w: unknown; labels: unknown }
    | undefined;
  #closed = false;

  /**
   * A layer at `options.iteration` (0 by default); throws for bad options or backends.
   *
   * @param options The margin (kind and parameters), the λ schedule for the kinds with λ, and
   * optionally iteration, backend, precision.
   */
  constructor(options: LayerOptions) {
    const settings = resolveLayer(options);
    this.kind = settings.margin.kind;
    this.#margin = settings.margin;
    this.schedule = settings.schedule;
    this.margin = marginOptions(this.#margin).margin as number | undefined;
    this.#iteration = settings.iteration;
    this.backend = settings.backend;
    this.precision = settings.precision;
  }

  /** The iteration of the last forward (or the one the layer was created at). */
  get iteration(): number {
    return this.#iteration;
  }

  /** λ of the last forward; before any, λ at the current iteration. */
  get lambda(): number {
    return this.#lambda ?? this.#lambdaAt(this.#iteration);
  }

  #lambdaAt(step: number): number {
    return this.schedule ? lambdaOf(step, this.schedule) : 0;
  }

  #ctx(): NativeContext {
    if (this.#closed) throw new Error("LargeMarginSoftmax: the layer is closed");
    this.#context ??= openContext(this.backend); // its own, closed with the layer
    return this.#context;
  }

  // The layer's settings as a call resolves them, at the current iteration.
  #settings(): LayerSettings & { lambdaAt: (step: number) => number } {
    return {
      margin: this.#margin,
      schedule: this.schedule,
      iteration: this.#iteration,
      backend: this.backend,
      precision: this.precision,
      lambdaAt: (step) => this.#lambdaAt(step),
    };
  }

  /**
   * Logits for x [N, D], w [C, D] and labels [N], and the λ used.
   *
   * @param x Features, row-major, Float32Array or Float64Array.
   * @param w Class weights, row-major, the dtype of x.
   * @param labels N class indices.
   * @param options `step` (use λ at this step and set the iteration to it), `features` (D),
   * `out` (an array of N·C elements to write the logits into).
   * @returns The logits and the λ this forward used.
   */
  forward<T extends FloatArray>(
    x: T,
    w: T,
    labels: Int32Array,
    options: { step?: number; features?: number; out?: T } = {},
  ): { logits: T; regulariser?: Float64Array; lambda: number } & AdaptiveState {
    const ctx = this.#ctx();
    this.#last = undefined; // a failed forward leaves no stale inputs for backward
    const r = resolveLayerCall("forward", this.#settings(), { x, w, labels }, options);
    ctx.run(r.op, r.call, r.arrays);
    this.#iteration = r.step;
    this.#lambda = r.call.margin!.lambda;
    // The backward makes this forward's margins again: its state as it was before the batch.
    const call = r.call.args === undefined
      ? r.call
      : { ...r.call, args: { ...r.call.args, stateOut: 0 } };
    const backward = r.op === OPS.forward ? OPS.backward : OPS.backwardArgs;
    const shape = { ...r.call, classes: r.call.c / r.subcenters };
    this.#last = { op: backward, call, shape, x, w, labels };
    const out: { logits: T; regulariser?: Float64Array; lambda: number } & AdaptiveState = {
      logits: r.arrays[3] as T,
      lambda: this.#lambda,
    };
    if (r.arrays[4]) out.regulariser = r.arrays[4] as Float64Array;
    if (r.state !== undefined) this.#advance(Object.assign(out, adaptiveState(r.call, r.state)));
    return out;
  }

  // The adaptive kinds' state moves on with a step: the next call (and toJSON) starts from it.
  #advance(r: AdaptiveState): void {
    const moved: Partial<Record<"batchMean" | "batchStd" | "t", number>> = {};
    for (const key of ["batchMean", "batchStd", "t"] as const) {
      if (r[key] !== undefined) moved[key] = r[key];
    }
    this.#margin = { kind: this.#margin.kind, struct: { ...this.#margin.struct, ...moved } };
  }

  /**
   * The fused loss (softmax cross-entropy over the margin logits) and its gradients, at the
   * step and λ a forward would use, without the N×C logits. For AdaFace and CurricularFace the
   * layer carries the state: each call starts from the last one's (and `toJSON` keeps it).
   *
   * @param x Features, row-major, Float32Array or Float64Array.
   * @param w Class weights, row-major, the dtype of x.
   * @param labels N class indices.
   * @param options `step`, `features` as for {@link LargeMarginSoftmax.forward}; `reduction`
   * ("mean", "sum" or "none": the row losses as `losses`, with the gradients of their sum); the
   * cross-entropy options (`labelSmoothing`, `classWeights`, `ignoreIndex`) as for `loss()`;
   * `outX`, `outW` arrays to write the gradients into.
   * @returns The loss, the λ used, dL/dx and dL/dw (and `losses` with reduction "none"); the
   * adaptive kinds' updated state (`batchMean`, `batchStd`; `t`).
   */
  loss<T extends FloatArray>(
    x: T,
    w: T,
    labels: Int32Array,
    options: CrossEntropyOptions & {
      step?: number;
      features?: number;
      reduction?: Reduction;
      outX?: T;
      outW?: T;
    } = {},
  ): { loss: number; losses?: Float64Array; lambda: number; gradX: T; gradW: T } & AdaptiveState {
    const ctx = this.#ctx();
    this.#last = undefined;
    const { step, call, arrays, reduction, crossEntropy, denominator, subcenters, state } =
      resolveLayerCall("loss", this.#settings(), { x, w, labels }, options);
    const r = runLoss({
      ...{ call, arrays, contexts: ctx, reduction, crossEntropy, denominator, subcenters },
      ...(state === undefined ? {} : { state }),
      gradients: true,
    });
    this.#iteration = step;
    this.#lambda = call.margin!.lambda;
    const out:
      & { loss: number; losses?: Float64Array; lambda: number; gradX: T; gradW: T }
      & AdaptiveState = {
        loss: r.loss,
        lambda: this.#lambda,
        gradX: r.gradX as T,
        gradW: r.gradW as T,
      };
    if (r.losses !== undefined) out.losses = r.losses;
    for (const key of ["batchMean", "batchStd", "t"] as const) {
      if (r[key] !== undefined) out[key] = r[key];
    }
    this.#advance(out);
    return out;
  }

  /**
   * Gradients for the last forward, given gradLogits = dL/dlogits [N, C].
   *
   * @param gradLogits The loss's gradient with respect to the last forward's logits.
   * @param options `outX` (N·D) and `outW` (C·D) arrays to write the gradients into.
   * @returns dL/dx and dL/dw.
   */
  backward<T extends FloatArray>(
    gradLogits: T,
    options: { gradRegulariser?: Float64Array; outX?: T; outW?: T } = {},
  ): { gradX: T; gradW: T } {
    const ctx = this.#ctx();
    if (!this.#last) throw new Error("LargeMarginSoftmax: backward needs a forward first");
    const o = readOptions("options", options, ["gradRegulariser", "outX", "outW"]);
    const { op, x, w, labels, shape, call } = this.#last;
    checkGradRegulariser(o.gradRegulariser, this.kind);
    const given = {
      x,
      w,
      labels,
      gradLogits,
      gradRegulariser: o.gradRegulariser ?? null,
      outX: o.outX ?? undefined,
      outW: o.outW ?? undefined,
    };
    const { arrays } = bindArrays(op, shape, given);
    ctx.run(op, call, arrays);
    const at = arrays.length - 2; // outX, outW come last
    return { gradX: arrays[at] as T, gradW: arrays[at + 1] as T };
  }

  /**
   * Options that rebuild this layer where it left off.
   *
   * @returns The layer's options with its current iteration.
   */
  toJSON(): LayerOptions {
    const { lambda: _, ...margin } = marginOptions(this.#margin);
    return {
      ...margin,
      ...this.schedule,
      iteration: this.#iteration,
      backend: this.backend,
      precision: this.precision,
    };
  }

  /** Releases the layer's native context and saved inputs. Later calls throw. */
  close(): void {
    this.#closed = true;
    this.#last = undefined;
    this.#context?.close();
    this.#context = undefined;
  }

  /** The same as {@link LargeMarginSoftmax.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
