/**
 * The README's performance table: forward+backward of the L-Softmax op (margin 4) against the
 * plain linear layer (the same library and backend at margin 1: x·Wᵀ, G·W, Gᵀ·x), float32, at the
 * benchmark shapes. Runs alternate between the two so that drift in the machine's speed hits
 * both alike; each cell is the median. Prints a Markdown table.
 *
 * Run: `make perf-table` (LSOFTMAX_BACKEND=cuda on a GPU machine; REPS sets the repetitions).
 *
 * @module
 */

import { type Backend, backends, backward, forward } from "../mod.ts";
import { problem, SHAPES } from "./problems.ts";

const backend = (Deno.env.get("LSOFTMAX_BACKEND") ?? "cpu") as Backend;
const reps = Number(Deno.env.get("REPS") ?? 7);

function machine(): string {
  const info = backends();
  if (backend.startsWith("cuda")) {
    const index = backend === "cuda" ? 0 : Number(backend.slice(5));
    return info.cuda.devices[index]?.name ?? "cuda (unavailable)";
  }
  // Deno keeps /proc/cpuinfo behind --allow-all; `make perf-table` passes the model name in.
  const cpu = Deno.env.get("LSOFTMAX_MACHINE") || "cpu";
  return `${cpu}, ${navigator.hardwareConcurrency} threads, OpenBLAS`;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

const rows: string[] = [];
for (const [n, d, c] of SHAPES) {
  const { x, w, g, labels } = problem(n, d, c);
  // Outputs allocated once, as a training loop would: no page faults inside the timings.
  const out = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const step = (margin: number) => {
    const t0 = performance.now();
    forward(x, w, labels, { margin, lambda: 0.5, backend, out });
    backward(x, w, labels, g, { margin, lambda: 0.5, backend, outX, outW });
    return performance.now() - t0;
  };
  step(1), step(4); // warm-up: first touches, thread start-up
  const ours: number[] = [], base: number[] = [];
  for (let r = 0; r < reps; r++) {
    base.push(step(1));
    ours.push(step(4));
  }
  const o = median(ours), b = median(base);
  const gflops = (6 * n * c * d) / (o / 1e3) / 1e9;
  rows.push(
    `| N=${n} D=${d} C=${c} | ${o.toFixed(2)} ms (${gflops.toFixed(1)} GFLOP/s) | ` +
      `${b.toFixed(2)} ms | ${(o / b).toFixed(3)} |`,
  );
}
console.log(`Machine: ${machine()}; backend ${backend}; float32, margin 4, median of ${reps}.\n`);
console.log("| shape | L-Softmax fwd+bwd | linear layer fwd+bwd | ratio |");
console.log("| --- | --- | --- | --- |");
for (const row of rows) console.log(row);
