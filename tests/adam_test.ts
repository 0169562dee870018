// adam_test.ts: MarginHead with Adam and AdamW (and amsgrad, weight decay, clipping) against an
// independent TypeScript Adam written from torch.optim.Adam's and AdamW's documentation, float32
// and float64, CPU and (where usable) CUDA; class shards against one shard; a skipped step
// leaving W, the moments and the optimizer's step count bit-identical; the state through JSON and
// a safetensors file continuing bit for bit; option errors by name.

import assert from "node:assert/strict";
import { loss, MarginHead } from "../mod.ts";
import type { HeadOptions } from "../src/head/options.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { assertClose, randomArray, randomLabels, Rng, toF32 } from "./helpers.ts";

interface AdamRef {
  type: "adam" | "adamw";
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  amsgrad: boolean;
  clipNorm?: number;
}

/**
 * torch.optim.Adam / AdamW over a flat parameter, from their documentation: g (clipped first by
 * clip_grad_norm_: c = maxNorm / (|g| + 1e-6) when below 1); Adam: g += wd p; AdamW: p *= 1 -
 * lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; amsgrad: vmax = max(vmax, v);
 * p -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps). `round` stores a value in the dtype.
 */
class TorchAdam {
  m: Float64Array;
  v: Float64Array;
  vmax: Float64Array;
  t = 0;
  constructor(readonly o: AdamRef, size: number, readonly round: (v: number) => number) {
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
    this.vmax = new Float64Array(size);
  }
  step(p: Float64Array, grad: ArrayLike<number>, lr = this.o.lr): void {
    const { betas: [b1, b2], eps, weightDecay: wd, amsgrad, type, clipNorm } = this.o;
    let c = 1;
    if (clipNorm !== undefined) {
      let sq = 0;
      for (let j = 0; j < grad.length; j++) sq += grad[j] * grad[j];
      c = Math.min(1, clipNorm / (Math.sqrt(sq) + 1e-6));
    }
    this.t++;
    const bc1 = 1 - b1 ** this.t, bc2 = 1 - b2 ** this.t;
    for (let j = 0; j < p.length; j++) {
      let g = grad[j] * c, th = p[j];
      if (type === "adamw") th *= 1 - lr * wd;
      else if (wd !== 0) g += wd * th;
      const m = b1 * this.m[j] + (1 - b1) * g, v = b2 * this.v[j] + (1 - b2) * (g * g);
      this.m[j] = this.round(m);
      this.v[j] = this.round(v);
      let second = v;
      if (amsgrad) {
        second = Math.max(this.vmax[j], v);
        this.vmax[j] = this.round(second);
      }
      p[j] = this.round(th - (lr / bc1) * (m / (Math.sqrt(second) / Math.sqrt(bc2) + eps)));
    }
  }
}

const CONFIGS: AdamRef[] = [
  { type: "adam", lr: 0.05, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, amsgrad: false },
  { type: "adam", lr: 0.02, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.1, amsgrad: false },
  { type: "adamw", lr: 0.05, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01, amsgrad: false },
  { type: "adamw", lr: 0.03, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.2, amsgrad: true },
  { type: "adam", lr: 0.04, betas: [0.5, 0.9], eps: 1e-8, weightDecay: 0.05, amsgrad: true },
  {
    type: "adamw",
    lr: 0.05,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: 0.01,
    amsgrad: false,
    clipNorm: 0.05,
  },
];

const bytes = (a: ArrayBufferView | null | undefined) =>
  a == null ? null : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

