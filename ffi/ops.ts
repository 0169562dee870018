// The ops of the C ABI as data: each op's symbol and its tensors in ABI order, with the name a
// caller knows each by and its size. Adding an op is one entry here and one in symbols.ts.

/** A tensor's size in rows and columns of the problem's n, d and c. */
type Dim = "n" | "d" | "c" | 1;

/** One tensor of an op: the name errors use, whether the op writes it, its shape. */
export interface TensorSpec {
  readonly name: string;
  readonly output: boolean;
  /** The element type when not the call's float dtype. */
  readonly type?: "int32" | "float64";
  /** An output the caller may leave out by passing null (the native side then skips it). */
  readonly optional?: true;
  readonly rows: Dim;
  readonly cols: Dim;
}

/**
 * An op: its device symbol (context memory), its host symbol (CPU arrays), whether it takes the
 * fused loss's args after the margin, its tensors.
 */
export interface OpSpec {
  readonly device: string;
  readonly host: string;
  readonly args?: true;
  readonly tensors: readonly TensorSpec[];
}

const input = (name: string, rows: Dim, cols: Dim): TensorSpec => ({
  name,
  output: false,
  rows,
  cols,
});
const output = (name: string, rows: Dim, cols: Dim): TensorSpec => ({
  name,
  output: true,
  rows,
  cols,
});
const X = input("x", "n", "d");
const W = input("w", "c", "d");
const LABELS: TensorSpec = { name: "labels", output: false, type: "int32", rows: "n", cols: 1 };
const rows = (name: string, output: boolean): TensorSpec => ({
  name,
  output,
  type: "float64",
  rows: "n",
  cols: 1,
});
const GRAD_X: TensorSpec = { name: "outX", output: true, optional: true, rows: "n", cols: "d" };
const GRAD_W: TensorSpec = { name: "outW", output: true, optional: true, rows: "c", cols: "d" };

/** The ops, by the name the TypeScript side calls them. */
export const OPS = {
  forward: {
    device: "lsm_forward",
    host: "lsm_forward_host",
    tensors: [X, W, LABELS, output("out", "n", "c")],
  },
  backward: {
    device: "lsm_backward",
    host: "lsm_backward_host",
    tensors: [
      X,
      W,
      LABELS,
      input("gradLogits", "n", "c"),
      output("outX", "n", "d"),
      output(
        "outW",
        "c",
        "d",
      ),
    ],
  },
  loss: {
    device: "lsm_loss",
    host: "lsm_loss_host",
    args: true,
    tensors: [X, W, LABELS, rows("rowLoss", true), GRAD_X, GRAD_W],
  },
  lossPartials: {
    device: "lsm_loss_partials",
    host: "lsm_loss_partials_host",
    args: true,
    tensors: [X, W, LABELS, rows("rowMax", true), rows("rowSum", true), rows("target", true)],
  },
  lossGradients: {
    device: "lsm_loss_gradients",
    host: "lsm_loss_gradients_host",
    args: true,
    tensors: [X, W, LABELS, rows("lse", false), GRAD_X, GRAD_W],
  },
} as const satisfies Record<string, OpSpec>;
