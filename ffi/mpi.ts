// The processes of an MPI job (MarginHead's distributed: "mpi"): MPI_COMM_WORLD's rank and size
// and the collectives a class-sharded head makes, through the library's lsm_mpi_* (Open MPI
// loaded at run time). One communicator per process, made on first use and finalised when the
// process unloads. Host arrays only; every rank makes the same calls in the same order.

import { cString, loadLibrary, statusError } from "./library.ts";
import { Status } from "./symbols.ts";

type Typed = Float32Array | Float64Array | Int32Array | Uint8Array;

function make<T extends Typed>(like: T, length: number): T {
  return new (like.constructor as new (n: number) => T)(length);
}

/** MPI_COMM_WORLD of this process, with the bytes its collectives have moved. */
export class MpiComm {
  static #world: MpiComm | undefined;
  /** Bytes in the buffers of this process's collectives (gathered, reduced, scattered). */
  bytes = 0;

  private constructor(readonly rank: number, readonly size: number) {}

  /**
   * The job's communicator: MPI initialised on the first call (the program started by mpirun).
   * Without Open MPI an Error saying what to install.
   */
  static world(): MpiComm {
    if (MpiComm.#world !== undefined) return MpiComm.#world;
    const lib = loadLibrary().symbols;
    const rank = new Int32Array(1), size = new Int32Array(1);
    const status = lib.lsm_mpi_init(rank, size);
    if (status !== Status.OK) throw statusError(status, cString(lib.lsm_last_error()));
    MpiComm.#world = new MpiComm(rank[0], size[0]);
    globalThis.addEventListener("unload", () => lib.lsm_mpi_finalize());
    return MpiComm.#world;
  }

  #check(status: number, what: string): void {
    if (status === Status.OK) return;
    throw statusError(status, cString(loadLibrary().symbols.lsm_last_error()), what);
  }

  /** values summed (or their maximum) over the ranks, in place. */
  allreduce(values: Float64Array, op: "sum" | "max"): Float64Array {
    const lib = loadLibrary().symbols;
    this.#check(lib.lsm_mpi_allreduce(values, BigInt(values.length), op === "max" ? 1 : 0), "MPI");
    this.bytes += values.byteLength;
    return values;
  }

  /** Every rank's `local` (counts[r] elements from rank r), concatenated in rank order. */
  allgatherv<T extends Typed>(local: T, counts: readonly number[]): T {
    const total = counts.reduce((a, b) => a + b, 0), out = make(local, total);
    const e = local.BYTES_PER_ELEMENT;
    const bytes = BigInt64Array.from(counts, (c) => BigInt(c * e));
    const lib = loadLibrary().symbols;
    const send = local.byteLength === 0 ? new Uint8Array(1) : local; // FFI wants a buffer
    this.#check(
      lib.lsm_mpi_allgatherv(
        send,
        BigInt(local.byteLength),
        out.byteLength ? out : new Uint8Array(1),
        bytes,
      ),
      "MPI",
    );
    this.bytes += total * e;
    return out;
  }

  /** The sum over ranks of `send` (every rank's counts, concatenated), rank r keeping its part. */
  reduceScatter(send: Float64Array, counts: readonly number[]): Float64Array {
    const out = new Float64Array(Math.max(1, counts[this.rank]));
    const lib = loadLibrary().symbols;
    const n = BigInt64Array.from(counts, (c) => BigInt(c));
    this.#check(
      lib.lsm_mpi_reduce_scatter(send.length ? send : new Float64Array(1), out, n),
      "MPI",
    );
    this.bytes += send.byteLength;
    return out.subarray(0, counts[this.rank]);
  }

  /** Whether `flag` holds on any rank. */
  any(flag: boolean): boolean {
    return this.allreduce(new Float64Array([flag ? 1 : 0]), "max")[0] !== 0;
  }

  /** The sum of `v` over the ranks. */
  sum(v: number): number {
    return this.allreduce(new Float64Array([v]), "sum")[0];
  }

  /**
   * Every rank's count, and agreement on errors before any collective that depends on them: when
   * a rank brings an error, every rank throws the same one (the lowest such rank's message).
   */
  agree(count: number, error: Error | null): number[] {
    const text = error === null ? new Uint8Array(0) : new TextEncoder().encode(
      `${
        error.name === "RangeError" ? "R" : error.name === "TypeError" ? "T" : "E"
      }${error.message}`,
    );
    const head = this.allgatherv(new Float64Array([count, text.length]), Array(this.size).fill(2));
    const counts = Array.from({ length: this.size }, (_, r) => head[2 * r]);
    const lengths = Array.from({ length: this.size }, (_, r) => head[2 * r + 1]);
    const bad = lengths.findIndex((n) => n > 0);
    if (bad < 0) return counts;
    const all = this.allgatherv(text, lengths);
    const from = lengths.slice(0, bad).reduce((a, b) => a + b, 0);
    const said = new TextDecoder().decode(all.subarray(from, from + lengths[bad]));
    const message = `rank ${bad} of ${this.size}: ${said.slice(1)}`;
    throw said[0] === "R"
      ? new RangeError(message)
      : said[0] === "T"
      ? new TypeError(message)
      : new Error(message);
  }

  /** Ends the job with `code` (MPI_Abort): the way out when the ranks cannot agree. */
  abort(code: number): void {
    loadLibrary().symbols.lsm_mpi_abort(code);
  }
}
