// Native contexts: one backend device each, and the one way an op of the table (ops.ts) is
// called: its arguments built from the call (sizes, dtype, the encoded structs) and its tensors,
// in ABI order. The tensors are host arrays (`run`: a CPU context takes them as they are, a CUDA
// context copies them through device buffers reused between calls) or context memory (`call`,
// and `callAsync` off the JavaScript thread). Host arrays must have been checked by the caller
// against the call's sizes (src/tensors.ts); context memory is the caller's to size.

import {
  elementBytes,
  elementCount,
  type FloatDType,
  typedArrayName,
  type ViewName,
} from "./arrays.ts";
import { cString, type Library, statusError } from "./library.ts";
import { OPS, type OpSpec } from "./ops.ts";
import {
  type AdamStruct,
  encodeAdam,
  encodeLossArgs,
  encodeMargin,
  encodeSgd,
  type LossArgs,
  LSM_ADAM,
  LSM_LOSS_ARGS,
  LSM_MARGIN,
  LSM_SGD,
  type MarginStruct,
  type SgdStruct,
} from "./structs.ts";
import { BackendCode, DType, PrecisionCode, Status } from "./symbols.ts";

/** Float32 matrix products: exact IEEE (default), or TF32 or bf16 inputs on tensor cores (CUDA sm_80+). */
export type Precision = "exact" | "tf32" | "bf16";

/** What an op call takes besides its tensors, already checked. Each op reads what it needs. */
export interface Call {
  dtype: FloatDType;
  n: number;
  d: number;
  c: number;
  /** The margin ops' lsm_margin. */
  margin?: MarginStruct;
  /** The fused loss's lsm_loss_args. */
  args?: LossArgs;
  /** The float32 matrix-product precision (the context's setting), for the margin ops. */
  precision?: Precision;
  /** The fused loss's scratch limit in bytes (the context's setting), when given. */
  workspace?: number;
  /** lsm_topk's k. */
  k?: number;
  /** The element count of lsm_sgd_update, lsm_adam_update, lsm_sum and lsm_sum_squares. */
  count?: number;
  /** lsm_sgd_update's settings. */
  sgd?: SgdStruct;
  /** lsm_adam_update's settings. */
  adam?: AdamStruct;
  /** lsm_axpby's a and b. */
  alpha?: number;
  beta?: number;
}

/** A tensor argument: a host array, context memory, or null for an optional output left out. */
export type Tensor = ArrayBufferView | Deno.PointerValue;

// A context dropped without close() is destroyed when collected; the library stays loaded for
// the process, so the call is safe then.
const finalizer = new FinalizationRegistry<{ lib: Library; ptr: Deno.PointerValue }>(
  ({ lib, ptr }) => lib.symbols.lsm_context_destroy(ptr),
);

type NativeFn = (...args: unknown[]) => number;

// Calls with the arguments written out: a spread call would double the cost of a small call.
function invoke<R>(fn: (...args: unknown[]) => R, a: readonly unknown[]): R {
  switch (a.length) {
    case 4:
      return fn(a[0], a[1], a[2], a[3]);
    case 7:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    case 8:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    case 10:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]);
    case 11:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]);
    case 12:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]);
    case 13:
      return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]);
  }
  return fn(...a);
}

const bytesOf = (a: ArrayBufferView) =>
  elementCount(a) * elementBytes(typedArrayName(a) as ViewName);

/**
 * The arguments of an op, the context first. `own`: structs in buffers of their own, for a call
 * still running when the next is encoded; else in the encoders' kept buffers.
 */
