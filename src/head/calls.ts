// A head's native sequences, each written once as a generator of calls (../calls.ts runs them on
// the JavaScript thread or off it): a training step and its micro-batches (the loss alone and the
// top-k classes: query_calls.ts).

import type { FloatArray } from "../../ffi/arrays.ts";
import { OPS } from "../../ffi/ops.ts";
import { SgdNonFinite } from "../../ffi/symbols.ts";
import type { NativeCall } from "../calls.ts";
import { crossEntropyArgs } from "../cross_entropy.ts";
import { reduce } from "../loss.ts";
import { KINDS } from "../kinds.ts";
import { shardedLossCalls } from "../shards.ts";
import { type Batch, type HeadShard, ShardCalls } from "./shards.ts";
import type { NonFinitePolicy } from "./options.ts";
import { type Draw, sampledCalls } from "./sampling.ts";

// The batch's inputs onto every shard's context (labels null: prediction).
export function* upload(
  shards: readonly HeadShard[],
  x: FloatArray,
  labels: Int32Array | null,
): Generator<NativeCall, void, void> {
  for (const s of shards) {
    yield s.upload(s.scratch("x", s.bytes(x.length)), x);
    if (labels !== null) yield s.upload(s.scratch("labels", labels.length * 4), labels);
  }
}

/** The batch's inputs onto every shard's context, and with labels the batch with their loss args. */
export function* uploadBatch(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array | null,
): Generator<NativeCall, Batch, void> {
  yield* upload(shards, x, labels);
  return labels === null ? b : labelled(shards, b, labels);
}

/**
 * The other processes of a step (ranks: ./ranks.ts), or none: the loss over the global batch
 * with their shards, sums and agreement over them, and the index of this process's shard in a
 * draw.
 */
export interface Peers {
  readonly first: number;
  loss(
    shards: readonly HeadShard[],
    b: Batch,
    x: FloatArray,
    labels: Int32Array,
    gradX: FloatArray | null,
  ): Generator<NativeCall, LossOutcome, void>;
  sum(v: number): number;
  any(v: boolean): boolean;
}

// The batch with its labels' loss args: the head's cross-entropy options, the mean's
// denominator (the counted rows' target weights; N without options).
export function labelled(shards: readonly HeadShard[], b: Batch, labels: Int32Array): Batch {
  const { crossEntropy, classes } = shards[0].head;
  return { ...b, loss: crossEntropyArgs(crossEntropy, labels, classes, "mean") };
}

// CurricularFace on shards: every row's target cosine and T_i, from the shard that owns its label
// (each gives its own rows, 0 elsewhere: the sum over the shards), into every shard's scratch.
export function* rowTargets(
  shards: readonly HeadShard[],
  b: Batch,
): Generator<NativeCall, Batch, void> {
  if (b.margin.kind !== KINDS.curricularface.code) return b;
  const sum = new Float64Array(2 * b.n), part = new Float64Array(2 * b.n);
  for (const s of shards) {
    const p = s.scratch("rowTargets", part.byteLength);
    yield s.loss(OPS.lossTargets, { ...b, state: undefined, rowTargets: false }, [p]);
    yield s.download(part, p);
    for (let i = 0; i < 2 * b.n; i++) sum[i] += part[i];
  }
  for (const s of shards) yield s.upload(s.scratch("rowTargets", sum.byteLength), sum);
  return { ...b, rowTargets: true };
}

// The mean from the sum of the row losses (0 over rows of total weight 0, as loss() gives).
export const mean = (sum: number, b: Batch) => {
  const d = b.loss!.denominator;
  return d === 0 ? 0 : sum / d;
};

/**
 * A step's optimizer update of one shard: its call with the gradient's factor (clipping's, 1
 * without), the non-finite mode (SgdNonFinite) and the flag that mode writes; `clipNorm` when
 * the gradient is clipped first.
 */
export interface Update {
  clipNorm?: number;
  /** Whether clipping scales dL/dW in place first (SGD) rather than through `call`'s factor. */
  scalesInPlace?: boolean;
  call(s: HeadShard, gradScale: number, nonfinite: number, flag: Int32Array | null): NativeCall;
  /** The same update as the fused loss's step (lsm_loss_update), without clipping's factor. */
  step?(s: HeadShard, nonfinite: number, flag: Int32Array): FusedStep;
}

