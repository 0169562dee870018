// MarginHead: a classifier head whose weights W [C, D], their gradient and the SGD state live in
// context memory of its backend (host memory on the CPU, device memory on CUDA). A step sends the
// features and labels in and dL/dx out; W is updated where it lives. With a list of backends the
// classes are split into shards, one context each, combined through the fused loss's partials
// (src/loss.ts). Every native sequence is written once, as a generator of calls, and driven
// either on the JavaScript thread (step) or off it (stepAsync).

import {
  describe,
  elementCount,
  type FloatArray,
  floatArrayName,
  type FloatDType,
  floatDType,
  newFloatArray,
  typedArrayName,
} from "../ffi/arrays.ts";
import {
  type AsyncName,
  encodeArgs,
  encodeMargin,
  type Margin,
  type NativeContext,
  type Precision,
} from "../ffi/context.ts";
import { DType, LOSS_ARGS_BYTES, MARGIN_BYTES, MAX_TOPK, SGD_BYTES } from "../ffi/symbols.ts";
import { type Backend, openContext } from "./backends.ts";
import { checkInteger, checkNumber, readOptions } from "./checks.ts";
import { checkWorkspace, combineShards, shardBounds } from "./loss.ts";
import {
  checkKind,
  checkMargin,
  checkOwnKeys,
  hasLambda,
  MARGIN_KEYS,
  type MarginOptions,
  marginOptions,
} from "./margins.ts";
import { checkPrecision, MAX_ELEMENTS } from "./op.ts";
import { lambdaOf, type LambdaSchedule } from "./schedule.ts";
import {
  checkDType,
  checkLambda,
  checkSgd,
  HEAD_KEYS,
  type HeadOptions,
  type HeadState,
  type SgdOptions,
  type StepResult,
  uniformStream,
} from "./head_options.ts";

export type { HeadOptions, HeadState, SgdOptions, StepResult };

type Ptr = Deno.PointerValue;

/** One native call of a step: an ABI function on a context (the context comes first). */
interface NativeCall {
  ctx: NativeContext;
  name: AsyncName | "lsm_topk";
  args: unknown[];
}

// A shard: its classes [c0, c0 + c), and W, its gradient and the momentum buffer on its context.
interface Shard {
  ctx: NativeContext;
  c0: number;
  c: number;
  w: Ptr;
  gw: Ptr;
  v: Ptr | null;
}

// The heads' order of top-k candidates (cuda/optim.cuh lsm_topk_before): higher score first,
// equal scores by lower index, NaN last.
function before(a: number, ia: number, b: number, ib: number): boolean {
  const na = a !== a, nb = b !== b;
  if (na !== nb) return nb;
  if (!na && a !== b) return a > b;
  return ia < ib;
}

