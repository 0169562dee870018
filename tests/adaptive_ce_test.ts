// adaptive_ce_test.ts: the cross-entropy options (labelSmoothing, classWeights, ignoreIndex) and
// the reductions with the adaptive kinds (subcenter, adaface, curricularface, magface), through
// loss() and the layer:
// - the loss, the row losses ("none"), the updated state and the gradients against the
//   independent float64 reference (reference_adaptive.ts: referenceAdaptiveCE) and its central
//   differences, in one class block, in several, and on class shards;
// - the rule for ignored rows: an ignored row is left out of the batch, its batch statistics
//   included (AdaFace's mean and std, CurricularFace's t), so that ignoring rows equals removing
//   them; every row ignored: loss 0, zero gradients, the state as it was;
// - sub-center ArcFace's smoothing over its class logits (K = 1 is ArcFace's with the options);
// - the layer and the tfjs adapter with the options;
// - the emulated CUDA backend equal to the CPU's where it runs the CUDA path.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { LargeMarginSoftmax, loss } from "../mod.ts";
import { marginLoss } from "../tfjs.ts";
import { cudaAvailable } from "./check.ts";
import {
  allFinite,
  assertClose,
  maxAbs,
  randomArray,
  randomLabels,
  Rng,
  toF32,
} from "./helpers.ts";
import {
  type AdaptiveSpec,
  type CrossEntropySpec,
  referenceAdaptiveCE,
  referenceGradientsCE,
} from "./reference_adaptive.ts";
import { rowsPerClass, SPECS } from "./adaptive_specs.ts";

type Reduction = "mean" | "sum" | "none";

// deno-lint-ignore no-explicit-any
type Result = any;

function run(
  x: Float64Array | Float32Array,
  w: Float64Array | Float32Array,
  labels: Int32Array,
  o: AdaptiveSpec,
  extra: Record<string, unknown> = {},
): Result {
  return loss(x, w, labels, { backend: "cpu", ...o, ...extra } as never);
}

// n rows over C classes; rows 1 and 4 carry the ignored label -100 where `ignore` is set.
function problem(seed: number, n: number, d: number, C: number, o: AdaptiveSpec, ignore = false) {
  const rng = new Rng(seed);
  const x = randomArray(rng, n * d, -1.2, 1.2);
  const w = randomArray(rng, C * rowsPerClass(o) * d);
  const labels = randomLabels(rng, n, C);
  if (ignore) labels[1] = labels[4] = -100;
  const classWeights = new Float64Array(C);
  for (let j = 0; j < C; j++) classWeights[j] = 0.25 + rng.next() * 1.5;
  return { x, w, labels, classWeights };
}

const STATE_KEYS = ["batchMean", "batchStd", "t"] as const;

/** The library against the reference and its central differences, at one point. */
function check(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  ce: CrossEntropySpec,
  reduction: Reduction,
  what: string,
  extra: Record<string, unknown> = {},
): Result {
  const r = run(x, w, labels, o, { ...ce, reduction, ...extra });
  const ref = referenceAdaptiveCE(x, w, labels, d, o, ce, reduction);
  assertClose([r.loss], [ref.loss], 1e-9, `${what}: loss`);
  if (reduction === "none") {
    assertClose(r.losses, ref.rows, 1e-9, `${what}: row losses`, 1e-12);
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] === ce.ignoreIndex) assert.equal(r.losses[i], 0, `${what}: ignored row ${i}`);
    }
  }
  for (const key of STATE_KEYS) {
    assert.equal(r[key] === undefined, ref[key] === undefined, `${what}: ${key} returned`);
    if (ref[key] !== undefined) assertClose([r[key]], [ref[key]!], 1e-12, `${what}: ${key}`);
  }
  const g = referenceGradientsCE(x, w, labels, d, o, ce, reduction);
  assert.ok(allFinite(r.gradX) && allFinite(r.gradW), `${what}: finite gradients`);
  const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw), 1e-12);
  assertClose(r.gradX, g.gx, 1e-6, `${what}: dL/dx`, floor);
  assertClose(r.gradW, g.gw, 1e-6, `${what}: dL/dW`, floor);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] !== ce.ignoreIndex) continue;
    assert.equal(maxAbs(r.gradX.subarray(i * d, (i + 1) * d)), 0, `${what}: ignored row's dL/dx`);
  }
  return r;
}

