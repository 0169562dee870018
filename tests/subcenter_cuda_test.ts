// subcenter_cuda_test.ts: sub-center ArcFace (kind "subcenter", W of C·K rows) on the CUDA
// backend (the emulator where there is no GPU), against the CPU backend and the independent
// float64 reference (reference_adaptive.ts):
// - the loss and its gradients, float64 and float32, in one class block and in several (the
//   workspace option), with reduction "sum" and with gradients: false; more classes than one
//   chunk of the log-sum-exp holds;
// - ties between sub-centers (the lowest takes the gradient, the others get exactly 0), a winner
//   other than the first, parallel, antiparallel and zero rows, a NaN feature row;
// - K = 1 is arcface on CUDA, bit for bit;
// - class shards over a backend list (CUDA only, and CPU with CUDA) equal one backend;
// - MarginHead on CUDA: steps, evaluate and predict equal the CPU head's.

import assert from "node:assert/strict";
import { loss, MarginHead } from "../mod.ts";
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
import { type AdaptiveSpec, referenceAdaptive, referenceGradients } from "./reference_adaptive.ts";

// deno-lint-ignore no-explicit-any
type Any = any;
type Floats = Float64Array | Float32Array;

const SPEC: AdaptiveSpec = { kind: "subcenter", scale: 8, margin: 0.5, subcenters: 3 };
const ignore = !cudaAvailable;

function run(
  x: Floats,
  w: Floats,
  labels: Int32Array,
  o: AdaptiveSpec,
  extra: Record<string, unknown>,
): Any {
  return loss(x, w, labels, { ...o, ...extra } as never);
}

function problem(seed: number, n: number, d: number, C: number, K: number) {
  const rng = new Rng(seed);
  return {
    x: randomArray(rng, n * d, -1.2, 1.2),
    w: randomArray(rng, C * K * d),
    labels: randomLabels(rng, n, C),
  };
}

/** CUDA's result against the CPU's: the loss, and the gradients relative to their largest element. */
function same(cuda: Any, cpu: Any, tol: number, what: string, gradients = true) {
  assertClose([cuda.loss], [cpu.loss], tol, `${what}: loss`);
  if (!gradients) {
    assert.equal(cuda.gradX, undefined, `${what}: no dL/dx`);
    return;
  }
  assert.ok(allFinite(cuda.gradX) && allFinite(cuda.gradW), `${what}: finite gradients`);
  assertClose(cuda.gradX, cpu.gradX, tol, `${what}: dL/dx`, Math.max(maxAbs(cpu.gradX), 1e-300));
  assertClose(cuda.gradW, cpu.gradW, tol, `${what}: dL/dW`, Math.max(maxAbs(cpu.gradW), 1e-300));
}

