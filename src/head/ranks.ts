// A head across the processes of an MPI job (distributed: "mpi"): Partial FC's model parallelism.
// Rank r holds the contiguous shard r of the classes (shardBounds, the split a backend list
// makes) and steps with its own local batch; every step all-gathers the features and labels, so
// that each rank computes its classes' per-row partials (max, sum of exp, target logit) over the
// global batch; two all-reduces combine them (the maxima, then the rescaled sums with the
// targets and, with label smoothing, its terms), the combine step of ../shards.ts makes every
// row's log-sum-exp and loss from them (with the cross-entropy options),
// and each rank's share of dL/dx is reduce-scattered back to the rows' own ranks. W's rows never
// move. Errors are agreed on before the collectives: every rank throws the same one. With
// distributed: "nccl" the collectives of the data (the batch, the partials, dL/dx, the top-k) go
// through NCCL on the rank's CUDA device; the agreements and the rendezvous stay on MPI.

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";
import { MpiComm } from "../../ffi/mpi.ts";
import { NcclComm } from "../../ffi/nccl.ts";
import { OPS } from "../../ffi/ops.ts";
import type { NativeCall } from "../calls.ts";
import { reduce } from "../loss.ts";
import { combinePartials, shardBounds } from "../shards.ts";
import { backendsInfo } from "../backends.ts";
import { KINDS } from "../kinds.ts";
import { type LossOutcome, uploadBatch } from "./calls.ts";
import { type Batch, type HeadShard, ShardCalls } from "./shards.ts";
import type { TopK } from "./topk.ts";

/**
 * A rank's backend: "cuda", and "auto" where CUDA is usable, mean the GPU of the rank's local
 * rank (OMPI_COMM_WORLD_LOCAL_RANK, modulo the devices), so that the ranks of one machine share
 * its GPUs; any other name is taken as given.
 */
export function rankBackend(backend: unknown): unknown {
  if (backend !== "cuda" && backend !== "auto" && backend !== undefined) return backend;
  const devices = backendsInfo().cuda.devices.length;
  if (devices === 0) return backend;
  let local = 0;
  try {
    local = Number(Deno.env.get("OMPI_COMM_WORLD_LOCAL_RANK") ?? 0) || 0;
  } catch {
    local = 0; // without --allow-env: the first device
  }
  return `cuda:${local % devices}`;
}

/** The collectives of a step's data: MPI's on the host, or NCCL's on a device. */
type Collectives = Pick<MpiComm, "allreduce" | "allgatherv" | "reduceScatter">;

/**
 * The ranks of a head with `distributed` ("mpi" or "nccl") on `backend` (as given; with "nccl"
 * a CUDA backend, the device of the rank's shard).
 */
export function openRanks(distributed: "mpi" | "nccl", classes: number, backend: unknown): Ranks {
  if (distributed === "mpi") return new Ranks(MpiComm.world(), classes);
  const b = rankBackend(backend);
  const device = b === "cuda"
    ? 0
    : typeof b === "string" && /^cuda:\d+$/.test(b)
    ? Number(b.slice(5))
    : -1;
  if (device < 0) {
    throw new TypeError(
      `backend: expected a CUDA backend with distributed: "nccl", got ${
        JSON.stringify(b ?? "auto")
      }`,
    );
  }
  const mpi = MpiComm.world();
  return new Ranks(mpi, classes, NcclComm.world(mpi, device));
}

/** The job's ranks as a head sees them: the communicator and the classes' split. */
export class Ranks {
  /** The shards' bounds: rank r holds classes [bounds[r], bounds[r + 1]). */
  readonly bounds: number[];
  /** The collectives of the data: NCCL's with distributed: "nccl", else MPI's. */
  readonly data: Collectives;

  constructor(readonly comm: MpiComm, classes: number, data?: Collectives) {
    this.data = data ?? comm;
    if (classes < comm.size) {
      throw new RangeError(
        `classes: expected at least one class per rank (${comm.size} ranks), got ${classes}`,
      );
    }
    this.bounds = shardBounds(classes, comm.size);
  }

  get rank(): number {
    return this.comm.rank;
  }

  /** This rank's classes [c0, c1). */
  get range(): [number, number] {
    return [this.bounds[this.rank], this.bounds[this.rank + 1]];
  }

  sum(v: number): number {
    return this.comm.sum(v);
  }

  any(v: boolean): boolean {
    return this.comm.any(v);
  }

  /**
   * The global batch: every rank's row count, agreed on with the errors first (every rank
   * throws the lowest failing rank's error), then the features [N, D] and the labels.
   */
  gather<T extends FloatArray>(
    x: T,
    labels: Int32Array | null,
    d: number,
    error: Error | null,
  ): { x: T; labels: Int32Array | null; counts: number[]; offset: number } {
    const n = error === null ? (labels?.length ?? x.length / d) : 0;
    const counts = this.comm.agree(n, error);
    const offset = counts.slice(0, this.rank).reduce((a, b) => a + b, 0);
    const gx = this.data.allgatherv(x, counts.map((c) => c * d));
    const gl = labels === null ? null : this.data.allgatherv(labels, counts);
    return { x: gx, labels: gl, counts, offset };
  }

  /**
   * `body` (a step's calls after the agreement), where a failure of this rank alone would leave
   * the others blocked in a collective: such a failure ends the job with its message
   * (MPI_Abort). The non-finite policy's "throw" is decided by every rank alike (its flags are
   * all-reduced) and thrown by all, so it passes.
   */
  unanimous<R>(body: () => R): R {
    try {
      return body();
    } catch (e) {
      const agreed = e instanceof RangeError && e.message.includes('(nonFinite: "throw"');
      if (!agreed) {
        console.error(`MarginHead: rank ${this.rank}: ${(e as Error).message}; MPI_Abort`);
        this.comm.abort(1);
      }
      throw e;
    }
  }

