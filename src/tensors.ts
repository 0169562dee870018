// The one check of a call's host arrays before native code reads them: the sizes measured from
// x, labels and w, every other array of the op held to them, and no output sharing a byte with
// another array of the call. Label values are checked by the native layer, which reads them.

import {
  bufferOfView,
  byteOffsetOfView,
  describe,
  elementBytes,
  elementCount,
  type FloatArray,
  floatArrayName,
  type FloatDType,
  floatDType,
  newFloatArray,
  typedArrayName,
  type ViewName,
} from "../ffi/arrays.ts";
import type { Dim, OpSpec, TensorSpec } from "../ffi/ops.ts";
import { checkInteger } from "./checks.ts";

/** The most elements any tensor (N·D, C·D, and N·C where an op holds logits) may have. */
export const MAX_ELEMENTS = 2 ** 31 - 1;

/** A call's float dtype and sizes. */
export interface Shape {
  dtype: FloatDType;
  n: number;
  d: number;
  c: number;
  /** The classes C: c rows of W over the sub-centers per class (c when absent). */
  classes?: number;
}

/** A call's host arrays by the op's names for them (x, w, labels, out, gradLogits, outX, ...). */
export type Given = Readonly<Record<string, unknown>>;

// The arrays the sizes are measured from, checked as they are measured.
const MEASURED = new Set(["x", "w", "labels"]);

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

// x holds whole rows of D but not as many as there are labels: the labels' count is wrong.
function labelCount(xLength: number, d: number, n: number): RangeError {
  return new RangeError(
    `labels: expected N = x.length / features = ${xLength} / ${d} = ${xLength / d} labels ` +
      `(one per row of x), got ${n}`,
  );
}

/** The sizes of a call from its arrays: N from labels, D from x (or `features`), C from w. */
function measure(x: unknown, w: unknown, labels: unknown, features: number | undefined): Shape {
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
    d = features;
    if (xLength !== n * d && xLength > 0 && xLength % d === 0) throw labelCount(xLength, d, n);
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
  if (wLength !== 0 && wLength % d !== 0 && features === undefined) {
    // D came from the label count: the labels are as likely wrong as w.
    const g = gcd(xLength, wLength);
    throw new RangeError(
      `labels: expected N = x.length / D labels for a D that w's ${wLength} elements are a ` +
        `multiple of (D = ${g}, the largest, makes N = ${xLength / g}), got ${n}, which makes ` +
        `D = ${xLength} / ${n} = ${d}; pass { features: D } to state D`,
    );
  }
  if (wLength === 0 || wLength % d !== 0) {
    throw new RangeError(
      `w: expected a non-zero multiple of the feature count D = ${d} elements, got ${wLength}`,
    );
  }
  const c = wLength / d;
  // N·C is checked by bindArrays where the op holds an [N, C] tensor: the fused loss holds none.
  if (n * d > MAX_ELEMENTS) {
    throw new RangeError(`N*D (x): expected at most ${MAX_ELEMENTS} elements, got ${n * d}`);
  }
  if (c * d > MAX_ELEMENTS) {
    throw new RangeError(`C*D (w): expected at most ${MAX_ELEMENTS} elements, got ${c * d}`);
  }
  return { dtype, n, d, c };
}

/** The `features` option: the feature count D, when given. */
export function checkFeatures(v: unknown): number | undefined {
  return v === undefined ? undefined : checkInteger("features", v, 1, MAX_ELEMENTS);
}

// Each size read by name: a keyed read would be megamorphic (a small call's cost).
function size(s: Shape, dim: Dim): number {
  switch (dim) {
    case "n":
      return s.n;
    case "d":
      return s.d;
    case "c":
      return s.c;
    case "classes":
      return s.classes ?? s.c;
  }
  return dim as number;
}

function describeCount(s: Shape, t: TensorSpec, count: number): string {
  if (t.cols === 1) return `N = ${count}`;
  const dim = (v: Dim) => v === "classes" ? "C" : String(v).toUpperCase();
  const dims = `${dim(t.rows)}*${dim(t.cols)}`;
  return `${dims} = ${size(s, t.rows)}*${size(s, t.cols)} = ${count}`;
}

function byteEnd(a: ArrayBufferView): number {
  return byteOffsetOfView(a) + elementCount(a) * elementBytes(typedArrayName(a) as ViewName);
}

function overlap(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return byteOffsetOfView(a) < byteEnd(b) && byteOffsetOfView(b) < byteEnd(a);
}

// The reader of an op's tensors from a Given, generated from their names: one named read each (a
// keyed read would be megamorphic, a good part of a small call's cost).
const READERS = new WeakMap<OpSpec, (given: Given) => unknown[]>();
function readerOf(op: OpSpec): (given: Given) => unknown[] {
  let read = READERS.get(op);
  if (read === undefined) {
    const names = op.tensors.map((t) => {
      if (!/^[A-Za-z]\w*$/.test(t.name)) throw new Error(`${t.name}: not an identifier`);
      return `g.${t.name}`;
    });
    read = new Function("g", `return [${names.join(", ")}];`) as (given: Given) => unknown[];
    READERS.set(op, read);
  }
  return read;
}

/**
 * A call's arrays in the op's order, checked. Without a shape, it is measured from x, w and
 * labels (D from `features` when given); with one (a layer's backward, from its forward), x, w
 * and labels must still have it. Every other array must have the element type and exact length
 * the op reads or writes; an output not given is a new array, and null leaves an optional output
 * out. No output may share a byte with another array of the call.
 */
