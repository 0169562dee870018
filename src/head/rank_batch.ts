// A distributed call's global batch (distributed: "mpi" or "nccl"): every rank's rows gathered,
// after the ranks agreed on their checks, and the step's peers over it.

import type { FloatArray } from "../../ffi/arrays.ts";
import type { Peers } from "./calls.ts";
import type { HeadCore } from "./core.ts";

/** A distributed step's peers, with this rank's rows of the global batch. */
export interface RankStep extends Peers {
  rows: number;
  offset: number;
}

/**
 * A distributed call's global batch: this rank's checks (`check`, the labels' range) agreed on
 * with every rank's first, so that all throw the same error or none does; then the batch
 * gathered, and the step's peers over it (this rank's rows of dL/dx).
 */
export function gatherBatch<T extends FloatArray>(
  core: HeadCore,
  x: T,
  labels: Int32Array | null,
  check: () => void,
): { x: T; labels: Int32Array | null; peers: RankStep } {
  const ranks = core.ranks!;
  let error: Error | null = null;
  try {
    check();
    if (labels !== null) {
      const ignored = core.options.ignoreIndex; // the loss's rows left out, whatever label
      for (let i = 0; i < labels.length; i++) {
        const y = labels[i];
        if ((y < 0 || y >= core.classes) && y !== ignored) {
          throw new RangeError(
            `labels[${i}]: expected an integer in [0, ${core.classes}), got ${y}`,
          );
        }
      }
    }
  } catch (e) {
    error = e instanceof Error ? e : new Error(String(e));
  }
  const g = ranks.gather(x, labels, core.features, error);
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
