/**
 * The README's performance table: forward+backward of the L-Softmax op (margin 4) against the
 * plain linear layer (the same library and backend at margin 1: x·Wᵀ, G·W, Gᵀ·x), float32, at the
 * benchmark shapes. Runs alternate between the two so that drift in the machine's speed hits
 * both alike; each cell is the median. Prints a Markdown table.
 *
 * Then the fused loss against the same three products and against forward + a TypeScript
 * cross-entropy + backward, and at N=512 D=256 C=1,000,000 in child processes
 * (bench/loss_memory.ts, three of each, alternating) with the peak memory beyond the inputs and
 * gradients
 * (LSOFTMAX_BENCH_MILLION=0 leaves that row out).
 *
 * Then every margin kind's fused loss at N=256 D=512 C=10,000 against the same three products
 * (LSOFTMAX_BENCH_KINDS_ONLY=1: that table alone), and a MarginHead's training step there (W and
 * the optimizer's state resident; SGD with momentum, AdamW) against them too.
 *
 * Run: `make perf-table` (LSOFTMAX_BACKEND=cuda on a GPU machine; REPS sets the repetitions).
 *
 * @module
 */

import {
  type Backend,
  backends,
  backward,
  forward,
  loss,
  MarginHead,
  type OptimizerOptions,
} from "../mod.ts";
import { ADAPTIVE_KINDS, handWrittenCrossEntropy, KINDS, problem, SHAPES } from "./problems.ts";

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

const kindsOnly = Deno.env.get("LSOFTMAX_BENCH_KINDS_ONLY") === "1";
const time = (fn: () => void) => {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
};

