/**
 * A short training run in the spirit of the seed's example: a linear embedding followed by an
 * L-Softmax classifier head (margin 4, base 1000, gamma 0.000025, power 35, lambdaMin 0) trained
 * by SGD on synthetic clustered data. The head is a `MarginHead`: its class weights and their
 * optimizer state stay in the backend's memory (the GPU's, on CUDA), and each step sends the
 * features in and their gradient back, which trains the embedding here in TypeScript.
 *
 * The run resumes the head at iteration 12000, where λ has annealed to about 0.1, as a long
 * run would be after its warm-up: at iteration 0, λ = 1000 and the head is nearly the plain
 * linear layer. Run: `make example` (or `deno run --allow-ffi --allow-env --allow-read
 * examples/train.ts`).
 *
 * @module
 */

import { backends, lambdaAt, MarginHead } from "../mod.ts";

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

// Parameters: embedding A [DIN, D] here; the head draws its class weights W [C, D] from a seed.
const A = Float32Array.from({ length: DIN * D }, () => 0.1 * gaussian());

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

// Mean angle (degrees) between each feature and its class weight: the margin shrinks it.
function meanTargetAngle(x: Float32Array, W: Float32Array): number {
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

using head = new MarginHead({
  classes: C,
  features: D,
  margin: 4,
  ...schedule,
  iteration: 12000,
  seed: 1,
  optimizer: { lr: LR },
});
for (let step = 1; step <= STEPS; step++) {
  const x = embed();
  // The loss, dL/dW applied to W where it lives, and dL/dx back.
  const { loss, lambda, gradX } = head.step(x, labels);
  // dL/dA = inputs^T gradX
  for (let k = 0; k < DIN; k++) {
    for (let j = 0; j < D; j++) {
      let s = 0;
      for (let i = 0; i < N; i++) s += inputs[i * DIN + k] * gradX[i * D + j];
      A[k * D + j] -= LR * s;
    }
  }
  if (step === 1 || step % 50 === 0) {
    // Accuracy of the plain classifier (the best class by x W^T), what inference uses.
    const { accuracy } = head.evaluate(x, labels);
    const angle = meanTargetAngle(x, head.weights() as Float32Array);
    console.log(
      `iteration ${head.iteration}  lambda ${lambda.toFixed(4)}  loss ${loss.toFixed(4)}  ` +
        `accuracy ${(accuracy * 100).toFixed(1)}%  mean target angle ${angle.toFixed(1)} deg`,
    );
  }
}
const { indices } = head.predict(embed().subarray(0, 2 * D), { k: 3 });
console.log(`top 3 classes of the first two samples: ${Array.from(indices)}`);
console.log(
  `resume with: MarginHead.fromState(state), state = head.state() (iteration ${head.iteration})`,
);
