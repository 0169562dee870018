// Partial FC's class sampling (docs: README "Class sampling"): each step's classes are every class
// that is a label in the batch plus classes drawn uniformly without replacement from the rest of
// each shard, up to max(ceil(r * C_shard), the shard's positives). The draws come from a seeded
// generator whose state is the head's (state(), checkpoints); each shard draws from its own stream
// keyed by the step's key and the shard's index, so that a shard's draws depend on nothing but
// the labels, its bounds and the generator (a process holding one shard draws the same). On the
// backend, W's sampled rows are gathered into a [k, D] tensor per shard, the loss runs over those
// as a head of the sampled classes, and the gradient rows are scattered back into a zeroed dL/dW:
// nothing of size C crosses to the host, and the optimizer updates all of W.

import { OPS } from "../../ffi/ops.ts";
import type { NativeCall } from "../calls.ts";
import type { HeadShard } from "./shards.ts";

type Ptr = Deno.PointerValue;

// splitmix32's finaliser: a well-mixed 32-bit value of z.
function mix32(z: number): number {
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** The sampler's generator state as a head's state holds it: four uint32 words (xoshiro128**). */
export type SamplerState = [number, number, number, number];

// xoshiro128**: the head's generator, one step of it per training step.
function next(s: Uint32Array): number {
  const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
  const t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 11);
  return result;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// One shard's stream of a step: a Weyl sequence through mix32, keyed by the step and the shard.
class Stream {
  #state: number;
  constructor(a: number, b: number, shard: number) {
    this.#state = (a ^ mix32(b + Math.imul(shard + 1, 0x9e3779b9))) >>> 0;
  }
  // A uniform integer in [0, m), m <= 2^31, by rejection (no modulo bias).
  below(m: number): number {
    const limit = Math.floor(4294967296 / m) * m;
    for (;;) {
      this.#state = (this.#state + 0x9e3779b9) >>> 0;
      const u = mix32(this.#state);
      if (u < limit) return u % m;
    }
  }
}

/** One step's sampled classes. */
export interface Draw {
  /** The global class ids used, ascending. */
  sampled: Int32Array;
  /** Per shard: its sampled rows (class - c0), ascending. */
  local: Int32Array[];
  /** Per shard: the index in `sampled` of its first class; then the total. */
  offsets: number[];
  /** The labels as positions in `sampled`. */
  labels: Int32Array;
}

/**
 * The number of classes a shard of `c` classes samples at rate r with `positives` labels in
 * it: max(ceil(r c), positives), ceil of the exact product (0.7 · 10 is 7, not the 8 of its
 * rounded float product).
 */
export function sampleCount(rate: number, c: number, positives: number): number {
  let k = Math.ceil(rate * c);
  if (k > 1 && (k - 1) / c >= rate) k--;
  return Math.min(c, Math.max(k, positives));
}

// One shard's sample: its positives (global ids, ascending, distinct) and draws from the rest of
// [c0, c1) (Floyd's algorithm over the ranks of the non-positive classes), as rows ascending.
function sampleShard(
  rate: number,
  c0: number,
  c1: number,
  positives: readonly number[],
  stream: Stream,
): Int32Array {
  const c = c1 - c0, p = positives.length, k = sampleCount(rate, c, p);
  const m = c - p, t = k - p; // t of the m non-positive classes
  const chosen = new Set<number>();
  for (let j = m - t; j < m; j++) {
    const v = stream.below(j + 1);
    chosen.add(chosen.has(v) ? j : v);
  }
  const ranks = Int32Array.from(chosen).sort();
  const rows = new Int32Array(k);
  // the q-th non-positive class is q + (the positives below it); merged with the positives
  let pi = 0, out = 0;
  for (const q of ranks) {
    while (pi < p && positives[pi] - c0 <= q + pi) rows[out++] = positives[pi++] - c0;
    rows[out++] = q + pi;
  }
  while (pi < p) rows[out++] = positives[pi++] - c0;
  return rows;
}

/**
 * The head's sampler: the rate and the generator. `draw` leaves the state as it is and returns
 * the next one, for the head to keep once the step has succeeded.
 */
export class Sampler {
  #state: Uint32Array;

  constructor(readonly rate: number, state: SamplerState) {
    this.#state = Uint32Array.from(state);
  }

  /** A sampler whose generator starts from a seed (splitmix32 into the four words). */
  static seeded(rate: number, seed: number): Sampler {
    const words: number[] = [];
    let z = (seed ^ 0x5ac1ed00) >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) >>> 0;
      words.push(mix32(z));
    }
    if (!words.some((w) => w !== 0)) words[0] = 1; // xoshiro's one forbidden state
    return new Sampler(rate, words as SamplerState);
  }

  /** The generator's state (four uint32 words). */
  get state(): SamplerState {
    return Array.from(this.#state) as SamplerState;
  }

  /** Keeps the state a successful step's draw returned. */
  advance(state: SamplerState): void {
    this.#state = Uint32Array.from(state);
  }

  /**
   * The step's classes for `labels` (each in [0, C), checked by the caller) over the shards'
   * bounds (their first classes, then C), and the generator's state after it.
   */
  draw(labels: Int32Array, bounds: readonly number[]): { draw: Draw; state: SamplerState } {
    const s = this.#state.slice();
    const a = next(s), b = next(s);
    const shards = bounds.length - 1;
    const present = Array.from(new Set(labels)).sort((x, y) => x - y);
    const local: Int32Array[] = [], offsets: number[] = [];
    let total = 0, pi = 0;
    for (let k = 0; k < shards; k++) {
      const c0 = bounds[k], c1 = bounds[k + 1], positives: number[] = [];
      while (pi < present.length && present[pi] < c1) positives.push(present[pi++]);
      const rows = sampleShard(this.rate, c0, c1, positives, new Stream(a, b, k));
      local.push(rows);
      offsets.push(total);
      total += rows.length;
    }
    offsets.push(total);
    const sampled = new Int32Array(total);
    for (let k = 0; k < shards; k++) {
      const rows = local[k], o = offsets[k];
      for (let i = 0; i < rows.length; i++) sampled[o + i] = rows[i] + bounds[k];
    }
    const remapped = new Int32Array(labels.length);
    for (let i = 0; i < labels.length; i++) remapped[i] = positionOf(sampled, labels[i]);
    return {
      draw: { sampled, local, offsets, labels: remapped },
      state: Array.from(s) as SamplerState,
    };
  }
}

// The index of v in a sorted array that holds it.
function positionOf(a: Int32Array, v: number): number {
  let lo = 0, hi = a.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * A shard seen as a head of the sampled classes: W and dL/dW are its gathered rows [k·K, D]
 * (context memory beside the shard's own; K sub-centers a class), classes [offset, offset + k) of
 * `total`; every other method is the shard's, on its context.
 */
function sampledView(s: HeadShard, w: Ptr, gw: Ptr, offset: number, k: number, total: number) {
  return Object.create(s, {
    w: { value: w },
    gw: { value: gw },
    c0: { value: offset },
    c: { value: k },
    head: { value: { ...s.head, classes: total } },
  }) as HeadShard;
}

// The rows of W of the sampled classes: class j's K sub-centers jK … jK + K − 1, whole classes.
function classRows(classes: Int32Array, k: number): Int32Array {
  if (k === 1) return classes;
  const rows = new Int32Array(classes.length * k);
  for (let q = 0; q < classes.length; q++) {
    for (let r = 0; r < k; r++) rows[q * k + r] = classes[q] * k + r;
  }
  return rows;
}

/**
 * `inner`'s calls on the sampled classes: each shard's sampled rows of W gathered on its context
 * (all K sub-centers of a sampled class), `inner` run on views of the shards as heads of the
 * sampled classes (their dL/dW into the gathered gradient), then each shard's dL/dW zeroed and
 * those rows scattered into it. The shards are the draw's from `first` on (a process holding some
 * of them).
 */
export function* sampledCalls<R>(
  shards: readonly HeadShard[],
  draw: Draw,
  inner: (views: readonly HeadShard[]) => Generator<NativeCall, R, void>,
  first = 0,
): Generator<NativeCall, R, void> {
  const views: HeadShard[] = [], index: Ptr[] = [];
  const { dtype, features: d, subcenters: K } = shards[0].head;
  const total = draw.offsets[draw.local.length];
  for (let k = 0; k < shards.length; k++) {
    const s = shards[k], classes = draw.local[first + k], rows = classRows(classes, K);
    const n = rows.length;
    const idx = s.scratch("sampleIndex", n * 4);
    const w = s.scratch("sampledW", s.bytes(n * d)), gw = s.scratch("sampledGW", s.bytes(n * d));
    yield s.upload(idx, rows);
    yield s.op(OPS.gatherRows, { dtype, n: 0, d, c: s.rows, k: n }, [idx, s.w, w]);
    views.push(sampledView(s, w, gw, draw.offsets[first + k], classes.length, total));
    index.push(idx);
  }
  const r = yield* inner(views);
  for (let k = 0; k < shards.length; k++) {
    const s = shards[k], n = draw.local[first + k].length * K;
    yield s.axpby(0, null, 0, s.gw);
    const call = { dtype, n: 0, d, c: s.rows, k: n };
    yield s.op(OPS.scatterRows, call, [index[k], views[k].gw, s.gw]);
  }
  return r;
}
