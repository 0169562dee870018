// A head's state as a safetensors file, field by field and generically, so that a field the state
// gains flows through unchanged: each typed array a tensor (W as torch's `weight`, the momentum
// buffer as torch's SGD `momentum_buffer`, another field by its name in snake_case: `expAvg` ->
// `exp_avg`), each other field a `__metadata__` string of JSON with numbers in the shortest
// decimal that reads back to the same double (and -0 as "-0"). A typed array inside such a field
// (an option of C class weights) becomes a tensor named by its path, `options.classWeights`, the
// JSON holding {"__tensor__": "options.classWeights"} in its place. MarginHead.fromState checks
// the fields; this file checks the file, and that the tensors agree with the options.

import { describe } from "../../ffi/arrays.ts";
import {
  dtypeOf,
  put,
  readSafetensors,
  SafetensorsError,
  type TensorData,
  writeSafetensors,
} from "../safetensors.ts";
import type { HeadState } from "./options.ts";

// The state's tensor fields under torch's names; a field absent from the file loads as null.
const TENSOR_NAMES = new Map([
  ["weights", "weight"],
  ["velocity", "momentum_buffer"],
  ["expAvg", "exp_avg"],
  ["expAvgSq", "exp_avg_sq"],
  ["maxExpAvgSq", "max_exp_avg_sq"],
]);
const FIELD_NAMES = new Map([...TENSOR_NAMES].map(([f, t]) => [t, f]));
// The fields every state has, null where the file has no tensor (Adam's appear with Adam only).
const NULL_WHEN_ABSENT = ["weights", "velocity"];
// torch's per-parameter optimizer buffers (SGD's, then Adam's and AdamW's): W's dtype and shape.
const PARAM_BUFFERS = ["momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
// The metadata keys of the file format itself (its checksum), not state fields.
const RESERVED = "lsoftmax.";
const REF = "__tensor__";

const tensorName = (field: string) =>
  TENSOR_NAMES.get(field) ?? field.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
const fieldName = (tensor: string) =>
  FIELD_NAMES.get(tensor) ?? tensor.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

const isPlainObject = (v: object) => {
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
};

// JSON whose numbers read back bit for bit; typed arrays handed to `hoist` and referred to.
function encode(v: unknown, path: string, hoist: (path: string, data: TensorData) => void): string {
  if (v === null || typeof v === "boolean") return String(v);
  if (typeof v === "number") {
    if (!Number.isFinite(v)) {
      throw new RangeError(`state.${path}: expected a finite number (JSON has no ${v}), got ${v}`);
    }
    return Object.is(v, -0) ? "-0" : String(v); // String: the shortest exact decimal
  }
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "object") {
    if (dtypeOf(v) !== undefined) {
      hoist(path, v as TensorData);
      return `{${JSON.stringify(REF)}:${JSON.stringify(path)}}`;
    }
    if (Array.isArray(v)) {
      return `[${
        v.map((e, i) => {
          if (e === undefined) {
            throw new TypeError(`state.${path}[${i}]: expected a value, got undefined`);
          }
          return encode(e, `${path}[${i}]`, hoist);
        })
      }]`;
    }
    if (isPlainObject(v)) {
      if (Object.hasOwn(v, REF)) {
        throw new TypeError(
          `state.${path}: expected no key "${REF}" (the file's tensor reference)`,
        );
      }
      const parts = Object.entries(v).filter(([, e]) => e !== undefined)
        .map(([k, e]) => `${JSON.stringify(k)}:${encode(e, `${path}.${k}`, hoist)}`);
      return `{${parts}}`;
    }
  }
  throw new TypeError(
    `state.${path}: expected null, a boolean, number, string, array, plain object or typed array, ` +
      `got ${describe(v)}`,
  );
}