/**
 * A classifier head whose weights W [C, D], their gradient and the SGD state live in context
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
  /** The element type of W, x and dL/dx. */
  readonly dtype: FloatDType;
  /** The optimizer's settings (lr is the default of each step). */
  readonly optimizer: Readonly<Required<SgdOptions>>;
  #options: HeadState["options"];
  #lambda: number | LambdaSchedule;
  #margin: Margin; // λ 0: #marginAt sets each step's
  #shards: Shard[] = [];
  #iteration = 0;
  #hasVelocity = false;
  #closed = false;
  #tail: Promise<unknown> = Promise.resolve(); // the last queued asynchronous call
  #inFlight = 0;

  /**
   * A head with weights from `options.weights` or drawn from `options.seed`.
   *
   * @param options classes, features, the margin and λ (or its schedule), and optionally dtype,
   * backend (or a list), optimizer, weights, seed, precision, workspace, iteration.
   */
  constructor(options: HeadOptions) {
    const o = readOptions("options", options, HEAD_KEYS);
    this.classes = checkInteger("classes", o.classes, 1, MAX_ELEMENTS);
    this.features = checkInteger("features", o.features, 1, MAX_ELEMENTS);
    if (this.classes * this.features > MAX_ELEMENTS) {
      throw new RangeError(
        `classes * features: expected at most ${MAX_ELEMENTS} elements, got ` +
          `${this.classes * this.features}`,
      );
    }
    this.dtype = checkDType(o.dtype);
    // The margin's kind and parameters as every call checks them; λ set per step.
    const kind = checkKind(o.kind);
    checkOwnKeys(kind, o, MARGIN_KEYS.filter((k) => k !== "lambda"));
    if (hasLambda(kind)) {
      this.#lambda = checkLambda(o);
      this.#margin = checkMargin({ ...o, lambda: 0 });
    } else {
      for (const key of ["lambda", "base", "gamma", "power", "lambdaMin"] as const) {
        if (o[key] !== undefined) {
          throw new TypeError(`${key}: not an option of kind "${kind}", which has no λ`);
        }
      }
      this.#lambda = 0;
      this.#margin = checkMargin(o);
    }
    this.optimizer = Object.freeze(checkSgd(o.optimizer));
    const precision = checkPrecision(o.precision);
    const workspace = checkWorkspace(o.workspace);
    const seed = o.seed === undefined ? 0 : checkInteger("seed", o.seed, 0, 2 ** 32 - 1);
    this.#iteration = checkInteger("iteration", o.iteration ?? 0, 0, Number.MAX_SAFE_INTEGER);
    const count = this.classes * this.features;
    if (o.weights !== undefined) {
      if (floatDType(o.weights) !== this.dtype) {
        throw new TypeError(
          `weights: expected a ${floatArrayName(this.dtype)} (dtype), got ${describe(o.weights)}`,
        );
      }
      const got = elementCount(o.weights as FloatArray);
      if (got !== count) {
        throw new RangeError(
          `weights: expected classes * features = ${this.classes} * ${this.features} = ${count} ` +
            `elements, got ${got}`,
        );
      }
    }
    const backends = Array.isArray(o.backend) ? o.backend : [o.backend ?? "auto"];
    if (backends.length < 1 || backends.length > this.classes) {
      throw new RangeError(
        `backend: expected a list of 1 to classes = ${this.classes} backends, got ${backends.length}`,
      );
    }
    const { lambda: _, ...marginWithoutLambda } = marginOptions(this.#margin) as MarginOptions;
    this.#options = {
      classes: this.classes,
      features: this.features,
      ...marginWithoutLambda,
      ...(!hasLambda(kind)
        ? {}
        : typeof this.#lambda === "number"
        ? { lambda: this.#lambda }
        : this.#lambda),
      dtype: this.dtype,
      backend: (o.backend ?? "auto") as Backend | Backend[],
      optimizer: { ...this.optimizer },
      precision,
      ...(workspace === undefined ? {} : { workspace }),
    };
    try {
      this.#open(backends, precision, workspace);
      this.#fill(o.weights as FloatArray | undefined, seed);
    } catch (e) {
      this.#release();
      throw e;
    }
  }

  #open(backends: unknown[], precision: Precision, workspace: number | undefined): void {
    const bounds = shardBounds(this.classes, backends.length);
    const bytes = (c: number) => c * this.features * (this.dtype === "float32" ? 4 : 8);
    for (let s = 0; s < backends.length; s++) {
      const ctx = openContext(backends[s]); // the head's own: freed with it
      const c = bounds[s + 1] - bounds[s];
      const shard: Shard = { ctx, c0: bounds[s], c, w: null, gw: null, v: null };
      this.#shards.push(shard);
      ctx.setPrecision(precision);
      ctx.setWorkspace(workspace);
      shard.w = ctx.allocate(bytes(c));
      shard.gw = ctx.allocate(bytes(c));
      if (this.optimizer.momentum !== 0) shard.v = ctx.allocate(bytes(c));
    }
  }

  // W from the caller's array, or drawn in chunks (never a host copy of all of W).
  #fill(weights: FloatArray | undefined, seed: number): void {
    const d = this.features, eb = this.dtype === "float32" ? 4 : 8;
    const draw = uniformStream(seed, 1 / Math.sqrt(d));
    const rows = Math.max(1, Math.floor((1 << 20) / d));
    for (const s of this.#shards) {
      for (let r = 0; r < s.c; r += rows) {
        const count = Math.min(rows, s.c - r) * d;
        let chunk: FloatArray;
        if (weights) {
          chunk = weights.subarray((s.c0 + r) * d, (s.c0 + r) * d + count);
        } else {
          chunk = newFloatArray(this.dtype, count);
          draw(chunk);
        }
        s.ctx.upload(s.w, chunk, r * d * eb);
      }
    }
  }

  /** Steps taken (0 for a new head). */
  get iteration(): number {
    return this.#iteration;
  }

  /** λ at the current iteration (that of the last step). */
  get lambda(): number {
    return this.#lambdaAt(this.#iteration);
  }

  /** Whether {@link MarginHead.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes moved between the host and the head's contexts since it was made. */
  get traffic(): { toDevice: number; fromDevice: number } {
    this.#live();
    this.#checkIdle(); // the counters are the running step's to write
    let toDevice = 0, fromDevice = 0;
    for (const s of this.#shards) {
      const t = s.ctx.traffic();
      toDevice += t.toDevice;
      fromDevice += t.fromDevice;
    }
    return { toDevice, fromDevice };
  }

  #lambdaAt(step: number): number {
    return typeof this.#lambda === "number" ? this.#lambda : lambdaOf(step, this.#lambda);
  }

  // The margin of a call at λ of `step`: the one place the margin options become the ABI's.
  #marginAt(step: number): Margin {
    return { ...this.#margin, lambda: this.#lambdaAt(step) };
  }

  #live(): void {
    if (this.#closed) throw new Error("MarginHead: the head is closed");
  }

  #checkBatch(x: unknown, labels: unknown, withLabels = true): { n: number } {
    if (floatDType(x) !== this.dtype) {
      throw new TypeError(
        `x: expected a ${floatArrayName(this.dtype)} (the head's dtype), got ${describe(x)}`,
      );
    }
    const length = elementCount(x as FloatArray), d = this.features;
    if (!withLabels) {
      if (length === 0 || length % d !== 0) {
        throw new RangeError(
          `x: expected a non-zero multiple of features (${d}) elements, got ${length}`,
        );
      }
      return { n: length / d };
    }
    if (typedArrayName(labels) !== "Int32Array") {
      throw new TypeError(`labels: expected an Int32Array, got ${describe(labels)}`);
    }
    const n = elementCount(labels as Int32Array);
    if (n === 0) {
      throw new RangeError("labels: expected at least one label, got an empty Int32Array");
    }
    if (length !== n * d) {
      throw new RangeError(
        `x: expected labels.length * features = ${n} * ${d} = ${n * d} elements, got ${length}`,
      );
    }
    return { n };
  }

  #lr(options: unknown): number {
    if (this.#iteration + this.#inFlight >= Number.MAX_SAFE_INTEGER) {
      throw new RangeError(
        `iteration: expected below Number.MAX_SAFE_INTEGER to count one more exactly, got ` +
          `${this.#iteration}`,
      );
    }
    const o = readOptions("options", options, ["lr"]);
    return o.lr === undefined ? this.optimizer.lr : checkNumber("lr", o.lr, 0);
  }

  get #dt(): number {
    return this.dtype === "float32" ? DType.FLOAT32 : DType.FLOAT64;
  }

  get #eb(): number {
    return this.dtype === "float32" ? 4 : 8;
  }

  // The inputs of a batch onto every shard's context.
  *#upload(x: FloatArray, labels: Int32Array | null): Generator<NativeCall, void, void> {
    for (const s of this.#shards) {
      const xp = s.ctx.buffer("head.x", x.length * this.#eb);
      yield {
        ctx: s.ctx,
        name: "lsm_memcpy_to_context",
        args: [xp, x, BigInt(x.length * this.#eb)],
      };
      if (labels === null) continue;
      const lp = s.ctx.buffer("head.labels", labels.length * 4);
      yield {
        ctx: s.ctx,
        name: "lsm_memcpy_to_context",
        args: [lp, labels, BigInt(labels.length * 4)],
      };
    }
  }

  #head(s: Shard, n: number, margin: Uint8Array): unknown[] {
    return [this.#dt, BigInt(n), BigInt(this.features), BigInt(s.c), margin];
  }

  #args(s: Shard, n: number): Uint8Array {
    const a = { classOffset: s.c0, totalClasses: this.classes, gradScale: 1 / n };
    return encodeArgs(a, new Uint8Array(LOSS_ARGS_BYTES));
  }

  // One of the fused loss's calls on a shard's batch: the head, args, x, w, labels, then outputs.
  #lossCall(s: Shard, name: AsyncName, n: number, margin: Uint8Array, out: unknown[]): NativeCall {
    const inputs = [s.ctx.buffer("head.x", 0), s.w, s.ctx.buffer("head.labels", 0)];
    return {
      ctx: s.ctx,
      name,
      args: [...this.#head(s, n, margin), this.#args(s, n), ...inputs, ...out],
    };
  }

  #sgd(s: Shard, lr: number): NativeCall {
    const o = this.optimizer;
    const bytes = new Uint8Array(SGD_BYTES);
    const f = new Float64Array(bytes.buffer), i = new Int32Array(bytes.buffer);
    f[0] = lr, f[1] = o.momentum, f[2] = o.weightDecay;
    i[6] = o.nesterov ? 1 : 0;
    i[7] = this.#hasVelocity ? 0 : 1;
    const args = [this.#dt, BigInt(s.c * this.features), bytes, s.w, s.gw, s.v];
    return { ctx: s.ctx, name: "lsm_sgd_update", args };
  }

  // Every shard's per-row partials, combined on the host: the global lse and the row losses.
  *#partials(n: number, labels: Int32Array, margin: Uint8Array) {
    const parts: Float64Array[][] = [];
    for (const s of this.#shards) {
      const names = ["head.rowMax", "head.rowSum", "head.target"];
      const ptrs = names.map((name) => s.ctx.buffer(name, n * 8));
      yield this.#lossCall(s, "lsm_loss_partials", n, margin, ptrs);
      const host = ptrs.map(() => new Float64Array(n));
      for (let k = 0; k < 3; k++) yield this.#download(s, host[k], ptrs[k]);
      parts.push(host);
    }
    return combineShards(parts, labels, [...this.#shards.map((s) => s.c0), this.classes]);
  }

  #download(s: Shard, dst: ArrayBufferView, src: Ptr): NativeCall {
    const bytes = BigInt(dst.byteLength);
    return { ctx: s.ctx, name: "lsm_memcpy_from_context", args: [dst, src, bytes] };
  }

  // One training step as native calls: the fused loss and dL/dW on each shard, the SGD update
  // of W where it lives, dL/dx back. The head's state advances only once every call succeeded.
  *#stepCalls(x: FloatArray, labels: Int32Array, lr: number): Generator<NativeCall, StepResult> {
    const n = labels.length, d = this.features, step = this.#iteration + 1;
    const lambda = this.#lambdaAt(step);
    const margin = encodeMargin(this.#marginAt(step), new Uint8Array(MARGIN_BYTES));
    yield* this.#upload(x, labels);
    const gradX = newFloatArray(this.dtype, n * d);
    let loss: number;
    if (this.#shards.length === 1) {
      const s = this.#shards[0];
      const rowLoss = s.ctx.buffer("head.rowLoss", n * 8),
        gx = s.ctx.buffer("head.gradX", n * d * this.#eb);
      yield this.#lossCall(s, "lsm_loss", n, margin, [rowLoss, gx, s.gw]);
      yield this.#sgd(s, lr);
      const sum = new Float64Array(1);
      yield { ctx: s.ctx, name: "lsm_sum", args: [rowLoss, BigInt(n), sum] };
      yield this.#download(s, gradX, gx);
      loss = sum[0] / n;
    } else {
      const { lse, rowLoss } = yield* this.#partials(n, labels, margin);
      const share = newFloatArray(this.dtype, n * d), total = new Float64Array(n * d);
      for (const s of this.#shards) {
        const lp = s.ctx.buffer("head.lse", n * 8),
          gx = s.ctx.buffer("head.gradX", n * d * this.#eb);
        yield { ctx: s.ctx, name: "lsm_memcpy_to_context", args: [lp, lse, BigInt(n * 8)] };
        yield this.#lossCall(s, "lsm_loss_gradients", n, margin, [lp, gx, s.gw]);
        yield this.#sgd(s, lr);
        yield this.#download(s, share, gx);
        for (let e = 0; e < n * d; e++) total[e] += share[e];
      }
      gradX.set(total);
      let sum = 0;
      for (let i = 0; i < n; i++) sum += rowLoss[i];
      loss = sum / n;
    }
    this.#iteration = step;
    if (this.optimizer.momentum !== 0) this.#hasVelocity = true;
    return { loss, lambda, gradX };
  }

  #runSync<R>(calls: Generator<NativeCall, R>): R {
    let r = calls.next();
    while (!r.done) {
      r.value.ctx.call(r.value.name, r.value.args);
      r = calls.next();
    }
    return r.value;
  }

  /**
   * One training step: the fused loss of x [N, D] and labels, dL/dW applied to W by SGD where W
   * lives, and dL/dx back for the layers below.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices, each in [0, C).
   * @param options `lr`: this step's learning rate (the optimizer's by default).
   * @returns The mean loss, λ of the step, and dL/dx.
   */
  step<T extends FloatArray>(
    x: T,
    labels: Int32Array,
    options: { lr?: number } = {},
  ): StepResult<T> {
    this.#live();
    if (this.#inFlight > 0) {
      throw new Error("MarginHead: a stepAsync is running; await it before a synchronous call");
    }
    this.#checkBatch(x, labels);
    const lr = this.#lr(options);
    return this.#runSync(this.#stepCalls(x, labels, lr)) as StepResult<T>;
  }

  /**
   * The same step off the JavaScript thread: the event loop keeps running meanwhile. Calls on
   * one head run in the order made; x and labels are copied before this returns, so the caller
   * may reuse them at once.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices, each in [0, C).
   * @param options `lr`: this step's learning rate.
   * @returns A promise of the mean loss, λ of the step, and dL/dx.
   */
  stepAsync<T extends FloatArray>(
    x: T,
    labels: Int32Array,
    options: { lr?: number } = {},
  ): Promise<StepResult<T>> {
    this.#live();
    this.#checkBatch(x, labels);
    const lr = this.#lr(options);
    const xs = x.slice() as FloatArray, ys = labels.slice();
    this.#inFlight++;
    const run = this.#tail.then(async () => {
      try {
        const calls = this.#stepCalls(xs, ys, lr);
        let r = calls.next();
        while (!r.done) {
          await r.value.ctx.callAsync(r.value.name as AsyncName, r.value.args);
          r = calls.next();
        }
        return r.value as StepResult<T>;
      } finally {
        if (--this.#inFlight === 0 && this.#closed) this.#release();
      }
    });
    this.#tail = run.catch(() => {});
    return run;
  }

  /**
   * The loss (no update) and the accuracy of the best class by {@link MarginHead.predict}'s score.
   *
   * @param x Features, N·D elements of the head's dtype.
   * @param labels The N class indices.
   * @returns The mean loss at λ of the current iteration, and the fraction of rows whose best
   * class is their label.
   */
  evaluate(x: FloatArray, labels: Int32Array): { loss: number; accuracy: number } {
    this.#live();
    this.#checkIdle();
    const { n } = this.#checkBatch(x, labels);
    const margin = encodeMargin(this.#marginAt(this.#iteration), new Uint8Array(MARGIN_BYTES));
    const loss = this.#runSync(this.#evaluateCalls(x, labels, n, margin));
    const { indices } = this.predict(x, { k: 1 });
    let hits = 0;
    for (let i = 0; i < n; i++) hits += indices[i] === labels[i] ? 1 : 0;
    return { loss, accuracy: hits / n };
  }

  // The loss alone: the row losses summed on the context (one shard) or from the partials.
  *#evaluateCalls(
    x: FloatArray,
    labels: Int32Array,
    n: number,
    margin: Uint8Array,
  ): Generator<NativeCall, number> {
    yield* this.#upload(x, labels);
    let sum = 0;
    if (this.#shards.length === 1) {
      const s = this.#shards[0], rowLoss = s.ctx.buffer("head.rowLoss", n * 8);
      yield this.#lossCall(s, "lsm_loss", n, margin, [rowLoss, null, null]);
      const out = new Float64Array(1);
      yield { ctx: s.ctx, name: "lsm_sum", args: [rowLoss, BigInt(n), out] };
      sum = out[0];
    } else {
      const { rowLoss } = yield* this.#partials(n, labels, margin);
      for (let i = 0; i < n; i++) sum += rowLoss[i];
    }
    return sum / n;
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
    const { n } = this.#checkBatch(x, null, false);
    const o = readOptions("options", options, ["k"]);
    const k = checkInteger("k", o.k ?? 1, 1, Math.min(this.classes, MAX_TOPK));
    const margin = encodeMargin(this.#marginAt(this.#iteration), new Uint8Array(MARGIN_BYTES));
    const results = this.#runSync(this.#topkCalls(x, n, k, margin));
    if (results.length === 1) return results[0] as { indices: Int32Array; scores: T };
    // Each shard's k best, merged in the same order.
    const indices = new Int32Array(n * k), scores = newFloatArray<T>(this.dtype, n * k);
    for (let i = 0; i < n; i++) {
      const cand: [number, number][] = [];
      for (const r of results) {
        const ks = r.indices.length / n;
        for (let q = 0; q < ks; q++) cand.push([r.scores[i * ks + q], r.indices[i * ks + q]]);
      }
      cand.sort((a, b) => (before(a[0], a[1], b[0], b[1]) ? -1 : 1));
      for (let q = 0; q < k; q++) [scores[i * k + q], indices[i * k + q]] = cand[q];
    }
    return { indices, scores };
  }

  *#topkCalls(x: FloatArray, n: number, k: number, margin: Uint8Array) {
    yield* this.#upload(x, null);
    const out: { indices: Int32Array; scores: FloatArray }[] = [];
    for (const s of this.#shards) {
      const ks = Math.min(k, s.c);
      const ip = s.ctx.buffer("head.indices", n * ks * 4);
      const sp = s.ctx.buffer("head.scores", n * ks * this.#eb);
      yield {
        ctx: s.ctx,
        name: "lsm_topk",
        args: [...this.#head(s, n, margin), BigInt(ks), s.ctx.buffer("head.x", 0), s.w, ip, sp],
      } as NativeCall;
      const indices = new Int32Array(n * ks), scores = newFloatArray(this.dtype, n * ks);
      yield this.#download(s, indices, ip);
      yield this.#download(s, scores, sp);
      for (let e = 0; e < indices.length; e++) indices[e] += s.c0;
      out.push({ indices, scores });
    }
    return out;
  }

  #checkIdle(): void {
    if (this.#inFlight > 0) {
      throw new Error("MarginHead: a stepAsync is running; await it before a synchronous call");
    }
  }

  // A [C, D] tensor of every shard into one host array.
  #gather(pick: (s: Shard) => Ptr): FloatArray {
    const d = this.features, out = newFloatArray(this.dtype, this.classes * d);
    for (const s of this.#shards) {
      s.ctx.download(out.subarray(s.c0 * d, (s.c0 + s.c) * d), pick(s));
    }
    return out;
  }

  /**
   * A host copy of W [C, D].
   *
   * @returns The weights, row-major, of the head's dtype.
   */
  weights(): FloatArray {
    this.#live();
    this.#checkIdle();
    return this.#gather((s) => s.w);
  }

  /**
   * Everything needed to continue training bit for bit: the options, the iteration, W and the
   * momentum buffer (host copies). `MarginHead.fromState(head.state())` rebuilds the head.
   *
   * @returns The head's state; structured-cloneable (JSON needs the arrays converted).
   */
  state(): HeadState {
    this.#live();
    this.#checkIdle();
    return {
      options: structuredClone(this.#options),
      iteration: this.#iteration,
      weights: this.#gather((s) => s.w),
      velocity: this.#hasVelocity ? this.#gather((s) => s.v) : null,
    };
  }

  /**
   * A head from {@link MarginHead.state}, continuing where that one was.
   *
   * @param state What `state()` returned.
   * @returns A new head.
   */
  static fromState(state: HeadState): MarginHead {
    const o = readOptions("state", state, ["options", "iteration", "weights", "velocity"]);
    const head = new MarginHead({
      ...(o.options as HeadOptions),
      weights: o.weights as FloatArray,
    });
    try {
      head.#iteration = checkInteger("iteration", o.iteration, 0, Number.MAX_SAFE_INTEGER);
      if (o.velocity !== null && o.velocity !== undefined) {
        if (head.optimizer.momentum === 0) {
          throw new RangeError("velocity: expected null for an optimizer without momentum");
        }
        const v = o.velocity as FloatArray;
        if (floatDType(v) !== head.dtype || elementCount(v) !== head.classes * head.features) {
          throw new TypeError(
            `velocity: expected a ${floatArrayName(head.dtype)} of ${
              head.classes * head.features
            } ` +
              `elements, got ${describe(v)}`,
          );
        }
        const d = head.features;
        for (const s of head.#shards) s.ctx.upload(s.v, v.subarray(s.c0 * d, (s.c0 + s.c) * d));
        head.#hasVelocity = true;
      }
    } catch (e) {
      head.close();
      throw e;
    }
    return head;
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
    if (this.#inFlight === 0) this.#release();
  }

  /** Closes the head (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}
