// head_adaptive_test.ts: MarginHead with the adaptive kinds on the CPU, float64:
// - adaface, curricularface, magface: a step against loss() with the same options and state (the
//   loss, dL/dx and W' = W − lr·dL/dW for plain SGD, within 1e-12), the state carried over 3 steps
//   equal to chaining loss() calls; evaluate at the current state without moving it; predict by
//   the cosine; state()/fromState, its JSON and a checkpoint continuing bit for bit; class shards
//   equal to one backend (CurricularFace's row targets included); stepAsync as step;
// - subcenter: W [C·K, D], steps equal to loss(), shards, predict/evaluate by the best sub-center
//   against a brute-force reference for every k, a tie between classes to the lower one, the
//   state and a checkpoint of C·K rows, the seed's rows;
// - accumulation for AdaFace and CurricularFace: each micro-batch's statistics its own, the state
//   moved from one micro-batch to the next, W' from the mean over all their rows (against chained
//   loss() calls); a skipped applying step leaves the state as before its micro-batches; state()
//   refused while micro-batches are pending;
// - the errors, by name: a state without the kind's fields, the weights' size, k; a skipped step
//   leaves the state;
// - on CUDA (the emulator in CI): one CUDA backend and a CPU+CUDA list equal the CPU head;
//   sub-center ArcFace's step and predict equal to the CPU's.

import assert from "node:assert/strict";
import { loss, MarginHead } from "../mod.ts";
import { SPECS as ADAPTIVE_SPECS } from "./adaptive_specs.ts";
import { cudaAvailable } from "./check.ts";
import { assertClose, maxAbs, randomArray, randomLabels, Rng } from "./helpers.ts";

const N = 6, D = 5, C = 7, LR = 0.1;

type Spec = Record<string, unknown> & { kind: string };
// adaface, curricularface, magface: adaptive_specs.ts's (after its sub-center ArcFace, SUB below)
const SPECS: Spec[] = ADAPTIVE_SPECS.slice(1).map((o) => ({ ...o }));
const STATE_KEYS = ["batchMean", "batchStd", "t"] as const;

// deno-lint-ignore no-explicit-any
type Any = any;

function batches(seed: number, count: number): { x: Float64Array; labels: Int32Array }[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => ({
    x: randomArray(rng, N * D, -2, 2), // norms about 1 to 3: MagFace's and AdaFace's clips bite
    labels: randomLabels(rng, N, C),
  }));
}

function weights0(seed: number): Float64Array {
  return randomArray(new Rng(seed), C * D);
}

function newHead(spec: Spec, w: Float64Array, backend: unknown = "cpu"): MarginHead {
  return new MarginHead({
    classes: C,
    features: D,
    dtype: "float64",
    backend,
    optimizer: { lr: LR },
    weights: w,
    ...spec,
  } as Any);
}

// The head's options' state fields (those a step moves).
function stateOf(head: MarginHead): Record<string, number> {
  const o = head.state().options as Record<string, unknown>;
  const out: Record<string, number> = {};
  for (const k of STATE_KEYS) if (o[k] !== undefined) out[k] = o[k] as number;
  return out;
}

