/**
 * Fashion-MNIST in TensorFlow.js with the margin losses of this module (tfjs.ts): a small MLP
 * whose last layer gives the features, trained with plain softmax (m = 1), L-Softmax m = 2, 3,
 * 4, ArcFace, AdaFace and sub-center ArcFace, with 64 features over several seeds (the accuracy
 * table: mean and min–max) and with 2 features once (the pictures: the test features and each
 * class weight's direction, like Figure 2 of the L-Softmax paper). examples/demo_sweep.ts trains
 * with the same {@link train} over a grid of settings, the ground for the ones chosen here.
 *
 *   make demo                  sets up the dataset, then writes docs/fashion_mnist.md and SVGs
 *   deno run --allow-ffi --allow-env --allow-read --allow-write=docs \
 *     examples/fashion_mnist.ts [--quick] [--data DIR] [--out DIR] [--backend wasm|cpu]
 *     [--only softmax,lsoftmax_m2,...] [--seeds N]
 *
 * The data: Debian's `dataset-fashion-mnist` package (`scripts/setup.sh dataset`), or `--data DIR`
 * (or FASHION_MNIST_DIR) holding the four IDX files (gzip-compressed or not). `--quick` trains on
 * a subset for a smoke test and writes only where `--out` says.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import type { LayerOptions } from "../mod.ts";
import { MarginLoss, marginLoss, type MarginLossOptions } from "../tfjs.ts";
import { type DemoArgs, parseDemoArgs } from "./demo_args.ts";
import { featurePlot } from "./feature_plot.ts";
import { readIdx } from "./idx.ts";
import { clock, Progress } from "./progress.ts";

const CLASSES = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
];

// λ anneals from 1000 as (1 + 0.01 t)^-3 down to its floor (1 by step 900 of the 1170 of five
// epochs, 5 by step 485), as the Caffe layer's schedule does over a longer run: early on the target
// logit is mostly the plain one, so training starts; then the margin takes over. The floor sets
// how much margin the runs get in the end (a floor of 0 collapses several classes onto one
// direction at m = 4 in runs this short); the sweep (docs/fashion_mnist_sweep.md) measures 1 and 5.
const schedule = (lambdaMin: number) => ({ base: 1000, gamma: 0.01, power: 3, lambdaMin });

/** The λ schedule of the demo's L-Softmax runs. */
export const SCHEDULE = schedule(5);

/**
 * One run: a name, the file stem of its picture, and either the options of the stateful loss
 * (`layer`: the λ schedule, AdaFace's moving averages) or those of the stateless one (`loss`).
 * `predict` says how a trained model classifies: by the plain logits w·x (L-Softmax) or by the
 * cosines (the normalised kinds; with `subcenters` K, a class's score is the largest cosine of its
 * K rows of W, class j's rows being jK to jK + K - 1).
 */
export type Run = { name: string; file: string } & Training;

/** How a run trains and predicts (a {@link Run} less its name). */
export type Training =
  & { predict?: "dot" | "cosine"; subcenters?: number }
  & ({ layer: LayerOptions } | { loss: MarginLossOptions });

/** L-Softmax with margin m and the λ schedule's floor `lambdaMin`. */
export function lsoftmax(m: number, lambdaMin: number): LayerOptions {
  return { margin: m, ...schedule(lambdaMin) };
}

/** AdaFace with the authors' h, α and initial moving averages (mk-minchul/AdaFace). */
export function adaface(scale: number, margin: number): LayerOptions {
  return { kind: "adaface", scale, margin, h: 0.333, tAlpha: 0.01, batchMean: 20, batchStd: 100 };
}

/** Sub-center ArcFace with the authors' K = 3 sub-centers per class. */
export const SUBCENTERS = 3;

