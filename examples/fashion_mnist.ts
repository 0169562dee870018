/**
 * Fashion-MNIST in TensorFlow.js with the margin losses of this module (tfjs.ts): a small MLP
 * whose last layer gives the features, trained with plain softmax (m = 1) and L-Softmax
 * m = 2, 3, 4, once with 64 features (the accuracy table) and once with 2 (the pictures: the
 * test features and each class weight's direction, like Figure 2 of the L-Softmax paper).
 *
 *   make demo                  sets up the dataset, then writes docs/fashion_mnist.md and SVGs
 *   deno run --allow-ffi --allow-env --allow-read --allow-write=docs \
 *     examples/fashion_mnist.ts [--quick] [--data DIR] [--out DIR] [--backend wasm|cpu]
 *     [--only softmax,lsoftmax_m2,...]
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

// λ anneals from 1000 to its floor of 1 by step 900 (of 1170 at 64 features, 1872 at 2), as the
// Caffe layer's schedule does over a longer run: early on the target logit is mostly the plain
// one, so training starts; then the margin takes over. A floor of 0 collapses several classes
// onto one direction at m = 4 in runs this short.
const SCHEDULE = { base: 1000, gamma: 0.01, power: 3, lambdaMin: 1 };

/**
 * One run of the demo: a name, the file stem of its picture, and either the options of the
 * stateful loss (`layer`, with the λ schedule) or those of the stateless one (`loss`).
 * `predict` says how a trained model classifies: by the plain logits w·x (L-Softmax) or by
 * the cosines (the normalised kinds).
 */
type Run =
  & { name: string; file: string; predict?: "dot" | "cosine" }
  & ({ layer: LayerOptions } | { loss: MarginLossOptions });

const RUNS: Run[] = [
  { name: "softmax (m = 1)", file: "softmax", layer: { margin: 1, ...SCHEDULE } },
  { name: "L-Softmax m = 2", file: "lsoftmax_m2", layer: { margin: 2, ...SCHEDULE } },
  { name: "L-Softmax m = 3", file: "lsoftmax_m3", layer: { margin: 3, ...SCHEDULE } },
  { name: "L-Softmax m = 4", file: "lsoftmax_m4", layer: { margin: 4, ...SCHEDULE } },
  {
    name: "ArcFace",
    file: "arcface",
    loss: { kind: "arcface", scale: 16, margin: 0.5 },
    predict: "cosine",
  },
];