/**
 * An lsm_loss_update, the flag it writes (1: skipped) and the host memory it points into, all
 * held by this object until the call has returned.
 */
export interface FusedStep {
  update: Uint8Array;
  flag: Int32Array;
  keep: readonly ArrayBufferView[];
}

/**
 * The address of context memory or of a host array (0 for null), as the ABI's structs hold it.
 *
 * @param p context memory, a host array (kept alive by the caller while the address is used), or
 * null
 * @returns the address as a number (0 for null)
 * @example
 * ```ts
 * import { address } from "./calls.ts";
 * const flag = new Int32Array(1);
 * console.log(address(flag) !== 0, address(null)); // true 0
 * ```
 */
export function address(p: Deno.PointerValue | ArrayBufferView | null): number {
  if (p === null) return 0;
  return Number(Deno.UnsafePointer.value(ArrayBuffer.isView(p) ? Deno.UnsafePointer.of(p) : p));
}

// clip_grad_norm_'s factor: the total 2-norm over every shard's dL/dW from each shard's sum of
// squares (8 bytes back each); 1 when the norm is within maxNorm or not finite (the update's
// non-finite check then decides).
function* clipScale(
  shards: readonly HeadShard[],
  maxNorm: number,
  peers: Peers | null,
): Generator<NativeCall, number, void> {
  let total = 0;
  for (const s of shards) {
    const part = new Float64Array(1);
    yield s.gradSquares(part);
    total += part[0];
  }
  if (peers !== null) total = peers.sum(total); // the norm over every rank's shard
  const norm = Math.sqrt(total), c = maxNorm / (norm + 1e-6);
  return Number.isFinite(norm) && c < 1 ? c : 1;
}

/** What a step's non-finite check found: nothing, or that the update was skipped. */
export interface StepOutcome {
  loss: number;
  skipped: boolean;
}

// Whether every element is finite (one pass over an array already on the host).
function allFinite(a: ArrayLike<number>): boolean {
  for (let e = 0; e < a.length; e++) if (!Number.isFinite(a[e])) return false;
  return true;
}

// The error of nonFinite "throw": the first row whose x, loss or dL/dx is not finite, else the
// sum that made dL/dW overflow.
function nonFiniteError(
  x: FloatArray,
  rowLoss: Float64Array | null,
  gradX: FloatArray,
  d: number,
): RangeError {
  const n = gradX.length / d;
  const rowFinite = (a: ArrayLike<number>, i: number) => {
    for (let k = i * d; k < (i + 1) * d; k++) if (!Number.isFinite(a[k])) return false;
    return true;
  };
  const tail = '(nonFinite: "throw"; the head is unchanged, its iteration too)';
  for (let i = 0; i < n; i++) {
    const what = !rowFinite(x, i)
      ? "features"
      : rowLoss !== null && !Number.isFinite(rowLoss[i])
      ? "loss"
      : !rowFinite(gradX, i)
      ? "dL/dx"
      : null;
    if (what !== null) {
      return new RangeError(
        `x: row ${i}: expected finite ${what}, got a NaN or an infinity ${tail}`,
      );
    }
  }
  return new RangeError(
    `x: expected a finite dL/dW, got a NaN or an infinity from the sum over the batch's rows, ` +
      `whose losses and dL/dx are finite ${tail}`,
  );
}

/** A batch's mean loss, its row losses when they came back, and the mean's denominator. */
export interface LossOutcome {
  loss: number;
  rowLoss: Float64Array | null;
  denominator: number;
}

