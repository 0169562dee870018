// MarginHead: a classifier head whose weights W [C, D], their gradient and the optimizer state live in
// context memory of its backend (host memory on the CPU, device memory on CUDA). A step sends the
// features and labels in and dL/dx out; W is updated where it lives. With a list of backends the
// classes are split into shards, one context each (shards.ts), combined by the class-shard
// algorithm of ../shards.ts. This file is the class users meet and its lifecycle; the state its
// calls share is a HeadCore (core.ts), which the step (step.ts), the adaptive kinds' state
// (adaptive_state.ts) and the queries (queries.ts) take; their native sequences are in calls.ts.

import type { FloatArray, FloatDType } from "../../ffi/arrays.ts";
import { CallQueue, runCallsAsync } from "../calls.ts";
import { readOptions } from "../checks.ts";
import { resolveHead } from "../resolve_head.ts";
import { checkBatch } from "../tensors.ts";
import { checkApplied } from "./calls.ts";
import { type HeadCore, lambdaAt, openCore, releaseCore } from "./core.ts";
import type { HeadOptions, HeadPlacement, HeadState, NonFinitePolicy } from "./options.ts";
import type { OptimizerSettings, StepOptions } from "./options.ts";
import { type StepResult, stepSettings } from "./options.ts";
import { evaluateHead, predictHead } from "./queries.ts";
import { gatherShards, shardTraffic } from "./shards.ts";
import { headStep, syncStep } from "./step.ts";
import { checkState, makeState } from "./state.ts";
import { loadHeadState, saveHeadState } from "./checkpoint.ts";

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
  #core: HeadCore; // what the calls share: the shards, the iteration, the margin's state
  #closed = false;
  #queue = new CallQueue(); // the steps asked of stepAsync

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
    this.optimizer = Object.freeze(h.optimizer);
    this.#core = openCore(h, this.optimizer);
  }

  /** This process's rank in the job (distributed: "mpi" or "nccl"); 0 in one process. */
  get rank(): number {
    return this.#core.ranks?.rank ?? 0;
  }

  /** The job's process count (distributed: "mpi" or "nccl"); 1 in one process. */
  get worldSize(): number {
    return this.#core.ranks?.comm.size ?? 1;
  }

  /** Steps taken (0 for a new head). */
  get iteration(): number {
    return this.#core.iteration;
  }

  /** Steps whose update was skipped for a non-finite loss or gradient (`nonFinite: "skip"`). */
  get skippedSteps(): number {
    return this.#core.skippedSteps;
  }

  /** What a step does with a non-finite loss or gradient: "skip", "throw" or "apply". */
  get nonFinite(): NonFinitePolicy {
    return this.#core.nonFinite;
  }

  /** λ at the current iteration (that of the last step). */
  get lambda(): number {
    return lambdaAt(this.#core, this.#core.iteration);
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
    const t = shardTraffic(this.#core.shards), ranks = this.#core.ranks;
    return ranks === null ? t : { ...t, collectives: ranks.comm.bytes };
  }

  /** Partial FC's class sampling rate (1: every class in every step). */
  get sampleRate(): number {
    return this.#core.sampler?.rate ?? 1;
  }

  #live(): void {
    if (this.#closed) throw new Error("MarginHead: the head is closed");
  }

  #checkIdle(): void {
    if (this.#queue.pending > 0) {
      throw new Error("MarginHead: a stepAsync is running; await it before a synchronous call");
    }
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
    return syncStep(this.#core, x, labels, options, this.#queue.pending);
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
    const core = this.#core;
    if (core.ranks !== null) { // the collectives run on this thread, in the order of the calls
      const xs = x.slice() as T, ys = labels.slice(); // the caller may reuse them at once
      return this.#queue.drained().then(() => this.step(xs, ys, options));
    }
    checkBatch(x, labels, this.dtype, this.features);
    const st = stepSettings(this.optimizer, options, core.iteration + this.#queue.pending);
    const xs = x.slice() as FloatArray, ys = labels.slice();
    return this.#queue.push(
      () => runCallsAsync(headStep(core, xs, ys, st)) as Promise<StepResult<T>>,
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
    return evaluateHead(this.#core, x, labels);
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
    return predictHead(this.#core, x, options);
  }

  /**
   * A host copy of W [C, D].
   *
   * @returns The weights, row-major, of the head's dtype.
   */
  weights(): FloatArray {
    this.#live();
    this.#checkIdle();
    return gatherShards(this.#core.shards, (s) => s.w);
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
    const core = this.#core;
    checkApplied(core.accumulated);
    const { velocity, adam } = core.optimizer.state(core.shards);
    return makeState(
      structuredClone(core.options),
      core.iteration,
      core.skippedSteps,
      gatherShards(core.shards, (s) => s.w),
      velocity,
      [this.classes * this.subcenters, this.features],
      adam,
      core.sampler?.state ?? null,
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
      const core = head.#core;
      core.iteration = st.iteration;
      core.skippedSteps = st.skippedSteps;
      core.optimizer.restore(core.shards, st.velocity, st.adam);
      if (st.sampler !== null) core.sampler!.advance(st.sampler);
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
    const ranks = this.#core.ranks;
    if (ranks === null) return await saveHeadState(path, state);
    let error: Error | null = null;
    if (ranks.rank === 0) { // one file from rank 0; every rank learns how it went
      try {
        await saveHeadState(path, state);
      } catch (e) {
        error = e instanceof Error ? e : new Error(String(e));
      }
    }
    ranks.comm.agree(0, error);
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
    releaseCore(this.#core); // frees W, its gradient, the velocity, scratch
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
