// The FFI symbol table of liblsoftmax: one entry per function of cuda/lsoftmax.h, the C
// parameter names beside the types, and the ABI's constants.

/** The C ABI version (`LSM_ABI_VERSION`) these bindings were written for. */
export const ABI_VERSION = 4;

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
export const PrecisionCode = { EXACT: 0, TF32: 1, BF16: 2 } as const;

/** lsm_sgd.nonfinite: update as is, update only a finite gradient, or only check it. */
export const SgdNonFinite = { APPLY: 0, SKIP: 1, CHECK: 2 } as const;

/** Element types of `lsm_dtype`. */
export const DType = { FLOAT32: 0, FLOAT64: 1 } as const;

/** `LSM_MAX_TOPK`: the largest k of lsm_topk. */
export const MAX_TOPK = 128;

// The head every op shares: ctx, dtype, n, d, c, margin (const lsm_margin *); the fused loss's
// ops add args (const lsm_loss_args *).
const HEAD = ["pointer", "i32", "i64", "i64", "i64", "buffer"] as const;

// An op's tensors are "pointer" (context memory: CUDA) or "buffer" (host arrays: CPU).
const op = <T extends "pointer" | "buffer">(t: T, tensors: number, args = false) =>
  [
    ...HEAD,
    ...(args ? ["buffer"] : []),
    ...Array.from({ length: tensors }, () => t),
  ] as Deno.NativeType[];

const SGD = ["pointer", "i32", "i64", "buffer", "pointer", "pointer", "pointer", "buffer"] as const;
const SUM = ["pointer", "pointer", "i64", "buffer"] as const;
const ADAM = [
  "pointer",
  "i32",
  "i64",
  "buffer",
  "pointer",
  "pointer",
  "pointer",
  "pointer",
  "pointer",
  "buffer",
] as const;
const AXPBY = ["pointer", "i32", "i64", "f64", "pointer", "f64", "pointer"] as const;
const SQUARES = ["pointer", "i32", "pointer", "i64", "buffer"] as const;
const ROWS = ["pointer", "i32", "i64", "i64", "i64", "pointer", "pointer", "pointer"] as const;

