// nonfinite_test.ts: MarginHead's non-finite policy. A batch with a NaN row, an Inf row, or a
// huge finite row whose dL/dW overflows (its loss and dL/dx stay finite: only the check where W
// lives sees it), under "skip" (the default), "throw" and "apply", on one CPU context, one CUDA
// context (the emulated library in CI) and class shards; and the tfjs headLoss under the policy.

import assert from "node:assert/strict";
import { OPS } from "../ffi/ops.ts";
import { SgdNonFinite } from "../ffi/symbols.ts";
import { type HeadOptions, MarginHead } from "../mod.ts";
import { openContext } from "../src/backends.ts";
import { cudaAvailable } from "./check.ts";
import { Rng } from "./helpers.ts";

const C = 5, D = 4, N = 4;

// The bytes of an array: "bit-identical" compares these.
const bytes = (a: Float32Array | Float64Array | null) =>
  a === null ? null : new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

// A finite batch of seed `seed`.
function batch(seed: number): { x: Float32Array; labels: Int32Array } {
  const rng = new Rng(seed);
  const x = new Float32Array(N * D).map(() => rng.uniform(-1, 1));
  const labels = new Int32Array(N).map(() => rng.int(C));
  return { x, labels };
}

// The bad batches: row 2 NaN, row 1 +Inf, or row 0 at ±3.4e38 (finite; with margin 4 its loss
// (float64) and dL/dx are finite but dL/dW overflows float32).
const BAD = {
  nan: { row: 2, fill: (x: Float32Array) => x.fill(NaN, 2 * D, 3 * D) },
  inf: { row: 1, fill: (x: Float32Array) => x.fill(Infinity, D, 2 * D) },
  huge: {
    row: -1,
    fill: (x: Float32Array) => {
      for (let k = 0; k < D; k++) x[k] = k % 2 ? -3.4e38 : 3.4e38;
    },
  },
} as const;

const SETUPS: { name: string; backend: HeadOptions["backend"]; ignore: boolean }[] = [
  { name: "cpu", backend: "cpu", ignore: false },
  { name: "cuda", backend: "cuda", ignore: !cudaAvailable },
  { name: "shards cpu+cpu", backend: ["cpu", "cpu"], ignore: false },
  { name: "shards cpu+cuda", backend: ["cpu", "cuda"], ignore: !cudaAvailable },
];

function newHead(
  backend: HeadOptions["backend"],
  nonFinite?: "skip" | "throw" | "apply",
  more: Partial<HeadOptions> = {},
) {
  return new MarginHead({
    classes: C,
    features: D,
    margin: 4,
    lambda: 0,
    backend,
    seed: 7,
    optimizer: { lr: 0.1, momentum: 0.9, weightDecay: 0.01 },
    ...(nonFinite === undefined ? {} : { nonFinite }),
    ...more,
  });
}