Deno.test({
  name:
    "subcenter cuda: loss and gradients equal the CPU backend and the reference (blocks, dtypes, options)",
  ignore,
  fn: () => {
    for (const [n, d, C, K] of [[24, 8, 20, 3], [7, 5, 6, 2], [1, 1, 1, 4], [13, 37, 9, 5]]) {
      const o = { ...SPEC, subcenters: K };
      const p = problem(100 + n, n, d, C, K);
      // float64: the reference itself, then the CPU backend, to 1e-12
      const ref = referenceAdaptive(p.x, p.w, p.labels, d, o);
      const g = referenceGradients(p.x, p.w, p.labels, d, o);
      const one = run(p.x, p.w, p.labels, o, { backend: "cuda" });
      const at = `n ${n} d ${d} C ${C} K ${K}`;
      assertClose([one.loss], [ref.loss], 1e-9, `${at}: loss against the reference`);
      const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw), 1e-12);
      assertClose(one.gradX, g.gx, 1e-6, `${at}: dL/dx against the reference`, floor);
      assertClose(one.gradW, g.gw, 1e-6, `${at}: dL/dW against the reference`, floor);
      for (const f32 of [false, true]) {
        const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w;
        const tol = f32 ? 2e-4 : 1e-12, what = `${at} ${f32 ? "f32" : "f64"}`;
        const bytes = f32 ? 4 : 8;
        const cpu = run(x, w, p.labels, o, { backend: "cpu" });
        // one block; blocks of 2 classes (the workspace holds n x 2·K products and their classes)
        for (const workspace of [undefined, 2 * K * n * bytes * 2]) {
          const extra = workspace === undefined ? {} : { workspace };
          const c = run(x, w, p.labels, o, { backend: "cuda", ...extra });
          same(c, cpu, tol, `${what} workspace ${workspace}`);
          const sum = run(x, w, p.labels, o, { backend: "cuda", reduction: "sum", ...extra });
          same(
            sum,
            run(x, w, p.labels, o, { backend: "cpu", reduction: "sum", ...extra }),
            tol,
            `${what} sum`,
          );
          assertClose([sum.loss], [cpu.loss * n], tol, `${what}: sum is n times the mean`);
          const alone = run(x, w, p.labels, o, { backend: "cuda", gradients: false, ...extra });
          same(alone, cpu, tol, `${what} gradients: false`, false);
        }
        run(x, w, p.labels, o, { backend: "cuda", workspace: 64 << 20 }); // the default again
        run(x, w, p.labels, o, { backend: "cpu", workspace: 64 << 20 });
      }
    }
  },
});

Deno.test({
  name: "subcenter cuda: more classes than one chunk of the log-sum-exp (4101 classes, K = 2)",
  ignore,
  fn: () => {
    const n = 3, d = 4, C = 4101, K = 2, o = { ...SPEC, subcenters: K };
    const p = problem(7, n, d, C, K);
    p.labels.set([0, 4100, 2050]);
    const cpu = run(p.x, p.w, p.labels, o, { backend: "cpu" });
    same(run(p.x, p.w, p.labels, o, { backend: "cuda" }), cpu, 1e-12, "4101 classes");
    const blocks = run(p.x, p.w, p.labels, o, { backend: "cuda", workspace: 2051 * K * n * 8 * 2 });
    same(blocks, cpu, 1e-12, "4101 classes, 2 blocks");
    run(p.x, p.w, p.labels, o, { backend: "cuda", workspace: 64 << 20 });
  },
});

