// Native contexts: one backend device each. Every op goes through NativeContext.run: one check of
// the arrays right before the native call, then the host symbol (CPU: the arrays themselves, no
// copies) or device memory reused between calls (CUDA: inputs copied in, outputs copied out).

import {
  bufferOfView,
  byteOffsetOfView,
  describe,
  elementBytes,
  elementCount,
  floatArrayName,
  type FloatDType,
  typedArrayName,
  type ViewName,
} from "./arrays.ts";
import { cString, type Library, statusError } from "./library.ts";
import type { OpSpec, TensorSpec } from "./ops.ts";
import {
  BackendCode,
  DType,
  LOSS_ARGS_BYTES,
  MARGIN_BYTES,
  MarginKind,
  PrecisionCode,
  Status,
  type Symbols,
} from "./symbols.ts";

/** The ABI functions with a nonblocking twin (`<name>_async` in symbols.ts). */
export type AsyncName = {
  [K in keyof Symbols]: K extends `${infer B}_async` ? B & keyof Symbols : never;
}[keyof Symbols];

/** Float32 matrix products: exact IEEE (default) or TF32 tensor cores (CUDA sm_80+). */
export type Precision = "exact" | "tf32";

/** A margin kind's name (lsm_margin_kind). */
export type MarginKindName = keyof typeof MarginKind;

/** A margin of the C ABI (lsm_margin), checked; fields the kind does not use are 0. */
export interface Margin {
  kind: MarginKindName;
  m: number;
  lambda: number;
  scale: number;
  m1: number;
  m2: number;
  m3: number;
  flags: number;
}

/** The fused loss's lsm_loss_args: the shard's first class, all classes, the gradient scale. */
export interface LossArgs {
  classOffset: number;
  totalClasses: number;
  gradScale: number;
}

/** What an op call needs besides its arrays, already validated. */
export interface Call {
  dtype: FloatDType;
  n: number;
  d: number;
  c: number;
  margin: Margin;
  precision: Precision;
  /** The fused loss's ops only. */
  args?: LossArgs;
  /** The fused loss's scratch limit in bytes (the context's setting), when given. */
  workspace?: number;
}

// struct lsm_margin: kind, m (int32), lambda, scale, m1, m2, m3 (double), flags, reserved_flags
// (uint32), reserved[4] (double, 0). One buffer for every synchronous call: the native side copies
// the struct before it returns. A head's asynchronous calls encode into buffers of their own
// (`into`); the shared buffer keeps its views, so the common call allocates nothing.
const marginBytes = new Uint8Array(MARGIN_BYTES);
const marginViews = [
  new Int32Array(marginBytes.buffer),
  new Float64Array(marginBytes.buffer),
] as const;
export function encodeMargin(m: Margin, into: Uint8Array = marginBytes): Uint8Array {
  const [ints, floats] = into === marginBytes ? marginViews : [
    new Int32Array(into.buffer, into.byteOffset, MARGIN_BYTES / 4),
    new Float64Array(into.buffer, into.byteOffset, MARGIN_BYTES / 8),
  ];
  ints[0] = MarginKind[m.kind];
  ints[1] = m.m;
  floats[1] = m.lambda;
  floats[2] = m.scale;
  floats[3] = m.m1;
  floats[4] = m.m2;
  floats[5] = m.m3;
  ints[12] = m.flags; // uint32 flags at byte 48; reserved_flags and reserved stay 0
  return into;
}

// struct lsm_loss_args, likewise.
const argsBytes = new Uint8Array(LOSS_ARGS_BYTES);
const argsViews = [
  new BigInt64Array(argsBytes.buffer),
  new Float64Array(argsBytes.buffer),
] as const;
export function encodeArgs(a: LossArgs, into: Uint8Array = argsBytes): Uint8Array {
  const [ints, floats] = into === argsBytes ? argsViews : [
    new BigInt64Array(into.buffer, into.byteOffset, LOSS_ARGS_BYTES / 8),
    new Float64Array(into.buffer, into.byteOffset, LOSS_ARGS_BYTES / 8),
  ];
  ints[0] = BigInt(a.classOffset);
  ints[1] = BigInt(a.totalClasses);
  floats[2] = a.gradScale;
  return into;
}

const size = (call: Call, dim: TensorSpec["rows"]) => (dim === 1 ? 1 : call[dim]);

function describeCount(call: Call, t: TensorSpec, count: number): string {
  if (t.cols === 1) return `N = ${count}`;
  const dims = `${String(t.rows).toUpperCase()}*${String(t.cols).toUpperCase()}`;
  return `${dims} = ${size(call, t.rows)}*${size(call, t.cols)} = ${count}`;
}

