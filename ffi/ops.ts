// The ops of the C ABI as data: each op's symbols and its arguments after the context, in ABI
// order: the call's scalars and structs by name, and its tensors with the name a caller knows
// each by and its size. Every native op call goes through NativeContext (context.ts), which
// builds the arguments from this table. Adding an op is one entry here and one in symbols.ts.

import type { Symbols } from "./symbols.ts";

/**
 * A tensor's size in rows and columns of the call's sizes ("classes": C, the c rows of W over
 * the sub-centers K per class; c where K is 1).
 */
export type Dim = "n" | "d" | "c" | "classes" | "k" | "count" | 1 | 2;

/** One tensor of an op: the name errors use, whether the op writes it, its shape. */
export interface TensorSpec {
  readonly name: string;
  readonly output: boolean;
  /** The element type when not the call's float dtype. */
  readonly type?: "int32" | "float64";
  /** An output the caller may leave out by passing null (the native side then skips it). */
  readonly optional?: true;
  /** Host memory whatever the context (an op's host-side result or source). */
  readonly host?: true;
  readonly rows: Dim;
  readonly cols: Dim;
}

/**
 * An argument that is not a tensor: the dtype code, a size of the call (as int64), the byte count
 * of the op's host tensor, or an ABI struct encoded from the call.
 */
export type Scalar =
  | "dtype"
  | "n"
  | "d"
  | "c"
  | "k"
  | "count"
  | "bytes"
  | "margin"
  | "args"
  | "sgd"
  | "adam"
  | "alpha"
  | "beta";

/**
 * An op: its symbol on context memory, the symbol on host arrays where a CPU context takes them
 * directly, the nonblocking twin where there is one, and its arguments after the context.
 */
export interface OpSpec {
  readonly device: keyof Symbols;
  readonly host?: keyof Symbols;
  readonly async?: keyof Symbols;
  readonly args: readonly (Scalar | TensorSpec)[];
  /** The tensors of `args`, in order. */
  readonly tensors: readonly TensorSpec[];
  /** The index among the tensors of the one whose bytes "bytes" counts (a host tensor), or -1. */
  readonly counted: number;
}

const tensor = (name: string, rows: Dim, cols: Dim, more: Partial<TensorSpec> = {}) =>
  ({ name, output: false, rows, cols, ...more }) as TensorSpec;
const out = (name: string, rows: Dim, cols: Dim, more: Partial<TensorSpec> = {}) =>
  tensor(name, rows, cols, { output: true, ...more });
const rows = (name: string, output: boolean) => tensor(name, "n", 1, { output, type: "float64" });

function op(spec: Omit<OpSpec, "tensors" | "counted">): OpSpec {
  const tensors = spec.args.filter((a): a is TensorSpec => typeof a !== "string");
  return { ...spec, tensors, counted: tensors.findIndex((t) => t.host) };
}

const X = tensor("x", "n", "d");
const W = tensor("w", "c", "d");
const LABELS = tensor("labels", "n", 1, { type: "int32" });
const GRAD_X = out("outX", "n", "d", { optional: true });
const GRAD_W = out("outW", "c", "d", { optional: true });
// What every margin op takes first: dtype, n, d, c, the margin; the fused loss adds its args.
const HEAD = ["dtype", "n", "d", "c", "margin"] as const;
const LOSS_HEAD = [...HEAD, "args", X, W, LABELS] as const;
// An optimizer's update: W in place from its gradient, and the non-finite check's flag (host).
const STEP_W = [out("w", "count", 1), tensor("grad", "count", 1)] as const;
const FLAG = out("nonfinite", 1, 1, { type: "int32", host: true, optional: true });

