// The TensorFlow.js adapter (tfjs.ts) on the tfjs cpu and wasm backends: its values and gradients
// against the same loss composed from tfjs ops (L-Softmax logits from tf ops, then
// tf.losses.softmaxCrossEntropy, differentiated by tfjs), a gradient check through a small tfjs
// model, training under optimizer.minimize, the stateful (λ schedule) variant, and its errors.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { lambdaAt, MarginHead } from "../mod.ts";
import { headLoss, MarginLoss, marginLoss } from "../tfjs.ts";
import { Rng } from "./helpers.ts";

const BACKENDS = ["cpu", "wasm"] as const;
// tfjs loads its wasm module on first use: it leaves no op or resource of ours behind.
const opts = { sanitizeOps: false, sanitizeResources: false };

function randomTensor(rng: Rng, shape: number[], scale = 1): tf.Tensor2D {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor2d(Float32Array.from({ length: n }, () => scale * rng.normal()), [
    shape[0],
    shape[1],
  ]);
}

function randomLabels(rng: Rng, n: number, c: number): Int32Array {
  return Int32Array.from({ length: n }, () => rng.int(c));
}

// L-Softmax from tf ops alone: psi(θ) = (-1)^k cos(mθ) - 2k for θ in [kπ/m, (k+1)π/m], the
// target logit (λ w·x + |w||x| psi) / (1 + λ), then softmax cross-entropy (mean over rows).
function composedLoss(
  x: tf.Tensor2D,
  w: tf.Tensor2D,
  labels: Int32Array,
  m: number,
  lambda: number,
  reduction: "mean" | "sum" = "mean",
): tf.Scalar {
  const c = w.shape[0];
  const y = tf.tensor1d(labels, "int32");
  const oneHot = tf.oneHot(y, c).toFloat();
  const logits = tf.matMul(x, w, false, true);
  // w_y as oneHot·w: gather's gradient has no kernel on the wasm backend.
  const wy = tf.matMul(oneHot, w);
  const dot = tf.sum(tf.mul(x, wy), 1);
  const norms = tf.mul(tf.norm(x, "euclidean", 1), tf.norm(wy, "euclidean", 1));
  const theta = tf.acos(tf.div(dot, norms));
  // k is piecewise constant: no gradient flows through it.
  const k = tf.floor(tf.div(tf.mul(theta, m), Math.PI)).clipByValue(0, m - 1);
  const sign = tf.sub(1, tf.mul(2, tf.mod(k, 2)));
  const psi = tf.sub(tf.mul(sign, tf.cos(tf.mul(theta, m))), tf.mul(2, k));
  const target = tf.div(tf.add(tf.mul(dot, lambda), tf.mul(norms, psi)), 1 + lambda);
  const f = tf.add(logits, tf.mul(oneHot, tf.expandDims(tf.sub(target, dot), 1)));
  const r = tf.losses.softmaxCrossEntropy(oneHot, f, undefined, 0, tf.Reduction.NONE);
  return (reduction === "mean" ? tf.mean(r) : tf.sum(r)) as tf.Scalar;
}

function maxRelative(a: tf.Tensor, b: tf.Tensor): number {
  const av = a.dataSync(), bv = b.dataSync();
  assert.equal(av.length, bv.length);
  let scale = 0, err = 0;
  for (let i = 0; i < av.length; i++) {
    scale = Math.max(scale, Math.abs(bv[i]));
    err = Math.max(err, Math.abs(av[i] - bv[i]));
  }
  return err / Math.max(scale, 1e-6);
}

async function onBackend(name: string, body: () => void | Promise<void>): Promise<void> {
  assert.ok(await tf.setBackend(name), `tfjs backend ${name} is available`);
  await tf.ready();
  await body();
}

