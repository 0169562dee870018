// schedule_test.ts: the lambda schedule lambdaAt and the LargeMarginSoftmax layer's state:
// Caffe's increment before each forward, the seed's explicit step, resuming from toJSON, the
// seed's example values, backward at its forward's lambda, close() and dispose.

import assert from "node:assert/strict";
import { backward, forward, lambdaAt, LargeMarginSoftmax } from "../mod.ts";
import { firstDifference, randomProblem, Rng } from "./helpers.ts";
import { referenceLambda } from "./reference.ts";

const SEED = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };
const layerOptions = { margin: 4, ...SEED, backend: "cpu" as const };

Deno.test("lambdaAt: max(base (1 + gamma t)^-power, lambdaMin)", () => {
  const schedules = [
    SEED,
    { base: 5, gamma: 0.1, power: 1, lambdaMin: 0.25 },
    { base: 0, gamma: 1, power: 2, lambdaMin: 0 },
    { base: 1000, gamma: 0, power: 35, lambdaMin: 0 },
    { base: 2, gamma: 0.5, power: 0, lambdaMin: 1 },
  ];
  for (const s of schedules) {
    for (const t of [0, 1, 2, 10, 100, 2.5, 8700, 8727, 8728, 1e4, 1e5, 1e6, 1e9]) {
      const got = lambdaAt(t, s), want = referenceLambda(t, s);
      assert.ok(
        Math.abs(got - want) <= 1e-14 * Math.max(want, 1e-300),
        `lambdaAt(${t}, ${JSON.stringify(s)}) = ${got}, expected ${want}`,
      );
    }
  }
  assert.equal(lambdaAt(0, SEED), 1000);
  assert.equal(lambdaAt(1e9, { ...SEED, lambdaMin: 5 }), 5);
  assert.equal(lambdaAt(3, { base: 5, gamma: 0.1, power: 1, lambdaMin: 10 }), 10);
});

Deno.test("lambdaAt with the seed's example: decreasing, 1.01997 at 8700, below 1 from 8728", () => {
  // 1000 (1 + 0.000025 t)^-35 = 1 at t = (1000^(1/35) - 1) / 0.000025 = 8727.52
  const crossing = (Math.pow(1000, 1 / 35) - 1) / 0.000025;
  assert.ok(crossing > 8727 && crossing < 8728, `crossing ${crossing}`);
  const at8700 = lambdaAt(8700, SEED);
  assert.ok(Math.abs(at8700 - 1.0199668) < 1e-6, `lambda(8700) = ${at8700}`);
  assert.ok(lambdaAt(8727, SEED) > 1);
  assert.ok(lambdaAt(8728, SEED) < 1);
  let prev = Infinity;
  for (let t = 0; t <= 50000; t += 250) {
    const l = lambdaAt(t, SEED);
    assert.ok(l < prev && l > 0, `not decreasing at ${t}`);
    prev = l;
  }
  assert.ok(lambdaAt(1, SEED) < 1000 && lambdaAt(1, SEED) > 999);
});

Deno.test("layer: iteration starts at 0 (or options.iteration), lambda before any forward", () => {
  using a = new LargeMarginSoftmax(layerOptions);
  assert.equal(a.iteration, 0);
  assert.equal(a.lambda, lambdaAt(0, SEED));
  using b = new LargeMarginSoftmax({ ...layerOptions, iteration: 8700 });
  assert.equal(b.iteration, 8700);
  assert.equal(b.lambda, lambdaAt(8700, SEED));
});

Deno.test("layer: each forward without step first increments the iteration (Caffe)", () => {
  const rng = new Rng(301);
  const p = randomProblem(rng, 5, 4, 3);
  using layer = new LargeMarginSoftmax(layerOptions);
  for (let it = 1; it <= 4; ++it) {
    const { logits, lambda } = layer.forward(p.x, p.w, p.labels);
    assert.equal(layer.iteration, it);
    assert.equal(lambda, lambdaAt(it, SEED));
    assert.equal(layer.lambda, lambda);
    const direct = forward(p.x, p.w, p.labels, { margin: 4, lambda, backend: "cpu" }).logits;
    assert.equal(
      firstDifference(logits, direct),
      -1,
      `iteration ${it}: logits differ from forward`,
    );
  }
});

