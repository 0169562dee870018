// state_test.ts: MarginHead's state as data: format 1, every field required and checked by name,
// and the JSON-safe form, which round-trips bit for bit and continues training where the head
// was, on one CPU context, one CUDA context (the emulated library in CI) and class shards.

import assert from "node:assert/strict";
import { type HeadOptions, type HeadState, MarginHead } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { Rng } from "./helpers.ts";

const C = 6, D = 3, N = 5;
const bytes = (a: Float32Array | Float64Array | null) =>
  a === null ? null : new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

function trained(backend: HeadOptions["backend"], dtype: "float32" | "float64") {
  const head = new MarginHead({
    classes: C,
    features: D,
    dtype,
    margin: 3,
    base: 10,
    gamma: 0.5,
    power: 1,
    lambdaMin: 0,
    backend,
    seed: 3,
    optimizer: { lr: 0.2, momentum: 0.9, nesterov: true },
  });
  const rng = new Rng(11);
  for (let t = 0; t < 3; t++) {
    const x = (dtype === "float32" ? new Float32Array(N * D) : new Float64Array(N * D))
      .map(() => rng.uniform(-2, 2));
    head.step(x, new Int32Array(N).map(() => rng.int(C)));
  }
  const x = (dtype === "float32" ? new Float32Array(N * D) : new Float64Array(N * D))
    .map(() => rng.uniform(-2, 2));
  return { head, x, labels: new Int32Array(N).map(() => rng.int(C)) };
}

const SETUPS: { name: string; backend: HeadOptions["backend"]; ignore: boolean }[] = [
  { name: "cpu", backend: "cpu", ignore: false },
  { name: "cuda", backend: "cuda", ignore: !cudaAvailable },
  { name: "shards", backend: ["cpu", cudaAvailable ? "cuda" : "cpu", "cpu"], ignore: false },
];

for (const { name, backend, ignore } of SETUPS) {
  for (const dtype of ["float32", "float64"] as const) {
    Deno.test({
      name:
        `${name}: state: ${dtype} through JSON, bit for bit, and a step equal to the original's`,
      ignore,
      fn() {
        const { head, x, labels } = trained(backend, dtype);
        using _ = head;
        const saved = head.state();
        assert.equal(saved.format, 1);
        const json = JSON.parse(JSON.stringify(saved));
        assert.equal(json.weights.dtype, dtype);
        assert.deepEqual(json.weights.shape, [C, D]);
        using copy = MarginHead.fromState(json);
        const back = copy.state();
        assert.deepEqual(bytes(back.weights), bytes(saved.weights));
        assert.deepEqual(bytes(back.velocity), bytes(saved.velocity));
        assert.equal(copy.iteration, 3);
        assert.equal(copy.lambda, head.lambda);
        assert.equal(copy.skippedSteps, 0);
        assert.deepEqual(back.options, saved.options);
        const a = head.step(x, labels), b = copy.step(x, labels);
        assert.equal(a.loss, b.loss);
        assert.equal(a.lambda, b.lambda);
        assert.deepEqual(bytes(a.gradX), bytes(b.gradX));
        assert.deepEqual(bytes(head.weights()), bytes(copy.weights()));
        assert.deepEqual(bytes(head.state().velocity), bytes(copy.state().velocity));
      },
    });
  }
}

Deno.test("state: special values survive JSON bit for bit (NaN payloads aside), -0 included", () => {
  const w = new Float64Array(C * D).fill(0.25);
  w.set([-0, Number.MIN_VALUE, -Number.MAX_VALUE, 1 / 3, Infinity]);
  using head = new MarginHead({
    classes: C,
    features: D,
    dtype: "float64",
    margin: 2,
    lambda: 0,
    backend: "cpu",
    weights: w,
  });
  using copy = MarginHead.fromState(JSON.parse(JSON.stringify(head.state())));
  assert.deepEqual(bytes(copy.weights()), bytes(w));
});