// What the file's tensors must agree on with the options, or undefined when they do.
function disagreement(
  tensors: Map<string, { dtype: string; shape: number[] }>,
  options: unknown,
): string | undefined {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return `options: expected the head's options (an object), got ${describe(options)}`;
  }
  const o = options as Record<string, unknown>;
  for (const key of ["classes", "features"]) {
    if (!Number.isSafeInteger(o[key]) || (o[key] as number) < 1) {
      return `options.${key}: expected an integer >= 1, got ${describe(o[key])}`;
    }
  }
  const dtype = o.dtype ?? "float32";
  const expected = dtype === "float32" ? "F32" : dtype === "float64" ? "F64" : undefined;
  if (expected === undefined) {
    return `options.dtype: expected "float32" or "float64", got ${describe(dtype)}`;
  }
  // sub-center ArcFace's W: K rows a class
  const k = o.kind === "subcenter" && Number.isSafeInteger(o.subcenters)
    ? o.subcenters as number
    : 1;
  const shape = [(o.classes as number) * k, o.features as number];
  const w = tensors.get("weight");
  if (w === undefined) {
    return `tensor "weight": expected W [${shape}], got none (tensors: ${
      [...tensors.keys()].join(", ") || "none"
    })`;
  }
  for (const name of ["weight", ...PARAM_BUFFERS]) {
    const t = tensors.get(name);
    if (t === undefined) continue;
    const of = name === "weight" ? `options.dtype ${JSON.stringify(dtype)}` : `weight's`;
    if (t.dtype !== expected) {
      return `tensor "${name}": dtype: expected ${expected} (${of}), got ${t.dtype}`;
    }
    if (t.shape.length !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1]) {
      const by = name !== "weight"
        ? "weight's"
        : k === 1
        ? "options.classes, options.features"
        : "options.classes · options.subcenters, options.features";
      return `tensor "${name}": shape: expected [${shape}] (${by}), got [${t.shape}]`;
    }
  }
  return undefined;
}

/**
 * Writes a head's state to a safetensors file that PyTorch reads (`safetensors.torch.load_file`):
 * W as the tensor `weight` [C, D] in the head's dtype (F32 or F64), the momentum buffer, when
 * the state has one, as `momentum_buffer` [C, D] (torch's SGD name), and every other field
 * (the options with the λ schedule, the iteration, ...) in `__metadata__` as JSON text, numbers
 * exact. The file is written under a temporary name and renamed, so an interrupted save leaves no
 * file that loads, and it holds a checksum that {@link loadHeadState} checks.
 *
 * @param path The file to write (replaced when it exists).
 * @param state What `MarginHead.state()` returned.
 * @returns When the file is in place.
 * @example
 * ```ts
 * import { MarginHead } from "./mod.ts";
 * import { loadHeadState, saveHeadState } from "./src/head/checkpoint.ts";
 * using head = new MarginHead({ classes: 10, features: 4, margin: 2, lambda: 1, backend: "cpu" });
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveHeadState(path, head.state());
 * using again = MarginHead.fromState(await loadHeadState(path));
 * ```
 */
export async function saveHeadState(path: string, state: HeadState): Promise<void> {
  if (typeof state !== "object" || state === null || Array.isArray(state)) {
    throw new TypeError(`state: expected a head's state (an object), got ${describe(state)}`);
  }
  const s = state as unknown as Record<string, unknown>;
  const options = s.options as Record<string, unknown> | undefined;
  const k = options?.kind === "subcenter" ? options.subcenters as number : 1; // K rows a class
  const c = (options?.classes as number) * k, d = options?.features as number;
  const tensors: Record<string, { shape: number[]; data: TensorData }> = Object.create(null);
  const shapes = new Map<string, { dtype: string; shape: number[] }>();
  const add = (name: string, what: string, data: TensorData) => {
    if (name in tensors) throw new TypeError(`${what}: its tensor "${name}" is another field's`);
    const matrix = name === "weight" || PARAM_BUFFERS.includes(name);
    const shape = matrix && data.length === c * d ? [c, d] : [data.length];
    tensors[name] = { shape, data };
    shapes.set(name, { dtype: dtypeOf(data)!, shape });
  };
  const metadata: Record<string, string> = Object.create(null);
  for (const [field, v] of Object.entries(s)) {
    if (field.startsWith(RESERVED)) {
      throw new TypeError(
        `state.${field}: expected a name not starting "${RESERVED}" (the file format's keys)`,
      );
    }
    if (v === undefined || (v === null && TENSOR_NAMES.has(field))) continue;
    if (typeof v === "object" && dtypeOf(v) !== undefined) {
      const name = tensorName(field);
      if (fieldName(name) !== field) {
        throw new TypeError(
          `state.${field}: expected a tensor field's name to read back from its tensor's ` +
            `("${name}" reads as "${fieldName(name)}")`,
        );
      }
      add(name, `state.${field}`, v as TensorData);
    } else {
      metadata[field] = encode(v, field, (p, data) => add(p, `state.${p}`, data));
    }
  }
  if (!("weight" in tensors)) {
    throw new TypeError(
      `state.weights: expected a Float32Array or Float64Array, got ${describe(s.weights)}`,
    );
  }
  const wrong = disagreement(shapes, options);
  if (wrong !== undefined) throw new RangeError(`state: ${wrong}`);
  await writeSafetensors(path, tensors, metadata);
}