function argumentsOf(
  ctx: Deno.PointerValue,
  op: OpSpec,
  call: Call,
  tensors: readonly Tensor[],
  own: boolean,
): unknown[] {
  const out: unknown[] = new Array(op.args.length + 1);
  out[0] = ctx;
  let t = 0;
  let i = 1;
  // Each property read by name: a keyed read would be megamorphic, a small call's larger cost.
  for (const a of op.args) {
    if (typeof a !== "string") {
      // An optional tensor past the end of the list is left out (null).
      out[i++] = t < tensors.length || !a.optional ? tensors[t] : null;
      t++;
      continue;
    }
    switch (a) {
      case "dtype":
        out[i++] = call.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
        break;
      case "n":
        out[i++] = BigInt(call.n);
        break;
      case "d":
        out[i++] = BigInt(call.d);
        break;
      case "c":
        out[i++] = BigInt(call.c);
        break;
      case "k":
        out[i++] = BigInt(call.k!);
        break;
      case "count":
        out[i++] = BigInt(call.count!);
        break;
      case "bytes":
        out[i++] = BigInt(bytesOf(tensors[op.counted] as ArrayBufferView));
        break;
      case "margin":
        out[i++] = encodeMargin(call.margin!, own ? new Uint8Array(LSM_MARGIN.bytes) : undefined);
        break;
      case "args":
        out[i++] = encodeLossArgs(
          call.args!,
          own ? new Uint8Array(LSM_LOSS_ARGS.bytes) : undefined,
        );
        break;
      case "sgd":
        out[i++] = encodeSgd(call.sgd!, own ? new Uint8Array(LSM_SGD.bytes) : undefined);
        break;
      case "alpha":
        out[i++] = call.alpha!;
        break;
      case "beta":
        out[i++] = call.beta!;
        break;
      case "adam":
        out[i++] = encodeAdam(call.adam!, own ? new Uint8Array(LSM_ADAM.bytes) : undefined);
        break;
    }
  }
  return out;
}

/** A context on one backend device, owning device buffers reused between calls. */
export class NativeContext {
  readonly backend: "cpu" | "cuda";
  readonly device: number;
  #lib: Library;
  #sym: Record<string, NativeFn>;
  #ptr: Deno.PointerValue;
  #buffers = new Map<string, { ptr: Deno.PointerValue; bytes: number }>();
  #precision: Precision = "exact";
  #workspace: number | undefined;