Deno.test({
  name: "subcenter cuda: ties go to the lowest sub-center; winners past the first; singular rows",
  ignore,
  fn: () => {
    const n = 8, d = 6, C = 5, K = 3;
    const rng = new Rng(21);
    const x = randomArray(rng, n * d),
      w = randomArray(rng, C * d),
      labels = randomLabels(rng, n, C);
    for (const f32 of [false, true]) {
      const xs = f32 ? toF32(x) : x, tol = f32 ? 2e-4 : 1e-12, what = f32 ? "f32" : "f64";
      // class j's K sub-centers all equal to its one arcface row: the loss of arcface, and the
      // gradient to the lowest sub-center, exactly 0 to the others
      const tied = f32 ? new Float32Array(C * K * d) : new Float64Array(C * K * d);
      for (let j = 0; j < C; j++) {
        for (let k = 0; k < K; k++) tied.set(w.subarray(j * d, (j + 1) * d), (j * K + k) * d);
      }
      const ws = f32 ? toF32(w) : w;
      const arc = run(xs, ws, labels, { kind: "arcface", scale: 8, margin: 0.5 } as never, {
        backend: "cuda",
      });
      const t = run(xs, tied, labels, { ...SPEC, subcenters: K }, { backend: "cuda" });
      assertClose([t.loss], [arc.loss], f32 ? 1e-6 : 1e-14, `${what} tied: the loss of one`);
      assertClose(t.gradX, arc.gradX, tol, `${what} tied: dL/dx`, maxAbs(arc.gradX));
      for (let j = 0; j < C; j++) {
        const first = t.gradW.subarray(j * K * d, (j * K + 1) * d);
        assertClose(
          first,
          arc.gradW.subarray(j * d, (j + 1) * d),
          tol,
          `${what} class ${j}`,
          maxAbs(arc.gradW),
        );
        assert.ok(maxAbs(first) > 0, `${what} class ${j}: the lowest gets a gradient`);
        assert.equal(
          maxAbs(t.gradW.subarray((j * K + 1) * d, (j + 1) * K * d)),
          0,
          `${what} class ${j}: others 0`,
        );
      }
      same(
        t,
        run(xs, tied, labels, { ...SPEC, subcenters: K }, { backend: "cpu" }),
        tol,
        `${what} tied`,
      );
      // sub-centers 1 and 2 of every class equal, 0 apart: sample rows made to pick 1 and 2
      const part = randomArray(new Rng(22), C * K * d);
      for (let j = 0; j < C; j++) {
        part.copyWithin((j * K + 2) * d, (j * K + 1) * d, (j * K + 2) * d);
      }
      const xp = randomArray(new Rng(23), n * d);
      for (let i = 0; i < n; i += 2) {
        const r = labels[i] * K + 1; // the feature along sub-center 1 (= 2) of its class
        for (let k = 0; k < d; k++) xp[i * d + k] = 0.9 * part[r * d + k] + 0.1 * xp[i * d + k];
      }
      xp.fill(0, d, 2 * d); // a zero feature row
      for (let k = 0; k < d; k++) xp[3 * d + k] = -2 * part[(labels[3] * K) * d + k]; // antiparallel
      const pp = f32 ? toF32(part) : part, xq = f32 ? toF32(xp) : xp;
      const o = { ...SPEC, subcenters: K };
      const c = run(xq, pp, labels, o, { backend: "cuda" });
      same(c, run(xq, pp, labels, o, { backend: "cpu" }), tol, `${what} partial ties`);
      assert.equal(
        maxAbs(c.gradX.subarray(d, 2 * d)),
        0,
        `${what}: no gradient through a zero row`,
      );
      if (!f32) {
        const ref = referenceAdaptive(xq as Float64Array, part, labels, d, o);
        assertClose([c.loss], [ref.loss], 1e-9, "partial ties against the reference");
        const g = referenceGradients(xq as Float64Array, part, labels, d, o);
        const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw));
        assertClose(c.gradW, g.gw, 1e-6, "partial ties: dL/dW against the reference", floor);
      }
      // row jK + 2 ties with row jK + 1 for every sample: it never wins, as target or not
      for (let j = 0; j < C; j++) {
        const r = j * K + 2;
        assert.equal(
          maxAbs(c.gradW.subarray(r * d, (r + 1) * d)),
          0,
          `${what} row ${r}: never wins`,
        );
        assert.ok(maxAbs(c.gradW.subarray((r - 1) * d, r * d)) > 0, `${what} row ${r - 1}: wins`);
      }
    }
    // a NaN feature: that row's loss is NaN on both backends, the others as on the CPU
    const p = problem(24, 5, 4, 3, K), o = { ...SPEC, subcenters: K };
    p.x[2 * 4 + 1] = NaN;
    const a = run(p.x, p.w, p.labels, o, { backend: "cpu", reduction: "none", gradients: false });
    const b = run(p.x, p.w, p.labels, o, { backend: "cuda", reduction: "none", gradients: false });
    const ra: number[] = Array.from(a.losses), rb: number[] = Array.from(b.losses);
    assert.ok(Number.isNaN(ra[2]) && Number.isNaN(rb[2]), "NaN row on both");
    assertClose(
      rb.filter((_, i) => i !== 2),
      ra.filter((_, i) => i !== 2),
      1e-12,
      "the other rows",
    );
  },
});