// The option sets: each alone, then all three together.
function optionSets(classWeights: Float64Array): [string, CrossEntropySpec][] {
  return [
    ["smoothing", { labelSmoothing: 0.2 }],
    ["weights", { classWeights }],
    ["ignore", { ignoreIndex: -100 }],
    ["all", { labelSmoothing: 0.1, classWeights, ignoreIndex: -100 }],
  ];
}

for (const o of SPECS) {
  Deno.test(`adaptive ce ${o.kind}: each option and all together against the reference, every reduction`, () => {
    const n = 7, d = 5, C = 6;
    const { x, w, labels, classWeights } = problem(11, n, d, C, o, true);
    const plain = problem(11, n, d, C, o).labels; // no ignored row
    for (const [name, ce] of optionSets(classWeights)) {
      const ys = ce.ignoreIndex === undefined ? plain : labels;
      for (const reduction of ["mean", "sum", "none"] as const) {
        check(x, w, ys, d, o, ce, reduction, `${o.kind} ${name} ${reduction}`);
      }
    }
  });

  Deno.test(`adaptive ce ${o.kind}: class blocks and class shards equal one block`, () => {
    const n = 9, d = 6, C = 7, K = rowsPerClass(o);
    const { x, w, labels, classWeights } = problem(12, n, d, C, o, true);
    const ce = { labelSmoothing: 0.15, classWeights, ignoreIndex: -100 };
    for (const reduction of ["mean", "none"] as const) {
      const what = `${o.kind} ${reduction}`;
      const one = check(x, w, labels, d, o, ce, reduction, `${what} one block`);
      // Blocks of 2 classes (the workspace holds n x 2 classes, twice with the buffer beside).
      const small = { workspace: 2 * K * n * 8 * 2 };
      const blocked = check(x, w, labels, d, o, ce, reduction, `${what} blocks`, small);
      const shards = run(x, w, labels, o, { ...ce, reduction, backend: ["cpu", "cpu", "cpu"] });
      for (const [r, how] of [[blocked, "blocks"], [shards, "shards"]] as const) {
        assertClose([r.loss], [one.loss], 1e-12, `${what} ${how}: loss`);
        assertClose(r.gradX, one.gradX, 1e-11, `${what} ${how}: dL/dx`, maxAbs(one.gradX));
        assertClose(r.gradW, one.gradW, 1e-11, `${what} ${how}: dL/dW`, maxAbs(one.gradW));
        if (reduction === "none") {
          assertClose(r.losses, one.losses, 1e-12, `${what} ${how}: rows`, maxAbs(one.losses));
        }
        for (const key of STATE_KEYS) assert.equal(r[key], one[key], `${what} ${how}: ${key}`);
      }
      const alone = run(x, w, labels, o, {
        ...ce,
        reduction,
        backend: ["cpu", "cpu"],
        gradients: false,
      });
      assertClose([alone.loss], [one.loss], 1e-12, `${what}: shards without gradients`);
      for (const key of STATE_KEYS) assert.equal(alone[key], one[key], `${what}: ${key}`);
      const valid = labels.map((y) => (y < 0 ? 0 : y));
      loss(x, w, valid, { ...o, backend: "cpu", workspace: 64 << 20 } as never); // the default
    }
  });

  Deno.test(`adaptive ce ${o.kind}: ignoring rows equals removing them; every row ignored`, () => {
    const n = 8, d = 5, C = 5;
    const { x, w, labels } = problem(13, n, d, C, o, true);
    const kept = [...labels.keys()].filter((i) => labels[i] !== -100);
    const xs = new Float64Array(kept.length * d), ys = Int32Array.from(kept, (i) => labels[i]);
    kept.forEach((i, q) => xs.set(x.subarray(i * d, (i + 1) * d), q * d));
    const ignored = run(x, w, labels, o, { ignoreIndex: -100, labelSmoothing: 0.1 });
    const removed = run(xs, w, ys, o, { labelSmoothing: 0.1 });
    assertClose([ignored.loss], [removed.loss], 1e-13, `${o.kind}: loss`);
    for (const key of STATE_KEYS) assert.equal(ignored[key], removed[key], `${o.kind}: ${key}`);
    assertClose(ignored.gradW, removed.gradW, 1e-12, `${o.kind}: dL/dW`, maxAbs(removed.gradW));
    kept.forEach((i, q) => {
      assertClose(
        ignored.gradX.subarray(i * d, (i + 1) * d),
        removed.gradX.subarray(q * d, (q + 1) * d),
        1e-12,
        `${o.kind}: dL/dx of row ${i}`,
        maxAbs(removed.gradX),
      );
    });
    // Every row ignored: nothing counted, the loss 0, no gradient, the state as it came in.
    const none = run(x, w, new Int32Array(n).fill(-100), o, { ignoreIndex: -100 });
    assert.equal(none.loss, 0);
    assert.equal(maxAbs(none.gradX), 0);
    assert.equal(maxAbs(none.gradW), 0);
    for (const key of STATE_KEYS) {
      const before = (o as unknown as Record<string, number | undefined>)[key];
      if (none[key] !== undefined) assert.equal(none[key], before, `${o.kind}: ${key} kept`);
    }
  });

  Deno.test(`adaptive ce ${o.kind}: float32 within float rounding of the reference`, () => {
    const n = 9, d = 8, C = 7;
    const p = problem(14, n, d, C, o, true);
    const x = Float64Array.from(toF32(p.x)), w = Float64Array.from(toF32(p.w));
    const ce = { labelSmoothing: 0.1, classWeights: p.classWeights, ignoreIndex: -100 };
    const r = run(toF32(x), toF32(w), p.labels, o, ce);
    const ref = referenceAdaptiveCE(x, w, p.labels, d, o, ce);
    assertClose([r.loss], [ref.loss], 5e-4, `${o.kind} float32: loss`);
    const g = referenceGradientsCE(x, w, p.labels, d, o, ce);
    const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw));
    assertClose(r.gradX, g.gx, 5e-4, `${o.kind} float32: dL/dx`, floor);
    assertClose(r.gradW, g.gw, 5e-4, `${o.kind} float32: dL/dW`, floor);
  });
}