for (const { name, backend, ignore } of SETUPS) {
  for (const [bad, { row, fill }] of Object.entries(BAD)) {
    Deno.test({
      name: `${name}: nonfinite: a ${bad} row is skipped by default: W and momentum bit-identical`,
      ignore,
      fn() {
        using head = newHead(backend);
        using twin = newHead(backend);
        assert.equal(head.nonFinite, "skip");
        const good = batch(1);
        for (const h of [head, twin]) assert.equal(h.step(good.x, good.labels).skipped, false);
        const before = head.state();
        const x = batch(2).x;
        fill(x);
        const r = head.step(x, batch(2).labels);
        assert.equal(r.skipped, true);
        const after = head.state();
        assert.deepEqual(bytes(after.weights), bytes(before.weights), "W unchanged");
        assert.notEqual(before.velocity, null);
        assert.deepEqual(bytes(after.velocity), bytes(before.velocity), "momentum unchanged");
        assert.equal(head.iteration, 2, "the skipped step counts");
        assert.equal(head.skippedSteps, 1);
        assert.equal(after.skippedSteps, 1);
        // Later steps train as if the bad batch had not come: the twin takes the same steps.
        const next = batch(3);
        const a = head.step(next.x, next.labels), b = twin.step(next.x, next.labels);
        assert.equal(a.skipped, false);
        assert.equal(a.loss, b.loss);
        assert.ok(Number.isFinite(a.loss));
        assert.deepEqual(bytes(head.weights()), bytes(twin.weights()));
        assert.deepEqual(bytes(head.state().velocity), bytes(twin.state().velocity));
        assert.equal(head.skippedSteps, 1);
        if (row >= 0) {
          assert.ok(Number.isNaN(r.loss) || r.loss === Infinity, "its loss is reported");
        }
      },
    });

    Deno.test({
      name: `${name}: nonfinite: "throw" on a ${bad} row names it and changes nothing`,
      ignore,
      fn() {
        using head = newHead(backend, "throw");
        const good = batch(1);
        head.step(good.x, good.labels);
        const before = head.state();
        const x = batch(2).x;
        fill(x);
        assert.throws(
          () => head.step(x, batch(2).labels),
          (e: Error) => {
            assert.ok(e instanceof RangeError, String(e));
            // The huge row's loss is finite in float64 (the CPU) or overflows (CUDA's float32).
            if (row >= 0) assert.match(e.message, new RegExp(`^x: row ${row}: expected finite`));
            else {assert.match(
                e.message,
                /^x: (row 0: expected finite loss|expected a finite dL\/dW)/,
              );}
            assert.match(e.message, /nonFinite: "throw"/);
            return true;
          },
        );
        const after = head.state();
        assert.equal(head.iteration, 1, "the iteration too is unchanged");
        assert.equal(head.skippedSteps, 0);
        assert.deepEqual(bytes(after.weights), bytes(before.weights));
        assert.deepEqual(bytes(after.velocity), bytes(before.velocity));
        const next = batch(3); // still usable
        assert.equal(head.step(next.x, next.labels).skipped, false);
      },
    });

    Deno.test({
      name: `${name}: nonfinite: "apply" on a ${bad} row updates W with it (as before)`,
      ignore,
      fn() {
        using head = newHead(backend, "apply");
        const x = batch(2).x;
        fill(x);
        const r = head.step(x, batch(2).labels);
        assert.equal(r.skipped, false);
        assert.equal(head.skippedSteps, 0);
        assert.ok(!head.weights().every(Number.isFinite), "W holds the non-finite update");
      },
    });
  }

  // An ignored row adds no loss and no gradient factor, but its features still enter dL/dW's
  // product: 0 · NaN is NaN there, so the step is skipped, and "throw" names the row.
  Deno.test({
    name: `${name}: nonfinite: a NaN or Inf in an ignored row makes dL/dW non-finite: skipped`,
    ignore,
    fn() {
      const optimizers = [{ lr: 0.1, momentum: 0.9 }, { type: "adamw" as const, lr: 0.1 }];
      for (const optimizer of optimizers) {
        for (const margin of [1, 4]) {
          for (const value of [NaN, Infinity]) {
            const what = `${optimizer.type ?? "sgd"}, margin ${margin}, ${value}`;
            const make = (nonFinite: "skip" | "throw") =>
              newHead(backend, nonFinite, { margin, ignoreIndex: -100, optimizer });
            const { x, labels } = batch(4);
            labels[1] = -100;
            x[D + 2] = value;
            using head = make("skip");
            const before = bytes(head.weights());
            const r = head.step(x, labels);
            assert.ok(Number.isFinite(r.loss), `${what}: the loss leaves the row out`);
            assert.equal(r.skipped, true, what);
            assert.deepEqual(bytes(head.weights()), before, `${what}: W unchanged`);
            using strict = make("throw");
            assert.throws(
              () => strict.step(x, labels),
              /^RangeError: x: row 1: expected finite/,
              what,
            );
            assert.ok(strict.weights().every(Number.isFinite), what);
          }
        }
      }
    },
  });

  Deno.test({
    name: `${name}: nonfinite: a skipped step advances λ's schedule; stepAsync skips the same`,
    ignore,
    async fn() {
      using head = new MarginHead({
        classes: C,
        features: D,
        margin: 2,
        base: 1,
        gamma: 1,
        power: 1,
        lambdaMin: 0,
        backend,
        optimizer: { lr: 0.1, momentum: 0.5 },
      });
      const good = batch(1), x = batch(2).x;
      BAD.nan.fill(x);
      head.step(good.x, good.labels);
      const w = bytes(head.weights());
      const r = await head.stepAsync(x, good.labels);
      assert.equal(r.skipped, true);
      assert.equal(r.lambda, 1 / 3, "λ of step 2");
      assert.equal(head.lambda, 1 / 3);
      assert.deepEqual(bytes(head.weights()), w);
      assert.equal(head.skippedSteps, 1);
      assert.equal(MarginHead.fromState(head.state()).skippedSteps, 1);
    },
  });
}