for (const spec of SPECS) {
  Deno.test(`head ${spec.kind}: 3 steps equal chained loss() calls (loss, dL/dx, W', state)`, () => {
    const w = weights0(1), data = batches(2, 3);
    using head = newHead(spec, w);
    let ref = w.slice(), o: Spec = { ...spec };
    for (const [step, { x, labels }] of data.entries()) {
      const r: Any = loss(x, ref, labels, { ...o, backend: "cpu" } as Any);
      const s = head.step(x, labels);
      const at = `${spec.kind} step ${step + 1}`;
      assert.ok(Math.abs(s.loss - r.loss) <= 1e-12 * Math.max(1, Math.abs(r.loss)), at);
      assertClose(s.gradX, r.gradX, 1e-12, `${at} dL/dx`);
      ref = ref.map((v, e) => v - LR * r.gradW[e]);
      assertClose(head.weights(), ref, 1e-12, `${at} W'`);
      const moved: Record<string, number> = {};
      for (const k of STATE_KEYS) if (r[k] !== undefined) moved[k] = r[k];
      o = { ...o, ...moved };
      const state = stateOf(head);
      for (const k of Object.keys(moved)) {
        assert.ok(Math.abs(state[k] - moved[k]) <= 1e-12, `${at} ${k}`);
        assert.notEqual(moved[k], (spec as Any)[k], `${at} ${k} moved`);
      }
    }
  });

  Deno.test(`head ${spec.kind}: evaluate at the current state, without moving it`, () => {
    const w = weights0(3), [a, b] = batches(4, 2);
    using head = newHead(spec, w), other = newHead(spec, w);
    head.step(a.x, a.labels);
    other.step(a.x, a.labels);
    const before = stateOf(head);
    const o = { ...spec, ...before, backend: "cpu", gradients: false };
    const want: Any = loss(b.x, head.weights(), b.labels, o as Any);
    const e = head.evaluate(b.x, b.labels);
    assert.ok(Math.abs(e.loss - want.loss) <= 1e-12 * Math.max(1, want.loss));
    assert.deepEqual(stateOf(head), before);
    // the next step as if evaluate had not been called
    assert.equal(head.step(b.x, b.labels).loss, other.step(b.x, b.labels).loss);
    assert.deepEqual(head.weights(), other.weights());
    // predict: the best cosine of each row
    const wn = head.weights(), { indices } = head.predict(b.x);
    for (let i = 0; i < N; i++) {
      let best = 0, bestCos = -Infinity;
      for (let j = 0; j < C; j++) {
        let dot = 0, nw = 0;
        for (let k = 0; k < D; k++) dot += b.x[i * D + k] * wn[j * D + k], nw += wn[j * D + k] ** 2;
        if (dot / Math.sqrt(nw) > bestCos) bestCos = dot / Math.sqrt(nw), best = j;
      }
      assert.equal(indices[i], best, `row ${i}`);
    }
  });

  Deno.test(`head ${spec.kind}: state(), its JSON and a checkpoint continue bit for bit`, async () => {
    const w = weights0(5), data = batches(6, 3);
    using head = newHead(spec, w);
    head.step(data[0].x, data[0].labels);
    using copy = MarginHead.fromState(head.state());
    using viaJson = MarginHead.fromState(JSON.parse(JSON.stringify(head.state())));
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      await head.save(path);
      using loaded = await MarginHead.load(path);
      for (const { x, labels } of data.slice(1)) {
        const want = head.step(x, labels);
        for (const h of [copy, viaJson, loaded]) {
          const got = h.step(x, labels);
          assert.equal(got.loss, want.loss);
          assert.deepEqual(got.gradX, want.gradX);
        }
      }
      for (const h of [copy, viaJson, loaded]) {
        assert.deepEqual(h.weights(), head.weights());
        assert.deepEqual(stateOf(h), stateOf(head));
      }
    } finally {
      await Deno.remove(path);
    }
  });

  Deno.test(`head ${spec.kind}: class shards equal one backend over 3 steps`, () => {
    const w = weights0(7), data = batches(8, 3);
    using one = newHead(spec, w), three = newHead(spec, w, ["cpu", "cpu", "cpu"]);
    for (const { x, labels } of data) {
      const a = one.step(x, labels), b = three.step(x, labels);
      assert.ok(Math.abs(a.loss - b.loss) <= 1e-12 * Math.max(1, a.loss));
      // the shards sum in another order: relative to the largest element
      assertClose(b.gradX, a.gradX, 1e-12, "dL/dx", maxAbs(a.gradX));
      const wa = one.weights();
      assertClose(three.weights(), wa, 1e-12, "W", maxAbs(wa));
      const sa = stateOf(one), sb = stateOf(three);
      for (const k of Object.keys(sa)) assert.ok(Math.abs(sa[k] - sb[k]) <= 1e-12, k);
    }
    const [e] = batches(9, 1);
    const ea = one.evaluate(e.x, e.labels), eb = three.evaluate(e.x, e.labels);
    assert.ok(Math.abs(ea.loss - eb.loss) <= 1e-12 * Math.max(1, ea.loss));
    assert.equal(ea.accuracy, eb.accuracy);
  });
}

const SUB: Spec = { ...ADAPTIVE_SPECS[0] }; // sub-center ArcFace, K = 3
const K = 3;