Deno.test("adaptive ce subcenter: K = 1 is arcface with the options; tied sub-centers are one", () => {
  const n = 8, d = 6, C = 5;
  const rng = new Rng(21);
  const x = randomArray(rng, n * d), w = randomArray(rng, C * d), labels = randomLabels(rng, n, C);
  labels[2] = -1;
  const classWeights = Float64Array.from({ length: C }, (_, j) => 0.5 + j * 0.3);
  const ce = { labelSmoothing: 0.2, classWeights, ignoreIndex: -1 };
  const arc = { kind: "arcface", scale: 30, margin: 0.5 } as const;
  const a = loss(x, w, labels, { ...arc, backend: "cpu", ...ce });
  const s = run(x, w, labels, { ...arc, kind: "subcenter", subcenters: 1 }, ce);
  assertClose([s.loss], [a.loss], 1e-14, "K = 1: loss");
  assertClose(s.gradX, a.gradX, 1e-12, "K = 1: dL/dx", maxAbs(a.gradX));
  assertClose(s.gradW, a.gradW, 1e-12, "K = 1: dL/dW", maxAbs(a.gradW));
  // Three identical sub-centers per class: the class logit is theirs, the lowest takes it all.
  const K = 3, wk = new Float64Array(C * K * d);
  for (let j = 0; j < C; j++) {
    for (let k = 0; k < K; k++) wk.set(w.subarray(j * d, (j + 1) * d), (j * K + k) * d);
  }
  const t = run(x, wk, labels, { ...arc, kind: "subcenter", subcenters: K }, ce);
  assertClose([t.loss], [a.loss], 1e-14, "tied sub-centers: the loss of one");
  for (let j = 0; j < C; j++) {
    assertClose(
      t.gradW.subarray(j * K * d, (j * K + 1) * d),
      a.gradW.subarray(j * d, (j + 1) * d),
      1e-12,
      `class ${j}: the lowest sub-center takes the gradient, smoothing's term too`,
      maxAbs(a.gradW),
    );
    assert.equal(maxAbs(t.gradW.subarray((j * K + 1) * d, (j + 1) * K * d)), 0, "others: 0");
  }
});

