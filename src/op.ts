// The internal op behind forward, backward and the layer: a call's problem checked once, then
// the op's arrays handed to its context in the order the ABI takes them.

import {
  elementCount,
  type FloatArray,
  floatArrayName,
  floatDType,
  newFloatArray,
  typedArrayName,
} from "../ffi/arrays.ts";
import type { Call, Margin, NativeContext, Precision } from "../ffi/context.ts";
import type { OpSpec } from "../ffi/ops.ts";
import { checkInteger, describe } from "./checks.ts";

/** The most elements any tensor (and N·C, N·D, C·D) may have: kernels index with int32. */
export const MAX_ELEMENTS = 2 ** 31 - 1;

/** A checked call with its input arrays. */
export interface Problem extends Call {
  x: FloatArray;
  w: FloatArray;
  labels: Int32Array;
}

export function checkPrecision(v: unknown): Precision {
  if (v === undefined || v === "exact" || v === "tf32") return v ?? "exact";
  throw new RangeError(`precision: expected "exact" or "tf32", got ${describe(v)}`);
}

/**
 * The sizes of a call from its arrays: N from labels, D from x (or `features`), C from w. Label
 * values are checked by the native layer, which reads them.
 */
export function checkProblem(
  x: unknown,
  w: unknown,
  labels: unknown,
  features: unknown,
  margin: Margin,
  precision: Precision,
): Problem {
  const dtype = floatDType(x);
  if (dtype === undefined) {
    throw new TypeError(`x: expected a Float32Array or Float64Array, got ${describe(x)}`);
  }
  if (floatDType(w) !== dtype) {
    throw new TypeError(`w: expected a ${floatArrayName(dtype)} like x, got ${describe(w)}`);
  }
  if (typedArrayName(labels) !== "Int32Array") {
    throw new TypeError(`labels: expected an Int32Array, got ${describe(labels)}`);
  }
  const n = elementCount(labels as Int32Array);
  const xLength = elementCount(x as FloatArray);
  const wLength = elementCount(w as FloatArray);
  if (n === 0) throw new RangeError("labels: expected at least one label, got an empty Int32Array");
  let d: number;
  if (features !== undefined) {
    d = checkInteger("features", features, 1, MAX_ELEMENTS);
    if (xLength !== n * d) {
      throw new RangeError(
        `x: expected labels.length * features = ${n} * ${d} = ${n * d} elements, got ${xLength}`,
      );
    }
  } else {
    if (xLength === 0 || xLength % n !== 0) {
      throw new RangeError(
        `x: expected a non-zero multiple of labels.length (${n}) elements, got ${xLength}`,
      );
    }
    d = xLength / n;
  }
  if (wLength === 0 || wLength % d !== 0) {
    throw new RangeError(
      `w: expected a non-zero multiple of the feature count D = ${d} elements, got ${wLength}`,
    );
  }
  const c = wLength / d;
  for (const [name, value] of [["N*C (logits)", n * c], ["N*D (x)", n * d], ["C*D (w)", c * d]]) {
    if ((value as number) > MAX_ELEMENTS) {
      throw new RangeError(`${name}: expected at most ${MAX_ELEMENTS} elements, got ${value}`);
    }
  }
  return {
    dtype,
    x: x as FloatArray,
    w: w as FloatArray,
    labels: labels as Int32Array,
    n,
    d,
    c,
    margin,
    precision,
  };
}

/**
 * Runs an op: x, w and labels from the problem, the other inputs and the outputs the caller gave
 * from `given` (by the op's names for them), new arrays for outputs not given (null leaves an
 * optional output out). Returns the outputs in the op's order.
 */
export function runOp(
  ctx: NativeContext,
  op: OpSpec,
  p: Problem,
  given: Record<string, unknown>,
): FloatArray[] {
  const arrays: (ArrayBufferView | null)[] = [];
  const outputs: FloatArray[] = [];
  for (const t of op.tensors) {
    let a: unknown = t.name === "x"
      ? p.x
      : t.name === "w"
      ? p.w
      : t.name === "labels"
      ? p.labels
      : given[t.name];
    if (t.output) {
      if (a === undefined) {
        const size = (dim: typeof t.rows) => (dim === 1 ? 1 : p[dim]);
        a = newFloatArray(t.type === "float64" ? "float64" : p.dtype, size(t.rows) * size(t.cols));
      }
      outputs.push(a as FloatArray);
    }
    arrays.push(a as ArrayBufferView | null);
  }
  ctx.run(op, p, arrays);
  return outputs;
}