Deno.test("head subcenter: C·K rows; 3 steps equal loss(); shards; predict by the best sub-center", async () => {
  const w = randomArray(new Rng(20), C * K * D), data = batches(21, 3);
  using head = newHead(SUB, w), three = newHead(SUB, w, ["cpu", "cpu", "cpu"]);
  assert.equal(head.subcenters, K);
  assert.equal(head.weights().length, C * K * D);
  let ref = w.slice();
  for (const [step, { x, labels }] of data.entries()) {
    const r: Any = loss(x, ref, labels, { ...SUB, backend: "cpu" } as Any);
    const s = head.step(x, labels), t = three.step(x, labels), at = `step ${step + 1}`;
    assert.ok(Math.abs(s.loss - r.loss) <= 1e-12 * Math.max(1, r.loss), at);
    assertClose(s.gradX, r.gradX, 1e-12, `${at} dL/dx`);
    ref = ref.map((v, e) => v - LR * r.gradW[e]);
    assertClose(head.weights(), ref, 1e-12, `${at} W'`);
    assert.ok(Math.abs(t.loss - r.loss) <= 1e-12 * Math.max(1, r.loss), `${at} shards`);
    assertClose(t.gradX, r.gradX, 1e-12, `${at} shards dL/dx`, maxAbs(r.gradX));
    assertClose(three.weights(), ref, 1e-12, `${at} shards W'`, maxAbs(ref));
  }
  // predict: classes by the max cosine over their K rows (ties by lower class), every k
  const [{ x, labels }] = batches(22, 1), wn = head.weights();
  const cos = (i: number, r: number) => {
    let dot = 0, nw = 0, nx = 0;
    for (let e = 0; e < D; e++) {
      dot += x[i * D + e] * wn[r * D + e], nw += wn[r * D + e] ** 2, nx += x[i * D + e] ** 2;
    }
    return dot / Math.sqrt(nw * nx);
  };
  for (const k of [1, 3, C]) {
    for (const h of [head, three]) {
      const p = h.predict(x, { k });
      for (let i = 0; i < N; i++) {
        const best = Array.from({ length: C }, (_, j) => ({
          j,
          s: Math.max(...Array.from({ length: K }, (_, q) => cos(i, j * K + q))),
        })).sort((a, b) => b.s - a.s || a.j - b.j);
        for (let q = 0; q < k; q++) {
          assert.equal(p.indices[i * k + q], best[q].j, `k ${k} row ${i} rank ${q}`);
          assert.ok(Math.abs(p.scores[i * k + q] - best[q].s) <= 1e-12, `k ${k} row ${i} score`);
        }
      }
    }
  }
  const e = head.evaluate(x, labels),
    want: Any = loss(x, wn, labels, {
      ...SUB,
      backend: "cpu",
      gradients: false,
    } as Any);
  assert.ok(Math.abs(e.loss - want.loss) <= 1e-12 * Math.max(1, want.loss));
  const top1 = head.predict(x).indices;
  assert.equal(e.accuracy, labels.filter((y, i) => top1[i] === y).length / N);
  assert.equal(three.evaluate(x, labels).accuracy, e.accuracy);
  // the state and a checkpoint hold C·K rows and continue bit for bit
  using copy = MarginHead.fromState(JSON.parse(JSON.stringify(head.state())));
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await head.save(path);
    using loaded = await MarginHead.load(path, { backend: ["cpu", "cpu"] });
    const want2 = head.step(x, labels);
    assert.equal(copy.step(x, labels).loss, want2.loss);
    const l = loaded.step(x, labels).loss; // on 2 shards: the sums in another order
    assert.ok(Math.abs(l - want2.loss) <= 1e-12 * Math.max(1, want2.loss));
    assert.deepEqual(copy.weights(), head.weights());
    assertClose(loaded.weights(), head.weights(), 1e-12, "loaded W", maxAbs(head.weights()));
  } finally {
    await Deno.remove(path);
  }
  // the seed draws every row, as for C·K classes of another kind
  using drawn = new MarginHead({ classes: C, features: D, ...SUB, seed: 4, backend: "cpu" } as Any);
  using plain = new MarginHead(
    {
      classes: C * K,
      features: D,
      kind: "arcface",
      scale: 8,
      margin: 0.5,
      seed: 4,
      backend: "cpu",
    } as Any,
  );
  assert.deepEqual(drawn.weights(), plain.weights());
  assert.throws(
    () => newHead(SUB, w.subarray(0, C * D)),
    /^RangeError: weights: expected classes \* subcenters \* features = 7 \* 3 \* 5 = 105 elements, got 35$/,
  );
  assert.throws(() => head.predict(x, { k: C + 1 }), /^RangeError: k: /);
});

