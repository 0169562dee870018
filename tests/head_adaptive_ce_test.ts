// head_adaptive_ce_test.ts: MarginHead with the adaptive kinds (subcenter, adaface,
// curricularface, magface) and the options they take as the other kinds do, on the CPU, float64:
// - the cross-entropy options as head options (labelSmoothing, classWeights, ignoreIndex): the
//   first step against the independent reference (reference_adaptive.ts: loss, dL/dx, W' = W −
//   lr·dL/dW from central differences, the state), 3 steps equal chained loss() calls, class
//   shards equal one backend;
// - class sampling (sampleRate < 1): a step equals loss() over the sampled classes (whole classes:
//   all K sub-centers of a sampled class), the other rows unchanged; the batch statistics those of
//   the whole batch; shards draw as one backend;
// - accumulate: AdaFace and CurricularFace take each micro-batch's statistics (its loss that of a
//   step on it alone); sub-center ArcFace and MagFace exact (micro-batches as one batch);
// - state(), its JSON and a checkpoint keep the options and continue bit for bit;
// - on CUDA (the emulator in CI): the options it follows and sampling equal the CPU head.

import assert from "node:assert/strict";
import { loss, MarginHead } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { assertClose, maxAbs, randomArray, randomLabels, Rng } from "./helpers.ts";
import {
  type AdaptiveSpec,
  referenceAdaptiveCE,
  referenceGradientsCE,
} from "./reference_adaptive.ts";
import { rowsPerClass, SPECS } from "./adaptive_specs.ts";

const N = 8, D = 5, C = 7, LR = 0.1;

const STATE_KEYS = ["batchMean", "batchStd", "t"] as const;

// deno-lint-ignore no-explicit-any
type Any = any;

// Batches with rows 2 and 5 of label -100 where `ignore` is set.
function batches(seed: number, count: number, ignore = false) {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => {
    const labels = randomLabels(rng, N, C);
    if (ignore) labels[2] = labels[5] = -100;
    return { x: randomArray(rng, N * D, -2, 2), labels };
  });
}

const CLASS_WEIGHTS = Float64Array.from({ length: C }, (_, j) => 0.3 + 0.25 * j);
const CE = { labelSmoothing: 0.1, classWeights: CLASS_WEIGHTS, ignoreIndex: -100 };

function newHead(o: AdaptiveSpec, w: Float64Array, extra: Record<string, unknown> = {}) {
  return new MarginHead({
    classes: C,
    features: D,
    dtype: "float64",
    backend: "cpu",
    optimizer: { lr: LR },
    weights: w,
    ...o,
    ...extra,
  } as Any);
}

function stateOf(head: MarginHead): Record<string, number> {
  const o = head.state().options as Record<string, unknown>;
  const out: Record<string, number> = {};
  for (const k of STATE_KEYS) if (o[k] !== undefined) out[k] = o[k] as number;
  return out;
}

// The spec with the state a result returned.
function moved(o: AdaptiveSpec, r: Any): AdaptiveSpec {
  const next: Any = { ...o };
  for (const k of STATE_KEYS) if (r[k] !== undefined) next[k] = r[k];
  return next;
}

