/**
 * One process, one way of computing the loss and its gradients at one shape: "fused" (the fused
 * loss) or "linear" (the linear layer's three products, which hold the N×C logits and their
 * gradient). Prints JSON: the median milliseconds of `REPS` calls (3 by default) and the peak
 * resident memory beyond the inputs and gradients (VmHWM minus VmRSS once they are allocated and
 * touched), in MB. `bench/table.ts` runs it in child processes, so that each peak is its own.
 *
 * Run: `deno run --allow-all --v8-flags=--expose-gc bench/loss_memory.ts fused 512 256 1000000`
 * (Deno keeps /proc/self/status, where the peak is read, behind --allow-all).
 *
 * @module
 */

import { type Backend, backward, forward, loss } from "../mod.ts";
import { problem } from "./problems.ts";

const [mode, ...dims] = Deno.args;
const [n, d, c] = dims.map(Number);
const backend = (Deno.env.get("LSOFTMAX_BACKEND") ?? "cpu") as Backend;
const reps = Number(Deno.env.get("REPS") ?? 3);

function status(key: "VmRSS" | "VmHWM"): number {
  const line = Deno.readTextFileSync("/proc/self/status").split("\n").find((l) =>
    l.startsWith(key)
  );
  return Number(line?.match(/(\d+)/)?.[1] ?? NaN) / 1024; // kB to MB
}

const { x, w, labels } = problem(n, d, c);
const outX = new Float32Array(n * d).fill(0), outW = new Float32Array(c * d).fill(0);
// The set-up's garbage is collected first (freed during the calls, it would hide their memory),
// and the peak so far reset: writing 5 to clear_refs sets VmHWM to the current RSS (Linux 4.0+).
(globalThis as { gc?: () => void }).gc?.();
Deno.writeTextFileSync("/proc/self/clear_refs", "5");
const base = status("VmRSS");
const times: number[] = [];
if (mode === "fused") {
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    loss(x, w, labels, { margin: 4, lambda: 0.5, backend, outX, outW });
    times.push(performance.now() - t0);
  }
} else {
  const out = new Float32Array(n * c), g = new Float32Array(n * c).fill(1e-3);
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    forward(x, w, labels, { margin: 1, lambda: 0, backend, out });
    backward(x, w, labels, g, { margin: 1, lambda: 0, backend, outX, outW });
    times.push(performance.now() - t0);
  }
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({
  mode,
  ms: times[Math.floor(times.length / 2)],
  peakMB: status("VmHWM") - base,
}));
