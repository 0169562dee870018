/**
 * Large-Margin Softmax (L-Softmax) for Deno: the op of Liu et al. (ICML 2016) computed by a
 * CUDA shared library through FFI, with a CPU backend for machines without a GPU.
 *
 * For sample i with label y, the non-target logits are the plain inner products W_j·x_i and the
 * target logit is (λ W_y·x_i + |W_y||x_i| ψ(cos θ)) / (1 + λ), ψ(c) = (-1)^k T_m(c) - 2k.
 * Feed the logits to a softmax cross-entropy; pass its gradient back through {@link backward}.
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
 * ```
 * @module
 */

import { cString, type Library, loadLibrary } from "./ffi/library.ts";
import {
  type FloatArray,
  floatArrayName,
  type FloatDType,
  NativeContext,
  type Precision,
  type Problem,
} from "./ffi/context.ts";
import { BackendCode, Status } from "./ffi/symbols.ts";
import { elementCount, typedArrayName } from "./ffi/views.ts";

export type { FloatArray, Precision } from "./ffi/context.ts";

/** The largest supported margin m (`LSM_MAX_MARGIN`). */
export const MAX_MARGIN = 16;

/** The most elements any tensor (and N·C, N·D, C·D) may have: kernels index with int32. */
export const MAX_ELEMENTS = 2 ** 31 - 1;

/** Where to compute: "auto" (CUDA when usable, else CPU), "cpu", "cuda" (device 0), "cuda:K". */
export type Backend = "auto" | "cpu" | "cuda" | `cuda:${number}`;

/** Options of {@link forward} and {@link backward}. */
export interface OpOptions {
  /** The integer margin m, 1 to {@link MAX_MARGIN}; m = 1 is the plain linear layer. */
  margin: number;
  /** λ >= 0: how much of the plain logit is mixed in (large early in training). */
  lambda: number;
  /** Where to compute; "auto" by default. */
  backend?: Backend;
  /** The feature count D; by default x.length / labels.length. */
  features?: number;
  /**
   * Float32 matrix products: "exact" (IEEE float32, the default) or "tf32" (tensor cores with
   * TF32 inputs, about 1e-3 relative; CUDA devices of compute capability 8.0+ only). Float64
   * calls are always exact.
   */
  precision?: Precision;
}

/** The λ schedule λ(t) = max(base·(1 + gamma·t)^(-power), lambdaMin). */
export interface LambdaSchedule {
  /** λ at step 0 (the seed's example: 1000). */
  base: number;
  /** How fast λ decays (0.000025). */
  gamma: number;
  /** The decay's exponent (35). */
  power: number;
  /** The floor λ never goes below (0). */
  lambdaMin: number;
}

/** Options of {@link LargeMarginSoftmax}: margin, schedule, state and backend. */
export interface LayerOptions extends LambdaSchedule {
  /** The integer margin m, 1 to {@link MAX_MARGIN}. */
  margin: number;
  /** The iteration the layer resumes from (0 for a new layer). */
  iteration?: number;
  /** Where to compute; "auto" by default. */
  backend?: Backend;
  /** See {@link OpOptions.precision}. */
  precision?: Precision;
}

/** What {@link backends} reports. */
export interface BackendsInfo {
  /** The native library's version. */
  version: string;
  /** The path the library was loaded from. */
  library: string;
  /** The CPU backend: always there. */
  cpu: { available: true; name: string };
  /** The CUDA backend: its devices, or why there are none. */
  cuda: {
    available: boolean;
    devices: { index: number; id: `cuda:${number}`; name: string }[];
    /** Why CUDA is not usable (no driver, no device), or null. */
    reason: string | null;
  };
}

// ---------------------------------------------------------------------------------------------
// Argument checks: each names the argument, what was expected and what came.

function describe(v: unknown): string {
  if (v === null) return "null";
  const name = typedArrayName(v); // what the engine says, whatever the prototype claims
  if (name !== undefined) return `${name}(${elementCount(v as ArrayBufferView)})`;
  if (typeof v === "object") {
    try {
      if (Array.isArray(v)) return `Array(${v.length})`;
      const ctor = (v as object).constructor?.name ?? "Object";
      return /^(Big)?(Int|Uint|Float)\d+(Clamped)?Array$/.test(ctor)
        ? `a ${ctor} look-alike that is not a typed array`
        : ctor;
    } catch {
      return "an object that cannot be inspected";
    }
  }
  if (typeof v === "string") return JSON.stringify(v);
  return `${typeof v} ${String(v)}`;
}