for (const backend of BACKENDS) {
  Deno.test(
    `tfjs ${backend}: headLoss is a step of the head: marginLoss's value and dL/dx, W updated by SGD`,
    opts,
    () =>
      onBackend(backend, () => {
        const rng = new Rng(15);
        const [n, d, c] = [6, 3, 5];
        const x = randomTensor(rng, [n, d]), w = randomTensor(rng, [c, d]);
        const labels = randomLabels(rng, n, c);
        const margin = { kind: "arcface", scale: 8, margin: 0.3 } as const;
        using head = new MarginHead({
          classes: c,
          features: d,
          ...margin,
          backend: "cpu",
          weights: w.dataSync() as Float32Array,
          optimizer: { lr: 0.5 },
        });
        const want = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
          marginLoss(a, b, labels, { ...margin, backend: "cpu" })
        )([x, w]);
        const got = tf.valueAndGrad((a: tf.Tensor) => headLoss(head, a, labels))(x);
        assert.ok(maxRelative(got.value, want.value) < 1e-6, "loss");
        assert.ok(maxRelative(got.grad, want.grads[0]) < 1e-6, "dL/dx");
        const stepped = tf.sub(w, tf.mul(want.grads[1], 0.5));
        const after = tf.tensor2d(head.weights() as Float32Array, [c, d]);
        assert.ok(maxRelative(after, stepped) < 1e-6, "W");
        assert.equal(head.iteration, 1);
        assert.throws(() => headLoss(head, tf.zeros([2, 4]), new Int32Array(2)), /features/);
      }),
  );

  Deno.test(
    `tfjs ${backend}: values and gradients equal the loss composed from tf ops`,
    opts,
    () =>
      onBackend(backend, () => {
        const rng = new Rng(14);
        for (const [n, d, c] of [[1, 2, 2], [5, 3, 4], [16, 8, 10]]) {
          for (const m of [1, 2, 3, 4]) {
            for (const [lambda, reduction] of [[0, "mean"], [0.5, "sum"], [3, "mean"]] as const) {
              tf.tidy(() => {
                const x = randomTensor(rng, [n, d]), w = randomTensor(rng, [c, d]);
                const labels = randomLabels(rng, n, c);
                const ours = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
                  marginLoss(a, b, labels, { margin: m, lambda, reduction, backend: "cpu" })
                )([x, w]);
                const theirs = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
                  composedLoss(a as tf.Tensor2D, b as tf.Tensor2D, labels, m, lambda, reduction)
                )([x, w]);
                const where = `n=${n} d=${d} c=${c} m=${m} λ=${lambda} ${reduction}`;
                assert.ok(maxRelative(ours.value, theirs.value) < 1e-5, `loss, ${where}`);
                assert.ok(maxRelative(ours.grads[0], theirs.grads[0]) < 1e-3, `dL/dx, ${where}`);
                assert.ok(maxRelative(ours.grads[1], theirs.grads[1]) < 1e-3, `dL/dw, ${where}`);
              });
            }
          }
        }
      }),
  );

  Deno.test(
    `tfjs ${backend}: a gradient check through a small tfjs model`,
    opts,
    () =>
      onBackend(backend, () => {
        // inputs [N, 5] -> dense(6, tanh) -> dense(3) -> features; weights [4, 3]; m = 3.
        const rng = new Rng(7);
        const inputs = randomTensor(rng, [12, 5]);
        const labels = randomLabels(rng, 12, 4);
        const a = tf.variable(randomTensor(rng, [5, 6], 0.5));
        const b = tf.variable(randomTensor(rng, [6, 3], 0.5));
        const w = tf.variable(randomTensor(rng, [4, 3]));
        const options = { margin: 3, lambda: 0.2 };
        const f = () =>
          tf.tidy(() =>
            marginLoss(tf.matMul(tf.tanh(tf.matMul(inputs, a)), b), w, labels, options)
          );
        const { grads } = tf.variableGrads(f);
        // Directional derivatives: L(θ + εv) - L(θ - εv) over 2ε against <dL/dθ, v>, for random
        // directions v over all parameters at once (float32: a wide ε, a tolerance to match).
        const vars = [a, b, w];
        for (let trial = 0; trial < 4; trial++) {
          const dirs = vars.map((v) => randomTensor(rng, v.shape));
          const eps = 1e-2;
          const saved = vars.map((v) => v.clone());
          const shifted = (s: number) => {
            vars.forEach((v, i) => v.assign(tf.add(saved[i], tf.mul(dirs[i], s * eps))));
            const value = f().dataSync()[0];
            vars.forEach((v, i) => v.assign(saved[i]));
            return value;
          };
          const numeric = (shifted(1) - shifted(-1)) / (2 * eps);
          const analytic = vars.reduce(
            (sum, v, i) => sum + tf.sum(tf.mul(grads[v.name], dirs[i])).dataSync()[0],
            0,
          );
          assert.ok(
            Math.abs(numeric - analytic) <= 2e-2 * Math.max(1, Math.abs(analytic)),
            `trial ${trial}: numeric ${numeric}, analytic ${analytic}`,
          );
          saved.forEach((t) => t.dispose());
          dirs.forEach((t) => t.dispose());
        }
        tf.dispose([inputs, a, b, w, ...Object.values(grads)]);
      }),
  );

  Deno.test(
    `tfjs ${backend}: optimizer.minimize trains a model and the weights`,
    opts,
    () =>
      onBackend(backend, () => {
        const rng = new Rng(3);
        const n = 64, c = 4;
        const labels = randomLabels(rng, n, c);
        // Inputs: one cluster per class in 6 dimensions.
        const centers = Array.from(
          { length: c },
          () => Array.from({ length: 6 }, () => rng.normal()),
        );
        const inputs = tf.tensor2d(
          Array.from(labels, (y) => centers[y].map((v) => v + 0.3 * rng.normal())),
        );
        const model = tf.sequential({
          layers: [tf.layers.dense({ inputShape: [6], units: 2, useBias: false })],
        });
        const w = tf.variable(randomTensor(rng, [c, 2]));
        const before = w.dataSync().slice();
        const optimizer = tf.train.adam(0.05);
        const step = () => {
          const cost = optimizer.minimize(
            () =>
              marginLoss(model.apply(inputs) as tf.Tensor2D, w, labels, { margin: 2, lambda: 1 }),
            true,
          )!;
          const value = cost.dataSync()[0];
          cost.dispose();
          return value;
        };
        const first = step();
        const tensors = tf.memory().numTensors;
        let last = first;
        for (let i = 0; i < 60; i++) last = step();
        assert.ok(last < 0.5 * first, `loss ${first} -> ${last}`);
        assert.equal(tf.memory().numTensors, tensors, "a training step leaves no tensor behind");
        assert.notDeepEqual(w.dataSync(), before);
        tf.dispose([inputs, w]);
        model.dispose();
        optimizer.dispose();
      }),
  );

  Deno.test(
    `tfjs ${backend}: MarginLoss follows the layer's λ schedule`,
    opts,
    () =>
      onBackend(backend, () => {
        const schedule = { base: 100, gamma: 0.5, power: 2, lambdaMin: 0.01 };
        using head = new MarginLoss({ margin: 4, ...schedule, backend: "cpu" });
        const rng = new Rng(5);
        const x = randomTensor(rng, [6, 3]), w = randomTensor(rng, [5, 3]);
        const labels = tf.tensor1d(randomLabels(rng, 6, 5), "int32");
        for (let step = 1; step <= 3; step++) {
          const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
            head.loss(a, b, labels)
          )([x, w]);
          assert.equal(head.iteration, step);
          assert.equal(head.lambda, lambdaAt(step, schedule));
          const theirs = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
            composedLoss(
              a as tf.Tensor2D,
              b as tf.Tensor2D,
              labels.dataSync() as Int32Array,
              4,
              head.lambda,
            )
          )([x, w]);
          assert.ok(maxRelative(value, theirs.value) < 1e-5);
          assert.ok(maxRelative(grads[0], theirs.grads[0]) < 1e-3);
          assert.ok(maxRelative(grads[1], theirs.grads[1]) < 1e-3);
          tf.dispose([value, ...grads, theirs.value, ...theirs.grads]);
        }
        head.loss(x, w, labels, { step: 100 }).dispose();
        assert.equal(head.iteration, 100);
        assert.deepEqual(new MarginLoss(head.toJSON()).toJSON(), head.toJSON());
        tf.dispose([x, w, labels]);
      }),
  );
}

