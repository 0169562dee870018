// head_ce_test.ts: MarginHead's cross-entropy options (labelSmoothing, classWeights,
// ignoreIndex): a step's loss, dL/dx and updated W (plain SGD: W' = W − lr·dW) and evaluate's
// loss against loss() with the same options, on one context and on class shards, CPU and (where
// usable, the emulated library in CI) CUDA; the state's JSON round trip with class weights; the
// options' errors by name.

import assert from "node:assert/strict";
import { loss, MarginHead } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { assertClose, randomArray, Rng } from "./helpers.ts";

const N = 9, D = 4, C = 7, LR = 0.3;

interface Options {
  labelSmoothing?: number;
  classWeights?: Float64Array | Float32Array;
  ignoreIndex?: number;
}

const WEIGHTS = new Float64Array([0.5, 2, 1, 0, 1.5, 0.25, 3]);
const CASES: [string, Options][] = [
  ["labelSmoothing", { labelSmoothing: 0.2 }],
  ["classWeights", { classWeights: WEIGHTS }],
  ["classWeights (Float32Array)", { classWeights: new Float32Array(WEIGHTS) }],
  ["ignoreIndex", { ignoreIndex: -100 }],
  ["ignoreIndex (a class)", { ignoreIndex: 2 }],
  ["all together", { labelSmoothing: 0.1, classWeights: WEIGHTS, ignoreIndex: -100 }],
];

const MARGINS = [
  { margin: 3, lambda: 0.5 },
  { kind: "arcface" as const, scale: 8, margin: 0.3 },
];

// Labels with every class present, and two rows of the ignored label where there is one.
const labelsOf = (rng: Rng, ignore?: number) =>
  Int32Array.from(
    { length: N },
    (_, i) => ignore !== undefined && (i === 3 || i === 6) ? ignore : i < C ? i : rng.int(C),
  );

const BACKENDS: [string, "cpu" | "cuda" | ("cpu" | "cuda")[]][] = [
  ["cpu", "cpu"],
  ["3 cpu shards", ["cpu", "cpu", "cpu"]],
  ...(cudaAvailable
    ? [["cuda", "cuda"], ["3 cuda shards", ["cuda", "cuda", "cuda"]]] as [
      string,
      ("cuda" | "cuda"[]),
    ][]
    : []),
];

for (const [where, backend] of BACKENDS) {
  Deno.test(`head cross-entropy options: step and evaluate equal loss() (${where})`, () => {
    const rng = new Rng(17);
    for (const margin of MARGINS) {
      for (const [name, ce] of CASES) {
        const x = randomArray(rng, N * D), w0 = randomArray(rng, C * D);
        const labels = labelsOf(rng, ce.ignoreIndex);
        const what = `${where}, ${JSON.stringify(margin)}, ${name}`;
        const ref = loss(x, w0, labels, { ...margin, ...ce, backend: "cpu" });
        using head = new MarginHead({
          classes: C,
          features: D,
          ...margin,
          ...ce,
          dtype: "float64",
          backend,
          weights: w0.slice(),
          optimizer: { lr: LR },
        });
        const before = head.evaluate(x, labels);
        assertClose([before.loss], [ref.loss], 1e-12, `${what}: evaluate's loss`);
        const r = head.step(x, labels);
        assertClose([r.loss], [ref.loss], 1e-12, `${what}: the step's loss`);
        assertClose(r.gradX, ref.gradX, 1e-12, `${what}: dL/dx`, 1e-12);
        const expected = w0.map((v, k) => v - LR * ref.gradW[k]);
        assertClose(head.weights(), expected, 1e-12, `${what}: W'`, 1e-12);
      }
    }
  });
}

Deno.test("head cross-entropy options: a batch of ignored rows has loss 0 and leaves W", () => {
  const rng = new Rng(3);
  const x = randomArray(rng, 2 * D), w0 = randomArray(rng, C * D);
  for (const backend of ["cpu", ["cpu", "cpu"]] as ("cpu" | "cpu"[])[]) {
    using head = new MarginHead({
      classes: C,
      features: D,
      margin: 2,
      lambda: 0,
      ignoreIndex: 5,
      dtype: "float64",
      backend,
      weights: w0.slice(),
      optimizer: { lr: LR },
    });
    const r = head.step(x, new Int32Array([5, 5]));
    assert.equal(r.loss, 0);
    assert.deepEqual([...r.gradX], new Array(2 * D).fill(0));
    assert.deepEqual([...head.weights()], [...w0]);
  }
});

