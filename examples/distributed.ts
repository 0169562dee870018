/**
 * One MarginHead across the processes of an MPI job (`distributed: "mpi"`): each rank holds a
 * contiguous shard of the class weights and steps with its own batch (the features its copy of
 * the network made); every step gathers the batches, combines the shards' per-row partials and
 * hands each rank the gradient of its own rows. The loss is the same number on every rank. Run
 * with `make demo-distributed`, or:
 *
 * ```sh
 * OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe \
 *   deno run --allow-ffi --allow-env examples/distributed.ts
 * ```
 *
 * The sizes come from the environment (N rows per rank, D, C, SAMPLE_RATE, STEPS); with
 * ONE_PROCESS=K, it runs one process holding the batches of K ranks instead, for comparison:
 * the README's figures are these runs at N = 512, D = 256, C = 1,000,000.
 *
 * @module
 */

import { MarginHead } from "../mod.ts";

const env = (name: string, fallback: number) => Number(Deno.env.get(name) ?? fallback);
const N = env("N", 64), D = env("D", 32), C = env("C", 1000), STEPS = env("STEPS", 20);
const RATE = env("SAMPLE_RATE", 1), ONE = env("ONE_PROCESS", 0);

using head = new MarginHead({
  classes: C,
  features: D,
  kind: "arcface",
  scale: 32,
  margin: 0.3,
  backend: "cpu",
  optimizer: { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 },
  seed: 1,
  sampleRate: RATE,
  ...(ONE > 0 ? {} : { distributed: "mpi" as const }),
});
const ranks = ONE > 0 ? ONE : head.worldSize, rows = ONE > 0 ? N * ONE : N;

// Each rank's batch: features near their class's direction (a deterministic stream per rank).
let state = 12345 + 7919 * head.rank;
const random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32;
function batch(): { x: Float32Array; labels: Int32Array } {
  const labels = Int32Array.from({ length: rows }, () => Math.floor(random() * Math.min(C, 4 * N)));
  const x = new Float32Array(rows * D);
  for (let i = 0; i < rows; i++) {
    for (let k = 0; k < D; k++) x[i * D + k] = (k === labels[i] % D ? 2 : 0) + random() - 0.5;
  }
  return { x, labels };
}

const times: number[] = [];
let before = head.traffic.collectives ?? 0, perStep = 0;
for (let step = 1; step <= STEPS; step++) {
  const { x, labels } = batch();
  const t0 = performance.now();
  const { loss } = head.step(x, labels);
  times.push(performance.now() - t0);
  const now = head.traffic.collectives ?? 0;
  perStep = now - before, before = now;
  if (head.rank === 0 && (step === 1 || step % 10 === 0 || step === STEPS)) {
    console.log(`step ${step}: loss ${loss.toFixed(4)}`);
  }
}
if (head.rank === 0) {
  const sorted = times.slice(1).sort((a, b) => a - b),
    median = sorted[sorted.length >> 1] ?? times[0];
  const total = N * ranks;
  const formula = total * D * 4 + total * 4 + 3 * total * 8 + total * D * 4;
  console.log(
    `${ONE > 0 ? "one process" : `${ranks} ranks`}: N = ${N} per rank, D = ${D}, C = ${C}, ` +
      `r = ${RATE}: median step ${median.toFixed(1)} ms` +
      (ONE > 0 ? "" : `; collective buffers ${perStep} bytes a step (formula ${formula})`),
  );
}
