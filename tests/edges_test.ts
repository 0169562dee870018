// edges_test.ts: the same answer from every path at the edges of the options: outputs given as
// null, "tf32" on the CPU, outputs with `gradients: false`, disposed tfjs tensors, lists of
// backends longer than the class count, and a label count that does not match x.

import assert from "node:assert/strict";
import { forward, LargeMarginSoftmax, loss, MarginHead } from "../mod.ts";
import { assertClose, Rng } from "./helpers.ts";

const rng = new Rng(2024);
const N = 4, D = 3, C = 5;
const x = new Float64Array(N * D).map(() => rng.uniform(-1, 1));
const w = new Float64Array(C * D).map(() => rng.uniform(-1, 1));
const labels = new Int32Array([0, 4, 2, 1]);
const opts = { margin: 2, lambda: 0.5, backend: "cpu" as const };

const throwsNamed = (fn: () => unknown, cls: typeof Error, message: RegExp, what: string) =>
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `${what}: expected a ${cls.name}, got ${e}`);
    assert.match((e as Error).message, message, what);
    return true;
  });

Deno.test("edges: outX / outW null mean new arrays, on one backend, shards and the layer", () => {
  const want = loss(x, w, labels, opts);
  const paths: [string, () => { gradX?: Float64Array; gradW?: Float64Array }][] = [
    ["both null", () => loss(x, w, labels, { ...opts, outX: null, outW: null } as never)],
    ["outW null", () => loss(x, w, labels, { ...opts, outW: null } as never)],
    ["outX null", () => loss(x, w, labels, { ...opts, outX: null } as never)],
    [
      "sharded",
      () =>
        loss(x, w, labels, { ...opts, backend: ["cpu", "cpu"], outX: null, outW: null } as never),
    ],
    ["layer.loss", () => {
      using layer = new LargeMarginSoftmax({
        margin: 2,
        base: 0.5,
        gamma: 0,
        power: 0,
        lambdaMin: 0,
        backend: "cpu",
      });
      return layer.loss(x, w, labels, { outX: null, outW: null } as never);
    }],
  ];
  for (const [what, run] of paths) {
    const r = run();
    assert.ok(r.gradX instanceof Float64Array && r.gradW instanceof Float64Array, what);
    assertClose(r.gradX!, want.gradX, 1e-12, `${what}: gradX`); // shards: float64 within 1e-12
    assertClose(r.gradW!, want.gradW, 1e-12, `${what}: gradW`);
  }
  const f = forward(x, w, labels, { ...opts, out: null } as never);
  assert.equal(f.logits.length, N * C);
});

Deno.test("edges: gradients: false refuses outX and outW by name", () => {
  for (const key of ["outX", "outW"] as const) {
    const given = {
      ...opts,
      gradients: false,
      [key]: new Float64Array(key === "outX" ? N * D : C * D),
    };
    throwsNamed(
      () => loss(x, w, labels, given as never),
      TypeError,
      new RegExp(`^${key}: expected none with gradients: false .*got Float64Array`),
      key,
    );
  }
  assert.ok(
    Number.isFinite(loss(x, w, labels, { ...opts, gradients: false, outX: null } as never).loss),
  );
});

Deno.test("edges: precision tf32 on the cpu is one RangeError from loss, forward, the layer, the head", () => {
  const message = /^precision: expected "exact" on the cpu .*got "tf32" with backend "cpu"/;
  const x32 = Float32Array.from(x), w32 = Float32Array.from(w);
  const tf32 = { ...opts, precision: "tf32" as const };
  throwsNamed(() => loss(x32, w32, labels, tf32), RangeError, message, "loss");
  throwsNamed(
    () => loss(x32, w32, labels, { ...tf32, backend: ["cpu", "cpu"] }),
    RangeError,
    message,
    "sharded loss",
  );
  throwsNamed(() => forward(x32, w32, labels, tf32), RangeError, message, "forward");
  throwsNamed(
    () =>
      new LargeMarginSoftmax({
        margin: 2,
        base: 0,
        gamma: 0,
        power: 0,
        lambdaMin: 0,
        backend: "cpu",
        precision: "tf32",
      }),
    RangeError,
    message,
    "layer",
  );
  throwsNamed(
    () =>
      new MarginHead({
        classes: C,
        features: D,
        margin: 2,
        lambda: 0,
        backend: "cpu",
        precision: "tf32",
      }),
    RangeError,
    message,
    "head",
  );
  assert.ok(Number.isFinite(loss(x32, w32, labels, opts).loss), "still usable");
});

