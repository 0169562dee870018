// sampling_test.ts: Partial FC's class sampling in MarginHead (sampleRate). A step against an
// independent float64 reference on the sampled subset (tests/reference_margins.ts' logits, the
// cross-entropy written out, dL/dx by central differences, SGD with weight decay on all of W);
// the sample's rule (positives, per-shard counts, ascending, no repeats); r = 1 and a rate that
// samples every class against the plain head; class shards; resume from state(), JSON and a
// checkpoint bit for bit; the native row gather/scatter and its errors. CPU and CUDA (emulated
// in CI).

import assert from "node:assert/strict";
import { OPS } from "../ffi/ops.ts";
import { MarginHead } from "../mod.ts";
import { openContext } from "../src/backends.ts";
import { sampleCount } from "../src/head/sampling.ts";
import { shardBounds } from "../src/shards.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { randomArray, randomLabels, Rng } from "./helpers.ts";
import { type MarginSpec, referenceMarginForward } from "./reference_margins.ts";

const BACKENDS: TestBackend[] = cudaAvailable ? ["cpu", "cuda"] : ["cpu"];
const device = (b: TestBackend) => b === "cpu" ? "cpu" : "cuda:0";
const SPEC: MarginSpec = { kind: "cosface", scale: 4, margin: 0.2 };

// The mean cross-entropy of the reference logits over classes `sampled` of W (labels global).
function referenceLoss(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: Int32Array,
  sampled: Int32Array,
  d: number,
): number {
  const sub = new Float64Array(sampled.length * d);
  sampled.forEach((j, r) => sub.set(Array.from(w).slice(j * d, (j + 1) * d), r * d));
  const local = labels.map((y) => sampled.indexOf(y));
  const n = labels.length, c = sampled.length;
  const f = referenceMarginForward(x, sub, local, SPEC);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, f[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(f[i * c + j] - m);
    total += m + Math.log(s) - f[i * c + local[i]];
  }
  return total / n;
}

// The central difference of fn at a[k].
function central(a: Float64Array, k: number, fn: () => number, h = 1e-6): number {
  const v = a[k];
  a[k] = v + h;
  const up = fn();
  a[k] = v - h;
  const down = fn();
  a[k] = v;
  return (up - down) / (2 * h);
}

// The rule of a sample: ascending, distinct, every label in it, per shard max(ceil(r c), positives).
function checkSample(
  sampled: Int32Array,
  labels: Int32Array,
  c: number,
  shards: number,
  r: number,
) {
  for (let i = 1; i < sampled.length; i++) assert.ok(sampled[i] > sampled[i - 1], "ascending");
  for (const y of labels) assert.ok(sampled.includes(y), `label ${y} sampled`);
  const bounds = shardBounds(c, shards);
  for (let s = 0; s < shards; s++) {
    const inShard = (j: number) => j >= bounds[s] && j < bounds[s + 1];
    const positives = new Set(Array.from(labels).filter(inShard)).size;
    const want = Math.max(Math.ceil(r * (bounds[s + 1] - bounds[s]) - 1e-9), positives);
    assert.equal(Array.from(sampled).filter(inShard).length, want, `shard ${s}'s count`);
  }
}

Deno.test("sampleCount: max(ceil(r c), positives) with the exact ceil", () => {
  assert.equal(sampleCount(0.7, 10, 0), 7); // 0.7 * 10 rounds to 7.000000000000001
  assert.equal(sampleCount(0.1, 1_000_000, 3), 100_000);
  assert.equal(sampleCount(0.1, 25, 1), 3);
  assert.equal(sampleCount(0.1, 25, 9), 9);
  assert.equal(sampleCount(0.01, 7, 0), 1);
  assert.equal(sampleCount(1, 7, 2), 7);
});

