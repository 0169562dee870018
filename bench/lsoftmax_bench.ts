/**
 * `deno bench`: the L-Softmax op against the plain linear layer (x·Wᵀ forward, G·W and Gᵀ·x
 * backward) through the same library and backend, at (N, D, C) = (64, 128, 1000),
 * (256, 512, 10000) and (512, 512, 100000), float32, margin 4. The baseline of each group is the
 * same op at margin 1, which the library computes as exactly those matrix products. At the small
 * shape a peer joins: the same loss composed from TensorFlow.js ops (CPU backend, autodiff).
 * Then every margin kind's fused loss (bench/problems.ts KINDS) against the three products.
 *
 * A training step of a MarginHead (W and the SGD state resident, margin 4, momentum 0.9) joins
 * the fused loss's groups, against the same three products; and steps per second of the head at
 * N=512 D=256 C=1,000,000 (on CUDA, or with LSOFTMAX_BENCH_MILLION=1: on the CPU a step takes
 * seconds and W with its gradient and momentum 3 GB).
 *
 * Environment: LSOFTMAX_BACKEND ("cpu" by default; "cuda" on a GPU machine), LSOFTMAX_BENCH_SHAPES
 * ("small" for the first shape only), LSOFTMAX_BENCH_TFJS=0 to leave out the TensorFlow.js peer,
 * LSOFTMAX_PRECISION ("tf32" for the head's products on tensor cores).
 * After the table, GFLOP/s per benchmark (6·N·C·D flops forward+backward, 2·N·C·D forward).
 *
 * @module
 */

import {
  type Backend,
  backward,
  forward,
  loss,
  MarginHead,
  type OptimizerOptions,
} from "../mod.ts";
import {
  ADAPTIVE_KINDS,
  handWrittenCrossEntropy,
  KINDS,
  problem,
  random,
  SHAPES,
} from "./problems.ts";

const env = (name: string) => Deno.env.get(name);
const backend = (env("LSOFTMAX_BACKEND") ?? "cpu") as Backend;
const MARGIN = 4, LAMBDA = 0.5;
const shapes = env("LSOFTMAX_BENCH_SHAPES") === "small" ? SHAPES.slice(0, 1) : SHAPES;

// Median seconds per call, recorded by each benchmark, for the GFLOP/s report at the end.
const timings = new Map<string, { flops: number; seconds: number[] }>();
function timed(name: string, flops: number, fn: () => void): () => void {
  const entry = { flops, seconds: [] as number[] };
  timings.set(name, entry);
  return () => {
    const t0 = performance.now();
    fn();
    entry.seconds.push((performance.now() - t0) / 1000);
  };
}

for (const [n, d, c] of shapes) {
  const group = `${backend} N=${n} D=${d} C=${c}`;
  const { x, w, g, labels } = problem(n, d, c);
  // Outputs allocated once, as a training loop would: no page faults inside the timings.
  const out = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const big = n * c * d > 1e9;
  const opts = big ? { n: 5, warmup: 1 } : {};
  const flops = 2 * n * c * d;
  for (const [what, mult] of [["forward", 1], ["backward", 2], ["forward+backward", 3]] as const) {
    for (const margin of [1, MARGIN]) {
      const name = margin === 1 ? `linear ${what}` : `lsoftmax ${what}`;
      const run = () => {
        if (what !== "backward") forward(x, w, labels, { margin, lambda: LAMBDA, backend, out });
        if (what !== "forward") {
          backward(x, w, labels, g, { margin, lambda: LAMBDA, backend, outX, outW });
        }
      };
      Deno.bench({
        name: `${name} [${group}]`,
        group: `${group} ${what}`,
        baseline: margin === 1,
        ...opts,
        fn: timed(`${group} ${name}`, flops * mult, run),
      });
    }
  }
}