Deno.test("layer: forward with step uses lambdaAt(step) and sets the iteration to it", () => {
  const rng = new Rng(302);
  const p = randomProblem(rng, 4, 3, 5);
  using layer = new LargeMarginSoftmax(layerOptions);
  let r = layer.forward(p.x, p.w, p.labels, { step: 8700 });
  assert.equal(r.lambda, lambdaAt(8700, SEED));
  assert.equal(layer.iteration, 8700);
  assert.equal(layer.lambda, r.lambda);
  r = layer.forward(p.x, p.w, p.labels); // continues from the step
  assert.equal(layer.iteration, 8701);
  assert.equal(r.lambda, lambdaAt(8701, SEED));
  r = layer.forward(p.x, p.w, p.labels, { step: 0 }); // going back is allowed
  assert.equal(layer.iteration, 0);
  assert.equal(r.lambda, 1000);
  r = layer.forward(p.x, p.w, p.labels, { step: 0 }); // the same step twice: no increment
  assert.equal(layer.iteration, 0);
  const direct = forward(p.x, p.w, p.labels, { margin: 4, lambda: 1000, backend: "cpu" }).logits;
  assert.equal(firstDifference(r.logits, direct), -1);
});

Deno.test("layer: toJSON rebuilds the layer where it left off (also through JSON text)", () => {
  const rng = new Rng(303);
  const p = randomProblem(rng, 6, 4, 3);
  using a = new LargeMarginSoftmax({ ...layerOptions, lambdaMin: 0.5 });
  a.forward(p.x, p.w, p.labels, { step: 1234 });
  a.forward(p.x, p.w, p.labels);
  const saved = a.toJSON();
  assert.equal(saved.iteration, 1235);
  assert.equal(saved.margin, 4);
  assert.equal(saved.lambdaMin, 0.5);
  using b = new LargeMarginSoftmax(saved);
  using c = new LargeMarginSoftmax(JSON.parse(JSON.stringify(a)));
  for (const layer of [b, c]) {
    assert.equal(layer.iteration, 1235);
    assert.equal(layer.lambda, lambdaAt(1235, { ...SEED, lambdaMin: 0.5 }));
  }
  const ra = a.forward(p.x, p.w, p.labels);
  const rb = b.forward(p.x, p.w, p.labels);
  const rc = c.forward(p.x, p.w, p.labels);
  assert.equal(a.iteration, 1236);
  assert.equal(b.iteration, 1236);
  assert.equal(c.iteration, 1236);
  assert.equal(ra.lambda, rb.lambda);
  assert.equal(ra.lambda, rc.lambda);
  assert.equal(firstDifference(ra.logits, rb.logits), -1);
  assert.equal(firstDifference(ra.logits, rc.logits), -1);
  const ga = a.backward(p.g), gb = b.backward(p.g);
  assert.equal(firstDifference(ga.gradX, gb.gradX), -1);
  assert.equal(firstDifference(ga.gradW, gb.gradW), -1);
});

Deno.test("layer: backward uses the lambda and inputs of the last forward", () => {
  const rng = new Rng(304);
  const p = randomProblem(rng, 5, 3, 4);
  const q = randomProblem(rng, 2, 3, 4);
  using layer = new LargeMarginSoftmax(layerOptions);
  layer.forward(q.x, q.w, q.labels, { step: 9 });
  layer.forward(p.x, p.w, p.labels, { step: 20000 });
  const lambda = lambdaAt(20000, SEED);
  // Other work in between (module-level calls at other lambdas) changes nothing.
  forward(q.x, q.w, q.labels, { margin: 2, lambda: 3, backend: "cpu" });
  const g1 = layer.backward(p.g);
  const want = backward(p.x, p.w, p.labels, p.g, { margin: 4, lambda, backend: "cpu" });
  assert.equal(firstDifference(g1.gradX, want.gradX), -1);
  assert.equal(firstDifference(g1.gradW, want.gradW), -1);
  // Backward twice: the same gradients, and the iteration does not move.
  const g2 = layer.backward(p.g);
  assert.equal(firstDifference(g1.gradX, g2.gradX), -1);
  assert.equal(layer.iteration, 20000);
  assert.equal(layer.lambda, lambda);
  // A wrong-size gradient (q's) is a RangeError naming gradLogits.
  assert.throws(() => layer.backward(q.g), (e: Error) => {
    return e instanceof RangeError && e.message.includes("gradLogits");
  });
  // float32 layer calls give float32 gradients.
  const x32 = Float32Array.from(p.x), w32 = Float32Array.from(p.w);
  const r32 = layer.forward(x32, w32, p.labels);
  assert.ok(r32.logits instanceof Float32Array);
  const g32 = layer.backward(Float32Array.from(p.g));
  assert.ok(g32.gradX instanceof Float32Array && g32.gradW instanceof Float32Array);
});

