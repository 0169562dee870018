/**
 * Native contexts: one backend device each, with its error messages and, for CUDA, device
 * buffers reused across calls. Turns every nonzero status into a thrown Error carrying the
 * library's message.
 *
 * @example
 * ```ts
 * import { loadLibrary } from "./library.ts";
 * import { NativeContext } from "./context.ts";
 * const ctx = new NativeContext(loadLibrary(), "cpu", 0);
 * ctx.close();
 * ```
 * @module
 */

import { cString, type Library } from "./library.ts";
import { BackendCode, DType, PrecisionCode, Status } from "./symbols.ts";
import {
  checkRegions,
  placeRegions,
  type Region,
  region,
  regionBytes,
  type ViewName,
} from "./views.ts";

/** Float tensors the library computes on. */
export type FloatArray = Float32Array | Float64Array;

/** Float32 matrix products: exact IEEE (default) or TF32 tensor cores (CUDA sm_80+). */
export type Precision = "exact" | "tf32";

/** The element type of a call's float arrays. */
export type FloatDType = "float32" | "float64";

/**
 * The typed array of a float element type.
 *
 * @example
 * ```ts
 * import { floatArrayName } from "./context.ts";
 * console.log(floatArrayName("float64")); // "Float64Array"
 * ```
 */
export function floatArrayName(dtype: FloatDType): ViewName {
  return dtype === "float32" ? "Float32Array" : "Float64Array";
}

/** Sizes and settings of one call, already validated. */
export interface Problem {
  /** The element type of x, w and every float array of the call, as the engine reports it. */
  dtype: FloatDType;
  x: FloatArray;
  w: FloatArray;
  labels: Int32Array;
  n: number;
  d: number;
  c: number;
  margin: number;
  lambda: number;
  precision: Precision;
}

/** Throws the library's message for a failed status. */
export function throwStatus(status: number, message: string, what: string): never {
  const text = `${what}: ${message || "failed with status " + status}`;
  if (status === Status.INVALID_ARGUMENT) throw new RangeError(text);
  throw new Error(text);
}

// A context dropped without close() (a layer never closed) is destroyed when collected, device
// buffers and all; the library itself stays loaded for the process, so the call is safe then.
const finalizer = new FinalizationRegistry<{ lib: Library; ptr: Deno.PointerValue }>(
  ({ lib, ptr }) => lib.symbols.lsm_context_destroy(ptr),
);

// Taken at load, as in views.ts: the steps between the last guard and the native calls use no
// global or prototype method the caller could have replaced by then.
const toBigInt = BigInt;
const U64s = BigUint64Array;
const pointerCreate = Deno.UnsafePointer.create;

// The regions of a call as one array literal: every element its own from the start, so no
// index setter on Array.prototype is ever consulted.
function callRegions(p: Problem, view: ViewName, rest: Region[]): Region[] {
  const x = region("x", p.x, view, p.n * p.d, false);
  const w = region("w", p.w, view, p.c * p.d, false);
  const labels = region("labels", p.labels, "Int32Array", p.n, false);
  return rest.length === 1 ? [x, w, labels, rest[0]] : [x, w, labels, rest[0], rest[1], rest[2]];
}

