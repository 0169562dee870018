// NCCL's collectives for a head across the ranks of an MPI job (MarginHead's distributed:
// "nccl"), through the library's lsm_nccl_* (libnccl.so.2 loaded at run time; the rendezvous over
// MPI). One communicator per process, on one CUDA device, made on first use and finalised when
// the process unloads. Host arrays in and out, device buffers in the collectives; every rank makes
// the same calls in the same order.

import { cString, loadLibrary, statusError } from "./library.ts";
import type { MpiComm } from "./mpi.ts";
import { Status } from "./symbols.ts";

type Typed = Float32Array | Float64Array | Int32Array | Uint8Array;

function make<T extends Typed>(like: T, length: number): T {
  return new (like.constructor as new (n: number) => T)(length);
}

function check(status: number): void {
  if (status === Status.OK) return;
  throw statusError(status, cString(loadLibrary().symbols.lsm_last_error()), "NCCL");
}

/** This process's NCCL communicator: MPI_COMM_WORLD's ranks, one CUDA device each. */
export class NcclComm {
  static #world: NcclComm | undefined;

  private constructor(readonly mpi: MpiComm, readonly device: number) {}

  /**
   * The job's communicator on CUDA device `device` (the same device on every call of a
   * process), MPI's rank and size. Without NCCL an Error saying what to install.
   */
  static world(mpi: MpiComm, device: number): NcclComm {
    const lib = loadLibrary().symbols;
    const rank = new Int32Array(1), size = new Int32Array(1);
    check(lib.lsm_nccl_init(device, rank, size));
    if (NcclComm.#world === undefined) {
      NcclComm.#world = new NcclComm(mpi, device);
      globalThis.addEventListener("unload", () => lib.lsm_nccl_finalize());
    }
    return NcclComm.#world;
  }

  /** values summed (or their maximum) over the ranks, in place. */
  allreduce(values: Float64Array, op: "sum" | "max"): Float64Array {
    const lib = loadLibrary().symbols;
    check(lib.lsm_nccl_allreduce(values, BigInt(values.length), op === "max" ? 1 : 0));
    this.mpi.bytes += values.byteLength;
    return values;
  }

  /** Every rank's `local` (counts[r] elements from rank r), concatenated in rank order. */
  allgatherv<T extends Typed>(local: T, counts: readonly number[]): T {
    const total = counts.reduce((a, b) => a + b, 0), out = make(local, total);
    const e = local.BYTES_PER_ELEMENT;
    const bytes = BigInt64Array.from(counts, (c) => BigInt(c * e));
    const lib = loadLibrary().symbols;
    check(lib.lsm_nccl_allgatherv(
      local.byteLength === 0 ? new Uint8Array(1) : local, // FFI wants a buffer
      BigInt(local.byteLength),
      out.byteLength ? out : new Uint8Array(1),
      bytes,
    ));
    this.mpi.bytes += total * e;
    return out;
  }

  /** The sum over ranks of `send` (every rank's counts, concatenated), rank r keeping its part. */
  reduceScatter(send: Float64Array, counts: readonly number[]): Float64Array {
    const out = new Float64Array(Math.max(1, counts[this.mpi.rank]));
    const lib = loadLibrary().symbols;
    const n = BigInt64Array.from(counts, (c) => BigInt(c));
    check(lib.lsm_nccl_reduce_scatter(send.length ? send : new Float64Array(1), out, n));
    this.mpi.bytes += send.byteLength;
    return out.subarray(0, counts[this.mpi.rank]);
  }
}
