// A head's optimizer beside W: whether SGD's momentum buffer holds a value yet and how many updates
// Adam has applied (its buffers are the shards'), the update each step makes, and the optimizer's
// fields of the state, out of the shards and back in.

import type { FloatArray } from "../../ffi/arrays.ts";
import {
  encodeAdam,
  encodeLossUpdate,
  encodeSgd,
  LSM_ADAM,
  LSM_LOSS_UPDATE,
  LSM_SGD,
} from "../../ffi/structs.ts";
import { address, type FusedStep, type Update } from "./calls.ts";
import { type AdamState, adamStruct, type OptimizerSettings, sgdStruct } from "./options.ts";
import { gatherShards, type HeadShard, scatterShards } from "./shards.ts";

/** The optimizer's progress beside W. */
export class HeadOptimizer {
  #hasVelocity = false;
  #step = 0; // Adam's updates applied (its t before the next)

  constructor(readonly settings: Readonly<OptimizerSettings>) {}

  /** The update of each shard for a step at `lr`, read when the step runs. */
  update(lr: number): Update {
    const o = this.settings, clip = o.clipNorm === undefined ? {} : { clipNorm: o.clipNorm };
    if (o.type === "sgd") {
      const sgd = { ...sgdStruct(o, lr), first: this.#hasVelocity ? 0 : 1 }; // torch's fresh buffer: v <- g
      return {
        ...clip,
        scalesInPlace: true,
        call: (s, _scale, nonfinite, flag) => s.sgd({ ...sgd, nonfinite }, flag),
        step: (s, nonfinite, flag) => {
          const settings = encodeSgd({ ...sgd, nonfinite }, new Uint8Array(LSM_SGD.bytes));
          return fusedStep({ sgd: address(settings), velocity: address(s.v) }, [settings], flag);
        },
      };
    }
    const t = this.#step + 1;
    return {
      ...clip,
      call: (s, scale, nonfinite, flag) =>
        s.adam({ ...adamStruct(o, lr, t, scale), nonfinite }, flag),
      step: (s, nonfinite, flag) => {
        const settings = encodeAdam(
          { ...adamStruct(o, lr, t, 1), nonfinite },
          new Uint8Array(LSM_ADAM.bytes),
        );
        return fusedStep(
          {
            adam: address(settings),
            expAvg: address(s.expAvg),
            expAvgSq: address(s.expAvgSq),
            maxExpAvgSq: address(s.maxExpAvgSq),
          },
          [settings],
          flag,
        );
      },
    };
  }

  /** Counts an update that was applied (a skipped one changes nothing). */
  applied(skipped: boolean): void {
    if (skipped) return;
    if (this.settings.type !== "sgd") this.#step++;
    else if (this.settings.momentum !== 0) this.#hasVelocity = true;
  }

  /** The state's optimizer fields: the momentum buffer (null before one), Adam's step and moments. */
  state(shards: readonly HeadShard[]): { velocity: FloatArray | null; adam: AdamState | null } {
    const velocity = this.#hasVelocity ? gatherShards(shards, (s) => s.v) : null;
    if (this.settings.type === "sgd") return { velocity, adam: null };
    const max = shards[0].maxExpAvgSq !== null;
    return {
      velocity,
      adam: {
        optimizerStep: this.#step,
        expAvg: gatherShards(shards, (s) => s.expAvg!),
        expAvgSq: gatherShards(shards, (s) => s.expAvgSq!),
        maxExpAvgSq: max ? gatherShards(shards, (s) => s.maxExpAvgSq!) : null,
      },
    };
  }

  /** The optimizer's fields of a checked state into the shards. */
  restore(shards: readonly HeadShard[], velocity: FloatArray | null, adam: AdamState | null) {
    if (velocity !== null) scatterShards(shards, (s) => s.v, velocity);
    this.#hasVelocity = velocity !== null;
    if (adam === null) return;
    this.#step = adam.optimizerStep;
    scatterShards(shards, (s) => s.expAvg!, adam.expAvg);
    scatterShards(shards, (s) => s.expAvgSq!, adam.expAvgSq);
    if (adam.maxExpAvgSq !== null) scatterShards(shards, (s) => s.maxExpAvgSq!, adam.maxExpAvgSq);
  }
}

// An lsm_loss_update of the step's settings and state, with the flag it writes.
function fusedStep(
  fields: Record<string, number>,
  keep: ArrayBufferView[],
  flag: Int32Array,
): FusedStep {
  const update = encodeLossUpdate(
    { ...fields, nonfinite: address(flag) },
    new Uint8Array(LSM_LOSS_UPDATE.bytes),
  );
  return { update, flag, keep };
}