for (const backend of ["cpu", "cuda"] as TestBackend[]) {
  const test = (name: string, fn: () => void | Promise<void>) =>
    Deno.test({
      name: `${backend}: adam: ${name}`,
      ignore: backend === "cuda" && !cudaAvailable,
      fn,
    });
  const opts = { margin: 3, lambda: 0.5 };

  test("steps equal loss() and torch's Adam/AdamW in TypeScript, float32 and float64", () => {
    const rng = new Rng(2101);
    const n = 6, d = 5, c = 9;
    for (const dtype of ["float64", "float32"] as const) {
      const conv = dtype === "float64" ? (a: Float64Array) => Float64Array.from(a) : toF32;
      for (const cfg of CONFIGS) {
        const w = conv(randomArray(rng, c * d)) as Float64Array;
        using head = new MarginHead({
          classes: c,
          features: d,
          dtype,
          backend,
          optimizer: cfg,
          weights: w,
          ...opts,
        });
        const p = Float64Array.from(w);
        const ref = new TorchAdam(cfg, c * d, dtype === "float64" ? (v) => v : Math.fround);
        for (let t = 0; t < 4; t++) {
          const x = conv(randomArray(rng, n * d)) as Float64Array;
          const labels = randomLabels(rng, n, c);
          const r0 = loss(x, conv(p) as Float64Array, labels, { ...opts, backend });
          const lr = t === 2 ? 0.01 : undefined;
          const r = head.step(x, labels, lr === undefined ? {} : { lr });
          ref.step(p, r0.gradW, lr);
          const what = `${dtype} ${JSON.stringify(cfg)} step ${t}`;
          assert.ok(Math.abs(r.loss - r0.loss) <= 1e-12 * Math.max(1, r0.loss), what);
          const tol = dtype === "float64" ? 1e-12 : 2e-6;
          assertClose(head.weights(), p, tol, `weights ${what}`);
          const s = head.state();
          assert.equal(s.optimizerStep, t + 1);
          assertClose(s.expAvg!, ref.m, tol, `exp_avg ${what}`, 1e-30);
          assertClose(s.expAvgSq!, ref.v, tol, `exp_avg_sq ${what}`, 1e-30);
          if (cfg.amsgrad) assertClose(s.maxExpAvgSq!, ref.vmax, tol, `vmax ${what}`, 1e-30);
          else assert.equal(s.maxExpAvgSq, null);
        }
      }
    }
  });

  test("defaults are torch's: betas [0.9, 0.999], eps 1e-8, lr 1e-3, weightDecay 0 / 0.01", () => {
    using adam = new MarginHead({
      classes: 3,
      features: 2,
      margin: 2,
      lambda: 0,
      backend,
      optimizer: { type: "adam" },
    });
    assert.deepEqual(adam.optimizer, {
      type: "adam",
      lr: 1e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0,
      amsgrad: false,
    });
    using adamw = new MarginHead({
      classes: 3,
      features: 2,
      margin: 2,
      lambda: 0,
      backend,
      optimizer: { type: "adamw" },
    });
    assert.equal(adamw.optimizer.weightDecay, 0.01);
    using sgd = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 0, backend });
    assert.equal(sgd.optimizer.type, "sgd");
  });

  test("class shards equal one shard and the reference (clipping over all shards)", () => {
    const rng = new Rng(2102);
    const n = 5, d = 4, c = 11;
    for (const cfg of [CONFIGS[3], CONFIGS[5]]) {
      const w = randomArray(rng, c * d);
      const make = (b: HeadOptions["backend"]) =>
        new MarginHead({
          classes: c,
          features: d,
          dtype: "float64",
          backend: b,
          optimizer: cfg,
          weights: w,
          ...opts,
        });
      using one = make(backend);
      using three = make([backend, backend, backend]);
      const p = Float64Array.from(w), ref = new TorchAdam(cfg, c * d, (v) => v);
      for (let t = 0; t < 3; t++) {
        const x = randomArray(rng, n * d), labels = randomLabels(rng, n, c);
        ref.step(p, loss(x, Float64Array.from(p), labels, { ...opts, backend }).gradW);
        one.step(x, labels);
        three.step(x, labels);
      }
      const sa = one.state(), sb = three.state(), what = JSON.stringify(cfg);
      assertClose(sb.weights, p, 1e-12, `sharded weights against the reference ${what}`);
      for (const k of ["weights", "expAvg", "expAvgSq"] as const) {
        assertClose(sb[k]!, sa[k]!, 1e-12, `${k}: three shards against one ${what}`, 1e-30);
      }
      if (cfg.amsgrad) assertClose(sb.maxExpAvgSq!, sa.maxExpAvgSq!, 1e-12, "vmax", 1e-30);
    }
  });

  test("a skipped step leaves W, the moments and the step count unchanged; iteration advances", () => {
    const rng = new Rng(2103);
    const n = 4, d = 3, c = 5, w = toF32(randomArray(rng, c * d));
    const make = () =>
      new MarginHead({
        classes: c,
        features: d,
        backend,
        optimizer: { type: "adamw", lr: 0.05, amsgrad: true },
        weights: w,
        ...opts,
      });
    using a = make();
    using b = make();
    const batches = Array.from({ length: 2 }, () => ({
      x: toF32(randomArray(rng, n * d)),
      labels: randomLabels(rng, n, c),
    }));
    a.step(batches[0].x, batches[0].labels);
    b.step(batches[0].x, batches[0].labels);
    const before = a.state();
    const bad = toF32(randomArray(rng, n * d)).fill(NaN, d, 2 * d);
    const r = a.step(bad, randomLabels(rng, n, c));
    assert.equal(r.skipped, true);
    const after = a.state();
    assert.equal(after.iteration, 2);
    assert.equal(after.skippedSteps, 1);
    assert.equal(after.optimizerStep, 1, "the optimizer's step count is not advanced");
    for (const k of ["weights", "expAvg", "expAvgSq", "maxExpAvgSq"] as const) {
      assert.deepEqual(bytes(after[k]), bytes(before[k]), k);
    }
    // The next update uses t = 2 as on a head that never saw the bad batch.
    a.step(batches[1].x, batches[1].labels);
    b.step(batches[1].x, batches[1].labels);
    assert.deepEqual(bytes(a.weights()), bytes(b.weights()));
  });

  test("the state through JSON and a safetensors file continues bit for bit", async () => {
    const rng = new Rng(2104);
    const n = 4, d = 3, c = 6;
    for (const dtype of ["float32", "float64"] as const) {
      const conv = dtype === "float64" ? (a: Float64Array) => Float64Array.from(a) : toF32;
      using head = new MarginHead({
        classes: c,
        features: d,
        dtype,
        backend,
        optimizer: { type: "adam", lr: 0.02, weightDecay: 0.01, amsgrad: true },
        weights: conv(randomArray(rng, c * d)),
        ...opts,
      });
      const batch = () => ({
        x: conv(randomArray(rng, n * d)) as Float64Array,
        labels: randomLabels(rng, n, c),
      });
      for (let t = 0; t < 2; t++) {
        const { x, labels } = batch();
        head.step(x, labels);
      }
      using fromJson = MarginHead.fromState(JSON.parse(JSON.stringify(head.state())));
      const path = await Deno.makeTempFile({ suffix: ".safetensors" });
      try {
        await head.save(path);
        using fromFile = await MarginHead.load(path);
        assert.equal(fromFile.state().optimizerStep, 2);
        for (let t = 0; t < 2; t++) {
          const { x, labels } = batch();
          head.step(x, labels);
          fromJson.step(x, labels);
          fromFile.step(x, labels);
        }
        const want = head.state();
        for (const got of [fromJson.state(), fromFile.state()]) {
          assert.equal(got.optimizerStep, 4);
          for (const k of ["weights", "expAvg", "expAvgSq", "maxExpAvgSq"] as const) {
            assert.deepEqual(bytes(got[k]), bytes(want[k]), `${dtype} ${k}`);
          }
        }
      } finally {
        await Deno.remove(path);
      }
    }
  });

  test("a state's Adam fields are checked by name", () => {
    using head = new MarginHead({
      classes: 3,
      features: 2,
      margin: 2,
      lambda: 0,
      backend,
      optimizer: { type: "adamw", amsgrad: true },
    });
    const s = head.state();
    assert.throws(() => MarginHead.fromState({ ...s, expAvg: undefined }), /state\.expAvg/);
    assert.throws(
      () => MarginHead.fromState({ ...s, maxExpAvgSq: null }),
      /state\.maxExpAvgSq/,
    );
    assert.throws(
      () => MarginHead.fromState({ ...s, optimizerStep: 5 }),
      /state\.optimizerStep: expected an integer in \[0, 0\]/,
    );
    using sgd = new MarginHead({ classes: 3, features: 2, margin: 2, lambda: 0, backend });
    assert.throws(
      () => MarginHead.fromState({ ...sgd.state(), expAvg: s.expAvg }),
      /state\.expAvg: expected none for SGD/,
    );
  });
}