Deno.test("adaptive ce magface: a class weight weights the row's regulariser as its target", () => {
  const o = SPECS[3], n = 6, d = 4, C = 3;
  const { x, w, labels } = problem(31, n, d, C, o);
  const scale = (i: number, f: number) => {
    for (let k = 0; k < d; k++) x[i * d + k] *= f;
  };
  scale(0, 2); // |x| inside [l_a, u_a] = [1, 3]: the magnitude carries gradient
  scale(1, 2.5);
  // A weight of 0 on every class but row 0's: the loss is row 0's alone, regulariser included.
  const classWeights = new Float64Array(C);
  classWeights[labels[0]] = 2;
  const r = run(x, w, labels, o, { classWeights, reduction: "none" });
  const alone = run(x.subarray(0, d), w, labels.subarray(0, 1), o, { reduction: "none" });
  for (let i = 0; i < n; i++) {
    const want = labels[i] === labels[0]
      ? 2 * run(x.subarray(i * d, (i + 1) * d), w, labels.subarray(i, i + 1), o).loss
      : 0;
    assertClose([r.losses[i]], [want], 1e-13, `row ${i}: w_y times its whole loss`);
  }
  assertClose([r.losses[0]], [2 * alone.losses[0]], 1e-13, "row 0");
  const mean = run(x, w, labels, o, { classWeights });
  let count = 0;
  for (let i = 0; i < n; i++) count += labels[i] === labels[0] ? 1 : 0;
  assertClose([mean.loss], [r.loss / (2 * count)], 1e-13, "the mean divides by Σ w_y");
});

Deno.test("adaptive ce: the layer and its state with the options", () => {
  for (const o of SPECS) {
    const n = 6, d = 4, C = 5;
    const { x, w, labels, classWeights } = problem(61, n, d, C, o, true);
    const ce = { labelSmoothing: 0.1, classWeights, ignoreIndex: -100 };
    using layer = new LargeMarginSoftmax({ ...o, backend: "cpu" } as never);
    let spec: AdaptiveSpec = { ...o };
    for (let step = 0; step < 3; step++) {
      const got = layer.loss(x, w, labels, { ...ce, reduction: "sum" });
      const want = run(x, w, labels, spec, { ...ce, reduction: "sum" });
      const ref = referenceAdaptiveCE(x, w, labels, d, spec, ce, "sum");
      assertClose([got.loss], [ref.loss], 1e-9, `${o.kind} step ${step}: loss`);
      assert.equal(got.loss, want.loss, `${o.kind} step ${step}: the loss of the chained calls`);
      assert.deepEqual(got.gradW, want.gradW);
      for (const key of STATE_KEYS) assert.equal(got[key], want[key], `${o.kind}: ${key}`);
      spec = {
        ...spec,
        ...(want.batchMean === undefined
          ? {}
          : { batchMean: want.batchMean, batchStd: want.batchStd }),
        ...(want.t === undefined ? {} : { t: want.t }),
      };
    }
  }
});

Deno.test("adaptive ce: a larger batch (threads, several blocks) against the reference", () => {
  for (const o of SPECS) {
    const n = 200, d = 16, C = 40, K = rowsPerClass(o);
    const rng = new Rng(71);
    const x = randomArray(rng, n * d, -0.6, 0.6), w = randomArray(rng, C * K * d);
    const labels = randomLabels(rng, n, C);
    for (let i = 0; i < n; i += 7) labels[i] = -100;
    const classWeights = Float64Array.from({ length: C }, () => 0.2 + rng.next());
    const ce = { labelSmoothing: 0.1, classWeights, ignoreIndex: -100 };
    const ref = referenceAdaptiveCE(x, w, labels, d, o, ce);
    const one = run(x, w, labels, o, ce);
    const blocked = run(x, w, labels, o, { ...ce, workspace: 7 * K * n * 8 * 2 });
    const valid = labels.map((y) => (y < 0 ? 0 : y));
    loss(x, w, valid, { ...o, backend: "cpu", workspace: 64 << 20 } as never);
    assertClose([one.loss, blocked.loss], [ref.loss, ref.loss], 1e-9, `${o.kind}: loss`);
    assertClose(blocked.gradX, one.gradX, 1e-11, `${o.kind}: blocks' dL/dx`, maxAbs(one.gradX));
    assertClose(blocked.gradW, one.gradW, 1e-11, `${o.kind}: blocks' dL/dW`, maxAbs(one.gradW));
    for (const key of STATE_KEYS) {
      if (ref[key] !== undefined) assertClose([one[key]], [ref[key]!], 1e-12, `${o.kind}: ${key}`);
    }
    const f32 = run(toF32(x), toF32(w), labels, o, ce);
    assertClose([f32.loss], [ref.loss], 5e-4, `${o.kind}: float32 loss`);
    assertClose(f32.gradW, one.gradW, 5e-4, `${o.kind}: float32 dL/dW`, maxAbs(one.gradW));
  }
});