// The fused loss and dL/dW of a batch on every shard (dL/dW into each shard's gw), dL/dx back
// into gradX; the row losses come back only with shards, or to name a row for "throw".
function* lossCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  gradX: FloatArray,
  policy: NonFinitePolicy,
  step: FusedStep | null = null,
): Generator<NativeCall, LossOutcome, void> {
  yield* upload(shards, x, labels);
  const n = b.n, ce = shards[0].head.crossEntropy;
  b = labelled(shards, b, labels);
  if (step !== null) {
    b = { ...b, loss: { ...b.loss!, args: { ...b.loss!.args, update: address(step.update) } } };
  }
  if (shards.length > 1) {
    b = yield* rowTargets(shards, b);
    const parts = shards.map((s) => new ShardCalls(s, b));
    const rowLoss = yield* shardedLossCalls(parts, labels, gradX, ce);
    const denominator = b.loss!.denominator;
    return { loss: reduce(rowLoss, "mean", denominator), rowLoss, denominator };
  }
  const s = shards[0];
  const rows = s.scratch("rowLoss", n * 8), gx = s.scratch("gradX", s.bytes(gradX.length));
  yield s.loss(OPS.loss, b, [rows, gx, s.gw]);
  const sum = new Float64Array(1);
  yield s.sum(rows, n, sum);
  yield s.download(gradX, gx);
  const loss = mean(sum[0], b);
  let rowLoss: Float64Array | null = null;
  if (policy === "throw" && !Number.isFinite(loss)) { // the row losses, to name the row
    rowLoss = new Float64Array(n);
    yield s.download(rowLoss, rows);
  }
  return { loss, rowLoss, denominator: b.loss!.denominator };
}

// lossCalls over the step's sampled classes (draw), or over all of them (null).
function* stepLossCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  gradX: FloatArray,
  policy: NonFinitePolicy,
  draw: Draw | null,
  peers: Peers | null,
): Generator<NativeCall, LossOutcome, void> {
  const run = (views: readonly HeadShard[], ys: Int32Array) =>
    peers === null ? lossCalls(views, b, x, ys, gradX, policy) : peers.loss(views, b, x, ys, gradX);
  if (draw === null) return yield* run(shards, labels);
  return yield* sampledCalls(shards, draw, (views) => run(views, draw.labels), peers?.first ?? 0);
}

/**
 * The micro-batches accumulated so far: their rows, the sum of their means' denominators (the
 * counted rows' target weights; the rows without cross-entropy options), and whether one had a
 * non-finite loss or dL/dx.
 */
export interface Accumulated {
  rows: number;
  weight: number;
  bad: boolean;
}

/**
 * One micro-batch of an accumulation: its loss and dL/dW on every shard, added (its mean's
 * denominator times its mean-loss gradient, so the sum of the rows' gradients) into each
 * shard's accumulator; W is not touched. With a draw, over its sampled classes (dL/dW zero on
 * the others). A non-finite loss or dL/dx throws at once under "throw" (nothing added), and is
 * remembered for the applying step otherwise.
 */
export function* accumulateCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  gradX: FloatArray,
  policy: NonFinitePolicy,
  before: Accumulated | null,
  draw: Draw | null = null,
  peers: Peers | null = null,
): Generator<NativeCall, { loss: number; accumulated: Accumulated }, void> {
  const lc = stepLossCalls(shards, b, x, labels, gradX, policy, draw, peers);
  const { loss, rowLoss, denominator } = yield* lc;
  let bad = !Number.isFinite(loss) || !allFinite(gradX);
  if (peers !== null && policy !== "apply") bad = peers.any(bad); // every rank alike
  const d = shards[0].head.features;
  if (bad && policy === "throw") throw nonFiniteError(x, rowLoss, gradX, d);
  for (const s of shards) {
    yield s.axpby(denominator, s.gw, before === null ? 0 : 1, s.accumulator());
  }
  const accumulated = {
    rows: (before?.rows ?? 0) + b.n,
    weight: (before?.weight ?? 0) + denominator,
    bad: (before?.bad ?? false) || bad,
  };
  return { loss, accumulated: policy === "apply" ? { ...accumulated, bad: false } : accumulated };
}

/**
 * One training step: the fused loss and dL/dW on each shard, dL/dx back into gradX, then the
 * optimizer's update of W where it lives under the non-finite policy (all of W: with a draw,
 * dL/dW is that of its sampled classes and zero on the others). After micro-batches
 * (`before`), each shard's dL/dW becomes the mean over all their rows and this batch's
 * ((sum + d g) / total, d and total the means' denominators: rows, or their target weights) first; with clipNorm it is clipped next. The loss and dL/dx reach the host
 * anyway and are checked there; dL/dW is checked where it lives by the update itself (SKIP: a
 * flag of 4 bytes back), or with shards by every shard first (CHECK) so that all skip together.
 */
