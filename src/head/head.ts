// MarginHead: a classifier head whose weights W [C, D], their gradient and the optimizer state live in
// context memory of its backend (host memory on the CPU, device memory on CUDA). A step sends the
// features and labels in and dL/dx out; W is updated where it lives. With a list of backends the
// classes are split into shards, one context each (shards.ts), combined by the class-shard
// algorithm of ../shards.ts. Its native sequences are in calls.ts; this file holds the state.

import { type FloatArray, type FloatDType, newFloatArray } from "../../ffi/arrays.ts";
import { MAX_TOPK } from "../../ffi/symbols.ts";
import { CallQueue, runCalls, runCallsAsync } from "../calls.ts";
import { checkInteger, readOptions } from "../checks.ts";
import type { Margin } from "../kinds.ts";
import { resolveHead } from "../resolve_head.ts";
import { checkBatch } from "../tensors.ts";
import { lambdaOf, type LambdaSchedule } from "../schedule.ts";
import { accumulateCalls, type Accumulated, checkApplied, stepCalls } from "./calls.ts";
import { evaluateCalls, topkCalls } from "./query_calls.ts";
import { fillWeights } from "./init.ts";
import type { HeadOptions, HeadPlacement, HeadState, NonFinitePolicy } from "./options.ts";
import type { OptimizerSettings, StepOptions, StepSettings } from "./options.ts";
import { type StepResult, stepSettings } from "./options.ts";
import { HeadOptimizer } from "./optimizer.ts";
import type { Batch, HeadShard } from "./shards.ts";
import { gatherShards, openShards, shardTraffic } from "./shards.ts";
import { checkState, makeState, stateOptions } from "./state.ts";
import { classTopK, countCorrect, mergeTopK } from "./topk.ts";
import { loadHeadState, saveHeadState } from "./checkpoint.ts";
import { type Draw, Sampler, type SamplerState } from "./sampling.ts";
import type { Peers } from "./calls.ts";
import { openRanks, rankBackend, type Ranks } from "./ranks.ts";

// A distributed step's peers, with this rank's rows of the global batch.
interface RankStep extends Peers {
  rows: number;
  offset: number;
}

/**
 * A classifier head whose weights W [C, D], their gradient and the optimizer state live in context
 * memory of its backend: a step sends x [N, D] and the labels in, and dL/dx back; W is updated
 * where it lives. The loss is the fused L-Softmax cross-entropy of {@link loss} (mean over the
 * batch).
 *
 * @example
 * ```ts
 * import { MarginHead } from "./mod.ts";
 * using head = new MarginHead({
 *   classes: 10, features: 4, margin: 2, lambda: 1, backend: "cpu",
 *   optimizer: { lr: 0.1, momentum: 0.9 },
 * });
 * const x = new Float32Array(8).fill(0.5), labels = new Int32Array([3, 7]);
 * const { loss, gradX } = head.step(x, labels); // W updated in place
 * const { indices } = head.predict(x, { k: 3 });
 * ```
 */
export class MarginHead {
  /** The class count C. */
  readonly classes: number;
  /** The feature count D. */
  readonly features: number;
  /** The rows of W per class: sub-center ArcFace's K (W is [C·K, D]), 1 for the other kinds. */
  readonly subcenters: number;
  /** The element type of W, x and dL/dx. */
  readonly dtype: FloatDType;
  /** The optimizer's settings, defaults filled in (lr is the default of each step). */
  readonly optimizer: Readonly<OptimizerSettings>;
  #options: HeadState["options"];
  #lambda: number | LambdaSchedule;
  #margin: Margin; // λ 0: #batch sets each call's
  #shards: HeadShard[] = [];
  #iteration = 0;
  #skippedSteps = 0;
  #nonFinite: NonFinitePolicy;
  #optimizer: HeadOptimizer;
  #accumulated: Accumulated | null = null; // micro-batches since the last applying step
  // AdaFace's and CurricularFace's state after the micro-batches so far, kept until they are applied
  #pending: Float64Array | null = null;
  #closed = false;
  #queue = new CallQueue(); // the steps asked of stepAsync
  #sampler: Sampler | null = null; // sampleRate < 1: the classes of each step
  #ranks: Ranks | null = null; // distributed: the job's ranks, this process holding one shard

