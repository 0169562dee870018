// A head's training step: one step's native calls (a micro-batch of an accumulation, or an
// applying step with the optimizer's update), the head's state advanced once every call
// succeeded, and the synchronous step in one process or across ranks. The calls themselves are
// in calls.ts; the adaptive kinds' state in adaptive_state.ts.

import { type FloatArray, newFloatArray } from "../../ffi/arrays.ts";
import { type NativeCall, runCalls } from "../calls.ts";
import { checkBatch } from "../tensors.ts";
import { adaptiveBatch, applyPending, keepPending } from "./adaptive_state.ts";
import { accumulateCalls, stepCalls } from "./calls.ts";
import { batchAt, type HeadCore } from "./core.ts";
import { type StepOptions, type StepResult, type StepSettings, stepSettings } from "./options.ts";
import { gatherBatch, type RankStep } from "./rank_batch.ts";
import type { Draw, SamplerState } from "./sampling.ts";

/**
 * One training step's calls; the head's state advances only once every call succeeded. A
 * skipped step counts as a step (the iteration and λ's schedule advance) but leaves W and the
 * momentum as they were.
 */
export function* headStep(
  core: HeadCore,
  x: FloatArray,
  labels: Int32Array,
  st: StepSettings,
  peers: RankStep | null = null,
): Generator<NativeCall, StepResult, void> {
  const n = labels.length, step = core.iteration + 1;
  const b = adaptiveBatch(core, batchAt(core, n, step));
  const gradX = newFloatArray(core.dtype, (peers?.rows ?? n) * core.features);
  const policy = core.nonFinite, before = core.accumulated;
  const drawn = drawClasses(core, labels), draw = drawn?.draw ?? null;
  const sampled = draw === null ? {} : { sampled: draw.sampled };
  if (st.accumulate) {
    const shards = core.shards;
    const r = yield* accumulateCalls(shards, b, x, labels, gradX, policy, before, draw, peers);
    core.accumulated = r.accumulated;
    keepPending(core, b);
    if (drawn) core.sampler!.advance(drawn.state);
    return { loss: r.loss, lambda: b.margin.lambda, gradX, skipped: false, ...sampled };
  }
  const update = core.optimizer.update(st.lr);
  const shards = core.shards;
  const r = yield* stepCalls(shards, b, x, labels, update, gradX, policy, before, draw, peers);
  const { loss, skipped } = r;
  applyPending(core, b, skipped);
  core.accumulated = null;
  core.iteration = step;
  if (skipped) core.skippedSteps++;
  core.optimizer.applied(skipped);
  if (drawn) core.sampler!.advance(drawn.state);
  return { loss, lambda: b.margin.lambda, gradX, skipped, ...sampled };
}

/**
 * A synchronous step (MarginHead.step): the batch and options checked (across ranks: agreed on,
 * then the global batch gathered), then its calls run. `queued` is the steps asked of stepAsync
 * and not run yet, which the iteration's bound counts.
 */
export function syncStep<T extends FloatArray>(
  core: HeadCore,
  x: T,
  labels: Int32Array,
  options: StepOptions,
  queued: number,
): StepResult<T> {
  if (core.ranks !== null) {
    let st: StepSettings | null = null;
    const g = gatherBatch(core, x, labels, () => {
      checkBatch(x, labels, core.dtype, core.features);
      st = stepSettings(core.settings, options, core.iteration);
    });
    return core.ranks.unanimous(() =>
      runCalls(headStep(core, g.x, g.labels!, st!, g.peers))
    ) as StepResult<T>;
  }
  checkBatch(x, labels, core.dtype, core.features);
  const st = stepSettings(core.settings, options, core.iteration + queued);
  return runCalls(headStep(core, x, labels, st)) as StepResult<T>;
}

// The step's sampled classes (null without sampling) and the sampler's next state; the labels
// are checked here, since they index the sampled set before any native call sees them.
function drawClasses(
  core: HeadCore,
  labels: Int32Array,
): { draw: Draw; state: SamplerState } | null {
  if (core.sampler === null) return null;
  const c = core.classes;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (y < 0 || y >= c) {
      throw new RangeError(`labels[${i}]: expected an integer in [0, ${c}), got ${y}`);
    }
  }
  const bounds = core.ranks?.bounds ?? [...core.shards.map((s) => s.c0), c];
  return core.sampler.draw(labels, bounds);
}