for (const o of SPECS) {
  Deno.test(`head ce ${o.kind}: the options as head options; the first step against the reference`, () => {
    const w = randomArray(new Rng(1), C * rowsPerClass(o) * D);
    const [{ x, labels }] = batches(2, 1, true);
    using head = newHead(o, w, CE);
    const s = head.step(x, labels);
    const ref = referenceAdaptiveCE(x, w, labels, D, o, CE);
    const g = referenceGradientsCE(x, w, labels, D, o, CE);
    assertClose([s.loss], [ref.loss], 1e-9, `${o.kind}: loss`);
    const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw));
    assertClose(s.gradX, g.gx, 1e-6, `${o.kind}: dL/dx`, floor);
    const want = w.map((v, e) => v - LR * g.gw[e]);
    assertClose(head.weights(), want, 1e-6, `${o.kind}: W'`, maxAbs(w));
    const st = stateOf(head);
    for (const k of STATE_KEYS) {
      if (ref[k] !== undefined) assertClose([st[k]], [ref[k]!], 1e-12, `${o.kind}: ${k}`);
    }
  });

  Deno.test(`head ce ${o.kind}: 3 steps equal chained loss() calls; class shards equal one`, () => {
    const w = randomArray(new Rng(3), C * rowsPerClass(o) * D), data = batches(4, 3, true);
    using one = newHead(o, w, CE);
    using shards = newHead(o, w, { ...CE, backend: ["cpu", "cpu", "cpu"] });
    let ref = w.slice(), spec = o;
    for (const [step, { x, labels }] of data.entries()) {
      const r: Any = loss(x, ref, labels, { ...spec, ...CE, backend: "cpu" } as Any);
      const a = one.step(x, labels), b = shards.step(x, labels);
      assertClose([a.loss], [r.loss], 1e-13, `${o.kind} step ${step}: loss`);
      assertClose(a.gradX, r.gradX, 1e-12, `${o.kind} step ${step}: dL/dx`, maxAbs(r.gradX));
      ref = ref.map((v, e) => v - LR * r.gradW[e]);
      assertClose(one.weights(), ref, 1e-12, `${o.kind} step ${step}: W`, maxAbs(ref));
      spec = moved(spec, r);
      const st = stateOf(one);
      for (const k of STATE_KEYS) {
        if (r[k] !== undefined) assert.equal(st[k], r[k], `${o.kind} step ${step}: ${k}`);
      }
      assertClose([b.loss], [a.loss], 1e-13, `${o.kind} shards step ${step}: loss`);
      assertClose(b.gradX, a.gradX, 1e-12, `${o.kind} shards: dL/dx`, maxAbs(a.gradX));
      const ss = stateOf(shards);
      for (const k of Object.keys(st)) {
        assertClose([ss[k]], [st[k]], 1e-14, `${o.kind} shards: ${k}`);
      }
    }
    assertClose(shards.weights(), one.weights(), 1e-12, `${o.kind} shards: W`, maxAbs(ref));
    const [e] = batches(5, 1, true);
    const ev = one.evaluate(e.x, e.labels), es = shards.evaluate(e.x, e.labels);
    const want: Any = loss(e.x, ref, e.labels, { ...spec, ...CE, backend: "cpu" } as Any);
    assertClose([ev.loss, es.loss], [want.loss, want.loss], 1e-12, `${o.kind}: evaluate`);
  });

  Deno.test(`head ce ${o.kind}: class sampling takes whole classes; the statistics the batch's`, () => {
    const K = rowsPerClass(o), w = randomArray(new Rng(6), C * K * D), data = batches(7, 3);
    using head = newHead(o, w, { sampleRate: 0.5, seed: 3 });
    using shards = newHead(o, w, { sampleRate: 0.5, seed: 3, backend: ["cpu", "cpu"] });
    const ref = w.slice();
    let spec = o;
    for (const [step, { x, labels }] of data.entries()) {
      const s = head.step(x, labels), t = shards.step(x, labels);
      const sampled = s.sampled!;
      assert.ok(sampled.length < C, `${o.kind} step ${step}: a sample, not every class`);
      for (const y of labels) assert.ok(sampled.includes(y), "every label sampled");
      // loss() over the sampled classes' rows (all K of each), the labels as their positions
      const ws = new Float64Array(sampled.length * K * D);
      sampled.forEach((j, q) => ws.set(ref.subarray(j * K * D, (j + 1) * K * D), q * K * D));
      const ys = labels.map((y) => sampled.indexOf(y));
      const r: Any = loss(x, ws, ys, { ...spec, backend: "cpu" } as Any);
      const rr = referenceAdaptiveCE(x, ws, ys, D, spec, {});
      assertClose([s.loss, r.loss], [rr.loss, rr.loss], 1e-9, `${o.kind} step ${step}: loss`);
      assertClose(s.gradX, r.gradX, 1e-12, `${o.kind} step ${step}: dL/dx`, maxAbs(r.gradX));
      sampled.forEach((j, q) => {
        for (let e = 0; e < K * D; e++) ref[j * K * D + e] -= LR * r.gradW[q * K * D + e];
      });
      assertClose(head.weights(), ref, 1e-12, `${o.kind} step ${step}: W`, maxAbs(ref));
      spec = moved(spec, r);
      const st = stateOf(head);
      for (const k of STATE_KEYS) {
        if (r[k] !== undefined) assert.equal(st[k], r[k], `${o.kind}: ${k} of the whole batch`);
      }
      assert.deepEqual(t.sampled, s.sampled, `${o.kind}: shards draw as one backend`);
      assertClose([t.loss], [s.loss], 1e-13, `${o.kind} shards: loss`);
      assertClose(t.gradX, s.gradX, 1e-12, `${o.kind} shards: dL/dx`, maxAbs(s.gradX));
      const ss = stateOf(shards); // W differs from one backend's in its last bits after a step
      for (const k of Object.keys(st)) {
        assertClose([ss[k]], [st[k]], 1e-14, `${o.kind} shards: ${k}`);
      }
    }
    assertClose(shards.weights(), head.weights(), 1e-12, `${o.kind} shards: W`, maxAbs(ref));
  });
}