// Element types come from the engine (ffi/views.ts), not from `instanceof`: an array wearing
// another type's prototype would otherwise be read with the wrong element size.
function dtypeOf(v: unknown): FloatDType | undefined {
  const name = typedArrayName(v);
  return name === "Float32Array" ? "float32" : name === "Float64Array" ? "float64" : undefined;
}

function checkNumber(name: string, v: unknown, min: number): number {
  if (typeof v !== "number") throw new TypeError(`${name}: expected a number, got ${describe(v)}`);
  if (!Number.isFinite(v) || v < min) {
    throw new RangeError(`${name}: expected a finite number >= ${min}, got ${v}`);
  }
  return v;
}

function checkInteger(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new TypeError(`${name}: expected an integer in [${min}, ${max}], got ${describe(v)}`);
  }
  if (v < min || v > max) {
    throw new RangeError(`${name}: expected an integer in [${min}, ${max}], got ${v}`);
  }
  return v;
}

// Every option of a call, each read exactly once: a getter that changes an array (shrinks a
// resizable buffer, say) then runs before the sizes are checked, never between check and use.
interface CallOptions {
  margin: unknown;
  lambda: unknown;
  backend: unknown;
  features: unknown;
  precision: unknown;
  out?: unknown;
  outX?: unknown;
  outW?: unknown;
}

function readOptions(options: unknown, outputs: readonly ("out" | "outX" | "outW")[]): CallOptions {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`options: expected { margin, lambda }, got ${describe(options)}`);
  }
  const o = options as Record<string, unknown>;
  const read: CallOptions = {
    margin: o.margin,
    lambda: o.lambda,
    backend: o.backend,
    features: o.features,
    precision: o.precision,
  };
  for (const name of outputs) read[name] = o[name];
  return read;
}