  /** A [rows, D] tensor of every rank's shard (this rank's `local`) into one host array. */
  gatherRows(local: FloatArray, d: number): FloatArray {
    const counts = this.bounds.slice(1).map((b, r) => (b - this.bounds[r]) * d);
    return this.data.allgatherv(local, counts);
  }

  /**
   * The loss over the global batch on this rank's shard (one view: the sampled classes or all of
   * its own), dL/dW of its classes into the shard's gradient and, unless gradX is null, this
   * rank's rows of dL/dx (`counts`: every rank's rows).
   */
  *loss(
    shards: readonly HeadShard[],
    b: Batch,
    x: FloatArray,
    labels: Int32Array,
    gradX: FloatArray | null,
    counts: readonly number[],
  ): Generator<NativeCall, LossOutcome, void> {
    b = yield* uploadBatch(shards, b, x, labels);
    b = yield* this.#rowTargets(shards[0], b);
    const n = b.n, s = shards[0], part = new ShardCalls(s, b), ce = s.head.crossEntropy;
    const p = yield* part.partials();
    const top = this.data.allreduce(p.rowMax.slice(), "max");
    // each shard's sum rescaled to the row's maximum, f_iy, and with label smoothing the shard's
    // A_s + W_s (M - m_s) (../shards.ts' combine step, done here for this rank's shard)
    const smooth = p.rowSmooth !== undefined, parts = smooth ? 3 : 2;
    const sums = new Float64Array(parts * n);
    let shardWeight = s.c;
    if (ce.classWeights !== undefined) {
      shardWeight = 0;
      for (let j = s.c0; j < s.c0 + s.c; j++) shardWeight += ce.classWeights[j];
    }
    for (let i = 0; i < n; i++) {
      sums[i] = p.rowSum[i] * Math.exp(p.rowMax[i] - top[i]);
      sums[n + i] = p.target[i];
      if (smooth) {
        const m = p.rowMax[i],
          far = shardWeight === 0 || m === top[i] ? 0 : shardWeight * (top[i] - m);
        sums[2 * n + i] = p.rowSmooth![i] + far;
      }
    }
    this.data.allreduce(sums, "sum");
    const merged = {
      rowMax: top,
      rowSum: sums.subarray(0, n),
      target: sums.subarray(n, 2 * n),
      ...(smooth ? { rowSmooth: sums.subarray(2 * n) } : {}),
    };
    const { lse, rowLoss } = combinePartials([merged], labels, [0, s.head.classes], ce);
    const denominator = b.loss!.denominator;
    const loss = reduce(rowLoss, "mean", denominator);
    if (gradX !== null) {
      const share = yield* part.gradients(lse);
      const d = share.length / n;
      gradX.set(this.data.reduceScatter(Float64Array.from(share), counts.map((c) => c * d)));
    }
    return { loss, rowLoss, denominator };
  }

  // CurricularFace: every row's target cosine and T_i from the rank owning its label (each gives
  // its own rows, 0 elsewhere: one all-reduce of 2N numbers), into the shard's scratch, so that
  // every rank forms the same t and the same hard negatives.
  *#rowTargets(s: HeadShard, b: Batch): Generator<NativeCall, Batch, void> {
    if (b.margin.kind !== KINDS.curricularface.code) return b;
    const part = new Float64Array(2 * b.n), p = s.scratch("rowTargets", part.byteLength);
    yield s.loss(OPS.lossTargets, { ...b, state: undefined, rowTargets: false }, [p]);
    yield s.download(part, p);
    this.data.allreduce(part, "sum");
    yield s.upload(p, part);
    return { ...b, rowTargets: true };
  }

  /**
   * The k best classes of every row of the global batch, this rank's rows of them merged. With
   * sub-centers (K > 1), the k best rows of W (global rows) by their cosine, as topkCalls gives
   * them: `k` is then the rows wanted.
   */
  *topk(s: HeadShard, b: Batch, x: FloatArray, k: number): Generator<NativeCall, TopK[], void> {
    yield* uploadBatch([s], b, x, null);
    const K = s.head.subcenters, rows = K > 1;
    const margin = rows ? { ...b.margin, kind: KINDS.arcface.code, m: 0 } : b.margin;
    const ks = Math.min(k, rows ? s.rows : s.c), count = b.n * ks;
    const ip = s.scratch("indices", count * 4), sp = s.scratch("scores", s.bytes(count));
    const call = { ...s.call({ ...b, margin }), k: ks };
    yield s.op(OPS.topk, call, [s.scratch("x", 0), s.w, ip, sp]);
    const indices = new Int32Array(count), scores = newFloatArray(s.head.dtype, count);
    yield s.download(indices, ip);
    yield s.download(scores, sp);
    const first = rows ? s.r0 : s.c0;
    for (let e = 0; e < count; e++) indices[e] += first;
    const sizes = this.bounds.slice(1).map((c1, r) => b.n * Math.min(k, (c1 - this.bounds[r]) * K));
    const all = this.data.allgatherv(indices, sizes),
      allScores = this.data.allgatherv(scores, sizes);
    const out: TopK[] = [];
    let at = 0;
    for (const size of sizes) {
      out.push({ indices: all.subarray(at, at + size), scores: allScores.subarray(at, at + size) });
      at += size;
    }
    return out;
  }
}