Deno.test("head ce: accumulate with the options (AdaFace, CurricularFace: per micro-batch; the others exact)", () => {
  for (const o of SPECS) {
    const K = rowsPerClass(o), w = randomArray(new Rng(8), C * K * D);
    const [a, b] = batches(9, 2, true);
    using head = newHead(o, w, CE);
    if (o.kind === "adaface" || o.kind === "curricularface") {
      // each micro-batch's statistics its own (head_adaptive_test.ts): the loss of one alone
      const first = head.step(a.x, a.labels, { accumulate: true });
      using alone = newHead(o, w, CE);
      assertClose(
        [first.loss],
        [alone.step(a.x, a.labels).loss],
        1e-13,
        `${o.kind}: micro-batch loss`,
      );
      assert.ok(Number.isFinite(head.step(b.x, b.labels).loss), "applied");
      continue;
    }
    // two micro-batches equal one step over the concatenated batch
    using whole = newHead(o, w, CE);
    head.step(a.x, a.labels, { accumulate: true });
    head.step(b.x, b.labels);
    const x = new Float64Array([...a.x, ...b.x]),
      labels = new Int32Array([...a.labels, ...b.labels]);
    whole.step(x, labels);
    assertClose(head.weights(), whole.weights(), 1e-12, `${o.kind}: accumulated W`, maxAbs(w));
  }
});

Deno.test({
  name: "head ce cuda: the options and sampling on CUDA equal the CPU head (3 steps)",
  ignore: !cudaAvailable,
  fn: () => {
    for (const o of SPECS.slice(1)) {
      for (const [what, extra] of [["options", CE], ["sampling", { sampleRate: 0.5 }]] as const) {
        const w = randomArray(new Rng(10), C * D);
        const data = batches(11, 3, what === "options");
        using cpu = newHead(o, w, extra), cuda = newHead(o, w, { ...extra, backend: "cuda" });
        for (const { x, labels } of data) {
          const a = cpu.step(x, labels), b = cuda.step(x, labels), at = `${o.kind} ${what}`;
          assertClose([b.loss], [a.loss], 1e-10, `${at}: loss`);
          assertClose(b.gradX, a.gradX, 1e-10, `${at}: dL/dx`, maxAbs(a.gradX));
          assert.deepEqual(b.sampled, a.sampled, `${at}: sampled`);
          const sa = stateOf(cpu), sb = stateOf(cuda);
          for (const k of Object.keys(sa)) assertClose([sb[k]], [sa[k]], 1e-10, `${at}: ${k}`);
        }
        assertClose(cuda.weights(), cpu.weights(), 1e-10, `${o.kind} ${what}: W`, 1);
      }
    }
  },
});

Deno.test("head ce: state(), its JSON and a checkpoint keep the options and continue bit for bit", async () => {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    for (const o of SPECS) {
      const w = randomArray(new Rng(12), C * rowsPerClass(o) * D), data = batches(13, 2, true);
      using a = newHead(o, w, CE);
      a.step(data[0].x, data[0].labels);
      using b = MarginHead.fromState(JSON.parse(JSON.stringify(a.state())));
      await a.save(path);
      using c = await MarginHead.load(path, { backend: ["cpu", "cpu"] });
      const [ra, rb, rc] = [a, b, c].map((h) => h.step(data[1].x, data[1].labels));
      assert.equal(rb.loss, ra.loss, `${o.kind}: fromState`);
      assert.deepEqual(b.weights(), a.weights());
      assertClose([rc.loss], [ra.loss], 1e-13, `${o.kind}: loaded onto shards`);
      assert.deepEqual(stateOf(b), stateOf(a));
      const so = a.state().options as Record<string, unknown>;
      assert.equal(so.labelSmoothing, CE.labelSmoothing);
      assert.equal(so.ignoreIndex, CE.ignoreIndex);
    }
  } finally {
    await Deno.remove(path);
  }
});
