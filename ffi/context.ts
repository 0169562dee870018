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
import { expectView, type ViewName } from "./views.ts";

/** Float tensors the library computes on. */
export type FloatArray = Float32Array | Float64Array;

/** Float32 matrix products: exact IEEE (default) or TF32 tensor cores (CUDA sm_80+). */
export type Precision = "exact" | "tf32";

/** Sizes and settings of one call, already validated. */
export interface Problem {
  /** The element type of x, w and every float array of the call, as the engine reports it. */
  dtype: "float32" | "float64";
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

// The last check before native code: every array is still of the problem's type and size. From
// here to the native call no caller code runs, so what is checked is what is read and written.
function guardInputs(p: Problem): ViewName {
  const view = p.dtype === "float32" ? "Float32Array" : "Float64Array";
  expectView("x", p.x, view, p.n * p.d);
  expectView("w", p.w, view, p.c * p.d);
  expectView("labels", p.labels, "Int32Array", p.n);
  return view;
}

/** A context on one backend device, owning device buffers reused between calls. */
export class NativeContext {
  readonly backend: "cpu" | "cuda";
  readonly device: number;
  #lib: Library;
  #ptr: Deno.PointerValue;
  #buffers = new Map<string, { ptr: Deno.PointerValue; bytes: number }>();
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
    this.#ptr = Deno.UnsafePointer.create(out[0]);
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

  /** Device memory of at least `bytes` for a role ("x", "w", ...), kept for the next call. */
  #buffer(role: string, bytes: number): Deno.PointerValue {
    const ctx = this.#live();
    const have = this.#buffers.get(role);
    if (have && have.bytes >= bytes) return have.ptr;
    if (have) {
      this.#buffers.delete(role);
      this.#check(this.#lib.symbols.lsm_free(ctx, have.ptr), "lsm_free");
    }
    const out = new BigUint64Array(1);
    this.#check(this.#lib.symbols.lsm_malloc(ctx, BigInt(bytes), out), "lsm_malloc");
    const ptr = Deno.UnsafePointer.create(out[0]);
    this.#buffers.set(role, { ptr, bytes });
    return ptr;
  }

  // Byte counts come from the validated sizes, never from the views' own (overridable) getters.

  /** Device memory holding a copy of the first `bytes` of `data`. */
  #input(role: string, data: ArrayBufferView, bytes: number): Deno.PointerValue {
    const ptr = this.#buffer(role, bytes);
    this.#check(
      this.#lib.symbols.lsm_memcpy_to_context(this.#live(), ptr, data, BigInt(bytes)),
      `copying ${role} to ${this.#name()}`,
    );
    return ptr;
  }

  /** Copies `bytes` of a device result into `data`. */
  #output(role: string, ptr: Deno.PointerValue, data: ArrayBufferView, bytes: number): void {
    this.#check(
      this.#lib.symbols.lsm_memcpy_from_context(this.#live(), data, ptr, BigInt(bytes)),
      `copying ${role} from ${this.#name()}`,
    );
  }

  /** Logits [n, c] of the L-Softmax forward into `logits`. */
  forward(p: Problem, logits: FloatArray): void {
    const ctx = this.#live();
    this.#setPrecision(p.precision);
    const view = guardInputs(p);
    expectView("out", logits, view, p.n * p.c);
    const dtype = p.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
    const [n, d, c] = [BigInt(p.n), BigInt(p.d), BigInt(p.c)];
    const sym = this.#lib.symbols;
    if (this.backend === "cpu") {
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
    const e = p.dtype === "float32" ? 4 : 8;
    const x = this.#input("x", p.x, p.n * p.d * e);
    const w = this.#input("w", p.w, p.c * p.d * e);
    const labels = this.#input("labels", p.labels, p.n * 4);
    const out = this.#buffer("logits", p.n * p.c * e);
    this.#check(
      sym.lsm_forward(ctx, dtype, x, w, labels, n, d, c, p.margin, p.lambda, out),
      "forward",
    );
    this.#output("logits", out, logits, p.n * p.c * e);
  }

  /** Gradients of the L-Softmax backward into `gradX` [n, d] and `gradW` [c, d]. */
  backward(p: Problem, gradLogits: FloatArray, gradX: FloatArray, gradW: FloatArray): void {
    const ctx = this.#live();
    this.#setPrecision(p.precision);
    const view = guardInputs(p);
    expectView("gradLogits", gradLogits, view, p.n * p.c);
    expectView("gradX", gradX, view, p.n * p.d);
    expectView("gradW", gradW, view, p.c * p.d);
    const dtype = p.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
    const [n, d, c] = [BigInt(p.n), BigInt(p.d), BigInt(p.c)];
    const sym = this.#lib.symbols;
    if (this.backend === "cpu") {
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
    const e = p.dtype === "float32" ? 4 : 8;
    const x = this.#input("x", p.x, p.n * p.d * e);
    const w = this.#input("w", p.w, p.c * p.d * e);
    const labels = this.#input("labels", p.labels, p.n * 4);
    const g = this.#input("gradLogits", gradLogits, p.n * p.c * e);
    const gx = this.#buffer("gradX", p.n * p.d * e);
    const gw = this.#buffer("gradW", p.c * p.d * e);
    this.#check(
      sym.lsm_backward(ctx, dtype, x, w, labels, g, n, d, c, p.margin, p.lambda, gx, gw),
      "backward",
    );
    this.#output("gradX", gx, gradX, p.n * p.d * e);
    this.#output("gradW", gw, gradW, p.c * p.d * e);
  }

  /** Releases the device buffers and the context. Idempotent. */
  close(): void {
    if (this.#ptr === null) return;
    // lsm_context_destroy frees whatever is still allocated on the context.
    this.#buffers.clear();
    finalizer.unregister(this);
    this.#lib.symbols.lsm_context_destroy(this.#ptr);
    this.#ptr = null;
  }
}