export function* stepCalls(
  shards: readonly HeadShard[],
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  update: Update,
  gradX: FloatArray,
  policy: NonFinitePolicy,
  before: Accumulated | null = null,
  draw: Draw | null = null,
  peers: Peers | null = null,
): Generator<NativeCall, StepOutcome, void> {
  if (
    shards.length === 1 && before === null && update.clipNorm === undefined && update.step &&
    draw === null && peers === null
  ) {
    return yield* fusedStepCalls(shards[0], b, x, labels, update, gradX, policy);
  }
  const lc = stepLossCalls(shards, b, x, labels, gradX, policy, draw, peers);
  const { loss, rowLoss, denominator } = yield* lc;
  const d = shards[0].head.features;
  if (before !== null) {
    // every row ignored (or of weight 0) over all micro-batches: the mean's gradient is 0
    const total = before.weight + denominator, f = total === 0 ? 0 : 1 / total;
    for (const s of shards) yield s.axpby(f, s.accumulator(), f * denominator, s.gw);
  }
  const clip = update.clipNorm;
  const scale = clip === undefined ? 1 : yield* clipScale(shards, clip, peers);
  if (scale !== 1 && update.scalesInPlace) {
    for (const s of shards) yield s.axpby(0, null, scale, s.gw);
  }
  if (policy === "apply") {
    for (const s of shards) yield update.call(s, scale, SgdNonFinite.APPLY, null);
    return { loss, skipped: false };
  }
  let bad = !Number.isFinite(loss) || !allFinite(gradX) || (before?.bad ?? false);
  if (peers !== null) bad = peers.any(bad); // every rank decides alike, so all skip together
  if (!bad) {
    const one = shards.length === 1 && peers === null;
    const flags = shards.map(() => new Int32Array(1));
    const mode = one ? SgdNonFinite.SKIP : SgdNonFinite.CHECK;
    for (let k = 0; k < shards.length; k++) yield update.call(shards[k], scale, mode, flags[k]);
    bad = flags.some((f) => f[0] !== 0);
    if (peers !== null) bad = peers.any(bad);
    if (!bad && !one) {
      for (const s of shards) yield update.call(s, scale, SgdNonFinite.APPLY, null);
    }
  }
  if (bad && policy === "throw") throw nonFiniteError(x, rowLoss, gradX, d);
  return { loss, skipped: bad };
}

/**
 * A step of one shard without accumulation or clipping: the loss call applies the update itself
 * (on the CPU while each block of dL/dW is in cache), under the same checks as stepCalls' (row
 * losses, dL/dx and dL/dW finite, else nothing written: the flag says so).
 */
function* fusedStepCalls(
  s: HeadShard,
  b: Batch,
  x: FloatArray,
  labels: Int32Array,
  update: Update,
  gradX: FloatArray,
  policy: NonFinitePolicy,
): Generator<NativeCall, StepOutcome, void> {
  const flag = new Int32Array(1);
  const mode = policy === "apply" ? SgdNonFinite.APPLY : SgdNonFinite.SKIP;
  const step = update.step!(s, mode, flag);
  const { loss, rowLoss } = yield* lossCalls([s], b, x, labels, gradX, policy, step);
  const skipped = step.flag[0] !== 0; // step, read after the call: its buffers lived through it
  if (skipped && policy === "throw") throw nonFiniteError(x, rowLoss, gradX, gradX.length / b.n);
  return { loss, skipped };
}

/** state() needs every micro-batch applied: an accumulation in progress is refused by name. */
export function checkApplied(accumulated: Accumulated | null): void {
  if (accumulated === null) return;
  throw new Error(
    `MarginHead: state() during an accumulation (${accumulated.rows} rows of micro-batches not ` +
      `yet applied): finish it with a step without accumulate first`,
  );
}