// The one check before a native call: each array of the element type and exact length the call
// reads or writes, and no output sharing a byte with another array of the call. Catches arrays
// resized or transferred since they were measured (a layer's forward and its backward).
function guard(op: OpSpec, call: Call, arrays: readonly (ArrayBufferView | null)[]): void {
  const k = op.tensors.length;
  const float = floatArrayName(call.dtype);
  const buffers: (ArrayBufferLike | null)[] = [];
  for (let i = 0; i < k; i++) {
    const t = op.tensors[i], a = arrays[i];
    if (a === null && t.optional) {
      buffers.push(null);
      continue;
    }
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
    const count = size(call, t.rows) * size(call, t.cols);
    const got = elementCount(a!);
    if (got !== count) {
      throw new RangeError(
        `${t.name}: expected ${describeCount(call, t, count)} elements, got ${got}` +
          (t.output ? "" : " (resized or transferred since the last forward)"),
      );
    }
    buffers.push(bufferOfView(a!));
  }
  for (let i = 0; i < k; i++) {
    if (!op.tensors[i].output) continue;
    for (let j = 0; j < k; j++) {
      if (j === i || (op.tensors[j].output && j < i) || buffers[i] !== buffers[j]) continue;
      if (buffers[i] !== null && overlap(arrays[i]!, arrays[j]!)) {
        throw new RangeError(
          `${op.tensors[i].name}: expected memory apart from ${op.tensors[j].name}, got an overlap`,
        );
      }
    }
  }
}

function byteEnd(a: ArrayBufferView): number {
  return byteOffsetOfView(a) + elementCount(a) * elementBytes(typedArrayName(a) as ViewName);
}

function overlap(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return byteOffsetOfView(a) < byteEnd(b) && byteOffsetOfView(b) < byteEnd(a);
}

/** Whether two typed arrays share a byte of one buffer. */
export function sharesMemory(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return bufferOfView(a) === bufferOfView(b) && overlap(a, b);
}

// A context dropped without close() is destroyed when collected; the library stays loaded for
// the process, so the call is safe then.
const finalizer = new FinalizationRegistry<{ lib: Library; ptr: Deno.PointerValue }>(
  ({ lib, ptr }) => lib.symbols.lsm_context_destroy(ptr),
);

type NativeFn = (...args: unknown[]) => number;

// Calls with the arguments written out: a spread call would double the cost of a small call.
function invoke(fn: NativeFn, h: unknown[], t: readonly unknown[]): number {
  if (h.length === 6 && t.length === 4) {
    return fn(h[0], h[1], h[2], h[3], h[4], h[5], t[0], t[1], t[2], t[3]);
  }
  if (h.length === 6 && t.length === 6) {
    return fn(h[0], h[1], h[2], h[3], h[4], h[5], t[0], t[1], t[2], t[3], t[4], t[5]);
  }
  return fn(...h, ...t);
}

/** A context on one backend device, owning device buffers reused between calls. */
export class NativeContext {
  readonly backend: "cpu" | "cuda";
  readonly device: number;
  #lib: Library;
  #ptr: Deno.PointerValue;
  #buffers = new Map<string, { ptr: Deno.PointerValue; bytes: number }>();
  #precision: Precision = "exact";
  #workspace: number | undefined;