  constructor(lib: Library, backend: "cpu" | "cuda", device: number) {
    this.#lib = lib;
    this.#sym = lib.symbols as unknown as Record<string, NativeFn>;
    this.backend = backend;
    this.device = device;
    const out = new BigUint64Array(1);
    const code = backend === "cpu" ? BackendCode.CPU : BackendCode.CUDA;
    const status = lib.symbols.lsm_context_create(code, device, out);
    if (status !== Status.OK) {
      throw statusError(status, cString(lib.symbols.lsm_last_error()), this.#name());
    }
    this.#ptr = Deno.UnsafePointer.create(out[0]);
    finalizer.register(this, { lib, ptr: this.#ptr }, this);
  }

  get closed(): boolean {
    return this.#ptr === null;
  }

  #name(): string {
    return `${this.backend}:${this.device}`;
  }

  // Op messages name their argument already; other calls say what failed.
  #check(status: number, what?: string): void {
    if (status === Status.OK) return;
    throw statusError(status, cString(this.#lib.symbols.lsm_context_last_error(this.#ptr)), what);
  }

  #live(): Deno.PointerValue {
    if (this.#ptr === null) throw new Error(`${this.#name()}: context is closed`);
    return this.#ptr;
  }

  setPrecision(precision: Precision | undefined): void {
    if (precision === undefined || precision === this.#precision) return;
    const code =
      PrecisionCode[precision === "tf32" ? "TF32" : precision === "bf16" ? "BF16" : "EXACT"];
    this.#check(this.#lib.symbols.lsm_context_set_precision(this.#live(), code), this.#name());
    this.#precision = precision;
  }

  setWorkspace(bytes: number | undefined): void {
    if (bytes === undefined || bytes === this.#workspace) return;
    const status = this.#lib.symbols.lsm_context_set_workspace_limit(this.#live(), BigInt(bytes));
    this.#check(status, this.#name());
    this.#workspace = bytes;
  }

  /** Context memory of `bytes` owned by the caller until the context closes. */
  allocate(bytes: number): Deno.PointerValue {
    const out = new BigUint64Array(1);
    this.#check(this.#lib.symbols.lsm_malloc(this.#live(), BigInt(bytes), out), "lsm_malloc");
    return Deno.UnsafePointer.create(out[0]);
  }

  /** Context memory for a tensor, kept under its name and grown (contents lost) when needed. */
  buffer(name: string, bytes: number): Deno.PointerValue {
    const have = this.#buffers.get(name);
    if (have && have.bytes >= bytes) return have.ptr;
    if (have) {
      this.#buffers.delete(name);
      this.#check(this.#lib.symbols.lsm_free(this.#ptr, have.ptr), "lsm_free");
    }
    const ptr = this.allocate(bytes);
    this.#buffers.set(name, { ptr, bytes });
    return ptr;
  }

  /**
   * Runs an op on host arrays (in the op's tensor order; null for an optional output left out),
   * checked by the caller against `call`.
   */
  run(op: OpSpec, call: Call, given: readonly (ArrayBufferView | null)[]): void {
    // Optional ones left out at the end: null.
    const arrays = given.length === op.tensors.length
      ? given
      : op.tensors.map((_, i) => given[i] ?? null);
    if (this.backend === "cpu" && op.host) {
      const ctx = this.#live();
      this.setPrecision(call.precision);
      this.setWorkspace(call.workspace);
      const args = argumentsOf(ctx, op, call, arrays, false);
      return this.#check(invoke(this.#sym[op.host], args));
    }
    // Context memory for each tensor the op reads or writes there, inputs copied in first and
    // outputs copied out after.
    const ptrs = op.tensors.map((t, i) => {
      const a = arrays[i];
      return a === null || t.host ? a : this.buffer(t.name, bytesOf(a));
    });
    op.tensors.forEach((t, i) => {
      if (t.output || t.host || arrays[i] === null) return;
      this.call(OPS.toContext, call, [ptrs[i], arrays[i]], `copying ${t.name} to ${this.#name()}`);
    });
    this.call(op, call, ptrs);
    op.tensors.forEach((t, i) => {
      if (!t.output || t.host || arrays[i] === null) return;
      this.call(
        OPS.fromContext,
        call,
        [arrays[i], ptrs[i]],
        `copying ${t.name} from ${this.#name()}`,
      );
    });
  }

  /**
   * Calls an op on context memory (host arrays where the op's tensor is host memory); `what`
   * prefixes a failure's message where the op's own does not name the argument.
   */
  call(op: OpSpec, call: Call, tensors: readonly Tensor[], what?: string): void {
    const ctx = this.#live();
    this.setPrecision(call.precision);
    this.setWorkspace(call.workspace);
    const args = argumentsOf(ctx, op, call, tensors, false);
    this.#check(invoke(this.#sym[op.device], args), what);
  }

  /**
   * The same call on a thread of Deno's pool (the op's nonblocking symbol): the event loop runs
   * meanwhile. Buffers among the tensors must stay unchanged until the promise settles, and the
   * caller must not use the context from another call in between.
   */
  async callAsync(op: OpSpec, call: Call, tensors: readonly Tensor[]): Promise<void> {
    if (!op.async) throw new Error(`${op.device}: no nonblocking form`);
    const ctx = this.#live();
    this.setPrecision(call.precision);
    this.setWorkspace(call.workspace);
    const args = argumentsOf(ctx, op, call, tensors, true);
    const fn = this.#sym[op.async] as unknown as (...a: unknown[]) => Promise<number>;
    this.#check(await invoke(fn, args));
  }

  /** Copies a host array into context memory at ptr (+ byte offset). */
  upload(ptr: Deno.PointerValue, src: ArrayBufferView, offset = 0): void {
    const dst = offset === 0 ? ptr : Deno.UnsafePointer.offset(ptr!, offset);
    this.call(OPS.toContext, NO_CALL, [dst, src], `copying to ${this.#name()}`);
  }

  /** Copies context memory at ptr into a host array (its whole length). */
  download(dst: ArrayBufferView, ptr: Deno.PointerValue): void {
    this.call(OPS.fromContext, NO_CALL, [dst, ptr], `copying from ${this.#name()}`);
  }

  /** Bytes copied host -> context and context -> host since the context was created. */
  traffic(): { toDevice: number; fromDevice: number } {
    const to = new BigUint64Array(1), from = new BigUint64Array(1);
    this.#check(this.#lib.symbols.lsm_context_traffic(this.#live(), to, from), "traffic");
    return { toDevice: Number(to[0]), fromDevice: Number(from[0]) };
  }

  /** Releases the device buffers and the context. Idempotent. */
  close(): void {
    if (this.#ptr === null) return;
    this.#buffers.clear(); // lsm_context_destroy frees what is still allocated on it
    finalizer.unregister(this);
    this.#lib.symbols.lsm_context_destroy(this.#ptr);
    this.#ptr = null;
  }
}

/** The call of an op that reads nothing from it (a byte copy). */
export const NO_CALL: Call = { dtype: "float32", n: 0, d: 0, c: 0 };
