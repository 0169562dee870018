// A head's state as data: the check of every field of what MarginHead.state() wrote, by name,
// before anything is built, and the JSON-safe form of its arrays: each typed array of a state
// carries a non-enumerable toJSON writing { dtype, shape, base64 } (the bytes little-endian),
// which fromState takes beside the typed array itself.

import {
  describe,
  elementCount,
  type FloatArray,
  floatArrayName,
  type FloatDType,
  floatDType,
  newFloatArray,
} from "../../ffi/arrays.ts";
import { checkInteger } from "../checks.ts";
import type { CrossEntropy, CrossEntropyOptions } from "../cross_entropy.ts";
import { marginOptions } from "../kinds.ts";
import type { HeadSettings } from "../resolve_head.ts";
import { type AdamState, checkOptimizer, type HeadOptions, type HeadState } from "./options.ts";
import type { SamplerState } from "./sampling.ts";

/** The state layout this library writes and reads. */
export const STATE_FORMAT = 1;

const STATE_KEYS = [
  "format",
  "options",
  "iteration",
  "skippedSteps",
  "weights",
  "velocity",
  "optimizerStep",
  "expAvg",
  "expAvgSq",
  "maxExpAvgSq",
  "sampler",
];
const ADAM_KEYS = ["optimizerStep", "expAvg", "expAvgSq", "maxExpAvgSq"];