Deno.test({
  name: "adaptive ce cuda: AdaFace, CurricularFace and MagFace with the options equal the CPU",
  ignore: !cudaAvailable,
  fn: () => {
    const failures: string[] = [];
    for (const o of SPECS.slice(1)) {
      for (const f32 of [false, true]) {
        const n = 24, d = 8, C = 20;
        const p = problem(81, n, d, C, o, true);
        const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w;
        const tol = f32 ? 2e-4 : 1e-10;
        for (const [name, ce] of optionSets(p.classWeights)) {
          const ys = ce.ignoreIndex === undefined ? problem(81, n, d, C, o).labels : p.labels;
          for (const reduction of ["mean", "none"] as const) {
            const opts = { ...ce, reduction };
            const cpu = run(x, w, ys, o, opts);
            for (
              const extra of [{}, { workspace: 7 * n * 8 * 2 }, { backend: ["cpu", "cuda"] }]
            ) {
              const what = `${o.kind} ${f32 ? "f32" : "f64"} ${name} ${reduction} ${
                JSON.stringify(extra)
              }`;
              try {
                const cuda = run(x, w, ys, o, { ...opts, backend: "cuda", ...extra });
                assertClose([cuda.loss], [cpu.loss], tol, `${what}: loss`);
                assertClose(cuda.gradX, cpu.gradX, tol, `${what}: dL/dx`, maxAbs(cpu.gradX));
                assertClose(cuda.gradW, cpu.gradW, tol, `${what}: dL/dW`, maxAbs(cpu.gradW));
                if (reduction === "none") {
                  assertClose(cuda.losses, cpu.losses, tol, `${what}: rows`, maxAbs(cpu.losses));
                }
                for (const key of STATE_KEYS) {
                  if (cpu[key] !== undefined) {
                    assertClose([cuda[key]], [cpu[key]], tol, `${what}: ${key}`);
                  }
                }
              } catch (e) {
                failures.push((e as Error).message);
              }
            }
          }
        }
      }
    }
    assert.deepEqual(failures, [], failures.join("\n"));
  },
});

Deno.test({
  name: "adaptive ce tfjs: marginLoss with the options equals loss(), with its gradients",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => {
    for (const o of SPECS) {
      const n = 6, d = 4, C = 5, rows = C * rowsPerClass(o);
      const p = problem(91, n, d, C, o, true);
      const x = toF32(p.x), w = toF32(p.w);
      const ce = { labelSmoothing: 0.1, classWeights: p.classWeights, ignoreIndex: -100 };
      const want = run(x, w, p.labels, o, ce);
      const xt = tf.tensor2d(x, [n, d]), wt = tf.variable(tf.tensor2d(w, [rows, d]));
      const { value, grads } = tf.variableGrads(() =>
        marginLoss(xt, wt, p.labels, { ...o, ...ce, backend: "cpu" } as never)
      );
      assertClose([value.dataSync()[0]], [want.loss], 1e-6, `${o.kind}: loss`);
      const gw = grads[wt.name].dataSync();
      assertClose(gw, want.gradW, 1e-6, `${o.kind}: dL/dW`, maxAbs(want.gradW));
      tf.dispose([xt, wt, value, ...Object.values(grads)]);
    }
  },
});