for (const backend of BACKENDS) {
  Deno.test(`${backend}: a sampled step equals the reference on its classes, W updated in full`, () => {
    const rng = new Rng(11), n = 6, d = 4, c = 30, r = 0.2, lr = 0.3, wd = 0.05;
    for (const shards of [1, 3]) {
      const x = randomArray(rng, n * d), w0 = randomArray(rng, c * d, -0.5, 0.5);
      const labels = randomLabels(rng, n, c);
      const place = shards === 1 ? device(backend) : Array(shards).fill(device(backend));
      using head = new MarginHead({
        classes: c,
        features: d,
        ...SPEC,
        dtype: "float64",
        backend: place,
        weights: w0.slice(),
        optimizer: { lr, weightDecay: wd },
        sampleRate: r,
        seed: 5,
      });
      const { loss, gradX, sampled } = head.step(x, labels);
      assert.ok(sampled !== undefined);
      checkSample(sampled, labels, c, shards, r);
      assert.ok(sampled.length < c, "some classes left out");
      const want = referenceLoss(x, w0, labels, sampled, d);
      assert.ok(Math.abs(loss - want) <= 1e-12 * Math.max(1, want), `loss ${loss} vs ${want}`);
      for (let k = 0; k < n * d; k++) {
        const g = central(x, k, () => referenceLoss(x, w0, labels, sampled, d));
        assert.ok(Math.abs(gradX[k] - g) <= 1e-6, `dL/dx[${k}]: ${gradX[k]} vs ${g}`);
      }
      // SGD with weight decay on every row: p - lr (g + wd p), g zero off the sample
      const w1 = head.weights(), wc = w0.slice();
      for (let j = 0; j < c; j++) {
        for (let q = 0; q < d; q++) {
          const k = j * d + q;
          const g = sampled.includes(j)
            ? central(wc, k, () => referenceLoss(x, wc, labels, sampled, d))
            : 0;
          const expected = w0[k] - lr * (g + wd * w0[k]);
          assert.ok(Math.abs(w1[k] - expected) <= 1e-7, `W[${j}, ${q}]: ${w1[k]} vs ${expected}`);
        }
      }
    }
  });

  Deno.test(`${backend}: r = 1, and a rate sampling every class, equal the plain head`, () => {
    const rng = new Rng(12), n = 9, d = 5, c = 16;
    for (const shards of [1, 2]) {
      const place = shards === 1 ? device(backend) : Array(shards).fill(device(backend));
      const make = (sampleRate?: number): MarginHead =>
        new MarginHead({
          classes: c,
          features: d,
          ...SPEC,
          dtype: "float64",
          backend: place,
          optimizer: { lr: 0.2, momentum: 0.9, weightDecay: 0.01 },
          seed: 2,
          ...(sampleRate === undefined ? {} : { sampleRate }),
        });
      using plain = make(), one = make(1), all = make(0.97); // ceil(0.97 · 8) = 8: every class
      for (let step = 0; step < 3; step++) {
        const x = randomArray(rng, n * d), labels = randomLabels(rng, n, c);
        const a = plain.step(x, labels), b = one.step(x, labels), e = all.step(x, labels);
        assert.equal(b.loss, a.loss);
        assert.deepEqual(b.gradX, a.gradX);
        assert.equal(b.sampled, undefined);
        assert.deepEqual(e.sampled, Int32Array.from({ length: c }, (_, j) => j));
        assert.ok(Math.abs(e.loss - a.loss) <= 1e-12 * Math.max(1, a.loss));
        for (let k = 0; k < n * d; k++) assert.ok(Math.abs(e.gradX[k] - a.gradX[k]) <= 1e-12);
      }
      assert.deepEqual(one.weights(), plain.weights());
      const wa = plain.weights(), we = all.weights();
      for (let k = 0; k < wa.length; k++) assert.ok(Math.abs(we[k] - wa[k]) <= 1e-12);
      assert.equal(one.state().sampler, undefined);
      assert.equal(all.state().options.sampleRate, 0.97);
    }
  });

  Deno.test(`${backend}: resume from state(), JSON and a checkpoint continues bit for bit`, async () => {
    const rng = new Rng(13), n = 8, d = 4, c = 40;
    using head = new MarginHead({
      classes: c,
      features: d,
      ...SPEC,
      backend: [device(backend), device(backend)],
      optimizer: { type: "adamw", lr: 0.01 },
      sampleRate: 0.25,
      seed: 9,
    });
    const batches = Array.from({ length: 4 }, () => ({
      x: Float32Array.from(randomArray(rng, n * d)),
      labels: randomLabels(rng, n, c),
    }));
    head.step(batches[0].x, batches[0].labels);
    const state = head.state();
    assert.equal(state.sampler?.length, 4);
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      await head.save(path);
      using a = MarginHead.fromState(state);
      using b = MarginHead.fromState(JSON.parse(JSON.stringify(state)));
      using f = await MarginHead.load(path);
      const draws = new Set<string>();
      for (const { x, labels } of batches.slice(1)) {
        const want = head.step(x, labels);
        draws.add(want.sampled!.join());
        for (const other of [a, b, f]) {
          const got = other.step(x, labels);
          assert.deepEqual(got.sampled, want.sampled);
          assert.equal(got.loss, want.loss);
          assert.deepEqual(got.gradX, want.gradX);
        }
      }
      assert.ok(draws.size > 1, "the draws change from step to step");
      for (const other of [a, b, f]) assert.deepEqual(other.weights(), head.weights());
    } finally {
      await Deno.remove(path);
    }
  });

  Deno.test(`${backend}: stepAsync and micro-batches sample as step does`, async () => {
    const rng = new Rng(14), n = 6, d = 3, c = 24;
    const make = () =>
      new MarginHead({
        classes: c,
        features: d,
        ...SPEC,
        dtype: "float64",
        backend: [device(backend), device(backend)],
        optimizer: { lr: 0.1, momentum: 0.9 },
        sampleRate: 0.3,
        seed: 4,
      });
    using sync = make(), async = make();
    for (let step = 0; step < 3; step++) {
      const x = randomArray(rng, n * d), labels = randomLabels(rng, n, c);
      const accumulate = step === 1;
      const a = sync.step(x, labels, { accumulate }),
        b = await async.stepAsync(x, labels, { accumulate });
      assert.deepEqual(b.sampled, a.sampled);
      assert.equal(b.loss, a.loss);
      assert.deepEqual(b.gradX, a.gradX);
    }
    assert.deepEqual(async.weights(), sync.weights());
    assert.deepEqual(async.state().sampler, sync.state().sampler);
  });

  Deno.test(`${backend}: the sampler's state is checked, and a failed step draws nothing`, () => {
    using head = new MarginHead({
      classes: 12,
      features: 3,
      ...SPEC,
      backend: device(backend),
      sampleRate: 0.5,
    });
    const x = new Float32Array(6).fill(0.5);
    const before = head.state().sampler;
    assert.throws(
      () => head.step(x, new Int32Array([1, 12])),
      /labels\[1\]: expected an integer in \[0, 12\), got 12/,
    );
    assert.deepEqual(head.state().sampler, before);
    const state = head.state();
    assert.throws(
      () => MarginHead.fromState({ ...state, sampler: [0, 0, 0, 0] }),
      /state\.sampler: expected the sampler's generator/,
    );
    const { sampler: _, ...without } = state;
    assert.throws(() => MarginHead.fromState(without), /state\.sampler/);
    assert.throws(
      () => new MarginHead({ classes: 4, features: 2, ...SPEC, sampleRate: 0 }),
      /sampleRate: expected a number in \(0, 1\], got 0/,
    );
    assert.throws(
      () =>
        new MarginHead({ classes: 4, features: 2, ...SPEC, sampleRate: 0.5, labelSmoothing: 0.1 }),
      /sampleRate: expected 1 with labelSmoothing/,
    );
  });

  Deno.test(`${backend}: axpby with both factors 0 writes zeros, reading neither (NaN in y)`, () => {
    const ctx = openContext(device(backend));
    try {
      for (const dtype of ["float32", "float64"] as const) {
        const count = 1000, bytes = dtype === "float32" ? 4 : 8, y = ctx.allocate(count * bytes);
        const junk = dtype === "float32" ? new Float32Array(count) : new Float64Array(count);
        junk.fill(NaN);
        ctx.upload(y, junk);
        ctx.call(OPS.axpby, { dtype, n: 0, d: 0, c: 0, count, alpha: 0, beta: 0 }, [null, y]);
        ctx.download(junk, y);
        assert.ok(junk.every((v) => v === 0), `${dtype}: y = 0`);
      }
    } finally {
      ctx.close();
    }
  });

  Deno.test(`${backend}: gather and scatter rows by an index, and their errors`, () => {
    const ctx = openContext(device(backend));
    try {
      const c = 7, d = 3, rng = new Rng(3);
      const src = randomArray(rng, c * d), index = new Int32Array([0, 2, 3, 6]), k = index.length;
      const [ws, wi, wg] = [ctx.allocate(c * d * 8), ctx.allocate(k * 4), ctx.allocate(k * d * 8)];
      ctx.upload(ws, src);
      ctx.upload(wi, index);
      const call = { dtype: "float64" as const, n: 0, d, c, k };
      ctx.call(OPS.gatherRows, call, [wi, ws, wg]);
      const got = new Float64Array(k * d);
      ctx.download(got, wg);
      for (let i = 0; i < k; i++) {
        assert.deepEqual(
          got.subarray(i * d, (i + 1) * d),
          src.subarray(index[i] * d, (index[i] + 1) * d),
        );
      }
      const dst = new Float64Array(c * d).fill(-1);
      ctx.upload(ws, dst);
      ctx.call(OPS.scatterRows, call, [wi, wg, ws]);
      const back = new Float64Array(c * d);
      ctx.download(back, ws);
      for (let j = 0; j < c; j++) {
        const row = back.subarray(j * d, (j + 1) * d);
        const i = index.indexOf(j);
        assert.deepEqual(row, i < 0 ? dst.subarray(0, d) : got.subarray(i * d, (i + 1) * d));
      }
      for (
        const [bad, message] of [
          [[0, 2, 2, 5], /index\[2\]: expected an integer in \[3, 7\) \(strictly ascending.*got 2/],
          [[0, 1, 4, 7], /index\[3\]: expected an integer in \[5, 7\).*got 7/],
          [[-1, 1, 4, 5], /index\[0\]: expected an integer in \[0, 7\).*got -1/],
        ] as const
      ) {
        ctx.upload(wi, new Int32Array(bad));
        assert.throws(() => ctx.call(OPS.gatherRows, call, [wi, ws, wg]), message);
        assert.throws(() => ctx.call(OPS.scatterRows, call, [wi, wg, ws]), message);
      }
      assert.throws(
        () => ctx.call(OPS.gatherRows, { ...call, k: 8 }, [wi, ws, wg]),
        /k: expected at most c = 7/,
      );
      ctx.upload(wi, index); // the context still works after the errors
      ctx.call(OPS.gatherRows, call, [wi, ws, wg]);
    } finally {
      ctx.close();
    }
  });
}