/** The symbols of `cuda/lsoftmax.h`, in `Deno.dlopen` form. */
export const symbols = {
  lsm_version: { parameters: [], result: "pointer" },
  lsm_abi_version: { parameters: [], result: "i32" },
  lsm_last_error: { parameters: [], result: "pointer" },
  // backend, count (int32_t *)
  lsm_device_count: { parameters: ["i32", "buffer"], result: "i32" },
  // backend, device, buf, len
  lsm_device_name: { parameters: ["i32", "i32", "buffer", "usize"], result: "i32" },
  // backend, buf, len
  lsm_products_info: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  // backend, device, out (lsm_context **)
  lsm_context_create: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  // ctx
  lsm_context_destroy: { parameters: ["pointer"], result: "i32" },
  lsm_context_last_error: { parameters: ["pointer"], result: "pointer" },
  // ctx, precision
  lsm_context_set_precision: { parameters: ["pointer", "i32"], result: "i32" },
  // ctx, bytes
  lsm_context_set_workspace_limit: { parameters: ["pointer", "usize"], result: "i32" },
  // ctx, bytes, out (void **)
  lsm_malloc: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  // ctx, ptr
  lsm_free: { parameters: ["pointer", "pointer"], result: "i32" },
  // ctx, dst (context), src (host), bytes
  lsm_memcpy_to_context: { parameters: ["pointer", "pointer", "buffer", "usize"], result: "i32" },
  // ctx, dst (host), src (context), bytes
  lsm_memcpy_from_context: {
    parameters: ["pointer", "buffer", "pointer", "usize"],
    result: "i32",
  },
  // HEAD, x, w, labels, logits
  lsm_forward: { parameters: op("pointer", 4), result: "i32" },
  lsm_forward_host: { name: "lsm_forward", parameters: op("buffer", 4), result: "i32" },
  // HEAD, x, w, labels, grad_logits, grad_x, grad_w
  lsm_backward: { parameters: op("pointer", 6), result: "i32" },
  lsm_backward_host: { name: "lsm_backward", parameters: op("buffer", 6), result: "i32" },
  // HEAD, args, x, w, labels, logits, regulariser
  lsm_forward_args: { parameters: op("pointer", 5, true), result: "i32" },
  lsm_forward_args_host: {
    name: "lsm_forward_args",
    parameters: op("buffer", 5, true),
    result: "i32",
  },
  // HEAD, args, x, w, labels, grad_logits, grad_regulariser, grad_x, grad_w
  lsm_backward_args: { parameters: op("pointer", 7, true), result: "i32" },
  lsm_backward_args_host: {
    name: "lsm_backward_args",
    parameters: op("buffer", 7, true),
    result: "i32",
  },
  // HEAD, args, x, w, labels, row_loss, grad_x, grad_w
  lsm_loss: { parameters: op("pointer", 6, true), result: "i32" },
  lsm_loss_host: { name: "lsm_loss", parameters: op("buffer", 6, true), result: "i32" },
  // HEAD, args, x, w, labels, row_max, row_sum, target, row_smooth
  lsm_loss_partials: { parameters: op("pointer", 7, true), result: "i32" },
  lsm_loss_partials_host: {
    name: "lsm_loss_partials",
    parameters: op("buffer", 7, true),
    result: "i32",
  },
  // HEAD, args, x, w, labels, lse, grad_x, grad_w
  lsm_loss_gradients: { parameters: op("pointer", 6, true), result: "i32" },
  lsm_loss_gradients_host: {
    name: "lsm_loss_gradients",
    parameters: op("buffer", 6, true),
    result: "i32",
  },
  // HEAD, args, x, w, labels, row_targets
  lsm_loss_targets: { parameters: op("pointer", 4, true), result: "i32" },
  lsm_loss_targets_host: {
    name: "lsm_loss_targets",
    parameters: op("buffer", 4, true),
    result: "i32",
  },
  // Training with W in context memory (MarginHead). ctx, dtype, count, sgd (const lsm_sgd *), w,
  // grad, velocity, nonfinite (int32_t *, host)
  lsm_sgd_update: { parameters: SGD, result: "i32" },
  // ctx, dtype, count, adam (const lsm_adam *), w, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
  // nonfinite (int32_t *, host)
  lsm_adam_update: { parameters: ADAM, result: "i32" },
  // ctx, values (context), count, out (double *, host)
  lsm_sum: { parameters: SUM, result: "i32" },
  // ctx, dtype, values (context), count, out (double *, host)
  lsm_sum_squares: { parameters: SQUARES, result: "i32" },
  // ctx, dtype, count, a, x (context, NULL when a is 0), b, y (context): y = a x + b y
  lsm_axpby: { parameters: AXPBY, result: "i32" },
  // HEAD, k, x, w, indices, scores
  lsm_topk: {
    parameters: [...HEAD, "i64", "pointer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  // ctx, dtype, c, d, k, index (int32, context), src, dst: rows by a strictly ascending index
  lsm_gather_rows: { parameters: ROWS, result: "i32" },
  lsm_scatter_rows: { parameters: ROWS, result: "i32" },
  // Collectives across processes (Open MPI loaded at run time), host memory: rank, size (int32 *)
  lsm_mpi_init: { parameters: ["buffer", "buffer"], result: "i32" },
  // values (double *, in place), count, max (1: MPI_MAX, 0: MPI_SUM)
  lsm_mpi_allreduce: { parameters: ["buffer", "i64", "i32"], result: "i32" },
  // send, bytes, recv, counts (int64 per rank, bytes)
  lsm_mpi_allgatherv: { parameters: ["buffer", "i64", "buffer", "buffer"], result: "i32" },
  // send (double *), recv (double *), counts (int64 per rank, doubles)
  lsm_mpi_reduce_scatter: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  lsm_mpi_abort: { parameters: ["i32"], result: "i32" },
  lsm_mpi_finalize: { parameters: [], result: "i32" },
  // The same through NCCL (libnccl.so.2 loaded at run time): device, rank, size (int32 *)
  lsm_nccl_init: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  lsm_nccl_allreduce: { parameters: ["buffer", "i64", "i32"], result: "i32" },
  lsm_nccl_allgatherv: { parameters: ["buffer", "i64", "buffer", "buffer"], result: "i32" },
  lsm_nccl_reduce_scatter: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  // version (int32 *: NCCL's code, e.g. 22304 for 2.23.4)
  lsm_nccl_version: { parameters: ["buffer"], result: "i32" },
  lsm_nccl_finalize: { parameters: [], result: "i32" },
  // ctx, to_context (uint64_t *), from_context (uint64_t *)
  lsm_context_traffic: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  // type (const char *), field (const char *), offset (int64_t *), bytes (int64_t *): where a
  // field of an ABI struct lies ("" for the struct itself: offset 0, its sizeof)
  lsm_layout: { parameters: ["buffer", "buffer", "buffer", "buffer"], result: "i32" },
  // The same functions off the JavaScript thread (MarginHead.stepAsync): Deno runs a nonblocking
  // symbol on a thread of its pool and returns a promise of the status.
  lsm_memcpy_to_context_async: {
    name: "lsm_memcpy_to_context",
    parameters: ["pointer", "pointer", "buffer", "usize"],
    result: "i32",
    nonblocking: true,
  },
  lsm_memcpy_from_context_async: {
    name: "lsm_memcpy_from_context",
    parameters: ["pointer", "buffer", "pointer", "usize"],
    result: "i32",
    nonblocking: true,
  },
  lsm_loss_async: {
    name: "lsm_loss",
    parameters: op("pointer", 6, true),
    result: "i32",
    nonblocking: true,
  },
  lsm_loss_partials_async: {
    name: "lsm_loss_partials",
    parameters: op("pointer", 7, true),
    result: "i32",
    nonblocking: true,
  },
  lsm_loss_gradients_async: {
    name: "lsm_loss_gradients",
    parameters: op("pointer", 6, true),
    result: "i32",
    nonblocking: true,
  },
  lsm_sgd_update_async: {
    name: "lsm_sgd_update",
    parameters: SGD,
    result: "i32",
    nonblocking: true,
  },
  lsm_adam_update_async: {
    name: "lsm_adam_update",
    parameters: ADAM,
    result: "i32",
    nonblocking: true,
  },
  lsm_sum_async: { name: "lsm_sum", parameters: SUM, result: "i32", nonblocking: true },
  lsm_axpby_async: { name: "lsm_axpby", parameters: AXPBY, result: "i32", nonblocking: true },
  lsm_sum_squares_async: {
    name: "lsm_sum_squares",
    parameters: SQUARES,
    result: "i32",
    nonblocking: true,
  },
  lsm_gather_rows_async: {
    name: "lsm_gather_rows",
    parameters: ROWS,
    result: "i32",
    nonblocking: true,
  },
  lsm_scatter_rows_async: {
    name: "lsm_scatter_rows",
    parameters: ROWS,
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library's symbol functions. */
export type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
