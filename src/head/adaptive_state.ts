// The adaptive kinds' state in a head (AdaFace: batchMean, batchStd; CurricularFace: t): the
// margin a step's call starts from, the state each micro-batch of an accumulation moves (kept
// until the applying step), and the move after an applied step into the margin of the next
// call and the options state() records, as the layer carries it.

import type { HeadCore } from "./core.ts";
import type { Batch } from "./shards.ts";

/** Whether the head's kind moves a state with each step (AdaFace, CurricularFace). */
function moves(core: HeadCore): boolean {
  const kind = core.margin.kind;
  return kind === "adaface" || kind === "curricularface";
}

/**
 * A step's call batch: for the adaptive kinds, the margin from the state after the
 * micro-batches so far (a micro-batch's statistics are its own, and it moves the state the next
 * one starts from, as the authors' head does under PyTorch's accumulation: one forward per
 * micro-batch) and host memory for the state the call moves it to; `batch` itself otherwise.
 */
export function adaptiveBatch(core: HeadCore, batch: Batch): Batch {
  if (!moves(core)) return batch;
  return {
    ...batch,
    margin: { ...batch.margin, ...(core.pending ? stateFields(core, core.pending) : {}) },
    state: new Float64Array(2),
  };
}

/**
 * After a micro-batch (accumulate): its state kept for the next one and the applying step; one
 * with a non-finite row (the applying step skips) leaves the state as it was.
 */
export function keepPending(core: HeadCore, b: Batch): void {
  if (b.state?.every(Number.isFinite)) core.pending = b.state;
}

/**
 * After an applying step: the state it moved to, unless the update was skipped, which leaves
 * the state as before its micro-batches; the pending state is dropped either way.
 */
export function applyPending(core: HeadCore, b: Batch, skipped: boolean): void {
  if (b.state !== undefined && !skipped) moveState(core, b.state);
  core.pending = null;
}

// The state after a step into the margin of the next call and into the options state() records.
function moveState(core: HeadCore, out: Float64Array): void {
  const moved = stateFields(core, out);
  core.margin = { kind: core.margin.kind, struct: { ...core.margin.struct, ...moved } };
  core.options = { ...core.options, ...moved };
}

// The state's fields of the margin (as the options name them) from a call's state_out.
function stateFields(core: HeadCore, out: Float64Array): Record<string, number> {
  return core.margin.kind === "adaface" ? { batchMean: out[0], batchStd: out[1] } : { t: out[0] };
}