Deno.test(
  "tfjs: wrong tensors are errors that name the argument",
  opts,
  () =>
    onBackend("cpu", () => {
      const x = tf.zeros([2, 3]), w = tf.zeros([4, 3]);
      const y = new Int32Array([0, 1]);
      const o = { margin: 2, lambda: 0 };
      assert.throws(
        () => marginLoss(tf.zeros([6]), w, y, o),
        /features: expected a float32 tensor of rank 2, got a float32 tensor of shape \[6\]/,
      );
      assert.throws(
        () => marginLoss(x, tf.zeros([4, 2]), y, o),
        /weights: expected a shape \[C, 3\].*got \[4, 2\]/,
      );
      assert.throws(
        () => marginLoss(x, w, tf.tensor1d([0, 1]), o),
        /labels: expected an Int32Array or an int32 tensor of rank 1, got a float32 tensor/,
      );
      assert.throws(() => marginLoss(x, w, new Int32Array(3), o), /labels: expected 2 labels/);
      assert.throws(
        () => marginLoss(x, w, [0, 1] as unknown as Int32Array, o),
        /labels: expected an Int32Array/,
      );
      assert.throws(() => marginLoss(x, w, y, { margin: 0, lambda: 0 }), /margin/);
      assert.throws(() => marginLoss(x, w, new Int32Array([0, 4]), o), /label/);
      // The options reach the library unchanged: an unknown key is its named error.
      assert.throws(
        () => marginLoss(x, w, y, { ...o, reducton: "sum" } as typeof o),
        /reducton.*reduction/,
      );
      tf.dispose([x, w]);
    }),
);