/**
 * Reads a head's state from a file of {@link saveHeadState}, for `MarginHead.fromState`. The
 * file is checked whole first (its header, dtypes, shapes, offsets, checksum: see
 * readSafetensors in ../safetensors.ts), then that `weight` is [options.classes,
 * options.features] of options.dtype and the optimizer buffers (`momentum_buffer`; `exp_avg`,
 * `exp_avg_sq`, `max_exp_avg_sq`) have weight's dtype and shape. `fromState` checks the fields
 * themselves. Nothing is returned from a file that fails a check, so there is no half-loaded head.
 *
 * @param path The file to read.
 * @returns The state: each `__metadata__` field parsed, each tensor as its field's typed array
 * (`weight` as `weights`, `momentum_buffer` as `velocity`, null when the file has none).
 * @example
 * ```ts
 * import { MarginHead } from "./mod.ts";
 * import { loadHeadState } from "./src/head/checkpoint.ts";
 * const state = await loadHeadState("head.safetensors");
 * using head = MarginHead.fromState(state);
 * console.log(head.iteration);
 * ```
 */
export async function loadHeadState(path: string): Promise<HeadState> {
  const file = await readSafetensors(path);
  const fail = (what: string): never => {
    throw new SafetensorsError(`${path}: ${what}`);
  };
  const state: Record<string, unknown> = {};
  const referred = new Set<string>();
  for (const [key, text] of Object.entries(file.metadata)) {
    if (key.startsWith(RESERVED)) continue;
    let value: unknown;
    try {
      value = JSON.parse(text, function (this: unknown, _k, v) {
        if (
          typeof v === "object" && v !== null && !Array.isArray(v) &&
          Object.keys(v).length === 1 && typeof v[REF] === "string"
        ) {
          const t = file.tensors.get(v[REF]);
          if (t === undefined) {
            throw new RangeError(`refers to tensor "${v[REF]}", which is absent`);
          }
          referred.add(v[REF]);
          return t.data;
        }
        return v;
      });
    } catch (e) {
      const got = text.length > 60
        ? JSON.stringify(text.slice(0, 60)) + "..."
        : JSON.stringify(text);
      fail(
        `__metadata__."${key}": expected the JSON of a state field, got ${got} (${
          (e as Error).message
        })`,
      );
    }
    put(state, key, value);
  }
  for (const [name, t] of file.tensors) {
    if (referred.has(name)) continue;
    const field = fieldName(name);
    if (Object.hasOwn(state, field)) {
      fail(`tensor "${name}": its field "${field}" is in __metadata__ too`);
    }
    put(state, field, t.data);
  }
  for (const field of NULL_WHEN_ABSENT) if (!Object.hasOwn(state, field)) state[field] = null;
  const wrong = disagreement(file.tensors, state.options);
  if (wrong !== undefined) fail(wrong);
  return state as unknown as HeadState;
}