Deno.test("nonfinite: a skipped first step leaves no momentum; the next starts it afresh", () => {
  using head = newHead("cpu");
  using twin = newHead("cpu");
  const x = batch(2).x;
  BAD.nan.fill(x);
  assert.equal(head.step(x, batch(2).labels).skipped, true);
  assert.equal(head.state().velocity, null);
  const good = batch(1);
  head.step(good.x, good.labels);
  twin.step(good.x, good.labels);
  assert.deepEqual(bytes(head.state().velocity), bytes(twin.state().velocity));
  assert.deepEqual(bytes(head.weights()), bytes(twin.weights()));
});

Deno.test("nonfinite: the option is checked by name", () => {
  assert.throws(
    () => newHead("cpu", "ignore" as "skip"),
    (e: Error) =>
      e instanceof RangeError &&
      e.message === 'nonFinite: expected "skip", "throw" or "apply", got "ignore"',
  );
});

Deno.test("nonfinite: tfjs headLoss follows the head's policy", async () => {
  const tf = await import("@tensorflow/tfjs");
  const { headLoss } = await import("../tfjs.ts");
  const x = batch(2).x;
  BAD.inf.fill(x);
  const labels = batch(2).labels;
  {
    using head = newHead("cpu");
    const w = bytes(head.weights());
    const features = tf.tensor2d(x, [N, D]);
    const g = tf.grad((f) => headLoss(head, f, labels))(features);
    assert.deepEqual(Array.from(g.dataSync()), new Array(N * D).fill(0), "no gradient below");
    assert.deepEqual(bytes(head.weights()), w);
    assert.equal(head.skippedSteps, 1);
  }
  {
    using head = newHead("cpu", "throw");
    const features = tf.tensor2d(x, [N, D]);
    assert.throws(() => headLoss(head, features, labels), /x: row 1: expected finite/);
    assert.equal(head.iteration, 0);
  }
  {
    using head = newHead("cpu", "apply");
    headLoss(head, tf.tensor2d(x, [N, D]), labels);
    assert.ok(!head.weights().every(Number.isFinite));
  }
});

// lsm_sgd_update's own check, where W lives: SKIP writes nothing when the gradient holds a
// non-finite value, CHECK never writes; both set the 4-byte flag; its settings are checked.
for (const backend of ["cpu", "cuda"] as const) {
  Deno.test({
    name: `${backend}: nonfinite: lsm_sgd_update checks its gradient where it lives`,
    ignore: backend === "cuda" && !cudaAvailable,
    fn() {
      const ctx = openContext(backend);
      try {
        const count = 1000, size = count * 4;
        const [w, g, v] = [ctx.allocate(size), ctx.allocate(size), ctx.allocate(size)];
        const w0 = new Float32Array(count).map((_, i) => Math.sin(i));
        const v0 = new Float32Array(count).map((_, i) => Math.cos(i));
        const grad = new Float32Array(count).fill(0.5);
        const run = (nonfinite: number, flag: Int32Array | null) => {
          const sgd = { lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: 0, first: 0, nonfinite };
          const call = { dtype: "float32" as const, n: 0, d: 0, c: 0, count, sgd };
          ctx.call(OPS.sgd, call, [w, g, v, flag]);
        };
        const read = (p: Deno.PointerValue) => {
          const out = new Float32Array(count);
          ctx.download(out, p);
          return out;
        };
        for (const bad of [NaN, Infinity, -Infinity]) {
          for (const at of [0, 517, count - 1]) {
            ctx.upload(w, w0), ctx.upload(v, v0);
            grad.fill(0.5)[at] = bad;
            ctx.upload(g, grad);
            for (const mode of [SgdNonFinite.SKIP, SgdNonFinite.CHECK]) {
              const flag = new Int32Array([7]);
              run(mode, flag);
              assert.equal(flag[0], 1, `${bad} at ${at}, mode ${mode}`);
              assert.deepEqual(read(w), w0);
              assert.deepEqual(read(v), v0);
            }
          }
        }
        grad.fill(0.5);
        ctx.upload(g, grad), ctx.upload(w, w0), ctx.upload(v, v0);
        const flag = new Int32Array([7]);
        run(SgdNonFinite.CHECK, flag);
        assert.equal(flag[0], 0);
        assert.deepEqual(read(w), w0, "CHECK writes nothing");
        run(SgdNonFinite.SKIP, flag);
        assert.equal(flag[0], 0);
        const want = w0.map((x, i) => Math.fround(x - 0.1 * (0.9 * v0[i] + 0.5))); // one rounding
        assert.deepEqual(read(w), want, "SKIP updates a finite gradient");
        assert.throws(() => run(SgdNonFinite.SKIP, null), /nonfinite: expected a flag/);
        assert.throws(() => run(3, flag), /sgd.nonfinite: expected LSM_SGD_APPLY/);
      } finally {
        ctx.close();
      }
    },
  });
}
