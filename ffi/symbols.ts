/**
 * The FFI symbol table of liblsoftmax: one entry per function of `cuda/lsoftmax.h`, kept apart
 * from the friendly API in `mod.ts`.
 *
 * @example
 * ```ts
 * import { symbols } from "./symbols.ts";
 * const lib = Deno.dlopen("build/liblsoftmax.so", symbols);
 * console.log(lib.symbols.lsm_abi_version());
 * lib.close();
 * ```
 * @module
 */

/** The C ABI version (`LSM_ABI_VERSION`) these bindings were written for. */
export const ABI_VERSION = 1;

/** Status codes of `lsm_status`. */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  UNAVAILABLE: 2,
  OUT_OF_MEMORY: 3,
  CUDA: 4,
  INTERNAL: 5,
} as const;

/** Backend codes of `lsm_backend`. */
export const BackendCode = { CPU: 0, CUDA: 1 } as const;

/** Matrix-product precisions of `lsm_precision`. */
export const PrecisionCode = { EXACT: 0, TF32: 1 } as const;

/** Element types of `lsm_dtype`. */
export const DType = { FLOAT32: 0, FLOAT64: 1 } as const;

// Parameter lists of lsm_forward and lsm_backward with tensors as `t` ("pointer" or "buffer").
const FORWARD = <T extends "pointer" | "buffer">(t: T) =>
  ["pointer", "i32", t, t, t, "i64", "i64", "i64", "i32", "f64", t] as const;
const BACKWARD = <T extends "pointer" | "buffer">(t: T) =>
  ["pointer", "i32", t, t, t, t, "i64", "i64", "i64", "i32", "f64", t, t] as const;

/** The symbols of `cuda/lsoftmax.h`, in `Deno.dlopen` form. */
export const symbols = {
  lsm_version: { parameters: [], result: "pointer" },
  lsm_abi_version: { parameters: [], result: "i32" },
  lsm_last_error: { parameters: [], result: "pointer" },
  lsm_device_count: { parameters: ["i32", "buffer"], result: "i32" },
  lsm_device_name: { parameters: ["i32", "i32", "buffer", "usize"], result: "i32" },
  lsm_context_create: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  lsm_context_destroy: { parameters: ["pointer"], result: "i32" },
  lsm_context_last_error: { parameters: ["pointer"], result: "pointer" },
  lsm_context_info: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  lsm_context_set_precision: { parameters: ["pointer", "i32"], result: "i32" },
  lsm_malloc: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  lsm_free: { parameters: ["pointer", "pointer"], result: "i32" },
  lsm_memcpy_to_context: { parameters: ["pointer", "pointer", "buffer", "usize"], result: "i32" },
  lsm_memcpy_from_context: {
    parameters: ["pointer", "buffer", "pointer", "usize"],
    result: "i32",
  },
  lsm_synchronize: { parameters: ["pointer"], result: "i32" },
  lsm_forward: {
    // ctx, dtype, x, w, labels, n, d, c, margin, lambda, logits: context memory (device pointers)
    parameters: [...FORWARD("pointer")],
    result: "i32",
  },
  lsm_forward_host: {
    // the same function given host arrays directly (CPU contexts): no pointer objects per call
    name: "lsm_forward",
    parameters: [...FORWARD("buffer")],
    result: "i32",
  },
  lsm_backward: {
    // ctx, dtype, x, w, labels, grad_logits, n, d, c, margin, lambda, grad_x, grad_w
    parameters: [...BACKWARD("pointer")],
    result: "i32",
  },
  lsm_backward_host: {
    name: "lsm_backward",
    parameters: [...BACKWARD("buffer")],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library's symbol functions. */
export type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