  constructor(lib: Library, backend: "cpu" | "cuda", device: number) {
    this.#lib = lib;
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

  setPrecision(precision: Precision): void {
    if (precision === this.#precision) return;
    const code = precision === "tf32" ? PrecisionCode.TF32 : PrecisionCode.EXACT;
    this.#check(this.#lib.symbols.lsm_context_set_precision(this.#live(), code), this.#name());
    this.#precision = precision;
  }

  /** Context memory for a tensor, kept under its name and grown (contents lost) when needed. */
  buffer(name: string, bytes: number): Deno.PointerValue {
    const have = this.#buffers.get(name);
    if (have && have.bytes >= bytes) return have.ptr;
    const sym = this.#lib.symbols;
    if (have) {
      this.#buffers.delete(name);
      this.#check(sym.lsm_free(this.#ptr, have.ptr), "lsm_free");
    }
    const out = new BigUint64Array(1);
    this.#check(sym.lsm_malloc(this.#ptr, BigInt(bytes), out), "lsm_malloc");
    const ptr = Deno.UnsafePointer.create(out[0]);
    this.#buffers.set(name, { ptr, bytes });
    return ptr;
  }

  setWorkspace(bytes: number | undefined): void {
    if (bytes === undefined || bytes === this.#workspace) return;
    const status = this.#lib.symbols.lsm_context_set_workspace_limit(this.#live(), BigInt(bytes));
    this.#check(status, this.#name());
    this.#workspace = bytes;
  }

  /**
   * Runs an op on its arrays (in the op's tensor order; null for an optional output left out),
   * after the one check of them.
   */
  run(op: OpSpec, call: Call, arrays: readonly (ArrayBufferView | null)[]): void {
    const ctx = this.#live();
    guard(op, call, arrays);
    this.setPrecision(call.precision);
    this.setWorkspace(call.workspace);
    const dtype = call.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
    const head: unknown[] = [
      ctx,
      dtype,
      BigInt(call.n),
      BigInt(call.d),
      BigInt(call.c),
      encodeMargin(call.margin),
    ];
    if (op.args) head.push(encodeArgs(call.args!));
    const sym = this.#lib.symbols as unknown as Record<string, NativeFn>;
    if (this.backend === "cpu") return this.#check(invoke(sym[op.host], head, arrays));
    const bytes = arrays.map((a) =>
      a === null ? 0 : elementCount(a) * elementBytes(typedArrayName(a) as ViewName)
    );
    const ptrs = op.tensors.map((
      t,
      i,
    ) => (arrays[i] === null ? null : this.buffer(t.name, bytes[i])));
    const s = this.#lib.symbols;
    op.tensors.forEach((t, i) => {
      if (t.output || arrays[i] === null) return;
      const status = s.lsm_memcpy_to_context(ctx, ptrs[i], arrays[i], BigInt(bytes[i]));
      this.#check(status, `copying ${t.name} to ${this.#name()}`);
    });
    this.#check(invoke(sym[op.device], head, ptrs));
    op.tensors.forEach((t, i) => {
      if (!t.output || arrays[i] === null) return;
      const status = s.lsm_memcpy_from_context(ctx, arrays[i], ptrs[i], BigInt(bytes[i]));
      this.#check(status, `copying ${t.name} from ${this.#name()}`);
    });
  }

  // Tensors that already are context memory (a MarginHead's weights and optimizer state): raw
  // calls of the ABI with the context prepended, sync or off the JavaScript thread.

  /** Context memory of `bytes` owned by the caller until freed, or until the context closes. */
  allocate(bytes: number): Deno.PointerValue {
    const out = new BigUint64Array(1);
    this.#check(this.#lib.symbols.lsm_malloc(this.#live(), BigInt(bytes), out), "lsm_malloc");
    return Deno.UnsafePointer.create(out[0]);
  }

  /** Copies a host array into context memory at ptr (+ byte offset). */
  upload(ptr: Deno.PointerValue, src: ArrayBufferView, offset = 0): void {
    const bytes = BigInt(elementCount(src) * elementBytes(typedArrayName(src) as ViewName));
    const dst = offset === 0 ? ptr : Deno.UnsafePointer.offset(ptr!, offset);
    const status = this.#lib.symbols.lsm_memcpy_to_context(this.#live(), dst, src, bytes);
    this.#check(status, `copying to ${this.#name()}`);
  }

  /** Copies context memory at ptr into a host array (its whole length). */
  download(dst: ArrayBufferView, ptr: Deno.PointerValue): void {
    const bytes = BigInt(elementCount(dst) * elementBytes(typedArrayName(dst) as ViewName));
    const status = this.#lib.symbols.lsm_memcpy_from_context(this.#live(), dst, ptr, bytes);
    this.#check(status, `copying from ${this.#name()}`);
  }

  /** Calls an ABI function on this context: `name(ctx, ...args)`; a failed status throws. */
  call(name: keyof Symbols, args: readonly unknown[]): void {
    const fn = this.#lib.symbols[name] as unknown as NativeFn;
    this.#check(fn(this.#live(), ...args));
  }

  /**
   * The same call on a thread of Deno's pool (the nonblocking `_async` symbol): the event loop
   * runs meanwhile. Buffers in args must stay unchanged until the promise settles, and the
   * caller must not use the context from another call in between.
   */
  async callAsync(name: AsyncName, args: readonly unknown[]): Promise<void> {
    const fn = this.#lib.symbols[`${name}_async`] as unknown as (
      ...a: unknown[]
    ) => Promise<number>;
    this.#check(await fn(this.#live(), ...args));
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