// The fused loss against the same three products, and against what users write without it:
// forward, a TypeScript softmax cross-entropy, backward.
for (const [n, d, c] of shapes) {
  const group = `${backend} N=${n} D=${d} C=${c} loss`;
  const { x, w, g, labels } = problem(n, d, c);
  const out = new Float32Array(n * c),
    grad = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const opts = { margin: MARGIN, lambda: LAMBDA, backend };
  const big = n * c * d > 1e9 ? { n: 5, warmup: 1 } : {};
  const flops = 6 * n * c * d;
  Deno.bench({
    name: `linear three products [${group}]`,
    group,
    baseline: true,
    ...big,
    fn: timed(`${group} linear three products`, flops, () => {
      forward(x, w, labels, { margin: 1, lambda: 0, backend, out });
      backward(x, w, labels, g, { margin: 1, lambda: 0, backend, outX, outW });
    }),
  });
  Deno.bench({
    name: `fused loss [${group}]`,
    group,
    ...big,
    fn: timed(`${group} fused loss`, flops, () => {
      loss(x, w, labels, { ...opts, outX, outW });
    }),
  });
  // The head: the loss, dW and the SGD update where W lives, dx back.
  const head = benchHead(c, d, { weights: w });
  Deno.bench({
    name: `MarginHead step [${group}]`,
    group,
    ...big,
    fn: timed(`${group} MarginHead step`, flops, () => {
      head.step(x, labels);
    }),
  });
  // The same step with AdamW (exp_avg, exp_avg_sq beside W): the update reads and writes W, m, v
  // and reads dW, a memory-bound pass of 7 C·D elements against the products' 6 N·C·D flops.
  const adamw = benchHead(c, d, { weights: w }, { type: "adamw", lr: 1e-3 });
  Deno.bench({
    name: `MarginHead step AdamW [${group}]`,
    group,
    ...big,
    fn: timed(`${group} MarginHead step AdamW`, flops, () => {
      adamw.step(x, labels);
    }),
  });
  Deno.bench({
    name: `forward + TypeScript cross-entropy + backward [${group}]`,
    group,
    ...big,
    fn: timed(`${group} forward + TS cross-entropy + backward`, flops, () => {
      forward(x, w, labels, { ...opts, out });
      handWrittenCrossEntropy(out, labels, c, grad);
      backward(x, w, labels, grad, { ...opts, outX, outW });
    }),
  });
}

// Every margin kind's fused loss against the same three products, at N=256 D=512 C=10000 (the
// issue's shape; the small shape too with LSOFTMAX_BENCH_SHAPES=small).
for (const [n, d, c] of shapes.slice(0, 2).slice(-1)) {
  const group = `${backend} N=${n} D=${d} C=${c} kinds`;
  const { x, w, g, labels } = problem(n, d, c);
  const out = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const flops = 6 * n * c * d;
  Deno.bench({
    name: `linear three products [${group}]`,
    group,
    baseline: true,
    fn: timed(`${group} linear three products`, flops, () => {
      forward(x, w, labels, { margin: 1, lambda: 0, backend, out });
      backward(x, w, labels, g, { margin: 1, lambda: 0, backend, outX, outW });
    }),
  });
  for (
    const { label, options } of [
      ...KINDS,
      ...ADAPTIVE_KINDS.filter((k) => k.subcenters === 1),
    ]
  ) {
    Deno.bench({
      name: `fused loss ${label} [${group}]`,
      group,
      fn: timed(`${group} fused loss ${label}`, flops, () => {
        loss(x, w, labels, { ...options, backend, outX, outW });
      }),
    });
  }
  // Sub-center ArcFace against the three products with its C·K rows of W.
  for (const { label, options, subcenters } of ADAPTIVE_KINDS.filter((k) => k.subcenters > 1)) {
    const rows = c * subcenters;
    const kGroup = `${backend} N=${n} D=${d} C·K=${rows} ${label}`;
    const p = problem(n, d, rows);
    const kOut = new Float32Array(n * rows), kOutW = new Float32Array(rows * d);
    const kFlops = 6 * n * rows * d;
    Deno.bench({
      name: `linear three products [${kGroup}]`,
      group: kGroup,
      baseline: true,
      fn: timed(`${kGroup} linear three products`, kFlops, () => {
        forward(p.x, p.w, p.labels, { margin: 1, lambda: 0, backend, out: kOut });
        backward(p.x, p.w, p.labels, p.g, { margin: 1, lambda: 0, backend, outX, outW: kOutW });
      }),
    });
    // The labels are class ids: problem() drew them below C·K, so take them modulo C.
    const classes = p.labels.map((y) => y % c);
    Deno.bench({
      name: `fused loss ${label} [${kGroup}]`,
      group: kGroup,
      fn: timed(`${kGroup} fused loss ${label}`, kFlops, () => {
        loss(p.x, p.w, classes, { ...options, backend, outX, outW: kOutW });
      }),
    });
  }
}