/** The ops, by the name the TypeScript side calls them. */
export const OPS = {
  forward: op({
    device: "lsm_forward",
    host: "lsm_forward_host",
    args: [...HEAD, X, W, LABELS, out("out", "n", "c")],
  }),
  backward: op({
    device: "lsm_backward",
    host: "lsm_backward_host",
    args: [
      ...HEAD,
      X,
      W,
      LABELS,
      tensor("gradLogits", "n", "c"),
      out("outX", "n", "d"),
      out(
        "outW",
        "c",
        "d",
      ),
    ],
  }),
  // forward and backward of every kind with lsm_loss_args (the adaptive kinds' state comes back
  // through it): the logits [n, C] and MagFace's regulariser [n], and their gradients.
  forwardArgs: op({
    device: "lsm_forward_args",
    host: "lsm_forward_args_host",
    args: [
      ...LOSS_HEAD,
      out("out", "n", "classes"),
      out("regulariser", "n", 1, { type: "float64", optional: true }),
    ],
  }),
  backwardArgs: op({
    device: "lsm_backward_args",
    host: "lsm_backward_args_host",
    args: [
      ...LOSS_HEAD,
      tensor("gradLogits", "n", "classes"),
      tensor("gradRegulariser", "n", 1, { type: "float64", optional: true }),
      out("outX", "n", "d"),
      out("outW", "c", "d"),
    ],
  }),
  loss: op({
    device: "lsm_loss",
    host: "lsm_loss_host",
    async: "lsm_loss_async",
    args: [...LOSS_HEAD, rows("rowLoss", true), GRAD_X, GRAD_W],
  }),
  lossPartials: op({
    device: "lsm_loss_partials",
    host: "lsm_loss_partials_host",
    async: "lsm_loss_partials_async",
    args: [
      ...LOSS_HEAD,
      rows("rowMax", true),
      rows("rowSum", true),
      rows("target", true),
      // With label smoothing only (left out, or null, otherwise).
      tensor("rowSmooth", "n", 1, { output: true, type: "float64", optional: true }),
    ],
  }),
  lossGradients: op({
    device: "lsm_loss_gradients",
    host: "lsm_loss_gradients_host",
    async: "lsm_loss_gradients_async",
    args: [...LOSS_HEAD, rows("lse", false), GRAD_X, GRAD_W],
  }),
  // CurricularFace on class shards: each owned row's c_iy and T_i ([2, n]; 0 elsewhere).
  lossTargets: op({
    device: "lsm_loss_targets",
    host: "lsm_loss_targets_host",
    args: [...LOSS_HEAD, tensor("rowTargets", "n", 2, { output: true, type: "float64" })],
  }),
  topk: op({
    device: "lsm_topk",
    args: [
      ...HEAD,
      "k",
      X,
      W,
      out("indices", "n", "k", { type: "int32" }),
      out("scores", "n", "k"),
    ],
  }),
  sgd: op({
    device: "lsm_sgd_update",
    async: "lsm_sgd_update_async",
    args: [
      "dtype",
      "count",
      "sgd",
      ...STEP_W,
      out("velocity", "count", 1, { optional: true }),
      FLAG,
    ],
  }),
  adam: op({
    device: "lsm_adam_update",
    async: "lsm_adam_update_async",
    args: [
      "dtype",
      "count",
      "adam",
      ...STEP_W,
      out("expAvg", "count", 1),
      out("expAvgSq", "count", 1),
      out("maxExpAvgSq", "count", 1, { optional: true }),
      FLAG,
    ],
  }),
  // y = alpha x + beta y (x may be null when alpha is 0).
  axpby: op({
    device: "lsm_axpby",
    async: "lsm_axpby_async",
    args: ["dtype", "count", "alpha", tensor("x", "count", 1), "beta", out("y", "count", 1)],
  }),
  sumSquares: op({
    device: "lsm_sum_squares",
    async: "lsm_sum_squares_async",
    args: [
      "dtype",
      tensor("values", "count", 1),
      "count",
      out("sum", 1, 1, { type: "float64", host: true }),
    ],
  }),
  sum: op({
    device: "lsm_sum",
    async: "lsm_sum_async",
    args: [
      tensor("values", "count", 1, { type: "float64" }),
      "count",
      out("sum", 1, 1, { type: "float64", host: true }),
    ],
  }),
  // Rows of a [c, d] tensor by a strictly ascending index [k]: gathered into [k, d], or
  // scattered from [k, d] into those rows (the sampled classes of a head).
  gatherRows: op({
    device: "lsm_gather_rows",
    async: "lsm_gather_rows_async",
    args: [
      "dtype",
      "c",
      "d",
      "k",
      tensor("index", "k", 1, { type: "int32" }),
      tensor("src", "c", "d"),
      out("dst", "k", "d"),
    ],
  }),
  scatterRows: op({
    device: "lsm_scatter_rows",
    async: "lsm_scatter_rows_async",
    args: [
      "dtype",
      "c",
      "d",
      "k",
      tensor("index", "k", 1, { type: "int32" }),
      tensor("src", "k", "d"),
      out("dst", "c", "d"),
    ],
  }),
  // Byte copies between a host array and context memory (the byte count is the host array's).
  toContext: op({
    device: "lsm_memcpy_to_context",
    async: "lsm_memcpy_to_context_async",
    args: [out("dst", "count", 1), tensor("src", "count", 1, { host: true }), "bytes"],
  }),
  fromContext: op({
    device: "lsm_memcpy_from_context",
    async: "lsm_memcpy_from_context_async",
    args: [out("dst", "count", 1, { host: true }), tensor("src", "count", 1), "bytes"],
  }),
} as const satisfies Record<string, OpSpec>;