Deno.test("edges: a list of backends longer than C; only [] is refused", () => {
  const want = loss(x, w, labels, opts);
  const r = loss(x, w, labels, { ...opts, backend: Array(C + 3).fill("cpu") });
  assert.ok(Math.abs(r.loss - want.loss) <= 1e-12 * want.loss);
  assertClose(r.gradW, want.gradW, 1e-12, "gradW");
  throwsNamed(
    () => loss(x, w, labels, { ...opts, backend: [] }),
    RangeError,
    /^backend: expected a list of at least 1/,
    "[]",
  );
  throwsNamed(
    () => loss(x, w, labels, { ...opts, backend: [...Array(C).fill("cpu"), "gpu"] as never }),
    RangeError,
    /^backend: expected "auto", "cpu", "cuda" or "cuda:K", got "gpu"/,
    "an entry past C is still checked",
  );
  using head = new MarginHead({
    classes: 2,
    features: D,
    margin: 2,
    lambda: 0,
    backend: ["cpu", "cpu", "cpu"],
    dtype: "float64",
  });
  const step = head.step(x, new Int32Array([0, 1, 1, 0]));
  assert.ok(Number.isFinite(step.loss));
  using copy = MarginHead.fromState(JSON.parse(JSON.stringify(head.state())));
  assert.deepEqual(Array.from(copy.weights()), Array.from(head.weights()));
});

Deno.test("edges: 3 labels for 4 feature rows blame labels, not w", () => {
  const three = new Int32Array([0, 1, 2]);
  throwsNamed(
    () => loss(x, w, three, { ...opts, features: D }),
    RangeError,
    /^labels: expected N = x.length \/ features = 12 \/ 3 = 4 labels \(one per row of x\), got 3$/,
    "with features",
  );
  throwsNamed(
    () => loss(x, w, three, opts),
    RangeError,
    /^labels: expected N = x.length \/ D labels .*\(D = 3, the largest, makes N = 4\), got 3/,
    "D from the arrays",
  );
  using head = new MarginHead({
    classes: C,
    features: D,
    margin: 2,
    lambda: 0,
    backend: "cpu",
    dtype: "float64",
  });
  throwsNamed(
    () => head.step(x, three),
    RangeError,
    /^labels: expected N = .* = 4 labels .*got 3$/,
    "head",
  );
  throwsNamed(
    () => head.evaluate(x, three),
    RangeError,
    /^labels: expected N = .* = 4 labels/,
    "evaluate",
  );
});

Deno.test("edges: tfjs: a disposed tensor is named", async () => {
  const tf = await import("@tensorflow/tfjs");
  const { headLoss, marginLoss } = await import("../tfjs.ts");
  const f = tf.tensor2d(Float32Array.from(x), [N, D]),
    wt = tf.tensor2d(Float32Array.from(w), [C, D]);
  const y = tf.tensor1d(labels, "int32");
  const dead = (t: typeof f) => {
    const c = t.clone();
    c.dispose();
    return c;
  };
  const message = (name: string) =>
    new RegExp(`^${name}: expected a live tensor, got a disposed one`);
  throwsNamed(() => marginLoss(dead(f), wt, y, opts), TypeError, message("features"), "features");
  throwsNamed(() => marginLoss(f, dead(wt), y, opts), TypeError, message("weights"), "weights");
  const deadY = y.clone();
  deadY.dispose();
  throwsNamed(() => marginLoss(f, wt, deadY, opts), TypeError, message("labels"), "labels");
  using head = new MarginHead({ classes: C, features: D, margin: 2, lambda: 0, backend: "cpu" });
  throwsNamed(() => headLoss(head, dead(f), y), TypeError, message("features"), "headLoss");
  assert.ok(Number.isFinite(marginLoss(f, wt, y, opts).dataSync()[0]), "still usable");
});