Deno.test("head subcenter: a tie between two classes' sub-centers goes to the lower class", () => {
  const w = randomArray(new Rng(23), C * K * D);
  w.copyWithin(4 * K * D + 1 * D, 1 * K * D + 2 * D, 1 * K * D + 3 * D); // class 4's row 1 = class 1's row 2
  using head = newHead(SUB, w), three = newHead(SUB, w, ["cpu", "cpu", "cpu"]);
  const x = w.slice(1 * K * D + 2 * D, 1 * K * D + 3 * D); // along that row: cosine 1 for both
  for (const h of [head, three]) {
    const { indices, scores } = h.predict(x, { k: 2 });
    assert.deepEqual([...indices], [1, 4]);
    assert.equal(scores[0], scores[1]);
  }
});

for (const spec of [...SPECS, SUB]) {
  Deno.test(`head ${spec.kind}: stepAsync carries the state as step does`, async () => {
    const k = spec.kind === "subcenter" ? K : 1;
    const w = randomArray(new Rng(24), C * k * D), data = batches(25, 3);
    using a = newHead(spec, w), b = newHead(spec, w);
    const queued = data.map(({ x, labels }) => b.stepAsync(x, labels)); // all asked at once
    for (const [q, { x, labels }] of data.entries()) {
      assert.equal((await queued[q]).loss, a.step(x, labels).loss);
    }
    assert.deepEqual(b.weights(), a.weights());
    assert.deepEqual(stateOf(b), stateOf(a));
  });
}

Deno.test("head adaptive: errors name the argument", () => {
  const w = weights0(10), [{ x, labels }] = batches(11, 1);
  const [ada, cur, mag] = SPECS;
  for (const spec of [ada, cur]) {
    using head = newHead(spec, w);
    head.step(x, labels);
    const st = head.state();
    for (const key of spec.kind === "adaface" ? ["batchMean", "batchStd"] : ["t"]) {
      const { [key]: _, ...options } = st.options as Record<string, unknown>;
      assert.throws(
        () => MarginHead.fromState({ ...st, options } as Any),
        new RegExp(`state\\.options\\.${key}: expected the state of kind "${spec.kind}"`),
      );
    }
  }
  // a skipped step (nonFinite "skip") leaves the state as it was, as it leaves W
  using skip = newHead(ada, w);
  const bad = x.slice();
  bad[0] = NaN;
  const before = stateOf(skip);
  assert.equal(skip.step(bad, labels).skipped, true);
  assert.deepEqual(stateOf(skip), before);
  assert.deepEqual(skip.weights(), w);
  using m = newHead(mag, w); // MagFace has no state to carry: micro-batches are fine
  m.step(x, labels, { accumulate: true });
  m.step(x, labels);
});

