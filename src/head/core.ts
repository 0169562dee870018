// A head's state as its modules share it: MarginHead (head.ts) holds one HeadCore in a private
// field and hands it to the step (step.ts), the adaptive kinds' state (adaptive_state.ts), the
// queries (queries.ts) and the distributed batch (rank_batch.ts). This file opens it (the
// shards in context memory, the ranks, the sampler, the initial W) and holds λ and the batch
// every call starts from.

import type { FloatArray, FloatDType } from "../../ffi/arrays.ts";
import type { Margin } from "../kinds.ts";
import type { HeadSettings } from "../resolve_head.ts";
import { lambdaOf, type LambdaSchedule } from "../schedule.ts";
import type { Accumulated } from "./calls.ts";
import { fillWeights } from "./init.ts";
import type { HeadState, NonFinitePolicy, OptimizerSettings } from "./options.ts";
import { HeadOptimizer } from "./optimizer.ts";
import { openRanks, rankBackend, type Ranks } from "./ranks.ts";
import { Sampler } from "./sampling.ts";
import { type Batch, type HeadShard, openShards } from "./shards.ts";
import { stateOptions } from "./state.ts";

/** Everything a head's calls read and move, but its lifecycle (closed, the stepAsync queue). */
export interface HeadCore {
  readonly classes: number;
  readonly features: number;
  readonly subcenters: number;
  readonly dtype: FloatDType;
  /** The optimizer's settings, defaults filled in (frozen: the head's `optimizer`). */
  readonly settings: Readonly<OptimizerSettings>;
  readonly optimizer: HeadOptimizer;
  readonly nonFinite: NonFinitePolicy;
  readonly lambda: number | LambdaSchedule;
  /** The options state() records; the adaptive kinds' state moves in them. */
  options: HeadState["options"];
  margin: Margin; // λ 0: batchAt sets each call's
  shards: HeadShard[];
  iteration: number;
  skippedSteps: number;
  /** The micro-batches since the last applying step. */
  accumulated: Accumulated | null;
  /** AdaFace's and CurricularFace's state after the micro-batches so far, until applied. */
  pending: Float64Array | null;
  /** sampleRate < 1: the classes of each step. */
  readonly sampler: Sampler | null;
  /** Distributed: the job's ranks, this process holding one shard. */
  readonly ranks: Ranks | null;
}

/**
 * A head's state from its settings: the ranks (distributed), the shards with their optimizer
 * buffers, the sampler, and W from `h.weights` or `h.seed` (the shards released if that fails).
 */
export function openCore(h: HeadSettings, settings: Readonly<OptimizerSettings>): HeadCore {
  const optimizer = new HeadOptimizer(settings);
  const options = stateOptions(h);
  const ranks = h.distributed === undefined
    ? null
    : openRanks(h.distributed, h.classes, h.backends[0]);
  const shape = {
    ...h,
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
  const shards = ranks === null
    ? openShards(h.backends, shape, buffers)
    : openShards(h.backends.map(rankBackend), shape, buffers, ranks.range);
  const core: HeadCore = {
    classes: h.classes,
    features: h.features,
    subcenters: h.subcenters,
    dtype: h.dtype,
    settings,
    optimizer,
    nonFinite: h.nonFinite,
    lambda: h.lambda ?? 0,
    options,
    margin: h.margin,
    shards,
    iteration: h.iteration,
    skippedSteps: 0,
    accumulated: null,
    pending: null,
    sampler: h.sampleRate < 1 ? Sampler.seeded(h.sampleRate, h.seed) : null,
    ranks,
  };
  try {
    fillWeights(core.shards, h.weights, h.seed);
  } catch (e) {
    releaseCore(core);
    throw e;
  }
  return core;
}

/** Frees every shard's context memory: W, its gradient, the optimizer buffers, the scratch. */
export function releaseCore(core: HeadCore): void {
  for (const s of core.shards) s.ctx.close();
  core.shards = [];
}

/** λ at `step`: the fixed λ, or its schedule's. */
export function lambdaAt(core: HeadCore, step: number): number {
  return typeof core.lambda === "number" ? core.lambda : lambdaOf(step, core.lambda);
}

/** A call's batch at λ of `step`: the one place the head's margin becomes the call's. */
export function batchAt(core: HeadCore, n: number, step: number): Batch {
  return { n, margin: { ...core.margin.struct, lambda: lambdaAt(core, step) } };
}
