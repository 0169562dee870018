// A head's initial weights: the caller's array, or drawn from a seed, uniform in ±1/√D, the same
// values for any split into shards. Either way W goes to the shards in chunks of rows, never as a
// host copy of all of W.

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";
import type { HeadShard } from "./shards.ts";

// mulberry32: the default weights, uniform in [-b, b), the same for any split into shards.
function uniformStream(seed: number, bound: number, skip = 0): (out: FloatArray) => void {
  let state = (seed + Math.imul(skip, 0x6d2b79f5)) >>> 0; // a counter: `skip` draws ahead
  return (out) => {
    for (let i = 0; i < out.length; i++) {
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      out[i] = bound * (2 * (((t ^ (t >>> 14)) >>> 0) / 4294967296) - 1);
    }
  };
}

/** W into the shards: from `weights` (C·D elements, checked), or drawn from `seed`. */
export function fillWeights(
  shards: readonly HeadShard[],
  weights: FloatArray | undefined,
  seed: number,
): void {
  if (shards.length === 0) return;
  const { dtype, features: d } = shards[0].head;
  // from the first shard's first element: a process holding some shards draws their values
  // (per row of W: K rows a class with sub-centers)
  const draw = uniformStream(seed, 1 / Math.sqrt(d), shards[0].r0 * d);
  const rows = Math.max(1, Math.floor((1 << 20) / d));
  for (const s of shards) {
    for (let r = 0; r < s.rows; r += rows) {
      const count = Math.min(rows, s.rows - r) * d;
      let chunk: FloatArray;
      if (weights) {
        chunk = weights.subarray((s.r0 + r) * d, (s.r0 + r) * d + count);
      } else {
        chunk = newFloatArray(dtype, count);
        draw(chunk);
      }
      s.ctx.upload(s.w, chunk, s.bytes(r * d));
    }
  }
}