function checkProblem(x: unknown, w: unknown, labels: unknown, options: CallOptions): Problem {
  const dtype = dtypeOf(x);
  if (dtype === undefined) {
    throw new TypeError(`x: expected a Float32Array or Float64Array, got ${describe(x)}`);
  }
  if (dtypeOf(w) !== dtype) {
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
  if (options.features !== undefined) {
    d = checkInteger("features", options.features, 1, MAX_ELEMENTS);
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
  for (let i = 0; i < n; i++) {
    const y = (labels as Int32Array)[i];
    if (y < 0 || y >= c) {
      throw new RangeError(`labels[${i}]: expected an integer in [0, ${c}), got ${y}`);
    }
  }
  const margin = checkInteger("margin", options.margin, 1, MAX_MARGIN);
  const lambda = checkNumber("lambda", options.lambda, 0);
  const precision = checkPrecision(options.precision);
  return {
    dtype,
    x: x as FloatArray,
    w: w as FloatArray,
    labels: labels as Int32Array,
    n,
    d,
    c,
    margin,
    lambda,
    precision,
  };
}

// A forward's problem is used again by the layer's backward: its arrays may have been resized or
// transferred (detached) since, which would leave the native code reading freed memory.
function checkStillSized(p: Problem): void {
  for (
    const [name, v, want] of [["x", p.x, p.n * p.d], ["w", p.w, p.c * p.d], [
      "labels",
      p.labels,
      p.n,
    ]] as const
  ) {
    const got = elementCount(v);
    if (got !== want) {
      throw new RangeError(
        `${name}: expected the ${want} elements of the last forward, got ${got} (resized or transferred since)`,
      );
    }
  }
}

function checkPrecision(v: unknown): Precision {
  if (v === undefined || v === "exact" || v === "tf32") return v ?? "exact";
  throw new RangeError(`precision: expected "exact" or "tf32", got ${describe(v)}`);
}

// ---------------------------------------------------------------------------------------------
// Backends and shared contexts.

const contexts = new Map<string, NativeContext>();

// The CUDA device count cannot change under a running process; asking once keeps calls cheap.
let cudaInfo: { count: number; reason: string | null } | undefined;
function cudaDevices(lib: Library): { count: number; reason: string | null } {
  if (cudaInfo) return cudaInfo;
  const count = new Int32Array(1);
  const status = lib.symbols.lsm_device_count(BackendCode.CUDA, count);
  cudaInfo = status === Status.OK
    ? { count: count[0], reason: null }
    : { count: 0, reason: cString(lib.symbols.lsm_last_error()) };
  return cudaInfo;
}

function deviceName(lib: Library, backend: number, index: number): string {
  const buf = new Uint8Array(512);
  const status = lib.symbols.lsm_device_name(backend, index, buf, BigInt(buf.length));
  if (status !== Status.OK) return `(unnamed: ${cString(lib.symbols.lsm_last_error())})`;
  return new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
}

/** Resolves a backend string to a concrete backend and device, or throws saying why not. */
function resolveBackend(lib: Library, backend: unknown): { kind: "cpu" | "cuda"; device: number } {
  const spec = backend ?? "auto";
  if (spec === "cpu") return { kind: "cpu", device: 0 };
  const cuda = typeof spec === "string" ? /^cuda(?::(\d+))?$/.exec(spec) : null;
  if (spec !== "auto" && cuda === null) {
    throw new RangeError(
      `backend: expected "auto", "cpu", "cuda" or "cuda:K", got ${describe(backend)}`,
    );
  }
  const { count, reason } = cudaDevices(lib);
  if (spec === "auto") return count > 0 ? { kind: "cuda", device: 0 } : { kind: "cpu", device: 0 };
  const device = cuda![1] === undefined ? 0 : Number(cuda![1]);
  if (count === 0) throw new Error(`backend: "${spec}" is not available here: ${reason}`);
  if (device >= count) {
    throw new RangeError(
      `backend: expected a CUDA device in [0, ${count}), got "${spec}"`,
    );
  }
  return { kind: "cuda", device };
}

// Contexts shared by forward() and backward(), by concrete device; `resolved` maps each backend
// string seen to its context so the common call resolves nothing.
const resolved = new Map<unknown, NativeContext>();
function sharedContext(backend: unknown): NativeContext {
  const hit = resolved.get(backend);
  if (hit && !hit.closed) return hit;
  const lib = loadLibrary();
  const { kind, device } = resolveBackend(lib, backend);
  let ctx = liveShared(`${kind}:${device}`);
  if (!ctx) {
    ctx = openContext(lib, backend, kind, device, () => liveShared("cpu:0"));
    contexts.set(`${ctx.backend}:${ctx.device}`, ctx);
  }
  resolved.set(backend, ctx);
  return ctx;
}

function liveShared(key: string): NativeContext | undefined {
  const ctx = contexts.get(key);
  return ctx && !ctx.closed ? ctx : undefined;
}

// A context on the resolved device; "auto" falls back to the CPU when the GPU it picked cannot
// host one (e.g. a compute capability this build has no kernels for). `cpu` offers an open CPU
// context to reuse: shared calls share one, a layer owns its own.
function openContext(
  lib: Library,
  backend: unknown,
  kind: "cpu" | "cuda",
  device: number,
  cpu: () => NativeContext | undefined = () => undefined,
): NativeContext {
  try {
    return new NativeContext(lib, kind, device);
  } catch (e) {
    if ((backend ?? "auto") !== "auto" || kind === "cpu") throw e;
    return cpu() ?? new NativeContext(lib, "cpu", 0);
  }
}

function newArray<T extends FloatArray>(dtype: FloatDType, length: number): T {
  return (dtype === "float32" ? new Float32Array(length) : new Float64Array(length)) as T;
}

// The caller's output array when given (same dtype as x, exact length), else a new one. That it
// shares no memory with the inputs or other outputs is checked (by offset, or by address) right before the
// native call (ffi/views.ts checkRegions), where two SharedArrayBuffers over one memory show too.
function outputArray<T extends FloatArray>(
  name: string,
  given: unknown,
  dtype: FloatDType,
  length: number,
): T {
  if (given === undefined) return newArray(dtype, length);
  if (dtypeOf(given) !== dtype) {
    throw new TypeError(
      `${name}: expected a ${floatArrayName(dtype)} like x, got ${describe(given)}`,
    );
  }
  const got = elementCount(given as FloatArray);
  if (got !== length) {
    throw new RangeError(`${name}: expected ${length} elements, got ${got}`);
  }
  return given as T;
}

function checkGradLogits(p: Problem, gradLogits: unknown): FloatArray {
  if (dtypeOf(gradLogits) !== p.dtype) {
    throw new TypeError(
      `gradLogits: expected a ${floatArrayName(p.dtype)} like x, got ${describe(gradLogits)}`,
    );
  }
  const got = elementCount(gradLogits as FloatArray);
  if (got !== p.n * p.c) {
    throw new RangeError(
      `gradLogits: expected N*C = ${p.n}*${p.c} = ${p.n * p.c} elements, got ${got}`,
    );
  }
  return gradLogits as FloatArray;
}

// ---------------------------------------------------------------------------------------------
// Public API.

/**
 * Loads the native library explicitly (else it is found on first use: `LSOFTMAX_LIB`, then
 * `build/liblsoftmax.so` beside this module). Returns what {@link backends} returns.
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
  return backends();
}

/**
 * What can compute here: the CPU always; each CUDA device with its name, or why there is none.
 *
 * @example
 * ```ts
 * import { backends } from "./mod.ts";
 * const info = backends();
 * console.log(info.cuda.available ? info.cuda.devices : info.cuda.reason);
 * ```
 */
export function backends(): BackendsInfo {
  const lib = loadLibrary();
  const { count, reason } = cudaDevices(lib);
  const devices = Array.from({ length: count }, (_, index) => ({
    index,
    id: `cuda:${index}` as const,
    name: deviceName(lib, BackendCode.CUDA, index),
  }));
  return {
    version: lib.version,
    library: lib.path,
    cpu: { available: true, name: deviceName(lib, BackendCode.CPU, 0) },
    cuda: { available: count > 0, devices, reason },
  };
}

/**
 * The L-Softmax logits [N, C] of features x [N, D] for classes w [C, D] (both row-major).
 * `options.out` (same dtype, N·C elements, apart from the inputs) receives them instead of a new
 * array: large shapes then skip an allocation per call.
 *
 * @example
 * ```ts
 * import { forward } from "./mod.ts";
 * const x = new Float64Array([0.5, 1, -1, 2]); // N = 2, D = 2
 * const w = new Float64Array([1, 0, 0, 1, -1, 1]); // C = 3
 * const { logits } = forward(x, w, new Int32Array([1, 2]), { margin: 2, lambda: 0 });
 * console.log(logits.length); // 6
 * ```
 */
export function forward<T extends FloatArray>(
  x: T,
  w: T,
  labels: Int32Array,
  options: OpOptions & { out?: T },
): { logits: T } {
  const o = readOptions(options, ["out"]);
  const p = checkProblem(x, w, labels, o);
  const logits = outputArray<T>("out", o.out, p.dtype, p.n * p.c);
  const ctx = sharedContext(o.backend);
  ctx.forward(p, logits);
  return { logits };
}

/**
 * The gradients of a loss L with respect to x and w, given gradLogits = dL/dlogits [N, C].
 * `options.outX` and `options.outW` receive them instead of new arrays, as `out` does for
 * {@link forward}.
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
  options: OpOptions & { outX?: T; outW?: T },
): { gradX: T; gradW: T } {
  const o = readOptions(options, ["outX", "outW"]);
  const p = checkProblem(x, w, labels, o);
  const g = checkGradLogits(p, gradLogits);
  const gradX = outputArray<T>("outX", o.outX, p.dtype, p.n * p.d);
  const gradW = outputArray<T>("outW", o.outW, p.dtype, p.c * p.d);
  const ctx = sharedContext(o.backend);
  ctx.backward(p, g, gradX, gradW);
  return { gradX, gradW };
}

function checkSchedule(s: LambdaSchedule): LambdaSchedule {
  if (typeof s !== "object" || s === null) {
    throw new TypeError(
      `schedule: expected { base, gamma, power, lambdaMin }, got ${describe(s)}`,
    );
  }
  return {
    base: checkNumber("base", s.base, 0),
    gamma: checkNumber("gamma", s.gamma, 0),
    power: checkNumber("power", s.power, 0),
    lambdaMin: checkNumber("lambdaMin", s.lambdaMin, 0),
  };
}

/**
 * λ at a step: max(base·(1 + gamma·step)^(-power), lambdaMin), the Caffe layer's schedule.
 *
 * @example
 * ```ts
 * import { lambdaAt } from "./mod.ts";
 * const s = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };
 * console.log(lambdaAt(0, s)); // 1000
 * ```
 */
export function lambdaAt(step: number, schedule: LambdaSchedule): number {
  checkNumber("step", step, 0);
  const { base, gamma, power, lambdaMin } = checkSchedule(schedule);
  return Math.max(base * Math.pow(1 + gamma * step, -power), lambdaMin);
}

/**
 * The L-Softmax layer with its λ annealing state. Without a step, each forward first
 * increments the iteration (as the Caffe layer does); with `{ step }` it uses λ at that step
 * (as the seed's TensorFlow op does with global_step). Backward uses the last forward's inputs
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
 * ```
 */
export class LargeMarginSoftmax {
  /** The margin m. */
  readonly margin: number;
  /** The λ schedule. */
  readonly schedule: LambdaSchedule;
  /** Where the layer computes, as given. */
  readonly backend: Backend;
  /** The float32 matrix-product precision. */
  readonly precision: Precision;
  #iteration: number;
  #lambda: number | undefined;
  #context: NativeContext | undefined;
  #last: { p: Problem } | undefined;
  #closed = false;

  /** A layer at `options.iteration` (0 by default); throws for bad options or backends. */
  constructor(options: LayerOptions) {
    if (typeof options !== "object" || options === null) {
      throw new TypeError(
        `options: expected { margin, base, gamma, power, lambdaMin }, got ${describe(options)}`,
      );
    }
    this.margin = checkInteger("margin", options.margin, 1, MAX_MARGIN);
    this.schedule = checkSchedule(options);
    this.#iteration = checkInteger(
      "iteration",
      options.iteration ?? 0,
      0,
      Number.MAX_SAFE_INTEGER,
    );
    this.backend = options.backend ?? "auto";
    this.precision = checkPrecision(options.precision);
    // Fail now, not at the first forward.
    const { kind } = resolveBackend(loadLibrary(), this.backend);
    if (this.precision === "tf32" && kind === "cpu") {
      throw new RangeError(
        `precision: "tf32" needs a CUDA device of compute capability 8.0+, got backend ` +
          `${JSON.stringify(this.backend)}, which is the cpu here`,
      );
    }
  }

  /** The iteration of the last forward (or the one the layer was created at). */
  get iteration(): number {
    return this.#iteration;
  }

  /** λ of the last forward; before any, λ at the current iteration. */
  get lambda(): number {
    return this.#lambda ?? lambdaAt(this.#iteration, this.schedule);
  }

  #ctx(): NativeContext {
    if (this.#closed) throw new Error("LargeMarginSoftmax: the layer is closed");
    if (!this.#context) {
      const lib = loadLibrary();
      const { kind, device } = resolveBackend(lib, this.backend);
      this.#context = openContext(lib, this.backend, kind, device); // its own, closed with the layer
    }
    return this.#context;
  }

  /** Logits for x [N, D], w [C, D] and labels [N], and the λ used (`out` as in {@link forward}). */
  forward<T extends FloatArray>(
    x: T,
    w: T,
    labels: Int32Array,
    options: { step?: number; features?: number; out?: T } = {},
  ): { logits: T; lambda: number } {
    const ctx = this.#ctx();
    this.#last = undefined; // a failed forward leaves no stale inputs for backward
    if (typeof options !== "object" || options === null) {
      throw new TypeError(`options: expected { step?, features?, out? }, got ${describe(options)}`);
    }
    const { step: given, features, out } = options; // each read once, before any size check
    const step = given === undefined
      ? this.#iteration + 1
      : checkInteger("step", given, 0, Number.MAX_SAFE_INTEGER);
    const lambda = lambdaAt(step, this.schedule);
    const p = checkProblem(x, w, labels, {
      margin: this.margin,
      lambda,
      backend: this.backend,
      features,
      precision: this.precision,
    });
    const logits = outputArray<T>("out", out, p.dtype, p.n * p.c);
    ctx.forward(p, logits);
    this.#iteration = step;
    this.#lambda = lambda;
    this.#last = { p };
    return { logits, lambda };
  }

  /** Gradients for the last forward, given gradLogits = dL/dlogits [N, C] (`outX`, `outW`). */
  backward<T extends FloatArray>(
    gradLogits: T,
    options: { outX?: T; outW?: T } = {},
  ): { gradX: T; gradW: T } {
    const ctx = this.#ctx();
    if (!this.#last) throw new Error("LargeMarginSoftmax: backward needs a forward first");
    if (typeof options !== "object" || options === null) {
      throw new TypeError(`options: expected { outX?, outW? }, got ${describe(options)}`);
    }
    const { outX, outW } = options;
    const { p } = this.#last;
    const g = checkGradLogits(p, gradLogits);
    const gradX = outputArray<T>("outX", outX, p.dtype, p.n * p.d);
    const gradW = outputArray<T>("outW", outW, p.dtype, p.c * p.d);
    checkStillSized(p);
    ctx.backward(p, g, gradX, gradW);
    return { gradX, gradW };
  }

  /** Options that rebuild this layer where it left off. */
  toJSON(): Required<LayerOptions> {
    return {
      margin: this.margin,
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

/** Closes the contexts shared by {@link forward} and {@link backward} (they reopen on use). */
export function releaseContexts(): void {
  for (const ctx of contexts.values()) ctx.close();
  contexts.clear();
  resolved.clear();
}