function precision(): "exact" | "tf32" {
  return env("LSOFTMAX_PRECISION") === "tf32" ? "tf32" : "exact";
}

// The benchmarks' head: the bench's margin and backend, SGD with momentum (or the optimizer
// given), W given or seeded.
function benchHead(
  c: number,
  d: number,
  init: { weights: Float32Array } | { seed: number },
  optimizer: OptimizerOptions = { lr: 1e-3, momentum: 0.9 },
): MarginHead {
  return new MarginHead({
    classes: c,
    features: d,
    margin: MARGIN,
    lambda: LAMBDA,
    backend,
    precision: precision(),
    optimizer,
    ...init,
  });
}

// Steps per second of a head at a million classes (the GFLOP/s report gives the rate).
if (backend.startsWith("cuda") || env("LSOFTMAX_BENCH_MILLION") === "1") {
  const [n, d, c] = [512, 256, 1_000_000];
  const group = `${backend} N=${n} D=${d} C=${c} head`;
  const x = random(n * d, 1), labels = Int32Array.from({ length: n }, (_, i) => (i * 7919) % c);
  const head = benchHead(c, d, { seed: 1 });
  Deno.bench({
    name: `MarginHead step [${group}]`,
    group,
    n: backend.startsWith("cuda") ? 20 : 3,
    warmup: 1,
    fn: timed(`${group} MarginHead step`, 6 * n * c * d, () => {
      head.step(x, labels);
    }),
  });
}

// Per-call overhead through FFI at a tiny shape, beside the FFI-only cost of a trivial call.
{
  const x = random(8, 4), w = random(32, 5), g = random(4, 6);
  const labels = new Int32Array([3]);
  Deno.bench({ name: "forward N=1 D=8 C=4", group: "overhead", baseline: true }, () => {
    forward(x, w, labels, { margin: MARGIN, lambda: LAMBDA, backend });
  });
  const into = { margin: MARGIN, lambda: LAMBDA, backend, out: new Float32Array(4) };
  Deno.bench({ name: "forward N=1 D=8 C=4 into out", group: "overhead" }, () => {
    forward(x, w, labels, into);
  });
  Deno.bench({ name: "backward N=1 D=8 C=4", group: "overhead" }, () => {
    backward(x, w, labels, g, { margin: MARGIN, lambda: LAMBDA, backend });
  });
}

// The peer: what a Deno user would otherwise write, at the small shape only.
if (env("LSOFTMAX_BENCH_TFJS") !== "0") {
  const { tfjsLSoftmaxStep } = await import("./tfjs_peer.ts");
  const [n, d, c] = SHAPES[0];
  const group = `${backend} N=${n} D=${d} C=${c}`;
  const { x, w, g, labels } = problem(n, d, c);
  const step = await tfjsLSoftmaxStep(x, w, labels, g, { n, d, c, margin: MARGIN, lambda: LAMBDA });
  Deno.bench({
    name: `tfjs-cpu composed forward+backward [${group}]`,
    group: `${group} forward+backward`,
    n: 5,
    warmup: 1,
    fn: timed(`${group} tfjs-cpu composed forward+backward`, 6 * n * c * d, step),
  });
}

globalThis.addEventListener("unload", () => {
  console.log("\nGFLOP/s (median of the timed calls):");
  for (const [name, { flops, seconds }] of timings) {
    if (seconds.length === 0) continue;
    const sorted = [...seconds].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    console.log(
      `  ${name.padEnd(58)} ${(flops / median / 1e9).toFixed(2).padStart(9)} GFLOP/s  ` +
        `${(median * 1e3).toFixed(3).padStart(10)} ms` +
        (name.includes("MarginHead") ? `  ${(1 / median).toPrecision(3)} steps/s` : ""),
    );
  }
});