// A state with one field changed; the error must name the field.
function broken(change: (s: Record<string, unknown>) => void): unknown {
  using head = new MarginHead({
    classes: C,
    features: D,
    margin: 2,
    lambda: 1,
    backend: "cpu",
    optimizer: { lr: 0.1, momentum: 0.5 },
  });
  head.step(new Float32Array(N * D).fill(0.5), new Int32Array(N));
  const s = head.state() as unknown as Record<string, unknown>;
  change(s);
  return s;
}

Deno.test("state: every field is required and checked by name, expected and actual", () => {
  const cases: [string, (s: Record<string, unknown>) => void, RegExp][] = [
    ["format missing", (s) => delete s.format, /Error: state\.format: expected 1, got undefined$/],
    ["format 2", (s) => (s.format = 2), /Error: state\.format: expected 1, got 2$/],
    [
      "options missing",
      (s) => delete s.options,
      /Error: state\.options: expected the head's options/,
    ],
    ["options null", (s) => (s.options = null), /Error: state\.options: .* got null$/],
    [
      "classes missing",
      (s) => delete (s.options as Record<string, unknown>).classes,
      /state\.options\.classes/,
    ],
    [
      "iteration missing",
      (s) => delete s.iteration,
      /Error: state\.iteration: expected an integer/,
    ],
    ["iteration -1", (s) => (s.iteration = -1), /Error: state\.iteration: .* got -1$/],
    [
      "skippedSteps missing",
      (s) => delete s.skippedSteps,
      /Error: state\.skippedSteps: .*undefined/,
    ],
    [
      "skippedSteps > iteration",
      (s) => (s.skippedSteps = 2),
      /Error: state\.skippedSteps: .*\[0, 1\], got 2/,
    ],
    [
      "weights missing",
      (s) => delete s.weights,
      /Error: state\.weights: expected a Float32Array .* got undefined/,
    ],
    ["weights undefined", (s) => (s.weights = undefined), /Error: state\.weights: .*got undefined/],
    [
      "weights float64",
      (s) => (s.weights = new Float64Array(C * D)),
      /Error: state\.weights: .*Float64Array\(18\)/,
    ],
    [
      "weights short",
      (s) => (s.weights = new Float32Array(5)),
      /Error: state\.weights: expected 18 elements.*got 5$/,
    ],
    [
      "weights base64 short",
      (s) => (s.weights = { dtype: "float32", base64: "AAAA" }),
      /Error: state\.weights\.base64: expected 72 bytes .* got 3$/,
    ],
    [
      "weights dtype",
      (s) => (s.weights = { dtype: "float64", base64: "" }),
      /Error: state\.weights\.dtype: expected "float32", got "float64"$/,
    ],
    [
      "weights shape",
      (s) => (s.weights = { dtype: "float32", shape: [3, 6], base64: "" }),
      /Error: state\.weights\.shape: expected \[6, 3\], got \[3, 6\]$/,
    ],
    [
      "weights base64 bad",
      (s) => (s.weights = { dtype: "float32", base64: "***" }),
      /Error: state\.weights\.base64: expected a base64 string/,
    ],
    [
      "velocity missing",
      (s) => delete s.velocity,
      /Error: state\.velocity: expected the momentum buffer or null/,
    ],
    [
      "velocity undefined",
      (s) => (s.velocity = undefined),
      /Error: state\.velocity: .*got undefined/,
    ],
    [
      "velocity short",
      (s) => (s.velocity = new Float32Array(3)),
      /Error: state\.velocity: expected 18 elements/,
    ],
    ["an unknown field", (s) => (s.weigths = 1), /Error: state: unknown field "weigths"/],
    [
      "options.iteration",
      (s) => ((s.options as HeadOptions).iteration = 4),
      /Error: state\.options\.iteration: expected none/,
    ],
  ];
  for (const [what, change, message] of cases) {
    assert.throws(() => MarginHead.fromState(broken(change) as HeadState), message, what);
  }
  // Velocity for an optimizer without momentum.
  const s = broken(() => {}) as HeadState;
  const noMomentum = { ...s, options: { ...s.options, optimizer: { lr: 0.1 } } };
  assert.throws(() => MarginHead.fromState(noMomentum), /Error: state\.velocity: expected null/);
  // Not an object at all.
  assert.throws(
    () => MarginHead.fromState(undefined as unknown as HeadState),
    /Error: state: expected/,
  );
});
