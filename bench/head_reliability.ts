/**
 * The reliability run of MarginHead at full size: STEPS steps (20,000 by default) on one head,
 * then HEADS heads (1,000) each stepped once, half closed and half left to the garbage
 * collector, twice; prints the resident memory growth of each phase in MB (the issue's bound:
 * 10 MB). The first round of heads sets the allocators' high-water mark (the unclosed heads live
 * until a collection; malloc keeps its arenas), so the second is the one that shows a leak.
 * tests/head_test.ts runs the same loops, smaller.
 *
 * Run: `deno run --allow-all --v8-flags=--expose-gc bench/head_reliability.ts` (LSOFTMAX_BACKEND
 * "cpu" by default).
 *
 * @module
 */

import { type Backend, MarginHead } from "../mod.ts";
import { random } from "./problems.ts";

const backend = (Deno.env.get("LSOFTMAX_BACKEND") ?? "cpu") as Backend;
const steps = Number(Deno.env.get("STEPS") ?? 20000), heads = Number(Deno.env.get("HEADS") ?? 1000);
const [n, d, c] = [16, 32, 200];
const x = random(n * d, 1), labels = Int32Array.from({ length: n }, (_, i) => (i * 7) % c);
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
const mb = () => Deno.memoryUsage().rss / 2 ** 20;
const options = { classes: c, features: d, margin: 2, lambda: 1, backend };

const head = new MarginHead({ ...options, optimizer: { lr: 0.01, momentum: 0.9 } });
for (let t = 0; t < 200; t++) head.step(x, labels);
gc();
const start = mb();
for (let t = 0; t < steps; t++) head.step(x, labels);
gc();
const afterSteps = mb();
async function manyHeads(): Promise<number> {
  const before = mb();
  for (let h = 0; h < heads; h++) {
    const other = new MarginHead(options);
    other.step(x, labels);
    if (h % 2 === 0) other.close();
  }
  for (let r = 0; r < 5; r++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 50)); // finalizers run between tasks
  }
  return mb() - before;
}
const firstHeads = await manyHeads();
const secondHeads = await manyHeads();
head.close();
console.log(JSON.stringify({
  backend,
  steps,
  heads,
  stepsGrowthMB: +(afterSteps - start).toFixed(2),
  firstHeadsMB: +firstHeads.toFixed(2),
  secondHeadsMB: +secondHeads.toFixed(2),
}));
