// accumulate_test.ts: gradient accumulation and clipping on MarginHead. Micro-batches with
// `accumulate: true` then a step without it equal one step on the concatenated batch (float64
// within 1e-12), SGD and AdamW, one context and class shards, step and stepAsync, with λ and the
// iteration of one step; state() refused mid-accumulation; the non-finite policy on the
// accumulated gradient; SGD's clipNorm against torch's clip_grad_norm_ written in TypeScript.

import assert from "node:assert/strict";
import { lambdaAt, loss, MarginHead } from "../mod.ts";
import type { HeadOptions } from "../src/head/options.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { assertClose, randomArray, randomLabels, Rng } from "./helpers.ts";

const SIZES = [3, 2, 4]; // the micro-batches' rows
const D = 4, C = 7;

function concat(parts: Float64Array[]): Float64Array {
  const out = new Float64Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), at += p.length;
  return out;
}

function concatLabels(parts: Int32Array[]): Int32Array {
  return Int32Array.from(parts.flatMap((p) => [...p]));
}

for (const backend of ["cpu", "cuda"] as TestBackend[]) {
  const test = (name: string, fn: () => void | Promise<void>) =>
    Deno.test({
      name: `${backend}: accumulate: ${name}`,
      ignore: backend === "cuda" && !cudaAvailable,
      fn,
    });
  const schedule = { base: 100, gamma: 0.5, power: 1, lambdaMin: 0 };
  const make = (
    w: Float64Array,
    optimizer: HeadOptions["optimizer"],
    b: HeadOptions["backend"] = backend,
  ) =>
    new MarginHead({
      classes: C,
      features: D,
      dtype: "float64",
      margin: 3,
      ...schedule,
      backend: b,
      optimizer,
      weights: w,
    });
  const OPTIMIZERS: HeadOptions["optimizer"][] = [
    { lr: 0.2, momentum: 0.9, weightDecay: 0.01 },
    { type: "adamw", lr: 0.05, amsgrad: true },
    { type: "adam", lr: 0.05, weightDecay: 0.1, clipNorm: 0.02 },
    { lr: 0.3, momentum: 0.5, clipNorm: 0.02 },
  ];

  test("micro-batches then a step equal one step on the concatenated batch", async () => {
    const rng = new Rng(3101);
    for (const optimizer of OPTIMIZERS) {
      for (const shards of [1, 3]) {
        const w = randomArray(rng, C * D);
        const placed = shards === 1 ? backend : Array.from({ length: shards }, () => backend);
        using micro = make(w, optimizer, placed);
        using whole = make(w, optimizer, placed);
        for (let t = 0; t < 3; t++) {
          const xs = SIZES.map((n) => randomArray(rng, n * D));
          const ys = SIZES.map((n) => randomLabels(rng, n, C));
          const useAsync = t === 1;
          for (let k = 0; k < SIZES.length; k++) {
            const accumulate = k < SIZES.length - 1;
            // Every micro-batch belongs to step t + 1: its λ, its own mean loss.
            const own = loss(xs[k], micro.weights() as Float64Array, ys[k], {
              margin: 3,
              lambda: lambdaAt(t + 1, schedule),
              backend: "cpu",
            });
            const r = useAsync
              ? await micro.stepAsync(xs[k], ys[k], { accumulate })
              : micro.step(xs[k], ys[k], { accumulate });
            assert.equal(r.lambda, lambdaAt(t + 1, schedule));
            assertClose([r.loss], [own.loss], 1e-12, "a micro-batch's loss");
            assertClose(r.gradX, own.gradX, 1e-12, "a micro-batch's dL/dx (its own mean loss)");
            assert.equal(micro.iteration, accumulate ? t : t + 1);
          }
          whole.step(concat(xs), concatLabels(ys));
          const what = `${JSON.stringify(optimizer)} ${shards} shard(s) step ${t}`;
          assertClose(micro.weights(), whole.weights(), 1e-12, what);
        }
        const a = micro.state(), b = whole.state();
        assert.equal(a.iteration, 3);
        for (const k of ["velocity", "expAvg", "expAvgSq", "maxExpAvgSq"] as const) {
          if (b[k] == null) assert.equal(a[k] ?? null, null);
          else assertClose(a[k]!, b[k]!, 1e-12, `${k} ${JSON.stringify(optimizer)}`, 1e-30);
        }
      }
    }
  });

  test("state() is refused mid-accumulation and works after the applying step", () => {
    const rng = new Rng(3102);
    using head = make(randomArray(rng, C * D), { type: "adamw" });
    head.step(randomArray(rng, 2 * D), randomLabels(rng, 2, C), { accumulate: true });
    assert.throws(() => head.state(), /state\(\) during an accumulation \(2 rows/);
    head.step(randomArray(rng, 2 * D), randomLabels(rng, 2, C));
    assert.equal(head.state().iteration, 1);
    assert.throws(
      () => head.step(randomArray(rng, D), randomLabels(rng, 1, C), { accumulate: 1 as never }),
      /accumulate: expected true or false, got 1/,
    );
  });

  test("a non-finite micro-batch makes the applying step skip, and the sum starts afresh", () => {
    const rng = new Rng(3103);
    const w = randomArray(rng, C * D);
    using head = make(w, { type: "adamw", lr: 0.05 });
    const bad = randomArray(rng, 2 * D).fill(NaN, 0, D);
    head.step(bad, randomLabels(rng, 2, C), { accumulate: true });
    const r = head.step(randomArray(rng, 3 * D), randomLabels(rng, 3, C));
    assert.equal(r.skipped, true);
    assert.deepEqual(head.weights(), w);
    const s = head.state();
    assert.equal(s.optimizerStep, 0);
    assert.equal(s.skippedSteps, 1);
    // The next accumulation holds only its own micro-batches.
    const x1 = randomArray(rng, 2 * D), y1 = randomLabels(rng, 2, C);
    const x2 = randomArray(rng, 3 * D), y2 = randomLabels(rng, 3, C);
    head.step(x1, y1, { accumulate: true });
    head.step(x2, y2);
    // A head that never saw the bad micro-batch, at the same iteration (the same λ).
    using fresh = new MarginHead({
      classes: C,
      features: D,
      dtype: "float64",
      margin: 3,
      ...schedule,
      backend,
      optimizer: { type: "adamw", lr: 0.05 },
      weights: w,
      iteration: 1,
    });
    fresh.step(concat([x1, x2]), concatLabels([y1, y2]));
    assert.equal(head.state().optimizerStep, 1);
    assertClose(head.weights(), fresh.weights(), 1e-12, "after a skipped accumulation");
  });

  test("SGD's clipNorm is torch's clip_grad_norm_ over every shard's dL/dW", () => {
    const rng = new Rng(3104);
    for (const shards of [1, 2]) {
      const w = randomArray(rng, C * D), lr = 0.5, maxNorm = 0.03;
      const placed = shards === 1 ? backend : [backend, backend];
      using head = make(w, { lr, clipNorm: maxNorm }, placed);
      const p = Float64Array.from(w);
      let clipped = 0;
      for (let t = 1; t <= 3; t++) {
        const n = 5, x = randomArray(rng, n * D), labels = randomLabels(rng, n, C);
        const g = loss(x, Float64Array.from(p), labels, {
          margin: 3,
          lambda: lambdaAt(t, schedule),
          backend: "cpu",
        }).gradW;
        let sq = 0;
        for (const v of g) sq += v * v;
        const c = Math.min(1, maxNorm / (Math.sqrt(sq) + 1e-6));
        if (c < 1) clipped++;
        for (let j = 0; j < p.length; j++) p[j] -= lr * (c * g[j]);
        head.step(x, labels);
        assertClose(head.weights(), p, 1e-12, `${shards} shard(s) step ${t}`);
      }
      assert.ok(clipped > 0, "the norm was above maxNorm at least once");
    }
  });
}
