// Backend names to native contexts: resolution ("auto", "cpu", "cuda", "cuda:K"), the contexts
// shared by the stateless ops, and what backends() reports.

import { NativeContext } from "../ffi/context.ts";
import { cString, type Library, loadLibrary } from "../ffi/library.ts";
import { BackendCode, Status } from "../ffi/symbols.ts";
import { describe } from "./checks.ts";

/** Where to compute: "auto" (CUDA when usable, else CPU), "cpu", "cuda" (device 0), "cuda:K". */
export type Backend = "auto" | "cpu" | "cuda" | `cuda:${number}`;

/** What {@link backends} reports. */
export interface BackendsInfo {
  /** The native library's version. */
  version: string;
  /** The path the library was loaded from. */
  library: string;
  /** The CPU backend: always there. */
  cpu: {
    available: true;
    name: string;
    /** What its matrix products run on (OpenBLAS's build). */
    products: string;
  };
  /** The CUDA backend: its devices, or why there are none. */
  cuda: {
    available: boolean;
    /**
     * What its matrix products run on: cuBLAS with its version and path, or the library's own
     * kernels and why (not found, or `LSOFTMAX_CUBLAS=off`).
     */
    products: string;
    devices: { index: number; id: `cuda:${number}`; name: string }[];
    /** Why CUDA is not usable (no driver, no device), or null. */
    reason: string | null;
  };
}

// The CUDA device count cannot change under a running process: asked once.
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

/** A string the library writes NUL-terminated into a buffer, or why it could not. */
function nativeString(
  lib: Library,
  bytes: number,
  fill: (buf: Uint8Array) => number,
  failed: string,
): string {
  const buf = new Uint8Array(bytes);
  if (fill(buf) !== Status.OK) return `(${failed}: ${cString(lib.symbols.lsm_last_error())})`;
  return new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
}

function products(lib: Library, backend: number): string {
  return nativeString(
    lib,
    4096,
    (buf) => lib.symbols.lsm_products_info(backend, buf, BigInt(buf.length)),
    "unknown",
  );
}

function deviceName(lib: Library, backend: number, index: number): string {
  return nativeString(
    lib,
    512,
    (buf) => lib.symbols.lsm_device_name(backend, index, buf, BigInt(buf.length)),
    "unnamed",
  );
}

export function backendsInfo(): BackendsInfo {
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
    cpu: {
      available: true,
      name: deviceName(lib, BackendCode.CPU, 0),
      products: products(lib, BackendCode.CPU),
    },
    cuda: { available: count > 0, products: products(lib, BackendCode.CUDA), devices, reason },
  };
}

/** A backend name as a concrete backend and device, or an error saying why it cannot be. */
export function resolveBackend(backend: unknown): { kind: "cpu" | "cuda"; device: number } {
  const spec = backend ?? "auto";
  if (spec === "cpu") return { kind: "cpu", device: 0 };
  const cuda = typeof spec === "string" ? /^cuda(?::(\d+))?$/.exec(spec) : null;
  if (spec !== "auto" && cuda === null) {
    throw new RangeError(
      `backend: expected "auto", "cpu", "cuda" or "cuda:K", got ${describe(backend)}`,
    );
  }
  const { count, reason } = cudaDevices(loadLibrary());
  if (spec === "auto") return count > 0 ? { kind: "cuda", device: 0 } : { kind: "cpu", device: 0 };
  const device = cuda![1] === undefined ? 0 : Number(cuda![1]);
  if (count === 0) throw new Error(`backend: "${spec}" is not available here: ${reason}`);
  if (device >= count) {
    throw new RangeError(`backend: expected a CUDA device in [0, ${count}), got "${spec}"`);
  }
  return { kind: "cuda", device };
}

/**
 * A new context for a backend name. "auto" falls back to the CPU when the GPU it picked cannot
 * host one (a compute capability this build has no kernels for); `cpu` may offer an open CPU
 * context to reuse instead of a new one.
 */
export function openContext(
  backend: unknown,
  cpu: () => NativeContext | undefined = () => undefined,
): NativeContext {
  const lib = loadLibrary();
  const { kind, device } = resolveBackend(backend);
  try {
    return new NativeContext(lib, kind, device);
  } catch (e) {
    if ((backend ?? "auto") !== "auto" || kind === "cpu") throw e;
    return cpu() ?? new NativeContext(lib, "cpu", 0);
  }
}

// The stateless ops share one context per device; `byName` maps each backend name seen to its
// context, so the common call resolves nothing.
const shared = new Map<string, NativeContext>();
const byName = new Map<unknown, NativeContext>();

function liveShared(key: string): NativeContext | undefined {
  const ctx = shared.get(key);
  return ctx && !ctx.closed ? ctx : undefined;
}

export function sharedContext(backend: unknown): NativeContext {
  const hit = byName.get(backend);
  if (hit && !hit.closed) return hit;
  const { kind, device } = resolveBackend(backend);
  let ctx = liveShared(`${kind}:${device}`);
  if (!ctx) {
    ctx = openContext(backend, () => liveShared("cpu:0"));
    shared.set(`${ctx.backend}:${ctx.device}`, ctx);
  }
  byName.set(backend, ctx);
  return ctx;
}

export function releaseSharedContexts(): void {
  for (const ctx of shared.values()) ctx.close();
  shared.clear();
  byName.clear();
}