Deno.test({
  name: "subcenter cuda: K = 1 is arcface, bit for bit",
  ignore,
  fn: () => {
    const n = 9, d = 6, C = 7;
    for (const f32 of [false, true]) {
      const p = problem(31, n, d, C, 1);
      const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w;
      for (const extra of [{}, { workspace: 3 * n * (f32 ? 4 : 8) }]) {
        const e = { backend: "cuda", ...extra };
        const a = run(x, w, p.labels, { kind: "arcface", scale: 30, margin: 0.5 } as never, e);
        const s = run(
          x,
          w,
          p.labels,
          { kind: "subcenter", scale: 30, margin: 0.5, subcenters: 1 },
          e,
        );
        assert.equal(s.loss, a.loss);
        assert.deepEqual(s.gradX, a.gradX);
        assert.deepEqual(s.gradW, a.gradW);
      }
      run(x, w, p.labels, { ...SPEC, subcenters: 1 }, { backend: "cuda", workspace: 64 << 20 });
    }
  },
});

Deno.test({
  name: "subcenter cuda: class shards over a backend list equal one backend",
  ignore,
  fn: () => {
    const n = 11, d = 5, C = 7, K = 3, o = { ...SPEC, subcenters: K };
    for (const f32 of [false, true]) {
      const p = problem(41, n, d, C, K);
      const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w;
      const tol = f32 ? 2e-4 : 1e-12, what = f32 ? "f32" : "f64";
      const one = run(x, w, p.labels, o, { backend: "cpu" });
      for (const backend of [["cuda", "cuda"], ["cpu", "cuda"], ["cuda", "cpu", "cuda"]]) {
        const at = `${what} ${backend.join("+")}`;
        same(run(x, w, p.labels, o, { backend }), one, tol, at);
        same(
          run(x, w, p.labels, o, { backend, gradients: false }),
          one,
          tol,
          `${at} gradients: false`,
          false,
        );
      }
    }
  },
});

Deno.test({
  name: "subcenter cuda: MarginHead steps, evaluate and predict equal the CPU head",
  ignore,
  fn: () => {
    const N = 6, D = 5, C = 7, K = 3;
    const w = randomArray(new Rng(51), C * K * D), rng = new Rng(52);
    const head = (backend: unknown) =>
      new MarginHead({
        classes: C,
        features: D,
        dtype: "float64",
        backend,
        optimizer: { lr: 0.1 },
        weights: w,
        ...SPEC,
      } as Any);
    using cpu = head("cpu"), cuda = head("cuda"), mixed = head(["cpu", "cuda"]);
    for (let step = 0; step < 3; step++) {
      const x = randomArray(rng, N * D, -2, 2), labels = randomLabels(rng, N, C);
      const a = cpu.step(x, labels);
      for (const [h, what] of [[cuda, "cuda"], [mixed, "cpu+cuda"]] as const) {
        const b = h.step(x, labels), at = `step ${step + 1} ${what}`;
        assert.ok(Math.abs(a.loss - b.loss) <= 1e-10 * Math.max(1, a.loss), `${at}: loss`);
        assertClose(b.gradX, a.gradX, 1e-10, `${at}: dL/dx`, maxAbs(a.gradX));
        assertClose(h.weights(), cpu.weights(), 1e-10, `${at}: W`, maxAbs(cpu.weights()));
      }
    }
    const x = randomArray(rng, N * D, -2, 2), labels = randomLabels(rng, N, C);
    const e = cpu.evaluate(x, labels);
    for (const h of [cuda, mixed]) {
      const f = h.evaluate(x, labels);
      assert.ok(Math.abs(f.loss - e.loss) <= 1e-10 * Math.max(1, e.loss), "evaluate: loss");
      assert.equal(f.accuracy, e.accuracy, "evaluate: accuracy");
      for (const k of [1, 3, C]) {
        const p = h.predict(x, { k }), q = cpu.predict(x, { k });
        assert.deepEqual(p.indices, q.indices, `predict k ${k}`);
        assertClose(p.scores, q.scores, 1e-12, `predict k ${k}: scores`, 1);
      }
    }
  },
});
