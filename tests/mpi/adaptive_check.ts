// adaptive_check.ts: MarginHead with the adaptive kinds (subcenter, adaface, curricularface,
// magface) and distributed: "mpi" (or "nccl"), in every process of `mpirun -np K`. Each rank
// checks its results against a head of one process on K backends over the concatenated batch
// (float64 within 1e-12): the loss, its own rows of dL/dx, the adaptive state (AdaFace's mean and
// std, CurricularFace's t: the global batch's, the same on every rank), W after the steps; with
// the cross-entropy options (ignored rows included), and with class sampling (whole classes of
// sub-centers); then evaluate and predict over all classes (sub-center ArcFace's by its best
// rows). Exits non-zero on the first failure.
//
//   LSOFTMAX_LIB=... BACKEND=cpu|cuda:0 [DISTRIBUTED=nccl] mpirun -np K deno run ... adaptive_check.ts

import assert from "node:assert/strict";
import { MarginHead } from "../../mod.ts";
import { randomArray, randomLabels, Rng } from "../helpers.ts";
import { SPECS } from "../adaptive_specs.ts";

const backend = (Deno.env.get("BACKEND") ?? "cpu") as "cpu" | "cuda" | "cuda:0";
const distributed = (Deno.env.get("DISTRIBUTED") ?? "mpi") as "mpi" | "nccl";
const C = 11, D = 5;

const CE = {
  labelSmoothing: 0.1,
  classWeights: Float64Array.from({ length: C }, (_, j) => 0.5 + 0.1 * j),
  ignoreIndex: -100,
};
const STATE_KEYS = ["batchMean", "batchStd", "t"] as const;

function close(a: number, b: number, what: string) {
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
}

function allClose(a: ArrayLike<number>, b: ArrayLike<number>, what: string) {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let k = 0; k < a.length; k++) close(a[k], b[k], `${what}[${k}]`);
}

// Every rank's batch of a step (rank r has 3 + r rows; with `ignore` its first row ignored).
function batches(step: number, size: number, ignore: boolean) {
  const rng = new Rng(300 + step);
  return Array.from({ length: size }, (_, r) => {
    const n = 3 + r, labels = randomLabels(rng, n, C);
    if (ignore) labels[0] = -100;
    return { x: randomArray(rng, n * D, -2, 2), labels };
  });
}

function concat(parts: { x: Float64Array; labels: Int32Array }[]) {
  const x = new Float64Array(parts.reduce((a, p) => a + p.x.length, 0));
  const labels = new Int32Array(parts.reduce((a, p) => a + p.labels.length, 0));
  let at = 0, li = 0;
  for (const p of parts) {
    x.set(p.x, at), labels.set(p.labels, li);
    at += p.x.length, li += p.labels.length;
  }
  return { x, labels };
}

function stateOf(head: MarginHead): Record<string, number> {
  const o = head.state().options as Record<string, unknown>;
  const out: Record<string, number> = {};
  for (const k of STATE_KEYS) if (o[k] !== undefined) out[k] = o[k] as number;
  return out;
}

let K = 1, R = 0;
for (const spec of SPECS) {
  if (spec.kind === "subcenter" && backend !== "cpu") continue; // the CPU backend's alone so far
  const ce = CE;
  for (const [what, extra] of [["options", ce], ["sampling", { sampleRate: 0.5 }]] as const) {
    const options = {
      classes: C,
      features: D,
      ...spec,
      ...extra,
      dtype: "float64" as const,
      optimizer: { lr: 0.2, momentum: 0.9 },
      seed: 5,
    };
    using ranks = new MarginHead({ ...options, backend, distributed } as never);
    K = ranks.worldSize, R = ranks.rank;
    using one = new MarginHead({ ...options, backend: Array(K).fill(backend) } as never);
    const at = `${spec.kind} ${what} K=${K} rank ${R}`;
    const ignore = what === "options" && "ignoreIndex" in extra;
    for (const step of [0, 1, 2]) {
      const parts = batches(step, K, ignore), all = concat(parts);
      const offset = parts.slice(0, R).reduce((a, p) => a + p.labels.length, 0);
      const mine = parts[R], n = mine.labels.length;
      const got = ranks.step(mine.x, mine.labels), want = one.step(all.x, all.labels);
      close(got.loss, want.loss, `${at} step ${step}: loss`);
      allClose(got.gradX, want.gradX.subarray(offset * D, (offset + n) * D), `${at}: dL/dx`);
      assert.deepEqual(got.sampled, want.sampled, `${at}: sampled`);
      const a = stateOf(ranks), b = stateOf(one);
      for (const k of Object.keys(b)) close(a[k], b[k], `${at} step ${step}: ${k}`);
    }
    allClose(ranks.weights(), one.weights(), `${at}: W`);
    const parts = batches(9, K, false), all = concat(parts), mine = parts[R];
    const offset = parts.slice(0, R).reduce((a, p) => a + p.labels.length, 0);
    const e = ranks.evaluate(mine.x, mine.labels), f = one.evaluate(all.x, all.labels);
    close(e.loss, f.loss, `${at}: evaluate's loss`);
    assert.equal(e.accuracy, f.accuracy, `${at}: evaluate's accuracy`);
    const p = ranks.predict(mine.x, { k: 3 }), q = one.predict(all.x, { k: 3 });
    const n = mine.labels.length;
    assert.deepEqual(p.indices, q.indices.slice(offset * 3, (offset + n) * 3), `${at}: predict`);
    allClose(p.scores, q.scores.subarray(offset * 3, (offset + n) * 3), `${at}: scores`);
  }
}
console.log(`rank ${R} of ${K}: the adaptive kinds across ranks: ok`);