/** A typed array as JSON: its element type, its shape and its bytes (little-endian) in base64. */
export interface ArrayJSON {
  dtype: FloatDType;
  shape?: number[];
  base64: string;
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** A state's array with the non-enumerable toJSON of its JSON-safe form. */
export function withJSON<T extends FloatArray>(a: T, shape: number[]): T {
  const dtype = floatDType(a)!;
  Object.defineProperty(a, "toJSON", {
    enumerable: false,
    value: (): ArrayJSON => {
      const bytes = new Uint8Array(a.length * a.BYTES_PER_ELEMENT),
        view = new DataView(bytes.buffer);
      for (let e = 0; e < a.length; e++) {
        if (dtype === "float32") view.setFloat32(e * 4, a[e], true);
        else view.setFloat64(e * 8, a[e], true);
      }
      return { dtype, shape, base64: toBase64(bytes) };
    },
  });
  return a;
}

// A state's array: a typed array of the dtype, or its JSON form; `count` elements either way.
function readArray(
  name: string,
  v: unknown,
  dtype: FloatDType,
  shape: number[],
  of = "classes * features",
): FloatArray {
  const count = shape.reduce((a, b) => a * b, 1);
  const expected = `a ${floatArrayName(dtype)} of ${of} = ${count} elements or ` +
    `its JSON form { dtype, shape, base64 }`;
  if (floatDType(v) !== undefined) {
    if (floatDType(v) !== dtype) {
      throw new TypeError(`${name}: expected ${expected}, got ${describe(v)}`);
    }
    const got = elementCount(v as FloatArray);
    if (got !== count) {
      throw new RangeError(`${name}: expected ${count} elements (${expected}), got ${got}`);
    }
    return v as FloatArray;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TypeError(`${name}: expected ${expected}, got ${describe(v)}`);
  }
  const j = v as Record<string, unknown>;
  if (j.dtype !== dtype) {
    throw new TypeError(
      `${name}.dtype: expected ${JSON.stringify(dtype)}, got ${describe(j.dtype)}`,
    );
  }
  if (j.shape !== undefined) {
    const ok = Array.isArray(j.shape) && j.shape.length === shape.length &&
      shape.every((e, k) => (j.shape as unknown[])[k] === e);
    if (!ok) {
      throw new RangeError(
        `${name}.shape: expected [${shape.join(", ")}], got ${
          Array.isArray(j.shape) ? `[${j.shape.join(", ")}]` : describe(j.shape)
        }`,
      );
    }
  }
  if (typeof j.base64 !== "string") {
    throw new TypeError(`${name}.base64: expected a base64 string, got ${describe(j.base64)}`);
  }
  let raw: string;
  try {
    raw = atob(j.base64);
  } catch {
    throw new TypeError(`${name}.base64: expected a base64 string, got one that is not`);
  }
  const size = dtype === "float32" ? 4 : 8;
  if (raw.length !== count * size) {
    throw new RangeError(
      `${name}.base64: expected ${count * size} bytes (${count} elements), got ${raw.length}`,
    );
  }
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  const view = new DataView(bytes.buffer), out = newFloatArray(dtype, count);
  for (let e = 0; e < count; e++) {
    out[e] = dtype === "float32" ? view.getFloat32(e * 4, true) : view.getFloat64(e * 8, true);
  }
  return out;
}

/** A state's fields, checked by name. */
export interface CheckedState {
  options: HeadOptions;
  iteration: number;
  skippedSteps: number;
  weights: FloatArray;
  velocity: FloatArray | null;
  /** Adam's and AdamW's state; null for SGD. */
  adam: AdamState | null;
  /** The class sampler's generator (sampleRate < 1), else null. */
  sampler: SamplerState | null;
}

/**
 * Every field of a state checked by name, its arrays decoded: a missing field, one of the wrong
 * type or size is an error naming it (`state.weights`), what was expected and what came.
 */
export function checkState(state: unknown): CheckedState {
  if (typeof state !== "object" || state === null) {
    throw new TypeError(`state: expected what MarginHead.state() returns, got ${describe(state)}`);
  }
  const s = state as Record<string, unknown>;
  for (const key of Object.keys(s)) {
    if (!STATE_KEYS.includes(key)) {
      throw new TypeError(`state: unknown field "${key}"; expected ${STATE_KEYS.join(", ")}`);
    }
  }
  if (s.format !== STATE_FORMAT) {
    throw new TypeError(`state.format: expected ${STATE_FORMAT}, got ${describe(s.format)}`);
  }
  const o = s.options;
  if (typeof o !== "object" || o === null || Array.isArray(o)) {
    throw new TypeError(
      `state.options: expected the head's options (an object with classes, features, ...), got ` +
        describe(o),
    );
  }
  const options = { ...o } as Record<string, unknown>; // a copy: classWeights may be decoded
  for (const key of ["weights", "seed", "iteration"]) {
    if (options[key] !== undefined) {
      throw new TypeError(`state.options.${key}: expected none (a state holds its own), got one`);
    }
  }
  const classes = checkInteger("state.options.classes", options.classes, 1, 2 ** 31 - 1);
  const features = checkInteger("state.options.features", options.features, 1, 2 ** 31 - 1);
  const dtype = options.dtype ?? "float32";
  if (dtype !== "float32" && dtype !== "float64") {
    throw new RangeError(
      `state.options.dtype: expected "float32" or "float64", got ${describe(dtype)}`,
    );
  }
  // classWeights as the head writes it (float64) or its JSON form; the head checks the rest
  const cw = options.classWeights;
  if (cw !== undefined && floatDType(cw) === undefined) {
    const name = "state.options.classWeights";
    options.classWeights = readArray(name, cw, "float64", [classes], "classes");
  }
  // the adaptive kinds' state moves with every step: a default in its place would not continue
  const moving = options.kind === "adaface"
    ? ["batchMean", "batchStd"]
    : options.kind === "curricularface"
    ? ["t"]
    : [];
  for (const key of moving) {
    if (typeof options[key] === "number") continue;
    throw new TypeError(
      `state.options.${key}: expected the state of kind "${options.kind}" (a number), got ` +
        describe(options[key]),
    );
  }
  const iteration = checkInteger("state.iteration", s.iteration, 0, Number.MAX_SAFE_INTEGER);
  const skippedSteps = checkInteger("state.skippedSteps", s.skippedSteps, 0, iteration);
  // sub-center ArcFace: K rows of W a class (the kind's own checks come with the head's options)
  const k = options.kind === "subcenter" && Number.isSafeInteger(options.subcenters)
    ? options.subcenters as number
    : 1;
  const shape: [number, number] = [classes * k, features];
  const weights = readArray("state.weights", s.weights, dtype, shape);
  if (!("velocity" in s)) {
    throw new TypeError(
      "state.velocity: expected the momentum buffer or null (none yet), got no such field",
    );
  }
  const velocity = s.velocity === null
    ? null
    : readArray("state.velocity", s.velocity, dtype, shape);
  const optimizer = checkOptimizer(options.optimizer);
  if (velocity !== null && (optimizer.type !== "sgd" || optimizer.momentum === 0)) {
    throw new TypeError(
      `state.velocity: expected null for an optimizer without momentum, got ${describe(velocity)}`,
    );
  }
  let adam: AdamState | null = null;
  if (optimizer.type === "sgd") {
    for (const key of ADAM_KEYS) {
      if (s[key] !== undefined && s[key] !== null) {
        throw new TypeError(`state.${key}: expected none for SGD (Adam's state), got one`);
      }
    }
  } else {
    const step = checkInteger("state.optimizerStep", s.optimizerStep, 0, iteration);
    const expAvg = readArray("state.expAvg", s.expAvg, dtype, shape);
    const expAvgSq = readArray("state.expAvgSq", s.expAvgSq, dtype, shape);
    let maxExpAvgSq: FloatArray | null = null;
    if (optimizer.amsgrad) {
      maxExpAvgSq = readArray("state.maxExpAvgSq", s.maxExpAvgSq, dtype, shape);
    } else if (s.maxExpAvgSq !== undefined && s.maxExpAvgSq !== null) {
      throw new TypeError(
        "state.maxExpAvgSq: expected null without amsgrad, got " + describe(s.maxExpAvgSq),
      );
    }
    adam = { optimizerStep: step, expAvg, expAvgSq, maxExpAvgSq };
  }
  const sampler = checkSampler(s.sampler, options.sampleRate);
  return {
    options: options as unknown as HeadOptions,
    ...{ iteration, skippedSteps, weights, velocity, adam, sampler },
  };
}

// The sampler's state: four uint32 words (not all zero) with sampleRate < 1, none otherwise.
function checkSampler(v: unknown, rate: unknown): SamplerState | null {
  const sampling = typeof rate === "number" && rate < 1;
  if (!sampling) {
    if (v !== undefined && v !== null) {
      throw new TypeError(
        `state.sampler: expected none without sampleRate < 1, got ${describe(v)}`,
      );
    }
    return null;
  }
  const ok = Array.isArray(v) && v.length === 4 &&
    v.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff) && v.some((w) => w !== 0);
  if (!ok) {
    throw new TypeError(
      `state.sampler: expected the sampler's generator, 4 uint32 words not all 0 (sampleRate ` +
        `${rate}), got ${describe(v)}`,
    );
  }
  return (v as number[]).slice() as SamplerState;
}