Deno.test("layer: backward before any forward throws, and the layer still works after", () => {
  const rng = new Rng(305);
  const p = randomProblem(rng, 2, 2, 2);
  using layer = new LargeMarginSoftmax(layerOptions);
  assert.throws(() => layer.backward(p.g), Error);
  assert.equal(layer.iteration, 0);
  layer.forward(p.x, p.w, p.labels);
  layer.backward(p.g);
});

Deno.test("layer: close() then forward, backward or close again", () => {
  const rng = new Rng(306);
  const p = randomProblem(rng, 3, 2, 2);
  const layer = new LargeMarginSoftmax(layerOptions);
  layer.forward(p.x, p.w, p.labels);
  layer.close();
  assert.throws(() => layer.forward(p.x, p.w, p.labels), Error);
  assert.throws(() => layer.backward(p.g), Error);
  layer.close(); // idempotent
  // State stays readable, and a new layer from it works.
  assert.equal(layer.iteration, 1);
  using again = new LargeMarginSoftmax(layer.toJSON());
  again.forward(p.x, p.w, p.labels);
  assert.equal(again.iteration, 2);
  // Symbol.dispose closes too.
  let escaped: LargeMarginSoftmax;
  {
    using scoped = new LargeMarginSoftmax(layerOptions);
    scoped.forward(p.x, p.w, p.labels);
    escaped = scoped;
  }
  assert.throws(() => escaped.forward(p.x, p.w, p.labels), Error);
});

Deno.test("layer: bad options are TypeError/RangeError naming them", () => {
  const bad: [Record<string, unknown>, typeof TypeError | typeof RangeError, string][] = [
    [{ ...layerOptions, margin: 0 }, RangeError, "margin"],
    [{ ...layerOptions, margin: 17 }, RangeError, "margin"],
    [{ ...layerOptions, margin: 2.5 }, TypeError, "margin"],
    [{ ...layerOptions, base: -1 }, RangeError, "base"],
    [{ ...layerOptions, gamma: NaN }, RangeError, "gamma"],
    [{ ...layerOptions, power: Infinity }, RangeError, "power"],
    [{ ...layerOptions, lambdaMin: -0.5 }, RangeError, "lambdaMin"],
    [{ ...layerOptions, iteration: 1.5 }, TypeError, "iteration"],
    [{ ...layerOptions, iteration: -1 }, RangeError, "iteration"],
    [{ ...layerOptions, backend: "tpu" }, RangeError, "backend"],
  ];
  for (const [o, cls, name] of bad) {
    assert.throws(
      () => new LargeMarginSoftmax(o as unknown as typeof layerOptions),
      (e: Error) => e instanceof cls && e.message.includes(name),
      `${JSON.stringify(o)} should throw ${cls.name} naming ${name}`,
    );
  }
  const rng = new Rng(307);
  const p = randomProblem(rng, 3, 2, 2);
  using layer = new LargeMarginSoftmax(layerOptions);
  for (const [step, cls] of [[1.5, TypeError], [-1, RangeError], [NaN, TypeError]] as const) {
    assert.throws(
      () => layer.forward(p.x, p.w, p.labels, { step }),
      (e: Error) => e instanceof cls && e.message.includes("step"),
      `step ${step}`,
    );
  }
  assert.equal(layer.iteration, 0, "a failed forward must not move the iteration");
  // Bad inputs to a layer's forward are rejected before the iteration moves, too.
  assert.throws(() => layer.forward(p.x, p.w, new Int32Array([0, 0, 5])), RangeError);
  assert.equal(layer.iteration, 0, "a failed forward must not move the iteration");
  layer.forward(p.x, p.w, p.labels);
  assert.equal(layer.iteration, 1);
  for (const step of [-1, NaN, Infinity]) {
    assert.throws(() => lambdaAt(step, SEED), RangeError, `lambdaAt(${step})`);
  }
  assert.throws(() => lambdaAt(1, { ...SEED, base: -1 }), RangeError);
});