/** A context on one backend device, owning device buffers reused between calls. */
export class NativeContext {
  readonly backend: "cpu" | "cuda";
  readonly device: number;
  #lib: Library;
  #ptr: Deno.PointerValue;
  // A record without a prototype: no Map method (replaceable) on the way to a native call.
  #buffers: Record<string, { ptr: Deno.PointerValue; bytes: number } | undefined> = Object.create(
    null,
  );
  #precision: Precision = "exact";

  constructor(lib: Library, backend: "cpu" | "cuda", device: number) {
    this.#lib = lib;
    this.backend = backend;
    this.device = device;
    const out = new BigUint64Array(1);
    const code = backend === "cpu" ? BackendCode.CPU : BackendCode.CUDA;
    const status = lib.symbols.lsm_context_create(code, device, out);
    if (status !== Status.OK) {
      throwStatus(status, cString(lib.symbols.lsm_last_error()), `${backend}:${device}`);
    }
    this.#ptr = pointerCreate(out[0]);
    finalizer.register(this, { lib, ptr: this.#ptr }, this);
  }

  get closed(): boolean {
    return this.#ptr === null;
  }

  #check(status: number, what: string): void {
    if (status === Status.OK) return;
    throwStatus(status, cString(this.#lib.symbols.lsm_context_last_error(this.#ptr)), what);
  }

  #name(): string {
    return `${this.backend}:${this.device}`;
  }

  #live(): Deno.PointerValue {
    if (this.#ptr === null) throw new Error(`${this.#name()}: context is closed`);
    return this.#ptr;
  }

  /** Sets the context's precision for the next calls (a no-op when it is already that). */
  #setPrecision(precision: Precision): void {
    if (precision === this.#precision) return;
    const code = precision === "tf32" ? PrecisionCode.TF32 : PrecisionCode.EXACT;
    const ctx = this.#live();
    this.#check(this.#lib.symbols.lsm_context_set_precision(ctx, code), this.#name());
    this.#precision = precision;
  }

  /** Device memory for a region's array, kept under its role for the next call. */
  #buffer(r: Region): Deno.PointerValue {
    const ctx = this.#live();
    const bytes = regionBytes(r);
    const have = this.#buffers[r.role];
    if (have && have.bytes >= bytes) return have.ptr;
    if (have) {
      this.#buffers[r.role] = undefined;
      this.#check(this.#lib.symbols.lsm_free(ctx, have.ptr), "lsm_free");
    }
    const out = new U64s(1);
    this.#check(this.#lib.symbols.lsm_malloc(ctx, toBigInt(bytes), out), "lsm_malloc");
    const ptr = pointerCreate(out[0]);
    this.#buffers[r.role] = { ptr, bytes };
    return ptr;
  }

  // Byte counts come from the validated sizes, never from the views' own (overridable) getters.

  /** Copies the region's elements into device memory `ptr`. */
  #copyIn(r: Region, ptr: Deno.PointerValue): void {
    this.#check(
      this.#lib.symbols.lsm_memcpy_to_context(this.#live(), ptr, r.view, toBigInt(regionBytes(r))),
      `copying ${r.role} to ${this.#name()}`,
    );
  }

  /** Copies a device result into the region's array, its length checked once more just before. */
  #copyOut(r: Region, ptr: Deno.PointerValue): void {
    checkRegions([r]);
    this.#check(
      this.#lib.symbols.lsm_memcpy_from_context(
        this.#live(),
        r.view,
        ptr,
        toBigInt(regionBytes(r)),
      ),
      `copying ${r.role} from ${this.#name()}`,
    );
  }

  // Both calls run in the same order. First placeRegions, which may run caller code (a getter
  // that closes this context, or calls in again and changes its precision or device buffers):
  // so nothing the call depends on is taken before it. Then the context, its precision, sizes as
  // BigInts and device memory (no caller code), then checkRegions (types, exact lengths, outputs
  // apart), then only native calls.

  /** Logits [n, c] of the L-Softmax forward into `logits`. */
  forward(p: Problem, logits: FloatArray): void {
    const view = floatArrayName(p.dtype);
    const dtype = p.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
    const n = toBigInt(p.n), d = toBigInt(p.d), c = toBigInt(p.c);
    const sym = this.#lib.symbols;
    const out = region("out", logits, view, p.n * p.c, true);
    const regions = callRegions(p, view, [out]);
    placeRegions(regions);
    const ctx = this.#live();
    this.#setPrecision(p.precision);
    if (this.backend === "cpu") {
      checkRegions(regions);
      const status = sym.lsm_forward_host(
        ctx,
        dtype,
        p.x,
        p.w,
        p.labels,
        n,
        d,
        c,
        p.margin,
        p.lambda,
        logits,
      );
      return this.#check(status, "forward");
    }
    const x = this.#buffer(regions[0]);
    const w = this.#buffer(regions[1]);
    const labels = this.#buffer(regions[2]);
    const dev = this.#buffer(out);
    checkRegions(regions);
    this.#copyIn(regions[0], x);
    this.#copyIn(regions[1], w);
    this.#copyIn(regions[2], labels);
    this.#check(
      sym.lsm_forward(ctx, dtype, x, w, labels, n, d, c, p.margin, p.lambda, dev),
      "forward",
    );
    this.#copyOut(out, dev);
  }

  /** Gradients of the L-Softmax backward into `gradX` [n, d] and `gradW` [c, d]. */
  backward(p: Problem, gradLogits: FloatArray, gradX: FloatArray, gradW: FloatArray): void {
    const view = floatArrayName(p.dtype);
    const dtype = p.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
    const n = toBigInt(p.n), d = toBigInt(p.d), c = toBigInt(p.c);
    const sym = this.#lib.symbols;
    const g = region("gradLogits", gradLogits, view, p.n * p.c, false);
    const outX = region("outX", gradX, view, p.n * p.d, true);
    const outW = region("outW", gradW, view, p.c * p.d, true);
    const regions = callRegions(p, view, [g, outX, outW]);
    placeRegions(regions);
    const ctx = this.#live();
    this.#setPrecision(p.precision);
    if (this.backend === "cpu") {
      checkRegions(regions);
      const status = sym.lsm_backward_host(
        ctx,
        dtype,
        p.x,
        p.w,
        p.labels,
        gradLogits,
        n,
        d,
        c,
        p.margin,
        p.lambda,
        gradX,
        gradW,
      );
      return this.#check(status, "backward");
    }
    const x = this.#buffer(regions[0]);
    const w = this.#buffer(regions[1]);
    const labels = this.#buffer(regions[2]);
    const dg = this.#buffer(g);
    const gx = this.#buffer(outX);
    const gw = this.#buffer(outW);
    checkRegions(regions);
    this.#copyIn(regions[0], x);
    this.#copyIn(regions[1], w);
    this.#copyIn(regions[2], labels);
    this.#copyIn(g, dg);
    this.#check(
      sym.lsm_backward(ctx, dtype, x, w, labels, dg, n, d, c, p.margin, p.lambda, gx, gw),
      "backward",
    );
    this.#copyOut(outX, gx);
    this.#copyOut(outW, gw);
  }

  /** Releases the device buffers and the context. Idempotent. */
  close(): void {
    if (this.#ptr === null) return;
    // lsm_context_destroy frees whatever is still allocated on the context.
    this.#buffers = Object.create(null);
    finalizer.unregister(this);
    this.#lib.symbols.lsm_context_destroy(this.#ptr);
    this.#ptr = null;
  }
}