/** The options a head's state records: its resolved settings, without weights, seed, iteration. */
export function stateOptions(h: HeadSettings): HeadState["options"] {
  const { lambda: _, ...margin } = marginOptions(h.margin);
  return {
    classes: h.classes,
    features: h.features,
    ...margin,
    ...(h.lambda === undefined
      ? {}
      : typeof h.lambda === "number"
      ? { lambda: h.lambda }
      : h.lambda),
    dtype: h.dtype,
    backend: h.backend,
    optimizer: { ...h.optimizer },
    precision: h.precision,
    ...(h.workspace === undefined ? {} : { workspace: h.workspace }),
    nonFinite: h.nonFinite,
    ...crossEntropyOptions(h.crossEntropy),
    ...(h.sampleRate === 1 ? {} : { sampleRate: h.sampleRate }),
  };
}

// The cross-entropy options a state records: those given (class weights as a float64 copy).
function crossEntropyOptions(ce: CrossEntropy): CrossEntropyOptions {
  const o: CrossEntropyOptions = {};
  if (ce.labelSmoothing !== 0) o.labelSmoothing = ce.labelSmoothing;
  if (ce.classWeights !== undefined) o.classWeights = ce.classWeights.slice();
  if (ce.ignoreIndex !== undefined) o.ignoreIndex = ce.ignoreIndex;
  return o;
}

/** A state as state() writes it. */
export function makeState(
  options: HeadState["options"],
  iteration: number,
  skippedSteps: number,
  weights: FloatArray,
  velocity: FloatArray | null,
  shape: number[],
  adam: AdamState | null = null,
  sampler: SamplerState | null = null,
): HeadState {
  const state: HeadState = {
    format: STATE_FORMAT,
    // a typed array inside the options (classWeights) gets its JSON form too
    options: options.classWeights === undefined
      ? options
      : { ...options, classWeights: withJSON(options.classWeights, [options.classes]) },
    iteration,
    skippedSteps,
    weights: withJSON(weights, shape),
    velocity: velocity === null ? null : withJSON(velocity, shape),
  };
  if (sampler !== null) state.sampler = sampler;
  if (adam === null) return state;
  return {
    ...state,
    optimizerStep: adam.optimizerStep,
    expAvg: withJSON(adam.expAvg, shape),
    expAvgSq: withJSON(adam.expAvgSq, shape),
    maxExpAvgSq: adam.maxExpAvgSq === null ? null : withJSON(adam.maxExpAvgSq, shape),
  };
}