Deno.test("head cross-entropy options: the state keeps them (JSON round trip)", () => {
  const rng = new Rng(5);
  const x = randomArray(rng, N * D), labels = labelsOf(rng, -100);
  const ce = { labelSmoothing: 0.1, classWeights: WEIGHTS, ignoreIndex: -100 };
  using head = new MarginHead({
    classes: C,
    features: D,
    margin: 2,
    lambda: 0.5,
    ...ce,
    dtype: "float64",
    backend: ["cpu", "cpu"],
    optimizer: { lr: LR },
  });
  head.step(x, labels);
  const state = head.state();
  assert.deepEqual([...state.options.classWeights!], [...WEIGHTS]);
  assert.equal(state.options.labelSmoothing, 0.1);
  assert.equal(state.options.ignoreIndex, -100);
  const json = JSON.parse(JSON.stringify(state));
  assert.equal(typeof json.options.classWeights.base64, "string");
  const short = { ...json.options.classWeights, base64: btoa("12345678") };
  assert.throws(
    () => MarginHead.fromState({ ...json, options: { ...json.options, classWeights: short } }),
    /^RangeError: state\.options\.classWeights\.base64: expected 56 bytes \(7 elements\), got 8/,
  );
  using again = MarginHead.fromState(json);
  assert.deepEqual(again.state().options, state.options);
  const a = head.step(x, labels), b = again.step(x, labels);
  assert.equal(b.loss, a.loss);
  assert.deepEqual([...again.weights()], [...head.weights()]);
  // Without the options the same state's loss differs: they were restored, not defaulted.
  const { labelSmoothing: _, classWeights: __, ignoreIndex: ___, ...plain } = json.options;
  using bare = MarginHead.fromState({ ...json, options: plain });
  assert.throws(() => bare.evaluate(x, labels), /labels\[3\]/); // -100 is a label again
  const valid = labels.map((y) => y < 0 ? 0 : y);
  assert.notEqual(bare.evaluate(x, valid).loss, again.evaluate(x, valid).loss);
});

Deno.test("head cross-entropy options: errors name the option", () => {
  const base = { classes: C, features: D, margin: 2, lambda: 0, backend: "cpu" as const };
  assert.throws(
    () => new MarginHead({ ...base, labelSmoothing: 1 }),
    (e: Error) =>
      e instanceof RangeError && /^labelSmoothing: expected .*\[0, 1\), got 1/.test(e.message),
  );
  assert.throws(
    () => new MarginHead({ ...base, classWeights: new Float64Array(C - 1) }),
    (e: Error) => /^classWeights: /.test(e.message) && e.message.includes(`${C}`),
  );
  assert.throws(
    () => new MarginHead({ ...base, ignoreIndex: 0.5 }),
    (e: Error) => /^ignoreIndex: /.test(e.message),
  );
  // The library stays usable: a head with valid options still steps.
  using head = new MarginHead({ ...base, labelSmoothing: 0.1 });
  assert.ok(Number.isFinite(head.step(new Float32Array(D).fill(0.5), new Int32Array([1])).loss));
});

Deno.test("head cross-entropy options: micro-batches accumulate to the step on their concatenation", () => {
  const rng = new Rng(11);
  const ce = { labelSmoothing: 0.1, classWeights: WEIGHTS, ignoreIndex: -100 };
  const x = randomArray(rng, N * D), w0 = randomArray(rng, C * D);
  const labels = labelsOf(rng, -100);
  const ref = loss(x, w0, labels, { margin: 3, lambda: 0.5, ...ce, backend: "cpu" });
  const cut = 4; // rows 0..3 (row 3 ignored), then 4..8 (row 6 ignored)
  for (const backend of ["cpu", ["cpu", "cpu", "cpu"]] as ("cpu" | "cpu"[])[]) {
    using head = new MarginHead({
      classes: C,
      features: D,
      margin: 3,
      lambda: 0.5,
      ...ce,
      dtype: "float64",
      backend,
      weights: w0.slice(),
      optimizer: { lr: LR },
    });
    head.step(x.subarray(0, cut * D), labels.subarray(0, cut), { accumulate: true });
    head.step(x.subarray(cut * D), labels.subarray(cut));
    const expected = w0.map((v, k) => v - LR * ref.gradW[k]);
    assertClose(head.weights(), expected, 1e-12, `${backend}: W' after micro-batches`, 1e-12);
  }
});

Deno.test("head cross-entropy options: a checkpoint keeps the class weights", async () => {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    const rng = new Rng(13);
    const x = randomArray(rng, N * D), labels = labelsOf(rng, -100);
    const ce = { labelSmoothing: 0.2, classWeights: WEIGHTS, ignoreIndex: -100 };
    const o = { classes: C, features: D, margin: 2, lambda: 0, dtype: "float64" as const };
    using head = new MarginHead({ ...o, ...ce, backend: "cpu", optimizer: { lr: LR } });
    head.step(x, labels);
    await head.save(path);
    using again = await MarginHead.load(path);
    assert.deepEqual([...again.state().options.classWeights!], [...WEIGHTS]);
    assert.equal(again.evaluate(x, labels).loss, head.evaluate(x, labels).loss);
  } finally {
    await Deno.remove(path);
  }
});
