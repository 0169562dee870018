/**
 * The margin losses of this module inside TensorFlow.js: the fused loss (softmax cross-entropy
 * over the margin logits, with both gradients in one native call) as a scalar `tf.Tensor` built
 * with `tf.customGrad`, so gradients flow back to the features, whatever network made them, and
 * to the class weights (a `tf.Variable`) under `tf.grads`, `tf.variableGrads` or
 * `optimizer.minimize`. It runs on the tfjs `cpu` and `wasm` backends (the values go through host
 * memory; TensorFlow.js tensors are float32).
 *
 * The options pass to the library's {@link loss} (or to the {@link LargeMarginSoftmax} layer)
 * unchanged: every margin kind the library accepts works here as is. {@link MarginLoss} carries
 * the λ schedule; {@link headLoss} keeps the class weights in a {@link MarginHead}, where they
 * train on the device and only the features' gradient comes back to tfjs.
 *
 * @example
 * ```ts
 * import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
 * import { marginLoss } from "./tfjs.ts";
 * const net = tf.sequential({ layers: [tf.layers.dense({ inputShape: [4], units: 2 })] });
 * const w = tf.variable(tf.randomNormal([3, 2])); // C = 3 classes of D = 2
 * const inputs = tf.randomNormal([8, 4]);
 * const labels = new Int32Array([0, 1, 2, 0, 1, 2, 0, 1]);
 * tf.train.sgd(0.1).minimize(() =>
 *   marginLoss(net.apply(inputs) as tf.Tensor2D, w, labels, { margin: 2, lambda: 1 })
 * );
 * ```
 * @module
 */

// A versioned specifier, not the project's import map: the adapter is imported from URLs and from
// files outside this project, and must resolve to the user's own TensorFlow.js.
// deno-lint-ignore no-import-prefix
import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
import {
  type CrossEntropyOptions,
  type FloatArray,
  LargeMarginSoftmax,
  type LayerOptions,
  loss,
  type LossOptions,
  MarginHead,
  type Reduction,
} from "./mod.ts";
import { describe } from "./ffi/arrays.ts";

// The library's types this module's signatures use, so that it documents on its own.
export type {
  AdamOptions,
  AdamSettings,
  AdaptiveState,
  Backend,
  CrossEntropyOptions,
  FloatArray,
  FloatDType,
  HeadOptions,
  HeadState,
  LambdaSchedule,
  LargeMarginSoftmax,
  LayerOptions,
  LossOptions,
  MarginHead,
  MarginKind,
  MarginOptions,
  NonFinitePolicy,
  OpOptions,
  OptimizerOptions,
  OptimizerSettings,
  Precision,
  Reduction,
  SgdOptions,
  SgdSettings,
  StepOptions,
  StepResult,
} from "./mod.ts";

/** A TensorFlow.js tensor (`tf.Tensor` of `@tensorflow/tfjs`). */
export type Tensor = tf.Tensor;
/** A TensorFlow.js tensor of rank 1 (`tf.Tensor1D`). */
export type Tensor1D = tf.Tensor1D;
/** A TensorFlow.js scalar tensor (`tf.Scalar`), what the losses return. */
export type Scalar = tf.Scalar;

/**
 * Options of {@link marginLoss}: those of the library's {@link loss} (margin kind and
 * parameters, backend, reduction "mean" or "sum", the cross-entropy options labelSmoothing,
 * classWeights and ignoreIndex, precision, workspace), less what the adapter sets itself (the
 * feature count and `gradients`).
 */
export type MarginLossOptions = LossOptions extends infer T
  // Distributed over a union (one option type per margin kind), so each keeps its own keys.
  ? T extends unknown ? Omit<T, "features" | "gradients"> : never
  : never;

/** Labels: N class indices, an `Int32Array` or an int32 tensor of shape [N]. */
export type Labels = Int32Array | Tensor1D;

/**
 * The fused margin loss of features [N, D] and class weights [C, D] as a scalar tensor, with
 * gradients for both (through `tf.customGrad`).
 *
 * @param features The features, a float32 tensor [N, D]: the output of any tfjs network.
 * @param weights The class weights, a float32 tensor [C, D], usually a `tf.Variable`.
 * @param labels The N class indices, each in [0, C): an Int32Array or an int32 tensor.
 * @param options The library's loss options (`margin`, `lambda`, `backend`, `reduction`,
 * `labelSmoothing`, `classWeights`, `ignoreIndex`, ...), passed to {@link loss} unchanged but
 * for reduction "none", which a scalar loss cannot take (a RangeError).
 * @returns The loss (the mean over the counted rows unless `reduction: "sum"`), a float32 scalar.
 *
 * @example
 * ```ts
 * import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
 * import { marginLoss } from "./tfjs.ts";
 * const x = tf.tensor2d([[0.5, 1], [-1, 2]]); // N = 2, D = 2
 * const w = tf.variable(tf.tensor2d([[1, 0], [0, 1], [-1, 1]])); // C = 3
 * const labels = new Int32Array([1, 2]);
 * const { value, grads } = tf.variableGrads(() =>
 *   marginLoss(x, w, labels, { margin: 4, lambda: 0.5 })
 * );
 * console.log(value.dataSync()[0], grads[w.name].shape); // the loss, [3, 2]
 * ```
 */