// Each kind's best setting in the sweep (docs/fashion_mnist_sweep.md; a tie goes to the authors'
// margin).
const RUNS: Run[] = [
  { name: "softmax (m = 1)", file: "softmax", layer: lsoftmax(1, SCHEDULE.lambdaMin) },
  { name: "L-Softmax m = 2", file: "lsoftmax_m2", layer: lsoftmax(2, SCHEDULE.lambdaMin) },
  { name: "L-Softmax m = 3", file: "lsoftmax_m3", layer: lsoftmax(3, SCHEDULE.lambdaMin) },
  { name: "L-Softmax m = 4", file: "lsoftmax_m4", layer: lsoftmax(4, SCHEDULE.lambdaMin) },
  {
    name: "ArcFace",
    file: "arcface",
    loss: { kind: "arcface", scale: 16, margin: 0.2 },
    predict: "cosine",
  },
  { name: "AdaFace", file: "adaface", layer: adaface(32, 0.4), predict: "cosine" },
  {
    name: "sub-center ArcFace",
    file: "subcenter",
    loss: { kind: "subcenter", scale: 16, margin: 0.2, subcenters: SUBCENTERS },
    predict: "cosine",
    subcenters: SUBCENTERS,
  },
];

interface Args extends DemoArgs {
  only?: string[];
  seeds?: number;
}

function parseArgs(argv: string[]): Args {
  return parseDemoArgs<Args>(argv, {
    "--only": (args, value) => args.only = value().split(","),
    "--seeds": (args, value) => {
      const v = value(), n = Number(v);
      if (!Number.isInteger(n) || n < 1) {
        throw new Error(`--seeds: expected an integer >= 1, got ${v}`);
      }
      args.seeds = n;
    },
  });
}

/** One split of the dataset: the images as bytes and their labels. */
export interface Split {
  images: Uint8Array; // [n, 784]
  labels: Int32Array;
  n: number;
}