const rows: string[] = [];
for (const [n, d, c] of kindsOnly ? [] : SHAPES) {
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
if (!kindsOnly) {
  console.log("| shape | L-Softmax fwd+bwd | linear layer fwd+bwd | ratio |");
  console.log("| --- | --- | --- | --- |");
  for (const row of rows) console.log(row);
}

// The fused loss.
const lossRows: string[] = [];
for (const [n, d, c] of kindsOnly ? [] : SHAPES.slice(0, 2)) {
  const { x, w, g, labels } = problem(n, d, c);
  const out = new Float32Array(n * c),
    grad = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const opts = { margin: 4, lambda: 0.5, backend };
  const linear = () =>
    time(() => {
      forward(x, w, labels, { margin: 1, lambda: 0, backend, out });
      backward(x, w, labels, g, { margin: 1, lambda: 0, backend, outX, outW });
    });
  const fused = () => time(() => loss(x, w, labels, { ...opts, outX, outW }));
  const composed = () =>
    time(() => {
      forward(x, w, labels, { ...opts, out });
      handWrittenCrossEntropy(out, labels, c, grad);
      backward(x, w, labels, grad, { ...opts, outX, outW });
    });
  linear(), fused(), composed();
  const l: number[] = [], f: number[] = [], h: number[] = [];
  for (let r = 0; r < reps; r++) l.push(linear()), f.push(fused()), h.push(composed());
  const [ml, mf, mh] = [median(l), median(f), median(h)];
  lossRows.push(
    `| N=${n} D=${d} C=${c} | ${mf.toFixed(2)} ms | ${ml.toFixed(2)} ms | ${
      (mf / ml).toFixed(3)
    } | ` +
      `${mh.toFixed(2)} ms | - |`,
  );
}
if (!kindsOnly && Deno.env.get("LSOFTMAX_BENCH_MILLION") !== "0") {
  const dims = ["512", "256", "1000000"];
  const child = async (mode: string) => {
    const script = new URL("./loss_memory.ts", import.meta.url).pathname;
    const { stdout, success } = await new Deno.Command(Deno.execPath(), {
      // Deno keeps /proc/self/status (the peak memory) behind --allow-all.
      args: ["run", "--allow-all", "--v8-flags=--expose-gc", script, mode, ...dims],
      stderr: "inherit",
    }).output();
    if (!success) throw new Error(`bench/loss_memory.ts ${mode} failed`);
    return JSON.parse(new TextDecoder().decode(stdout)) as { ms: number; peakMB: number };
  };
  // Three rounds, the two alternating, so that drift in the machine's speed hits both alike.
  const linear: { ms: number; peakMB: number }[] = [], fused: typeof linear = [];
  for (let r = 0; r < 3; r++) linear.push(await child("linear")), fused.push(await child("fused"));
  const [lms, fms] = [median(linear.map((v) => v.ms)), median(fused.map((v) => v.ms))];
  const peak = (v: typeof linear) => Math.max(...v.map((e) => e.peakMB)).toFixed(0);
  lossRows.push(
    `| N=512 D=256 C=1000000 | ${fms.toFixed(0)} ms | ${lms.toFixed(0)} ms | ` +
      `${(fms / lms).toFixed(3)} | - | ${peak(fused)} MB (three products: ${peak(linear)} MB) |`,
  );
}
if (!kindsOnly) {
  console.log(
    `\nThe fused loss (float32, margin 4, mean; median of ${reps}; the 1M row: median of 3 processes' medians of 3):\n`,
  );
  console.log(
    "| shape | fused loss | linear three products | ratio | forward + TS cross-entropy + backward | peak memory beyond inputs and gradients |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const row of lossRows) console.log(row);
}

// Every kind's fused loss, runs alternating with the three products (sub-center ArcFace with
// its own: those of its C·K rows).
{
  const [n, d, c] = [256, 512, 10000];
  const { x, w, g, labels } = problem(n, d, c);
  const outX = new Float32Array(n * d);
  const linear = (p: ReturnType<typeof problem>, rows: number) => {
    const out = new Float32Array(n * rows), outW = new Float32Array(rows * d);
    return () =>
      time(() => {
        forward(p.x, p.w, p.labels, { margin: 1, lambda: 0, backend, out });
        backward(p.x, p.w, p.labels, p.g, { margin: 1, lambda: 0, backend, outX, outW });
      });
  };
  const plain = { x, w, g, labels };
  const cases = [
    ...KINDS.map(({ label, options }) => ({ label, options, subcenters: 1 })),
    ...ADAPTIVE_KINDS,
  ].map(({ label, options, subcenters }) => {
    const rows = c * subcenters;
    const p = subcenters === 1 ? plain : problem(n, d, rows);
    const classes = p.labels.map((y) => y % c); // class ids below C
    const outW = new Float32Array(rows * d);
    const fused = () => time(() => loss(p.x, p.w, classes, { ...options, backend, outX, outW }));
    return { label, rows, fused, base: subcenters === 1 ? undefined : linear(p, rows) };
  });
  const products = linear(plain, c);
  products(), cases.forEach((k) => (k.fused(), k.base?.()));
  const base: number[] = [],
    ours: number[][] = cases.map(() => []),
    own: number[][] = cases.map(() => []);
  for (let r = 0; r < reps; r++) {
    base.push(products());
    cases.forEach((k, i) => {
      ours[i].push(k.fused());
      if (k.base) own[i].push(k.base());
    });
  }
  const b = median(base);
  console.log(
    `\nEvery kind's fused loss at N=${n} D=${d} C=${c} (float32, mean; median of ${reps}), ` +
      `against the linear layer's three products (${b.toFixed(2)} ms; for sub-center ArcFace ` +
      `those of its C·K rows):\n`,
  );
  console.log("| kind | fused loss | ratio |");
  console.log("| --- | --- | --- |");
  cases.forEach(({ label, rows }, k) => {
    const o = median(ours[k]);
    const kb = own[k].length > 0 ? median(own[k]) : b;
    const against = own[k].length > 0 ? ` (C·K = ${rows}: ${kb.toFixed(2)} ms)` : "";
    console.log(`| ${label} | ${o.toFixed(2)} ms | ${(o / kb).toFixed(3)}${against} |`);
  });
}

// A head's training step, runs alternating with the three products.
{
  const [n, d, c] = [256, 512, 10000];
  const { x, w, g, labels } = problem(n, d, c);
  const out = new Float32Array(n * c),
    outX = new Float32Array(n * d),
    outW = new Float32Array(c * d);
  const linear = () =>
    time(() => {
      forward(x, w, labels, { margin: 1, lambda: 0, backend, out });
      backward(x, w, labels, g, { margin: 1, lambda: 0, backend, outX, outW });
    });
  const optimizers: [string, OptimizerOptions][] = [
    ["SGD, momentum 0.9", { lr: 1e-3, momentum: 0.9 }],
    ["AdamW", { type: "adamw", lr: 1e-3 }],
  ];
  const heads = optimizers.map(([, optimizer]) =>
    new MarginHead({
      classes: c,
      features: d,
      margin: 4,
      lambda: 0.5,
      backend,
      weights: w,
      optimizer,
    })
  );
  const steps = heads.map((head) => () => time(() => head.step(x, labels)));
  linear(), steps.forEach((f) => f());
  const base: number[] = [], ours: number[][] = heads.map(() => []);
  for (let r = 0; r < reps; r++) {
    base.push(linear());
    steps.forEach((f, k) => ours[k].push(f()));
  }
  const b = median(base);
  console.log(
    `\nMarginHead.step at N=${n} D=${d} C=${c} (L-Softmax m=4, float32; median of ${reps}), ` +
      `against the linear layer's three products (${b.toFixed(2)} ms):\n`,
  );
  console.log("| optimizer | head step | ratio |");
  console.log("| --- | --- | --- |");
  optimizers.forEach(([label], k) => {
    const o = median(ours[k]);
    console.log(`| ${label} | ${o.toFixed(2)} ms | ${(o / b).toFixed(3)} |`);
  });
  heads.forEach((head) => head.close());
}

// The per-call cost at a tiny shape: the FFI call, the option and array checks and the native
// checks, with a new logits array and into one given as `out`; beside it, what Deno takes to make
// the Float32Array that a new result needs.
if (!kindsOnly) {
  const [n, d, c] = [1, 8, 4];
  const { x, w, g, labels } = problem(n, d, c);
  const options = { margin: 4, lambda: 0.5, backend };
  const into = { ...options, out: new Float32Array(n * c) };
  const grads = { ...options, outX: new Float32Array(n * d), outW: new Float32Array(c * d) };
  const calls = 20000;
  const perCall = (fn: () => void) => () =>
    time(() => {
      for (let i = 0; i < calls; i++) fn();
    }) * 1e3 / calls;
  const cases: [string, () => number][] = [
    ["forward, a new logits array", perCall(() => forward(x, w, labels, options))],
    ["forward, into `out`", perCall(() => forward(x, w, labels, into))],
    ["backward, into `outX` and `outW`", perCall(() => backward(x, w, labels, g, grads))],
    ["`new Float32Array(4)` alone", perCall(() => new Float32Array(n * c))],
  ];
  cases.forEach(([, f]) => f());
  const us: number[][] = cases.map(() => []);
  for (let r = 0; r < reps; r++) cases.forEach(([, f], k) => us[k].push(f()));
  console.log(
    `\nA call at N=${n} D=${d} C=${c} (L-Softmax m=4, float32; each the median of ${reps} means ` +
      `of ${calls} calls):\n`,
  );
  console.log("| call | time |");
  console.log("| --- | --- |");
  cases.forEach(([label], k) => console.log(`| ${label} | ${median(us[k]).toFixed(2)} µs |`));
}