export function marginLoss(
  features: Tensor,
  weights: Tensor,
  labels: Labels,
  options: MarginLossOptions,
): Scalar {
  const { d, y } = checkTensors(features, weights, labels);
  scalarReduction((options as { reduction?: unknown }).reduction);
  return fused(features, weights, (x, w) => loss(x, w, y, { ...options, features: d }));
}

// The adapter's losses are scalars: "none" (a vector with the gradients of its sum) has no
// place there.
function scalarReduction(v: unknown): void {
  if (v !== "none") return;
  throw new RangeError(
    `reduction: expected "mean" or "sum" (the tfjs losses are scalars), got "none"`,
  );
}

/**
 * The stateful variant: the fused loss of an {@link LargeMarginSoftmax} layer, which carries the
 * λ annealing schedule and the iteration (each call advances it, as the layer's forward does).
 * Its options go to the layer unchanged.
 *
 * @example
 * ```ts
 * import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
 * import { MarginLoss } from "./tfjs.ts";
 * using head = new MarginLoss({ margin: 4, base: 1000, gamma: 0.01, power: 2, lambdaMin: 0 });
 * const x = tf.variable(tf.randomNormal([8, 2]));
 * const w = tf.variable(tf.randomNormal([3, 2]));
 * const labels = new Int32Array([0, 1, 2, 0, 1, 2, 0, 1]);
 * tf.train.sgd(0.1).minimize(() => head.loss(x, w, labels));
 * console.log(head.iteration, head.lambda); // 1, λ at step 1
 * ```
 */
export class MarginLoss implements Disposable {
  /** The layer that computes the loss and holds the schedule's state. */
  readonly layer: LargeMarginSoftmax;

  /**
   * A loss at `options.iteration` (0 by default); throws for bad options, as the layer does.
   *
   * @param options The layer's options: margin, λ schedule, iteration, backend, precision.
   */
  constructor(options: LayerOptions) {
    this.layer = new LargeMarginSoftmax(options);
  }

  /** The iteration of the last call (or the one the loss was created at). */
  get iteration(): number {
    return this.layer.iteration;
  }

  /** λ of the last call; before any, λ at the current iteration. */
  get lambda(): number {
    return this.layer.lambda;
  }

  /**
   * The fused loss at the next iteration (or at `options.step`), as a scalar tensor with
   * gradients for features and weights.
   *
   * @param features The features, a float32 tensor [N, D].
   * @param weights The class weights, a float32 tensor [C, D].
   * @param labels The N class indices: an Int32Array or an int32 tensor.
   * @param options `step` (use λ at this step and set the iteration to it), `reduction` ("mean"
   * or "sum"), and the cross-entropy options (`labelSmoothing`, `classWeights`, `ignoreIndex`).
   * @returns The loss, a float32 scalar.
   */
  loss(
    features: Tensor,
    weights: Tensor,
    labels: Labels,
    options: CrossEntropyOptions & { step?: number; reduction?: Reduction } = {},
  ): Scalar {
    const { d, y } = checkTensors(features, weights, labels);
    scalarReduction(options.reduction);
    return fused(
      features,
      weights,
      (x, w) => this.layer.loss(x, w, y, { ...options, features: d }),
    );
  }

  /**
   * Options that rebuild this loss where it left off: `new MarginLoss(loss.toJSON())`.
   *
   * @returns The layer's options with its current iteration.
   */
  toJSON(): LayerOptions {
    return this.layer.toJSON();
  }

  /** Releases the layer's native context. Later calls throw. */
  close(): void {
    this.layer.close();
  }