  /**
   * A head with weights from `options.weights` or drawn from `options.seed`.
   *
   * @param options classes, features, the margin and λ (or its schedule), and optionally dtype,
   * backend (or a list), optimizer, weights, seed, precision, workspace, iteration.
   */
  constructor(options: HeadOptions) {
    const h = resolveHead(options);
    this.classes = h.classes;
    this.features = h.features;
    this.subcenters = h.subcenters;
    this.dtype = h.dtype;
    this.#margin = h.margin;
    this.#lambda = h.lambda ?? 0;
    this.optimizer = Object.freeze(h.optimizer);
    this.#optimizer = new HeadOptimizer(this.optimizer);
    this.#iteration = h.iteration;
    this.#nonFinite = h.nonFinite;
    this.#options = stateOptions(h);
    const ranks = h.distributed === undefined
      ? null
      : openRanks(h.distributed, h.classes, h.backends[0]);
    this.#ranks = ranks;
    const shape = {
      ...h,
      dtype: this.dtype,
      // a rank's rows: K sub-centers a class
      ...(ranks === null
        ? {}
        : { gatherRows: (a: FloatArray) => ranks.gatherRows(a, h.features * h.subcenters) }),
    };
    const o = h.optimizer, adam = o.type !== "sgd";
    const buffers = {
      velocity: o.type === "sgd" && o.momentum !== 0,
      adam,
      amsgrad: adam && o.amsgrad,
    };
    this.#shards = ranks === null
      ? openShards(h.backends, shape, buffers)
      : openShards(h.backends.map(rankBackend), shape, buffers, ranks.range);
    if (h.sampleRate < 1) this.#sampler = Sampler.seeded(h.sampleRate, h.seed);
    try {
      fillWeights(this.#shards, h.weights, h.seed);
    } catch (e) {
      this.#release();
      throw e;
    }
  }

  /** This process's rank in the job (distributed: "mpi" or "nccl"); 0 in one process. */
  get rank(): number {
    return this.#ranks?.rank ?? 0;
  }

  /** The job's process count (distributed: "mpi" or "nccl"); 1 in one process. */
  get worldSize(): number {
    return this.#ranks?.comm.size ?? 1;
  }

  /** Steps taken (0 for a new head). */
  get iteration(): number {
    return this.#iteration;
  }

  /** Steps whose update was skipped for a non-finite loss or gradient (`nonFinite: "skip"`). */
  get skippedSteps(): number {
    return this.#skippedSteps;
  }

  /** What a step does with a non-finite loss or gradient: "skip", "throw" or "apply". */
  get nonFinite(): NonFinitePolicy {
    return this.#nonFinite;
  }

  /** λ at the current iteration (that of the last step). */
  get lambda(): number {
    return this.#lambdaAt(this.#iteration);
  }

  /** Whether {@link MarginHead.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Bytes moved between the host and the head's contexts since it was made; with distributed,
   * `collectives` too: the bytes in this process's collective buffers (gathered, reduced,
   * scattered) since MPI started.
   */
  get traffic(): { toDevice: number; fromDevice: number; collectives?: number } {
    this.#live();
    this.#checkIdle(); // the counters are the running step's to write
    const t = shardTraffic(this.#shards);
    return this.#ranks === null ? t : { ...t, collectives: this.#ranks.comm.bytes };
  }

  #lambdaAt(step: number): number {
    return typeof this.#lambda === "number" ? this.#lambda : lambdaOf(step, this.#lambda);
  }

  // A call's batch at λ of `step`: the one place the head's margin becomes the call's.
  #batch(n: number, step: number): Batch {
    return { n, margin: { ...this.#margin.struct, lambda: this.#lambdaAt(step) } };
  }

  #live(): void {
    if (this.#closed) throw new Error("MarginHead: the head is closed");
  }

  #checkIdle(): void {
    if (this.#queue.pending > 0) {
      throw new Error("MarginHead: a stepAsync is running; await it before a synchronous call");
    }
  }

  // One training step's calls; the head's state advances only once every call succeeded. A
  // skipped step counts as a step (the iteration and λ's schedule advance) but leaves W and the
  // momentum as they were.
  *#step(x: FloatArray, labels: Int32Array, st: StepSettings, peers: RankStep | null = null) {
    const n = labels.length, step = this.#iteration + 1;
    const kind = this.#margin.kind, moves = kind === "adaface" || kind === "curricularface";
    // A micro-batch's statistics are its own, and it moves the state the next one starts from,
    // as the authors' head does under PyTorch's accumulation (one forward per micro-batch).
    const batch = this.#batch(n, step);
    const b: Batch = moves
      ? {
        ...batch,
        margin: { ...batch.margin, ...(this.#pending ? this.#stateFields(this.#pending) : {}) },
        state: new Float64Array(2),
      }
      : batch;
    const gradX = newFloatArray(this.dtype, (peers?.rows ?? n) * this.features);
    const policy = this.#nonFinite, before = this.#accumulated;
    const drawn = this.#draw(labels), draw = drawn?.draw ?? null;
    const sampled = draw === null ? {} : { sampled: draw.sampled };
    if (st.accumulate) {
      const shards = this.#shards;
      const r = yield* accumulateCalls(shards, b, x, labels, gradX, policy, before, draw, peers);
      this.#accumulated = r.accumulated;
      // A micro-batch with a non-finite row (the applying step skips) leaves the state as it was.
      if (b.state?.every(Number.isFinite)) this.#pending = b.state;
      if (drawn) this.#sampler!.advance(drawn.state);
      return { loss: r.loss, lambda: b.margin.lambda, gradX, skipped: false, ...sampled };
    }
    const update = this.#optimizer.update(st.lr);
    const shards = this.#shards;
    const r = yield* stepCalls(shards, b, x, labels, update, gradX, policy, before, draw, peers);
    const { loss, skipped } = r;
    if (b.state !== undefined && !skipped) this.#moveState(b.state);
    this.#accumulated = null;
    this.#pending = null; // a skipped step leaves the state as before its micro-batches
    this.#iteration = step;
    if (skipped) this.#skippedSteps++;
    this.#optimizer.applied(skipped);
    if (drawn) this.#sampler!.advance(drawn.state);
    return { loss, lambda: b.margin.lambda, gradX, skipped, ...sampled };
  }

  // The adaptive kinds' state after a step (AdaFace: mean, std; CurricularFace: t) into the
  // margin of the next call and into the options state() records, as the layer carries it.
  #moveState(out: Float64Array): void {
    const moved = this.#stateFields(out);
    this.#margin = { kind: this.#margin.kind, struct: { ...this.#margin.struct, ...moved } };
    this.#options = { ...this.#options, ...moved };
  }
  // The state's fields of the margin (as the options name them) from a call's state_out.
  #stateFields(out: Float64Array): Record<string, number> {
    return this.#margin.kind === "adaface"
      ? { batchMean: out[0], batchStd: out[1] }
      : { t: out[0] };
  }