async function loadSplit(dir: string, prefix: string, limit: number): Promise<Split> {
  const find = async (name: string) => {
    for (const file of [`${dir}/${name}.gz`, `${dir}/${name}`]) {
      try {
        await Deno.stat(file);
        return file;
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    throw new Error(
      `Fashion-MNIST: ${name}(.gz) is not in ${dir}. Install Debian's dataset-fashion-mnist ` +
        `package (scripts/setup.sh dataset, or apt-get install dataset-fashion-mnist), or pass ` +
        `--data DIR (or set FASHION_MNIST_DIR) to a directory with the four IDX files.`,
    );
  };
  const images = await readIdx(await find(`${prefix}-images-idx3-ubyte`));
  const labels = await readIdx(await find(`${prefix}-labels-idx1-ubyte`));
  const n = Math.min(images.dims[0], labels.dims[0], limit);
  return {
    images: images.data.subarray(0, n * 784),
    labels: Int32Array.from(labels.data.subarray(0, n)),
    n,
  };
}

// A seeded PRNG (mulberry32) for initial weights and the batch order: runs are repeatable.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The images averaged over 2×2 blocks (28×28 to 14×14, scaled to [0, 1]): a quarter of the
// first layer's work, so that every run fits the demo's time budget on two cores.
const SIDE = 14, PIXELS = SIDE * SIDE;

function batchOf(split: Split, index: Int32Array | number[]): { x: tf.Tensor2D; y: Int32Array } {
  const x = new Float32Array(index.length * PIXELS);
  const y = new Int32Array(index.length);
  for (let b = 0; b < index.length; b++) {
    const image = split.images.subarray(index[b] * 784, (index[b] + 1) * 784);
    y[b] = split.labels[index[b]];
    for (let r = 0; r < SIDE; r++) {
      for (let c = 0; c < SIDE; c++) {
        const at = 56 * r + 2 * c;
        x[b * PIXELS + SIDE * r + c] =
          (image[at] + image[at + 1] + image[at + 28] + image[at + 29]) /
          (4 * 255);
      }
    }
  }
  return { x: tf.tensor2d(x, [index.length, PIXELS]), y };
}

function makeModel(features: number, seed: number): tf.Sequential {
  const init = (s: number) => tf.initializers.glorotUniform({ seed: seed + s });
  return tf.sequential({
    layers: [
      tf.layers.dense({
        inputShape: [PIXELS],
        units: 128,
        activation: "relu",
        kernelInitializer: init(1),
      }),
      tf.layers.dense({ units: features, kernelInitializer: init(2) }),
    ],
  });
}

// Class scores for inference: the plain logits w·x, or the cosines for the normalised kinds;
// with K sub-centers, the largest of each class's K cosines.
function scores(f: tf.Tensor2D, w: tf.Tensor2D, predict: "dot" | "cosine", k: number): tf.Tensor2D {
  if (predict === "dot") return tf.matMul(f, w, false, true);
  const unit = (t: tf.Tensor2D) => tf.div(t, tf.add(tf.norm(t, "euclidean", 1, true), 1e-12));
  const c: tf.Tensor2D = tf.matMul(unit(f), unit(w), false, true);
  if (k === 1) return c;
  return tf.max(tf.reshape(c, [f.shape[0], w.shape[0] / k, k]), 2) as tf.Tensor2D;
}

function correct(s: tf.Tensor2D, y: Int32Array): number {
  const predicted = tf.tidy(() => tf.argMax(s, 1)).dataSync();
  let ok = 0;
  for (let i = 0; i < y.length; i++) if (predicted[i] === y[i]) ok++;
  return ok;
}

/** What a run gives: test accuracy, seconds, and for 2 features what the picture needs. */
export interface Result {
  accuracy: number;
  seconds: number;
  points?: Float32Array;
  labels?: Int32Array;
  weights?: Float32Array;
}

/** How a run trains: epochs, batch size, test features kept for the picture, and the seed. */
export interface Plan {
  epochs: number;
  batch: number;
  plotPoints: number;
  /** Sets the initial weights (network and W) and the batch order; seed 0 is the demo's first. */
  seed: number;
}

/**
 * Trains `run` with `features` features on the training split, then measures its accuracy on the
 * test split. The demo and the sweep (examples/demo_sweep.ts) both train with this.
 */
export function train(
  run: Run,
  features: number,
  data: { train: Split; test: Split },
  plan: Plan,
): Result {
  const start = performance.now();
  const seed = 14 + 100 * plan.seed;
  const model = makeModel(features, seed);
  const next = rng(100 * seed + features);
  const k = run.subcenters ?? 1, rows = 10 * k;
  const w = tf.variable(
    tf.tensor2d(
      Float32Array.from({ length: rows * features }, () => (next() - 0.5) * 0.2),
      [rows, features],
    ),
  );
  const head = "layer" in run ? new MarginLoss(run.layer) : undefined;
  const lossOf = (f: tf.Tensor, y: Int32Array) =>
    head ? head.loss(f, w, y) : marginLoss(f, w, y, (run as { loss: MarginLossOptions }).loss);
  const predict = run.predict ?? "dot";
  const optimizer = tf.train.adam(1e-3);
  const { train: tr, test } = data;
  const perEpoch = Math.floor(tr.n / plan.batch);
  const steps = plan.epochs * perEpoch;
  const bar = new Progress(
    `${run.name}, D = ${features}, seed ${plan.seed}`.padEnd(36),
    steps,
    "images",
  );
  let smooth = { loss: NaN, accuracy: NaN };
  const order = Array.from({ length: tr.n }, (_, i) => i);
  let step = 0;
  for (let epoch = 0; epoch < plan.epochs; epoch++) {
    for (let i = order.length - 1; i > 0; i--) { // Fisher-Yates
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    for (let b = 0; b < perEpoch; b++) {
      const { x, y } = batchOf(tr, order.slice(b * plan.batch, (b + 1) * plan.batch));
      let hits = 0;
      const cost = optimizer.minimize(() => {
        const f = model.apply(x) as tf.Tensor2D;
        hits = correct(tf.tidy(() => scores(f, w, predict, k)), y);
        return lossOf(f, y);
      }, true)!;
      const value = cost.dataSync()[0];
      tf.dispose([x, cost]);
      const a = 0.9; // smoothed over about ten steps
      smooth = Number.isNaN(smooth.loss) ? { loss: value, accuracy: hits / y.length } : {
        loss: a * smooth.loss + (1 - a) * value,
        accuracy: a * smooth.accuracy + (1 - a) * hits / y.length,
      };
      bar.update(++step, smooth, y.length);
    }
  }
  bar.done();
  // Test accuracy, in chunks; the first plotPoints test features are kept for the picture.
  let ok = 0;
  const kept = Math.min(plan.plotPoints, test.n);
  const points = new Float32Array(kept * features);
  for (let s = 0; s < test.n; s += 1000) {
    const idx = Array.from({ length: Math.min(1000, test.n - s) }, (_, i) => s + i);
    const { x, y } = batchOf(test, idx);
    const f = model.predict(x) as tf.Tensor2D;
    ok += correct(tf.tidy(() => scores(f, w, predict, k)), y);
    if (s < kept) points.set(f.dataSync().subarray(0, (kept - s) * features), s * features);
    tf.dispose([x, f]);
  }
  const result: Result = { accuracy: ok / test.n, seconds: (performance.now() - start) / 1000 };
  if (features === 2) {
    Object.assign(result, {
      points,
      labels: test.labels.slice(0, kept),
      weights: w.dataSync().slice() as Float32Array,
    });
  }
  head?.close();
  optimizer.dispose();
  model.dispose();
  w.dispose();
  return result;
}

/** The tfjs backend and the dataset, as the demo and the sweep read them. */
export interface Setup {
  data: { train: Split; test: Split };
  /** Batch size and test features for the picture; epochs are each caller's. */
  batch: number;
  plotPoints: number;
}

/**
 * Selects the tfjs backend (wasm unless `backend` says otherwise) and loads the dataset from
 * `dir`: all of it, or with `quick` a subset for a smoke test.
 */
export async function setUp(dir: string, quick: boolean, backend?: string): Promise<Setup> {
  const name = backend ?? ((await tf.setBackend("wasm").catch(() => false)) ? "wasm" : "cpu");
  if (!(await tf.setBackend(name))) throw new Error(`tfjs backend ${name} is not available`);
  await tf.ready();
  const [trainN, testN] = quick ? [1000, 500] : [60000, 10000];
  const data = {
    train: await loadSplit(dir, "train", trainN),
    test: await loadSplit(dir, "t10k", testN),
  };
  console.log(
    `Fashion-MNIST from ${dir}: ${data.train.n} training and ${data.test.n} test images; ` +
      `tfjs ${tf.version.tfjs} on ${tf.getBackend()}`,
  );
  return { data, batch: quick ? 100 : 256, plotPoints: quick ? 500 : 2000 };
}

/** The tfjs version and backend, for the documents. */
export function tfjsName(): string {
  return `TensorFlow.js ${tf.version.tfjs} on its ${tf.getBackend()} backend`;
}

/** Accuracies in percent: the mean, and the min–max where there are several. */
function spread(accuracies: number[]): { mean: number; min: number; max: number; text: string } {
  const p = accuracies.map((a) => 100 * a);
  const mean = p.reduce((a, b) => a + b, 0) / p.length;
  const min = Math.min(...p), max = Math.max(...p);
  const text = p.length === 1
    ? `${mean.toFixed(2)}%`
    : `${mean.toFixed(2)}% (${min.toFixed(2)}–${max.toFixed(2)}%)`;
  return { mean, min, max, text };
}

/** The options of a run as the document lists them. */
function settings(run: Run): string {
  const o = ("layer" in run ? run.layer : run.loss) as Record<string, unknown>;
  const keep = ["margin", "scale", "h", "tAlpha", "batchMean", "batchStd", "subcenters"];
  const parts = keep.filter((key) => o[key] !== undefined).map((key) => `${key} ${o[key]}`);
  if (o.lambdaMin !== undefined && o.margin !== 1) parts.push(`λ floor ${o.lambdaMin}`);
  return parts.join(", ");
}

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const setup = await setUp(args.data, args.quick, args.backend);
  // 64 features over `seeds` seeds for the table; 2 features with the first seed only and for 3
  // epochs, for the pictures: more would not fit the demo's 10 minutes on 2 cores.
  const seeds = Array.from({ length: args.seeds ?? (args.quick ? 1 : 3) }, (_, i) => i);
  const epochs = args.quick ? { 64: 1, 2: 1 } : { 64: 5, 2: 3 };
  const start = performance.now();
  const runs = RUNS.filter((r) => !args.only || args.only.includes(r.file));
  const table: { run: Run; wide: ReturnType<typeof spread>; flat: number; seconds: number }[] = [];
  for (const run of runs) {
    const plan = (seed: number, features: 64 | 2) => ({
      epochs: epochs[features],
      batch: setup.batch,
      plotPoints: setup.plotPoints,
      seed,
    });
    const wide = seeds.map((seed) => train(run, 64, setup.data, plan(seed, 64)));
    const flat = train(run, 2, setup.data, plan(0, 2));
    const seconds = wide.reduce((t, r) => t + r.seconds, flat.seconds);
    table.push({ run, wide: spread(wide.map((r) => r.accuracy)), flat: flat.accuracy, seconds });
    const row = table.at(-1)!;
    console.log(`${run.name}: ${row.wide.text}, 2-D ${(100 * flat.accuracy).toFixed(2)}%`);
    if (args.out) {
      const svg = featurePlot({
        title: `${run.name}: 2-D test features, ${(100 * flat.accuracy).toFixed(1)}% test accuracy`,
        points: flat.points!,
        labels: flat.labels!,
        weights: flat.weights!,
        classes: CLASSES,
        subcenters: run.subcenters,
      });
      await Deno.mkdir(args.out, { recursive: true });
      await Deno.writeTextFile(`${args.out}/fashion_mnist_${run.file}.svg`, svg);
    }
  }
  const total = (performance.now() - start) / 1000;
  const over = seeds.length === 1 ? "1 seed" : `mean (min–max) over ${seeds.length} seeds`;
  const text = [
    `| loss | settings | test accuracy, 64 features (${epochs[64]} epochs, ${over}) | ` +
    `test accuracy, 2 features (${epochs[2]} epochs, seed 0) | training time |`,
    `| --- | --- | --- | --- | --- |`,
    ...table.map(({ run, wide, flat, seconds }) =>
      `| ${run.name} | ${settings(run)} | ${wide.text} | ${(100 * flat).toFixed(2)}% | ` +
      `${clock(seconds)} |`
    ),
  ].join("\n");
  // Which runs differ from softmax, and from the most accurate run, by more than the seeds do:
  // those whose min–max ranges do not overlap theirs.
  type Row = typeof table[0];
  const apart = (a: Row, b: Row) => a.wide.min > b.wide.max || b.wide.min > a.wide.max;
  const compare = (what: string, ref: Row) => {
    const others = table.filter((r) => r !== ref);
    const inside = others.filter((r) => !apart(r, ref)).map((r) => r.run.name);
    const outside = others.filter((r) => apart(r, ref))
      .map((r) => `${r.run.name} (${r.wide.mean > ref.wide.mean ? "above" : "below"})`);
    return `inside the spread of ${what} (the min–max ranges overlap): ` +
      `${inside.join(", ") || "none"}; outside it: ${outside.join(", ") || "none"}.`;
  };
  const base = table.find((r) => r.run.file === "softmax");
  const top = table.reduce((a, b) => (b.wide.mean > a.wide.mean ? b : a), table[0]);
  const verdict = seeds.length > 1 && table.length > 1
    ? [
      base ? `At 64 features, ${compare("softmax", base)}` : "",
      top !== base ? `At 64 features, ${compare(`${top.run.name}, the most accurate`, top)}` : "",
    ].filter((line) => line).join(" ")
    : "";
  console.log(`\n${text}\n\n${verdict}\ntotal ${clock(total)}`);
  if (args.out) {
    const md = [
      `# Fashion-MNIST with the margin losses`,
      ``,
      `Made by \`make demo\` (examples/fashion_mnist.ts): an MLP 196-128-D (ReLU) on the ` +
      `images averaged to 14×14, in ${tfjsName()}, the class weights [10, D] ([30, D] for ` +
      `sub-center ArcFace's 3 sub-centers per class) and the loss from tfjs.ts, Adam ` +
      `(learning rate 0.001), batches of ${setup.batch}, ${setup.data.train.n} training images, ` +
      `accuracy on the ${setup.data.test.n} test images (argmax of the plain logits w·x for ` +
      `L-Softmax, of the cosines for the normalised kinds, of each class's largest sub-center ` +
      `cosine for sub-center ArcFace). The seeds set the initial weights and the batch order; ` +
      `the 64-feature accuracies are the ${over}, the 2-feature ones (the pictures) are of seed 0 ` +
      `alone. λ schedule of the L-Softmax runs: ${JSON.stringify(SCHEDULE)}; AdaFace starts its ` +
      `moving averages at the authors' 20 and 100. The settings come from ` +
      `[the sweep](fashion_mnist_sweep.md) (\`make demo-sweep\`). ` +
      `Total ${clock(total)} on ${navigator.hardwareConcurrency} cores.`,
      ``,
      text,
      ``,
      verdict,
      ``,
      ...runs.map((r) => `![${r.name}](fashion_mnist_${r.file}.svg)`),
      ``,
    ].join("\n");
    await Deno.writeTextFile(`${args.out}/fashion_mnist.md`, md);
    console.log(`wrote ${args.out}/fashion_mnist.md and ${runs.length} SVGs`);
  }
}

if (import.meta.main) await main();
