// accuracy_test.ts: MarginHead.evaluate's accuracy where scores are NaN (a row is correct only
// when its label is the best class and every logit of the row is a number) and against a
// TypeScript argmax where they are finite; the top-k order of NaN and ties across shards.

import assert from "node:assert/strict";
import { type HeadOptions, MarginHead } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { Rng } from "./helpers.ts";

const C = 4, D = 3;

const SETUPS: { name: string; backend: HeadOptions["backend"]; ignore: boolean }[] = [
  { name: "cpu", backend: "cpu", ignore: false },
  { name: "cuda", backend: "cuda", ignore: !cudaAvailable },
  { name: "shards", backend: ["cpu", "cpu"], ignore: false },
];

const head = (backend: HeadOptions["backend"], weights: Float64Array) =>
  new MarginHead({
    classes: C,
    features: D,
    dtype: "float64",
    margin: 2,
    lambda: 0,
    backend,
    weights,
  });

for (const { name, backend, ignore } of SETUPS) {
  const test = (what: string, fn: () => void) =>
    Deno.test({ name: `${name}: evaluate: ${what}`, ignore, fn });

  test("W all NaN: no row is correct (class 0 does not win a tie of NaNs)", () => {
    using h = head(backend, new Float64Array(C * D).fill(NaN));
    const r = h.evaluate(new Float64Array([1, 2, 3, 4, 5, 6]), new Int32Array([0, 0]));
    assert.ok(Number.isNaN(r.loss));
    assert.equal(r.accuracy, 0);
  });

  test("one class's weights NaN: every row has a NaN logit, none is correct", () => {
    const w = new Float64Array(C * D);
    w.set([1, 0, 0, 0, 1, 0, 0, 0, 1]);
    w.fill(NaN, 3 * D, 4 * D); // class 3
    using h = head(backend, w);
    const x = new Float64Array([5, 0, 0, 0, 5, 0]); // rows best at classes 0 and 1
    assert.equal(h.evaluate(x, new Int32Array([0, 1])).accuracy, 0);
  });

  test("a NaN feature row is not correct; the other rows count as the argmax says", () => {
    const rng = new Rng(5);
    const w = new Float64Array(C * D).map(() => rng.uniform(-1, 1));
    using h = head(backend, w);
    const n = 8, x = new Float64Array(n * D).map(() => rng.uniform(-2, 2));
    x.fill(NaN, 3 * D, 4 * D);
    // The labels: each row's best class by x·w (so every finite row is correct) but for row 5.
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      let best = 0, top = -Infinity;
      for (let j = 0; j < C; j++) {
        let s = 0;
        for (let k = 0; k < D; k++) s += x[i * D + k] * w[j * D + k];
        if (s > top) [best, top] = [j, s];
      }
      labels[i] = i === 5 ? (best + 1) % C : best;
    }
    labels[3] = 0;
    const r = h.evaluate(x, labels);
    assert.ok(Number.isNaN(r.loss));
    assert.equal(r.accuracy, 6 / 8);
  });
}

Deno.test("predict: NaN after every number and ties by the lower class, the same with shards", () => {
  const w = new Float64Array([1, 0, 0, NaN, 0, 0, 1, 0, 0, 2, 0, 0]); // C = 4, D = 3
  const x = new Float64Array([1, 0, 0]);
  const want = { indices: [3, 0, 2, 1], scores: [2, 1, 1, NaN] };
  for (const backend of ["cpu", ["cpu", "cpu"], ["cpu", "cpu", "cpu", "cpu"]] as const) {
    using h = head(backend as HeadOptions["backend"], w);
    const r = h.predict(x, { k: 4 });
    assert.deepEqual(Array.from(r.indices), want.indices, JSON.stringify(backend));
    assert.deepEqual(Array.from(r.scores), want.scores);
  }
});