export function bindArrays(
  op: OpSpec,
  shape: Shape | undefined,
  given: Given,
  features?: number,
  subcenters = 1,
): { shape: Shape; arrays: (ArrayBufferView | null)[] } {
  const measured = shape === undefined;
  const s = shape ?? measure(given.x, given.w, given.labels, features);
  if (measured && subcenters > 1) {
    if (s.c % subcenters !== 0) {
      throw new RangeError(
        `w: expected C·K rows (whole classes of subcenters K = ${subcenters}), got ${s.c} rows`,
      );
    }
    s.classes = s.c / subcenters;
  }
  const logits = op.tensors.find((t) => t.rows === "n" && (t.cols === "c" || t.cols === "classes"));
  const classes = logits === undefined ? 0 : size(s, logits.cols);
  if (logits !== undefined && s.n * classes > MAX_ELEMENTS) {
    throw new RangeError(
      `N*C (${logits.name}): expected at most ${MAX_ELEMENTS} elements (this op holds ` +
        `${logits.name} [N, C] = ${s.n}*${classes}; the fused loss does not), got ${s.n * classes}`,
    );
  }
  const float = floatArrayName(s.dtype);
  const arrays: (ArrayBufferView | null)[] = [];
  // Each array's buffer, null where it cannot overlap another (left out, or new here).
  const buffers: (ArrayBufferLike | null)[] = [];
  const values = readerOf(op)(given);
  for (let i = 0; i < op.tensors.length; i++) {
    const t = op.tensors[i];
    const a = values[i];
    const count = size(s, t.rows) * size(s, t.cols);
    if (t.output && a === undefined) {
      arrays.push(newFloatArray(t.type === "float64" ? "float64" : s.dtype, count));
      buffers.push(null);
      continue;
    }
    if (a === null && t.optional) {
      arrays.push(null);
      buffers.push(null);
      continue;
    }
    if (!measured || !MEASURED.has(t.name)) {
      const want: ViewName = t.type === "int32"
        ? "Int32Array"
        : t.type === "float64"
        ? "Float64Array"
        : float;
      if (typedArrayName(a) !== want) {
        throw new TypeError(
          `${t.name}: expected a ${want}${t.type ? "" : " like x"}, got ${describe(a)}`,
        );
      }
      const got = elementCount(a as ArrayBufferView);
      if (got !== count) {
        throw new RangeError(
          `${t.name}: expected ${describeCount(s, t, count)} elements, got ${got}` +
            (t.output ? "" : " (resized or transferred since the last forward)"),
        );
      }
    }
    arrays.push(a as ArrayBufferView);
    buffers.push(bufferOfView(a as ArrayBufferView));
  }
  const k = arrays.length;
  for (let i = 0; i < k; i++) {
    if (!op.tensors[i].output || buffers[i] === null) continue;
    for (let j = 0; j < k; j++) {
      if (j === i || (op.tensors[j].output && j < i) || buffers[i] !== buffers[j]) continue;
      if (overlap(arrays[i]!, arrays[j]!)) {
        throw new RangeError(
          `${op.tensors[i].name}: expected memory apart from ${op.tensors[j].name}, got an overlap`,
        );
      }
    }
  }
  return { shape: s, arrays };
}

/**
 * A head's batch: x of the head's dtype, N·D elements, N from the labels (labels null: from x).
 * The head's arrays are checked here once; what native code reads of them is their bytes.
 */
export function checkBatch(
  x: unknown,
  labels: unknown,
  dtype: FloatDType,
  d: number,
): { n: number } {
  if (floatDType(x) !== dtype) {
    throw new TypeError(
      `x: expected a ${floatArrayName(dtype)} (the head's dtype), got ${describe(x)}`,
    );
  }
  const length = elementCount(x as FloatArray);
  if (labels === null) {
    if (length === 0 || length % d !== 0) {
      throw new RangeError(
        `x: expected a non-zero multiple of features (${d}) elements, got ${length}`,
      );
    }
    return { n: length / d };
  }
  if (typedArrayName(labels) !== "Int32Array") {
    throw new TypeError(`labels: expected an Int32Array, got ${describe(labels)}`);
  }
  const n = elementCount(labels as Int32Array);
  if (n === 0) {
    throw new RangeError("labels: expected at least one label, got an empty Int32Array");
  }
  if (length !== n * d && length > 0 && length % d === 0) throw labelCount(length, d, n);
  if (length !== n * d) {
    throw new RangeError(
      `x: expected labels.length * features = ${n} * ${d} = ${n * d} elements, got ${length}`,
    );
  }
  return { n };
}

/**
 * The `classWeights` option: a Float32Array or Float64Array of C weights (whatever the call's
 * dtype: the loss reads them in float64), each finite and >= 0. Returns a float64 copy, so that
 * what the native call reads is what was checked.
 *
 * @param v The option's value.
 * @param c The number of classes.
 * @returns The weights as a new Float64Array.
 */
export function checkClassWeights(v: unknown, c: number): Float64Array {
  const name = typedArrayName(v);
  if (name !== "Float32Array" && name !== "Float64Array") {
    throw new TypeError(
      `classWeights: expected a Float32Array or Float64Array of C = ${c} weights, got ${
        describe(v)
      }`,
    );
  }
  const a = v as FloatArray;
  if (elementCount(a) !== c) {
    throw new RangeError(`classWeights: expected C = ${c} elements, got ${elementCount(a)}`);
  }
  const out = Float64Array.from(a);
  for (let j = 0; j < c; j++) {
    if (!(out[j] >= 0 && Number.isFinite(out[j]))) {
      throw new RangeError(`classWeights[${j}]: expected a finite number >= 0, got ${out[j]}`);
    }
  }
  return out;
}