  // The step's sampled classes (null without sampling) and the sampler's next state; the labels
  // are checked here, since they index the sampled set before any native call sees them.
  #draw(labels: Int32Array): { draw: Draw; state: SamplerState } | null {
    if (this.#sampler === null) return null;
    const c = this.classes;
    for (let i = 0; i < labels.length; i++) {
      const y = labels[i];
      if (y < 0 || y >= c) {
        throw new RangeError(`labels[${i}]: expected an integer in [0, ${c}), got ${y}`);
      }
    }
    const bounds = this.#ranks?.bounds ?? [...this.#shards.map((s) => s.c0), c];
    return this.#sampler.draw(labels, bounds);
  }

  // A distributed call's global batch: this rank's checks (`check`, the labels' range) agreed
  // on with every rank's first, so that all throw the same error or none does; then the batch
  // gathered, and the step's peers over it (this rank's rows of dL/dx).
  #gather<T extends FloatArray>(
    x: T,
    labels: Int32Array | null,
    check: () => void,
  ): { x: T; labels: Int32Array | null; peers: RankStep } {
    const ranks = this.#ranks!;
    let error: Error | null = null;
    try {
      check();
      if (labels !== null) {
        const ignored = this.#options.ignoreIndex; // the loss's rows left out, whatever label
        for (let i = 0; i < labels.length; i++) {
          const y = labels[i];
          if ((y < 0 || y >= this.classes) && y !== ignored) {
            throw new RangeError(
              `labels[${i}]: expected an integer in [0, ${this.classes}), got ${y}`,
            );
          }
        }
      }
    } catch (e) {
      error = e instanceof Error ? e : new Error(String(e));
    }
    const g = ranks.gather(x, labels, this.features, error);
    const counts = g.counts;
    const peers: RankStep = {
      first: ranks.rank,
      rows: counts[ranks.rank],
      offset: g.offset,
      loss: (shards, b, gx, ys, gradX) => ranks.loss(shards, b, gx, ys, gradX, counts),
      sum: (v) => ranks.sum(v),
      any: (v) => ranks.any(v),
    };
    return { x: g.x, labels: g.labels, peers };
  }

  /** Partial FC's class sampling rate (1: every class in every step). */
  get sampleRate(): number {
    return this.#sampler?.rate ?? 1;
  }

  /**
   * One training step: the fused loss of x [N, D] and labels, dL/dW applied to W by the optimizer where W
   * lives, and dL/dx back for the layers below.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices, each in [0, C).
   * AdaFace and CurricularFace start from the head's state (`batchMean`, `batchStd`; `t`) and
   * move it with this batch, unless the update is skipped; they take no `accumulate`.
   *
   * @param options `lr`, this step's learning rate, and `accumulate` ({@link StepOptions}).
   * @returns The mean loss, λ of the step, dL/dx, and whether the update was skipped (see
   * `nonFinite`).
   */
  step<T extends FloatArray>(x: T, labels: Int32Array, options: StepOptions = {}): StepResult<T> {
    this.#live();
    this.#checkIdle();
    if (this.#ranks !== null) {
      let st: StepSettings | null = null;
      const g = this.#gather(x, labels, () => {
        checkBatch(x, labels, this.dtype, this.features);
        st = stepSettings(this.optimizer, options, this.#iteration);
      });
      return this.#ranks.unanimous(() =>
        runCalls(this.#step(g.x, g.labels!, st!, g.peers))
      ) as StepResult<T>;
    }
    checkBatch(x, labels, this.dtype, this.features);
    const st = stepSettings(this.optimizer, options, this.#iteration + this.#queue.pending);
    return runCalls(this.#step(x, labels, st)) as StepResult<T>;
  }

  /**
   * The same step off the JavaScript thread: the event loop keeps running meanwhile. Calls on
   * one head run in the order made; x and labels are copied before this returns, so the caller
   * may reuse them at once.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices, each in [0, C).
   * @param options `lr`: this step's learning rate; `accumulate` as {@link MarginHead.step}'s.
   * @returns A promise of the mean loss, λ of the step, and dL/dx.
   */
  stepAsync<T extends FloatArray>(
    x: T,
    labels: Int32Array,
    options: StepOptions = {},
  ): Promise<StepResult<T>> {
    this.#live();
    if (this.#ranks !== null) { // the collectives run on this thread, in the order of the calls
      const xs = x.slice() as T, ys = labels.slice(); // the caller may reuse them at once
      return this.#queue.drained().then(() => this.step(xs, ys, options));
    }
    checkBatch(x, labels, this.dtype, this.features);
    const st = stepSettings(this.optimizer, options, this.#iteration + this.#queue.pending);
    const xs = x.slice() as FloatArray, ys = labels.slice();
    return this.#queue.push(
      () => runCallsAsync(this.#step(xs, ys, st)) as Promise<StepResult<T>>,
      () => this.#queue.pending === 0 && this.#closed && this.#release(),
    );
  }

  /**
   * The loss (no update) and the accuracy of the best class by {@link MarginHead.predict}'s score.
   * Row i is correct when its best class (predict's order: higher score, then lower class) is its
   * label, that score is not NaN, and the row's loss is not NaN, that is no logit of the row is
   * NaN (nor +Inf against +Inf): a row whose scores cannot all be compared is never correct. The
   * adaptive kinds' state is used as it is and not moved.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices.
   * @returns The mean loss at λ of the current iteration, and the fraction of rows correct.
   * @example
   * ```ts
   * import { MarginHead } from "./mod.ts";
   * using head = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 0, backend: "cpu" });
   * const { loss, accuracy } = head.evaluate(new Float32Array([1, 0, 0, 1]), new Int32Array([0, 1]));
   * ```
   */
  evaluate(x: FloatArray, labels: Int32Array): { loss: number; accuracy: number } {
    this.#live();
    this.#checkIdle();
    if (this.#ranks !== null) {
      const g = this.#gather(x, labels, () => checkBatch(x, labels, this.dtype, this.features));
      const ys = g.labels!, b = this.#batch(ys.length, this.#iteration);
      const { loss, rowLoss } = runCalls(evaluateCalls(this.#shards, b, g.x, ys, g.peers));
      const results = runCalls(this.#ranks.topk(this.#shards[0], b, g.x, 1));
      const best = mergeTopK(results, ys.length, 1, this.dtype); // k = 1: the best row's class
      const { indices, scores } = this.subcenters === 1
        ? best
        : classTopK(best, ys.length, 1, this.subcenters, this.dtype);
      return { loss, accuracy: countCorrect(indices, scores, rowLoss, ys) / ys.length };
    }
    const { n } = checkBatch(x, labels, this.dtype, this.features);
    const b = this.#batch(n, this.#iteration);
    const { loss, rowLoss } = runCalls(evaluateCalls(this.#shards, b, x, labels));
    const { indices, scores } = this.predict(x, { k: 1 });
    return { loss, accuracy: countCorrect(indices, scores, rowLoss, labels) / n };
  }

  /**
   * The k best classes of each sample, best first (equal scores by lower class), without an N×C
   * buffer. The score is the logit without the margin: x·w_j (L-Softmax), |x| cos θ_j (A-Softmax),
   * cos θ_j (CosFace, ArcFace, combined: a cosine whatever the scale).
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param options `k`: how many classes per sample, 1 to min(C, 128); 1 by default.
   * @returns indices [N, k] (Int32Array) and their scores [N, k] (the head's dtype).
   */
  predict<T extends FloatArray>(
    x: T,
    options: { k?: number } = {},
  ): { indices: Int32Array; scores: T } {
    this.#live();
    this.#checkIdle();
    const K = this.subcenters;
    // sub-centers: the classes from the best (k − 1)·K + 1 rows, at most MAX_TOPK of them
    const most = K === 1 ? MAX_TOPK : Math.floor((MAX_TOPK - 1) / K) + 1;
    if (this.#ranks !== null) {
      let k = 1;
      const g = this.#gather(x, null, () => {
        checkBatch(x, null, this.dtype, this.features);
        const o = readOptions("options", options, ["k"]);
        k = checkInteger("k", o.k ?? 1, 1, Math.min(this.classes, most));
      });
      const n = g.x.length / this.features, { rows, offset } = g.peers;
      const kr = K === 1 ? k : (k - 1) * K + 1;
      const results = runCalls(
        this.#ranks.topk(this.#shards[0], this.#batch(n, this.#iteration), g.x, kr),
      );
      const all = K === 1
        ? mergeTopK<T>(results, n, k, this.dtype)
        : classTopK<T>(mergeTopK(results, n, kr, this.dtype), n, k, K, this.dtype);
      return {
        indices: all.indices.slice(offset * k, (offset + rows) * k),
        scores: all.scores.slice(offset * k, (offset + rows) * k) as T,
      };
    }
    const { n } = checkBatch(x, null, this.dtype, this.features);
    const o = readOptions("options", options, ["k"]);
    const k = checkInteger("k", o.k ?? 1, 1, Math.min(this.classes, most));
    const kr = K === 1 ? k : (k - 1) * K + 1;
    const results = runCalls(topkCalls(this.#shards, this.#batch(n, this.#iteration), x, kr));
    if (K === 1) return mergeTopK<T>(results, n, k, this.dtype);
    return classTopK<T>(mergeTopK(results, n, kr, this.dtype), n, k, K, this.dtype);
  }

  /**
   * A host copy of W [C, D].
   *
   * @returns The weights, row-major, of the head's dtype.
   */
  weights(): FloatArray {
    this.#live();
    this.#checkIdle();
    return gatherShards(this.#shards, (s) => s.w);
  }

  /**
   * Everything needed to continue training bit for bit: the format (1), the options, the
   * iteration, the skipped steps, W and the momentum buffer (host copies).
   * `MarginHead.fromState(head.state())` rebuilds the head; so does
   * `MarginHead.fromState(JSON.parse(JSON.stringify(head.state())))`: each array carries a
   * non-enumerable `toJSON` that writes `{ dtype, shape, base64 }` (its bytes, little-endian).
   *
   * @returns The head's state; structured-cloneable and JSON-safe.
   * @example
   * ```ts
   * import { MarginHead } from "./mod.ts";
   * using head = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 0, backend: "cpu" });
   * const json = JSON.stringify(head.state());
   * using again = MarginHead.fromState(JSON.parse(json));
   * ```
   */
  state(): HeadState {
    this.#live();
    this.#checkIdle();
    checkApplied(this.#accumulated);
    const { velocity, adam } = this.#optimizer.state(this.#shards);
    return makeState(
      structuredClone(this.#options),
      this.#iteration,
      this.#skippedSteps,
      gatherShards(this.#shards, (s) => s.w),
      velocity,
      [this.classes * this.subcenters, this.features],
      adam,
      this.#sampler?.state ?? null,
    );
  }

  /**
   * A head from {@link MarginHead.state}, continuing where that one was. Every field is required
   * and checked by name before anything is built; the arrays may be typed arrays or their JSON
   * form `{ dtype, shape, base64 }`.
   *
   * @param state What `state()` returned, or that through JSON.
   * @returns A new head.
   * @example
   * ```ts
   * import { MarginHead } from "./mod.ts";
   * using head = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 0, backend: "cpu" });
   * using copy = MarginHead.fromState(head.state());
   * ```
   */
  static fromState(state: HeadState): MarginHead {
    const st = checkState(state);
    const head = new MarginHead({ ...st.options, weights: st.weights });
    try {
      head.#iteration = st.iteration;
      head.#skippedSteps = st.skippedSteps;
      head.#optimizer.restore(head.#shards, st.velocity, st.adam);
      if (st.sampler !== null) head.#sampler!.advance(st.sampler);
    } catch (e) {
      head.close();
      throw e;
    }
    return head;
  }

  /**
   * Writes the head to a safetensors file, which PyTorch reads (`safetensors.torch.load_file`):
   * W as `weight` [C, D] in the head's dtype, the momentum buffer as `momentum_buffer`, the options
   * and the iteration in `__metadata__`, with a checksum of it all. The file appears whole or not
   * at all (a temporary name, then a rename); steps asked of stepAsync before the call are in it.
   *
   * @param path The file to write (replaced when it exists).
   * @returns When the file is in place.
   * @example
   * ```ts
   * import { MarginHead } from "./mod.ts";
   * using head = new MarginHead({ classes: 10, features: 4, margin: 2, lambda: 1, backend: "cpu" });
   * await head.save("head.safetensors");
   * using again = await MarginHead.load("head.safetensors", { backend: "cpu" });
   * ```
   */
  async save(path: string): Promise<void> {
    this.#live();
    await this.#queue.drained();
    const state = this.state(); // across ranks: every rank's shard gathered
    if (this.#ranks === null) return await saveHeadState(path, state);
    let error: Error | null = null;
    if (this.#ranks.rank === 0) { // one file from rank 0; every rank learns how it went
      try {
        await saveHeadState(path, state);
      } catch (e) {
        error = e instanceof Error ? e : new Error(String(e));
      }
    }
    this.#ranks.comm.agree(0, error);
  }

  /**
   * A head from a file of {@link MarginHead.save}, continuing where that one was. The whole file
   * is checked first (header, dtypes, shapes, checksum, every field): a truncated or altered file
   * is an error naming what is wrong, never a half-loaded head.
   *
   * @param path The file to read.
   * @param options Where the head goes instead of where the saved one was: `backend` (one or a
   * list: the classes are split again), `precision`, `workspace`, `distributed` ("mpi" or "nccl": every
   * rank of the job loads the file and keeps its shard, whatever the world size that saved it).
   * @returns A new head.
   */
  static async load(path: string, options: HeadPlacement = {}): Promise<MarginHead> {
    const o = readOptions("options", options, ["backend", "precision", "workspace", "distributed"]);
    const place = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
    const state = await loadHeadState(path);
    return MarginHead.fromState({ ...state, options: { ...state.options, ...place } });
  }

  #release(): void {
    for (const s of this.#shards) s.ctx.close(); // frees W, its gradient, the velocity, scratch
    this.#shards = [];
  }

  /**
   * Releases the head's memory; later calls throw. Steps already asked of stepAsync finish
   * first, and the memory goes after the last. Idempotent. A head dropped unclosed is released
   * when garbage-collected.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#queue.pending === 0) this.#release();
  }

  /** Closes the head (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}
