/**
 * A short training run in the spirit of the seed's example: a linear embedding followed by the
 * L-Softmax layer (margin 4, base 1000, gamma 0.000025, power 35, lambdaMin 0) with its fused
 * softmax cross-entropy (`layer.loss`: the loss and both gradients in one call), trained by plain
 * SGD on synthetic clustered data.
 *
 * The run resumes the layer at iteration 12000, where λ has annealed to about 0.1, as a long
 * run would be after its warm-up: at iteration 0, λ = 1000 and the layer is nearly the plain
 * linear layer. Run: `make example` (or `deno run --allow-ffi --allow-env --allow-read
 * examples/train.ts`).
 *
 * @module
 */

import { backends, forward, lambdaAt, LargeMarginSoftmax } from "../mod.ts";

const N = 128, DIN = 16, D = 32, C = 10, STEPS = 400, LR = 0.1;
const schedule = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };

// Deterministic data: C clusters in DIN dimensions.
let seed = 42;
function random(): number {
  seed = (seed * 1664525 + 1013904223) >>> 0;
  return seed / 2 ** 32;
}
function gaussian(): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}
const centers = Float64Array.from({ length: C * DIN }, gaussian);
const inputs = new Float64Array(N * DIN);
const labels = new Int32Array(N);
for (let i = 0; i < N; i++) {
  labels[i] = i % C;
  for (let k = 0; k < DIN; k++) {
    inputs[i * DIN + k] = centers[labels[i] * DIN + k] + 0.5 * gaussian();
  }
}

// Parameters: embedding A [DIN, D] and class weights W [C, D].
const A = Float32Array.from({ length: DIN * D }, () => 0.1 * gaussian());
const W = Float32Array.from({ length: C * D }, () => 0.1 * gaussian());

function embed(): Float32Array {
  const x = new Float32Array(N * D);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < D; j++) {
      let s = 0;
      for (let k = 0; k < DIN; k++) s += inputs[i * DIN + k] * A[k * D + j];
      x[i * D + j] = s;
    }
  }
  return x;
}

// Accuracy of the plain classifier (argmax of W x), what inference uses: margin 1 is x W^T.
function accuracy(x: Float32Array): number {
  const { logits } = forward(x, W, labels, { margin: 1, lambda: 0 });
  let correct = 0;
  for (let i = 0; i < N; i++) {
    const row = logits.subarray(i * C, (i + 1) * C);
    if (row.indexOf(Math.max(...row)) === labels[i]) correct++;
  }
  return correct / N;
}

// Mean angle (degrees) between each feature and its class weight: the margin shrinks it.
function meanTargetAngle(x: Float32Array): number {
  let total = 0;
  for (let i = 0; i < N; i++) {
    let dot = 0, xx = 0, ww = 0;
    for (let k = 0; k < D; k++) {
      const a = x[i * D + k], b = W[labels[i] * D + k];
      dot += a * b;
      xx += a * a;
      ww += b * b;
    }
    total += Math.acos(Math.max(-1, Math.min(1, dot / Math.sqrt(xx * ww))));
  }
  return (total / N) * 180 / Math.PI;
}

const info = backends();
console.log(`liblsoftmax ${info.version} (${info.library})`);
console.log(`backend: ${info.cuda.available ? info.cuda.devices[0].name : info.cpu.name}`);
console.log(
  `lambda schedule: step 0 -> ${lambdaAt(0, schedule)}, 8700 -> ` +
    `${lambdaAt(8700, schedule).toFixed(3)}, 12000 -> ${lambdaAt(12000, schedule).toFixed(3)}`,
);

using layer = new LargeMarginSoftmax({ margin: 4, ...schedule, iteration: 12000 });
for (let step = 1; step <= STEPS; step++) {
  const x = embed();
  const { loss, lambda, gradX, gradW } = layer.loss(x, W, labels);
  // dL/dA = inputs^T gradX
  for (let k = 0; k < DIN; k++) {
    for (let j = 0; j < D; j++) {
      let s = 0;
      for (let i = 0; i < N; i++) s += inputs[i * DIN + k] * gradX[i * D + j];
      A[k * D + j] -= LR * s;
    }
  }
  for (let e = 0; e < W.length; e++) W[e] -= LR * gradW[e];
  if (step === 1 || step % 50 === 0) {
    console.log(
      `iteration ${layer.iteration}  lambda ${lambda.toFixed(4)}  loss ${loss.toFixed(4)}  ` +
        `accuracy ${(accuracy(x) * 100).toFixed(1)}%  mean target angle ` +
        `${meanTargetAngle(x).toFixed(1)} deg`,
    );
  }
}
console.log(`resume with: new LargeMarginSoftmax(${JSON.stringify(layer)})`);