  /** The same as {@link MarginLoss.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The loss of a {@link MarginHead} as a scalar tensor: the class weights stay in the head (on its
 * device) and each call is one training step of it (the fused loss, then SGD on W where W lives);
 * the gradient flows back to `features` alone, so the network that made them trains with any tfjs
 * optimizer while W trains on the device. The head must be float32 (tfjs tensors are). A batch
 * whose loss or gradients are not finite follows the head's `nonFinite` policy: "skip" leaves W
 * as it was and gives `features` a zero gradient (the loss returned is the non-finite one),
 * "throw" throws the head's RangeError, "apply" passes the values on.
 *
 * @param head The head: its classes, features, margin, optimizer and non-finite policy.
 * @param features The features, a float32 tensor [N, D] with D = `head.features`.
 * @param labels The N class indices, each in [0, head.classes).
 * @param options `lr`: this step's learning rate instead of the head's.
 * @returns The step's loss (mean over samples), a float32 scalar.
 *
 * @example
 * ```ts
 * import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
 * import { MarginHead } from "./mod.ts";
 * import { headLoss } from "./tfjs.ts";
 * using head = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 1, backend: "cpu" });
 * const net = tf.sequential({ layers: [tf.layers.dense({ inputShape: [4], units: 2 })] });
 * const inputs = tf.randomNormal([8, 4]);
 * const labels = new Int32Array([0, 1, 2, 0, 1, 2, 0, 1]);
 * tf.train.adam(0.01).minimize(() => headLoss(head, net.apply(inputs) as tf.Tensor2D, labels));
 * ```
 */
export function headLoss(
  head: MarginHead,
  features: Tensor,
  labels: Labels,
  options: { lr?: number } = {},
): Scalar {
  if (!(head instanceof MarginHead)) {
    throw new TypeError(`head: expected a MarginHead, got ${describe(head)}`);
  }
  if (head.dtype !== "float32") {
    throw new TypeError(
      `head: expected a float32 head (tfjs tensors are float32), got ${head.dtype}`,
    );
  }
  checkFloat2d("features", features);
  if (features.shape[1] !== head.features) {
    throw new RangeError(
      `features: expected a shape [N, ${head.features}] (the head's features), got ` +
        `[${features.shape.join(", ")}]`,
    );
  }
  const y = checkLabels(labels, features.shape[0]);
  const f = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const x = inputs[0] as tf.Tensor;
    const r = head.step(x.dataSync() as Float32Array, y, options);
    return {
      value: tf.scalar(r.loss, "float32"),
      // A skipped step's dL/dx must not reach the layers below either.
      gradFunc: (dy: tf.Tensor) => [
        r.skipped ? tf.zerosLike(x) : tf.mul(tf.tensor(r.gradX, x.shape, "float32"), dy),
      ],
    };
  });
  return f(features) as tf.Scalar;
}

type Fused = (x: Float32Array, w: Float32Array) => {
  loss: number;
  gradX?: FloatArray;
  gradW?: FloatArray;
};

// One native call gives the loss and both gradients; the gradient function only scales them by
// the upstream gradient (a scalar), so a backward pass costs no second native call.
function fused(features: tf.Tensor, weights: tf.Tensor, run: Fused): tf.Scalar {
  // customGrad's inputs are typed as tensors or the save function; ours are the two tensors.
  const f = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, w] = inputs as tf.Tensor[];
    const r = run(x.dataSync() as Float32Array, w.dataSync() as Float32Array);
    if (!r.gradX || !r.gradW) throw new Error("marginLoss: the loss returned no gradients");
    const { gradX, gradW } = r;
    return {
      value: tf.scalar(r.loss, "float32"),
      gradFunc: (dy: tf.Tensor) => [
        tf.mul(tf.tensor(gradX, x.shape, "float32"), dy),
        tf.mul(tf.tensor(gradW, w.shape, "float32"), dy),
      ],
    };
  });
  return f(features, weights) as tf.Scalar;
}

// Shapes and dtypes checked here, where the tensors still have them; the library checks the
// labels' range and the options.
function checkTensors(features: tf.Tensor, weights: tf.Tensor, labels: Labels) {
  checkFloat2d("features", features);
  checkFloat2d("weights", weights);
  const [n, d] = features.shape;
  if (weights.shape[1] !== d) {
    throw new RangeError(
      `weights: expected a shape [C, ${d}] (features have ${d} columns), got ` +
        `[${weights.shape.join(", ")}]`,
    );
  }
  return { d, y: checkLabels(labels, n) };
}

function checkLabels(labels: Labels, n: number): Int32Array {
  let y: Int32Array;
  if (labels instanceof Int32Array) y = labels;
  else if (labels instanceof tf.Tensor) {
    checkLive("labels", labels);
    if (labels.dtype !== "int32" || labels.rank !== 1) {
      throw new TypeError(
        `labels: expected an Int32Array or an int32 tensor of rank 1, got a ${labels.dtype} ` +
          `tensor of shape [${labels.shape.join(", ")}]`,
      );
    }
    y = labels.dataSync() as Int32Array;
  } else {
    throw new TypeError(
      `labels: expected an Int32Array or an int32 tensor, got ${describe(labels)}`,
    );
  }
  if (y.length !== n) {
    throw new RangeError(`labels: expected ${n} labels (one per feature row), got ${y.length}`);
  }
  return y;
}

// A disposed tensor has no data: refused by the argument's name, not tfjs's bare message.
function checkLive(name: string, t: tf.Tensor): void {
  if (t.isDisposed) {
    throw new TypeError(`${name}: expected a live tensor, got a disposed one (tensor.dispose())`);
  }
}

function checkFloat2d(name: string, t: unknown): void {
  if (!(t instanceof tf.Tensor)) {
    throw new TypeError(`${name}: expected a float32 tf.Tensor of rank 2, got ${describe(t)}`);
  }
  checkLive(name, t);
  if (t.dtype !== "float32" || t.rank !== 2) {
    throw new TypeError(
      `${name}: expected a float32 tensor of rank 2, got a ${t.dtype} tensor of shape ` +
        `[${t.shape.join(", ")}]`,
    );
  }
}