for (const spec of SPECS.slice(0, 2)) {
  Deno.test(`head ${spec.kind}: micro-batches move the state one to the next; W' from their mean`, () => {
    const w = weights0(20), data = batches(21, 3), total = data.length * N;
    using head = newHead(spec, w);
    let o: Spec = { ...spec };
    const gradW = new Float64Array(C * D);
    for (const [k, { x, labels }] of data.entries()) {
      // the micro-batch alone from the state the previous one left: its mean loss and dL/dx
      const r: Any = loss(x, w, labels, { ...o, backend: "cpu" } as Any);
      const s = head.step(x, labels, { accumulate: k < data.length - 1 });
      const at = `${spec.kind} micro-batch ${k + 1}`;
      assert.ok(Math.abs(s.loss - r.loss) <= 1e-12 * Math.max(1, Math.abs(r.loss)), `${at} loss`);
      assertClose(s.gradX, r.gradX, 1e-12, `${at} dL/dx`);
      r.gradW.forEach((g: number, e: number) => gradW[e] += g * N); // its rows' sum
      const moved: Record<string, number> = {};
      for (const key of STATE_KEYS) if (r[key] !== undefined) moved[key] = r[key];
      o = { ...o, ...moved };
      if (k < data.length - 1) {
        assert.throws(() => head.state(), /state\(\) during an accumulation/);
        assert.equal(head.iteration, 0, `${at}: no iteration before the applying step`);
      }
    }
    assertClose(
      head.weights(),
      w.map((v, e) => v - LR * gradW[e] / total),
      1e-12,
      `${spec.kind} W'`,
    );
    assert.equal(head.iteration, 1);
    const state = stateOf(head);
    for (const key of Object.keys(state)) {
      assert.ok(Math.abs(state[key] - (o as Any)[key]) <= 1e-12, `${spec.kind} ${key}`);
      assert.notEqual(state[key], (spec as Any)[key], `${spec.kind} ${key} moved`);
    }
    // under "skip", a bad micro-batch skips the applying step: W and the state stay as before
    using skip = new MarginHead({
      classes: C,
      features: D,
      dtype: "float64",
      optimizer: { lr: LR },
      weights: w,
      nonFinite: "skip",
      ...spec,
    } as Any);
    const before = stateOf(skip), bad = data[1].x.slice();
    bad[3] = NaN;
    skip.step(data[0].x, data[0].labels, { accumulate: true });
    skip.step(bad, data[1].labels, { accumulate: true });
    assert.equal(skip.step(data[2].x, data[2].labels).skipped, true);
    assert.deepEqual(stateOf(skip), before);
    assert.deepEqual(skip.weights(), w);
    // the next micro-batches start from the state before the skipped step
    const r: Any = loss(data[0].x, w, data[0].labels, { ...spec, backend: "cpu" } as Any);
    const again = skip.step(data[0].x, data[0].labels, { accumulate: true }).loss;
    assert.ok(Math.abs(again - r.loss) <= 1e-12 * Math.max(1, Math.abs(r.loss)), "after the skip");
  });
}

Deno.test({
  name: "head adaptive cuda: one CUDA backend and a CPU+CUDA list equal the CPU head (3 steps); " +
    "subcenter's predict",
  ignore: !cudaAvailable,
  fn: () => {
    for (const spec of SPECS) {
      const w = weights0(12), data = batches(13, 3);
      using cpu = newHead(spec, w), cuda = newHead(spec, w, "cuda");
      using mixed = newHead(spec, w, ["cpu", "cuda"]);
      for (const { x, labels } of data) {
        const a = cpu.step(x, labels);
        for (const [h, what] of [[cuda, "cuda"], [mixed, "cpu+cuda"]] as const) {
          const b = h.step(x, labels), at = `${spec.kind} ${what}`;
          assert.ok(Math.abs(a.loss - b.loss) <= 1e-10 * Math.max(1, a.loss), `${at} loss`);
          assertClose(b.gradX, a.gradX, 1e-10, `${at} dL/dx`, maxAbs(a.gradX));
          const wa = cpu.weights();
          assertClose(h.weights(), wa, 1e-10, `${at} W`, maxAbs(wa));
          const sa = stateOf(cpu), sb = stateOf(h);
          for (const k of Object.keys(sa)) {
            assert.ok(Math.abs(sa[k] - sb[k]) <= 1e-10, `${at} ${k}`);
          }
        }
      }
    }
    // sub-center ArcFace: a step as the CPU head's, and predict by the best sub-center
    const w = randomArray(new Rng(14), C * K * D), [{ x, labels }] = batches(15, 1);
    using cpu = newHead(SUB, w), cuda = newHead(SUB, w, "cuda");
    const a = cpu.step(x, labels), b = cuda.step(x, labels);
    assert.ok(Math.abs(a.loss - b.loss) <= 1e-10 * Math.max(1, a.loss), "sub-center step: loss");
    assertClose(b.gradX, a.gradX, 1e-10, "sub-center step: dL/dx", maxAbs(a.gradX));
    assertClose(cuda.weights(), cpu.weights(), 1e-10, "sub-center step: W", 1);
    for (const k of [1, 3]) {
      assert.deepEqual(cuda.predict(x, { k }).indices, cpu.predict(x, { k }).indices, `k ${k}`);
    }
  },
});