interface Args {
  quick: boolean;
  data: string;
  out?: string;
  backend?: string;
  only?: string[];
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    quick: false,
    data: Deno.env.get("FASHION_MNIST_DIR") ?? "/usr/share/datasets/fashion-mnist",
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a}: expected a value after it`);
      return argv[++i];
    };
    if (a === "--quick") args.quick = true;
    else if (a === "--data") args.data = value();
    else if (a === "--out") args.out = value();
    else if (a === "--backend") args.backend = value();
    else if (a === "--only") args.only = value().split(",");
    else {
      throw new Error(`unknown argument ${a} (expected --quick, --data, --out, --backend, --only)`);
    }
  }
  if (!args.quick) args.out ??= "docs";
  return args;
}

interface Split {
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

// Class scores for inference: the plain logits w·x, or the cosines for the normalised kinds.
function scores(f: tf.Tensor2D, w: tf.Tensor2D, predict: "dot" | "cosine"): tf.Tensor2D {
  if (predict === "dot") return tf.matMul(f, w, false, true);
  const unit = (t: tf.Tensor2D) => tf.div(t, tf.add(tf.norm(t, "euclidean", 1, true), 1e-12));
  return tf.matMul(unit(f), unit(w), false, true);
}

function correct(s: tf.Tensor2D, y: Int32Array): number {
  const predicted = tf.tidy(() => tf.argMax(s, 1)).dataSync();
  let ok = 0;
  for (let i = 0; i < y.length; i++) if (predicted[i] === y[i]) ok++;
  return ok;
}

interface Result {
  accuracy: number;
  seconds: number;
  points?: Float32Array;
  labels?: Int32Array;
  weights?: Float32Array;
}

function train(
  run: Run,
  features: number,
  data: { train: Split; test: Split },
  plan: { epochs: number; batch: number; plotPoints: number },
): Result {
  const start = performance.now();
  const model = makeModel(features, 14);
  const next = rng(1400 + features);
  const w = tf.variable(
    tf.tensor2d(
      Float32Array.from({ length: 10 * features }, () => (next() - 0.5) * 0.2),
      [10, features],
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
  const bar = new Progress(`${run.name}, D = ${features}`.padEnd(24), steps, "images");
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
        hits = correct(tf.tidy(() => scores(f, w, predict)), y);
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
    ok += correct(tf.tidy(() => scores(f, w, predict)), y);
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

async function main(): Promise<void> {
  const args = parseArgs(Deno.args);
  const backend = args.backend ??
    ((await tf.setBackend("wasm").catch(() => false)) ? "wasm" : "cpu");
  if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend ${backend} is not available`);
  await tf.ready();
  const plan = args.quick
    ? { trainN: 1000, testN: 500, epochs: { 64: 1, 2: 1 }, batch: 100, plotPoints: 500 }
    : { trainN: 60000, testN: 10000, epochs: { 64: 5, 2: 8 }, batch: 256, plotPoints: 2000 };
  const data = {
    train: await loadSplit(args.data, "train", plan.trainN),
    test: await loadSplit(args.data, "t10k", plan.testN),
  };
  console.log(
    `Fashion-MNIST from ${args.data}: ${data.train.n} training and ${data.test.n} test images; ` +
      `tfjs ${tf.version.tfjs} on ${tf.getBackend()}`,
  );
  const start = performance.now();
  const rows: string[] = [];
  const runs = RUNS.filter((r) => !args.only || args.only.includes(r.file));
  for (const run of runs) {
    const wide = train(run, 64, data, { ...plan, epochs: plan.epochs[64] });
    const flat = train(run, 2, data, { ...plan, epochs: plan.epochs[2] });
    rows.push(
      `| ${run.name} | ${(100 * wide.accuracy).toFixed(2)}% | ${
        (100 * flat.accuracy).toFixed(2)
      }% ` +
        `| ${clock(wide.seconds + flat.seconds)} |`,
    );
    console.log(rows.at(-1));
    if (args.out) {
      const svg = featurePlot({
        title: `${run.name}: 2-D test features, ${(100 * flat.accuracy).toFixed(1)}% test accuracy`,
        points: flat.points!,
        labels: flat.labels!,
        weights: flat.weights!,
        classes: CLASSES,
      });
      await Deno.mkdir(args.out, { recursive: true });
      await Deno.writeTextFile(`${args.out}/fashion_mnist_${run.file}.svg`, svg);
    }
  }
  const total = (performance.now() - start) / 1000;
  const table = [
    `| loss | test accuracy, 64 features (${plan.epochs[64]} epochs) | ` +
    `test accuracy, 2 features (${plan.epochs[2]} epochs) | training time |`,
    `| --- | --- | --- | --- |`,
    ...rows,
  ].join("\n");
  console.log(`\n${table}\n\ntotal ${clock(total)}`);
  if (args.out) {
    const md = [
      `# Fashion-MNIST with the margin losses`,
      ``,
      `Made by \`make demo\` (examples/fashion_mnist.ts): an MLP 196-128-D (ReLU) on the ` +
      `images averaged to 14×14, in TensorFlow.js ${tf.version.tfjs} on its ` +
      `${tf.getBackend()} backend, the class weights [10, D] and the loss from tfjs.ts, Adam ` +
      `(learning rate 0.001), batches of ${plan.batch}, ${data.train.n} training images, ` +
      `accuracy on the ${data.test.n} test images (argmax of the plain logits w·x, or of the ` +
      `cosines for the normalised kinds). ` +
      `λ schedule of the L-Softmax runs: ${JSON.stringify(SCHEDULE)}. ` +
      `Total ${clock(total)} on ${navigator.hardwareConcurrency} cores.`,
      ``,
      table,
      ``,
      ...runs.map((r) => `![${r.name}](fashion_mnist_${r.file}.svg)`),
      ``,
    ].join("\n");
    await Deno.writeTextFile(`${args.out}/fashion_mnist.md`, md);
    console.log(`wrote ${args.out}/fashion_mnist.md and ${runs.length} SVGs`);
  }
}

if (import.meta.main) await main();