Deno.test("adam: option errors name the option", () => {
  const make = (optimizer: unknown) =>
    new MarginHead({
      classes: 3,
      features: 2,
      margin: 2,
      lambda: 0,
      backend: "cpu",
      optimizer: optimizer as HeadOptions["optimizer"],
    });
  const cases: [unknown, RegExp][] = [
    [{ type: "adagrad" }, /optimizer\.type: expected "sgd", "adam" or "adamw", got "adagrad"/],
    [
      { type: "adam", betas: [0.9, 1] },
      /optimizer\.betas\[1\]: expected a number in \[0, 1\), got 1/,
    ],
    [{ type: "adam", betas: [0.9] }, /optimizer\.betas: expected \[beta1, beta2\]/],
    [{ type: "adamw", eps: -1 }, /optimizer\.eps: expected a finite number >= 0, got -1/],
    [{ type: "adamw", weightDecay: NaN }, /optimizer\.weightDecay/],
    [{ type: "adam", amsgrad: 1 }, /optimizer\.amsgrad: expected true or false, got 1/],
    [{ type: "adam", momentum: 0.9 }, /optimizer: unknown option "momentum"/],
    [{ type: "adam", clipNorm: 0 }, /optimizer\.clipNorm: expected a number > 0/],
    [{ type: "adam", lr: -1 }, /optimizer\.lr: expected a finite number >= 0, got -1/],
  ];
  for (const [o, re] of cases) assert.throws(() => make(o), re, JSON.stringify(o));
});
