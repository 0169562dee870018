// adaptive_test.ts: the adaptive kinds (subcenter, adaface, curricularface, magface) through the
// fused loss on the CPU:
// - the loss, its gradients and the updated state against the independent float64 reference
//   (reference_adaptive.ts) and its central differences with the spec's constants held fixed,
//   in one class block and in several, float64 and float32;
// - adversarial geometry: x_i parallel and antiparallel to its target row, zero rows of x and W,
//   norms where AdaFace's and MagFace's clips bite, ties between sub-centers (exact, whatever the
//   BLAS's roundings);
// - K = 1 is ArcFace; class shards (a backend list) equal one backend; the state with
//   `gradients: false`; the options' errors.

import assert from "node:assert/strict";
import { forward, LargeMarginSoftmax, loss } from "../mod.ts";
import { rowsPerClass, SPECS } from "./adaptive_specs.ts";
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

/** The library against the reference and its central differences, at one point. */
function check(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  what: string,
  extra: Record<string, unknown> = {},
  gradTol = 1e-6,
): Result {
  const r = run(x, w, labels, o, extra);
  const ref = referenceAdaptive(x, w, labels, d, o);
  assertClose([r.loss], [ref.loss], 1e-9, `${what}: loss`);
  for (const key of ["batchMean", "batchStd", "t"] as const) {
    assert.equal(r[key] === undefined, ref[key] === undefined, `${what}: ${key} returned`);
    if (ref[key] !== undefined) assertClose([r[key]], [ref[key]!], 1e-12, `${what}: ${key}`);
  }
  const g = referenceGradients(x, w, labels, d, o);
  assert.ok(allFinite(r.gradX) && allFinite(r.gradW), `${what}: finite gradients`);
  const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw), 1e-12);
  assertClose(r.gradX, g.gx, gradTol, `${what}: dL/dx`, floor);
  assertClose(r.gradW, g.gw, gradTol, `${what}: dL/dW`, floor);
  return r;
}

function problem(seed: number, n: number, d: number, C: number, o: AdaptiveSpec, spread = 1.2) {
  const rng = new Rng(seed);
  const x = randomArray(rng, n * d, -spread, spread);
  const w = randomArray(rng, C * rowsPerClass(o) * d);
  return { x, w, labels: randomLabels(rng, n, C), rng };
}

for (const o of SPECS) {
  Deno.test(`adaptive ${o.kind}: loss, state and gradients against the reference (one block and several)`, () => {
    const n = 7, d = 5, C = 6;
    const { x, w, labels } = problem(11, n, d, C, o);
    const one = check(x, w, labels, d, o, `${o.kind} one block`);
    // Blocks of 2 classes: the workspace holds n x 2 classes (twice, with the buffer beside).
    const small = 2 * rowsPerClass(o) * n * 8 * 2;
    const blocked = check(x, w, labels, d, o, `${o.kind} blocks`, { workspace: small });
    assertClose([blocked.loss], [one.loss], 1e-13, `${o.kind}: blocks equal one block`);
    assertClose(blocked.gradX, one.gradX, 1e-12, `${o.kind}: blocks' dL/dx`, maxAbs(one.gradX));
    loss(x, w, labels, { ...o, backend: "cpu", workspace: 64 << 20 } as never); // the default again
  });

  Deno.test(`adaptive ${o.kind}: float32 within float rounding of the reference`, () => {
    const n = 9, d = 8, C = 7;
    const { x, w, labels } = problem(12, n, d, C, o);
    const r = run(toF32(x), toF32(w), labels, o);
    const ref = referenceAdaptive(
      Float64Array.from(toF32(x)),
      Float64Array.from(toF32(w)),
      labels,
      d,
      o,
    );
    assertClose([r.loss], [ref.loss], 5e-4, `${o.kind} float32: loss`);
    const g = referenceGradients(
      Float64Array.from(toF32(x)),
      Float64Array.from(toF32(w)),
      labels,
      d,
      o,
    );
    const floor = Math.max(maxAbs(g.gx), maxAbs(g.gw));
    assertClose(r.gradX, g.gx, 5e-4, `${o.kind} float32: dL/dx`, floor);
    assertClose(r.gradW, g.gw, 5e-4, `${o.kind} float32: dL/dW`, floor);
  });

  Deno.test(`adaptive ${o.kind}: parallel, antiparallel and zero rows stay finite and exact`, () => {
    const n = 6, d = 4, C = 3, K = rowsPerClass(o);
    const { x, w } = problem(13, n, d, C, o);
    const labels = new Int32Array([0, 1, 2, 0, 1, 2]);
    const row = (i: number, r: number, f: number) => {
      for (let k = 0; k < d; k++) x[i * d + k] = f * w[r * d + k];
    };
    row(0, 0, 1.5); // parallel to its target (class 0's first sub-center)
    row(1, 1 * K, -1.5); // antiparallel
    x.fill(0, 2 * d, 3 * d); // a zero feature
    w.fill(0, (2 * K + (K > 1 ? 1 : 0)) * d, (2 * K + (K > 1 ? 1 : 0) + 1) * d); // a zero W row
    const r = run(x, w, labels, o);
    assert.ok(Number.isFinite(r.loss) && allFinite(r.gradX) && allFinite(r.gradW), "finite");
    const ref = referenceAdaptive(x, w, labels, d, o);
    assertClose([r.loss], [ref.loss], 1e-9, `${o.kind}: loss at singular pairs`);
    // No gradient through a zero vector.
    assert.equal(maxAbs(r.gradX.subarray(2 * d, 3 * d)), 0, "zero x row: no gradient");
  });
}

Deno.test("adaptive subcenter: K = 1 is arcface; gradients go to the winning sub-center only", () => {
  const n = 8, d = 6, C = 5;
  const rng = new Rng(21);
  const x = randomArray(rng, n * d), w = randomArray(rng, C * d), labels = randomLabels(rng, n, C);
  const a = loss(x, w, labels, { kind: "arcface", scale: 30, margin: 0.5, backend: "cpu" });
  const s = run(x, w, labels, { kind: "subcenter", scale: 30, margin: 0.5, subcenters: 1 });
  assert.equal(s.loss, a.loss);
  assert.deepEqual(s.gradX, a.gradX);
  assert.deepEqual(s.gradW, a.gradW);
  // Ties: class j's three sub-centers identical; the lowest wins, the others get nothing.
  const K = 3, wk = new Float64Array(C * K * d);
  for (let j = 0; j < C; j++) {
    for (let k = 0; k < K; k++) wk.set(w.subarray(j * d, (j + 1) * d), (j * K + k) * d);
  }
  const t = run(x, wk, labels, { kind: "subcenter", scale: 30, margin: 0.5, subcenters: K });
  assertClose([t.loss], [a.loss], 1e-14, "tied sub-centers: the loss of one");
  for (let j = 0; j < C; j++) {
    assertClose(
      t.gradW.subarray(j * K * d, (j * K + 1) * d),
      a.gradW.subarray(j * d, (j + 1) * d),
      1e-12,
      `class ${j}: the lowest sub-center takes the gradient`,
      maxAbs(a.gradW),
    );
    assert.equal(maxAbs(t.gradW.subarray((j * K + 1) * d, (j + 1) * K * d)), 0, "others: 0");
  }
});

Deno.test("adaptive subcenter: equal sub-centers tie exactly, whatever the BLAS's roundings", () => {
  // At this size OpenBLAS's float32 products of equal rows differ by an ulp at some columns (its
  // blocks' edges): the lowest of the equal sub-centers must still take every gradient.
  const n = 65, d = 9, C = 70, K = 3;
  for (const backend of ["cpu", ...(cudaAvailable ? ["cuda"] : [])]) {
    for (const seed of backend === "cpu" ? [1, 2, 3] : [1]) { // the emulated GPU is slow
      const rng = new Rng(100 + seed);
      const x = randomArray(rng, n * d), w = randomArray(rng, C * K * d);
      for (let j = 0; j < C; j++) w.copyWithin((j * K + 2) * d, (j * K + 1) * d, (j * K + 2) * d);
      const labels = randomLabels(rng, n, C);
      for (const [xs, ws] of [[toF32(x), toF32(w)], [x, w]]) {
        for (const workspace of [64 << 20, 2 * K * n * 8 * 2]) {
          const r = run(xs, ws, labels, {
            kind: "subcenter",
            scale: 16,
            margin: 0.5,
            subcenters: K,
          }, {
            backend,
            workspace,
          });
          for (let j = 0; j < C; j++) {
            const twin = r.gradW.subarray((j * K + 2) * d, (j * K + 3) * d);
            assert.equal(
              maxAbs(twin),
              0,
              `${backend} seed ${seed}: class ${j}'s upper twin takes nothing`,
            );
          }
        }
      }
      loss(
        x,
        w,
        labels,
        {
          kind: "subcenter",
          scale: 16,
          margin: 0.5,
          subcenters: K,
          backend,
          workspace: 64 << 20,
        } as never,
      );
    }
  }
});

Deno.test("adaptive adaface, magface: norms where the clips bite", () => {
  const n = 6, d = 4, C = 3;
  const ada = SPECS[1], mag = SPECS[3];
  const { x, w, labels } = problem(31, n, d, C, ada);
  const scaleRow = (i: number, f: number) => {
    for (let k = 0; k < d; k++) x[i * d + k] *= f;
  };
  scaleRow(0, 1e-5); // |x| < 0.001 (AdaFace) and < l_a (MagFace)
  scaleRow(1, 200); // > 100 and > u_a
  scaleRow(2, 4); // inside AdaFace's clip, past MagFace's u_a = 3
  check(x, w, labels, d, ada, "adaface clipped norms");
  check(x, w, labels, d, mag, "magface clamped norms");
  // AdaFace: h = 0 gives z = 0, the target s (cos θ - m) with the cosine clamp.
  check(x, w, labels, d, { ...ada, h: 0 }, "adaface h = 0");
});

Deno.test("adaptive: the state comes back also with gradients: false, and N = 1", () => {
  for (const o of [SPECS[1], SPECS[2]]) {
    const { x, w, labels } = problem(41, 5, 4, 3, o);
    const r = run(x, w, labels, o, { gradients: false });
    const ref = referenceAdaptive(x, w, labels, 4, o);
    if (o.kind === "adaface") {
      assertClose([r.batchMean, r.batchStd], [ref.batchMean!, ref.batchStd!], 1e-12, "ada");
      // The next step takes the state returned: a round trip.
      const next = run(x, w, labels, { ...o, batchMean: r.batchMean, batchStd: r.batchStd });
      const refNext = referenceAdaptive(x, w, labels, 4, {
        ...o,
        batchMean: ref.batchMean,
        batchStd: ref.batchStd,
      });
      assertClose([next.batchMean, next.loss], [refNext.batchMean!, refNext.loss], 1e-9, "next");
    } else {
      assertClose([r.t], [ref.t!], 1e-12, "curricularface t");
    }
    const one = run(x.subarray(0, 4), w, labels.subarray(0, 1), o);
    const refOne = referenceAdaptive(x.subarray(0, 4), w, labels.subarray(0, 1), 4, o);
    assertClose([one.loss], [refOne.loss], 1e-9, `${o.kind}: N = 1`);
    if (o.kind === "adaface") assertClose([one.batchStd], [refOne.batchStd!], 1e-12, "σ_B = 0");
  }
});

Deno.test("adaptive: class shards equal one backend (T_i and t across shards)", () => {
  for (const o of SPECS) {
    const n = 7, d = 5, C = 7;
    const { x, w, labels } = problem(51, n, d, C, o);
    const one = run(x, w, labels, o);
    const shards = run(x, w, labels, o, { backend: ["cpu", "cpu", "cpu"] });
    assertClose([shards.loss], [one.loss], 1e-13, `${o.kind} shards: loss`);
    assertClose(shards.gradX, one.gradX, 1e-12, `${o.kind} shards: dL/dx`, maxAbs(one.gradX));
    assertClose(shards.gradW, one.gradW, 1e-12, `${o.kind} shards: dL/dW`, maxAbs(one.gradW));
    if (o.kind === "adaface") assert.equal(shards.batchMean, one.batchMean);
    if (o.kind === "curricularface") assert.equal(shards.t, one.t);
    const evalOnly = run(x, w, labels, o, { backend: ["cpu", "cpu"], gradients: false });
    assertClose([evalOnly.loss], [one.loss], 1e-13, `${o.kind} shards without gradients`);
  }
});

Deno.test("adaptive: errors name the option, the expected and the actual value", () => {
  const x = new Float64Array(8), w = new Float64Array(12), labels = new Int32Array([0, 1]);
  const bad: [Record<string, unknown>, RegExp][] = [
    [
      { kind: "subcenter", scale: 64, margin: 0.5, subcenters: 0 },
      /subcenters: expected an integer in \[1, 65536\], got 0/,
    ],
    [{ kind: "subcenter", scale: 64, margin: 0.5 }, /subcenters: expected an integer/],
    [
      { kind: "subcenter", scale: 64, margin: 0.5, subcenters: 5 },
      /w: expected C·K rows .*K = 5.*got 3 rows/,
    ],
    [{
      kind: "adaface",
      scale: 64,
      margin: 0.4,
      h: 0.333,
      tAlpha: 1.5,
      batchMean: 20,
      batchStd: 100,
    }, /tAlpha: expected a number in \[0, 1\], got 1.5/],
    [{
      kind: "adaface",
      scale: 64,
      margin: 0.4,
      h: 0.333,
      tAlpha: 0.01,
      batchMean: NaN,
      batchStd: 100,
    }, /batchMean: expected a finite number, got NaN/],
    [
      { kind: "adaface", scale: 64, margin: 0.4, h: 0.333, tAlpha: 0.01, batchMean: 20 },
      /batchStd: expected a number, got undefined/,
    ],
    [
      { kind: "curricularface", scale: 64, margin: 2, tAlpha: 0.01, t: 0 },
      /margin: expected a number in \[0, π\/2\) for CurricularFace, got 2/,
    ],
    [
      { kind: "curricularface", scale: 64, margin: 0.5, tAlpha: 0.01, t: 0, h: 1 },
      /h: not an option of kind "curricularface"/,
    ],
    [{
      kind: "magface",
      scale: 64,
      lowerMargin: 0.45,
      upperMargin: 0.8,
      lowerNorm: 10,
      upperNorm: 10,
      lambdaG: 35,
    }, /upperNorm: expected a number > lowerNorm \(10\), got 10/],
    [{
      kind: "magface",
      scale: 64,
      lowerMargin: 0.45,
      upperMargin: 0.8,
      lowerNorm: 0,
      upperNorm: 110,
      lambdaG: 35,
    }, /lowerNorm: expected a finite number > 0, got 0/],
  ];
  for (const [o, re] of bad) {
    assert.throws(() => loss(x, w, labels, o as never), re, JSON.stringify(o));
  }
  const ok = {
    kind: "adaface",
    scale: 64,
    margin: 0.4,
    h: 0.333,
    tAlpha: 0.01,
    batchMean: 20,
    batchStd: 100,
  };
  // Still usable after (forward and the layer's serve the adaptive kinds: op_adaptive_test.ts).
  assert.ok(Number.isFinite(loss(x, w, labels, ok as never).loss));
  assert.ok(allFinite(forward(x, w, labels, ok as never).logits));
});

Deno.test("adaptive: the layer carries AdaFace's and CurricularFace's state (and toJSON keeps it)", () => {
  for (const o of SPECS) {
    const n = 6, d = 4, C = 5;
    const { x, w, labels } = problem(61, n, d, C, o);
    using layer = new LargeMarginSoftmax({ ...o, backend: "cpu" } as never);
    let spec: AdaptiveSpec = { ...o };
    for (let step = 0; step < 3; step++) {
      const got = layer.loss(x, w, labels);
      const want = run(x, w, labels, spec);
      assert.equal(got.loss, want.loss, `${o.kind} step ${step}: the loss of the chained calls`);
      assert.deepEqual(got.gradW, want.gradW);
      spec = {
        ...spec,
        ...(want.batchMean === undefined
          ? {}
          : { batchMean: want.batchMean, batchStd: want.batchStd }),
        ...(want.t === undefined ? {} : { t: want.t }),
      };
      if (o.kind === "adaface") assert.equal(got.batchStd, want.batchStd);
      if (o.kind === "curricularface") assert.equal(got.t, want.t);
    }
    const saved = JSON.parse(JSON.stringify(layer));
    if (o.kind === "adaface") assert.equal(saved.batchMean, spec.batchMean);
    if (o.kind === "curricularface") assert.equal(saved.t, spec.t);
    using resumed = new LargeMarginSoftmax(saved);
    assert.equal(resumed.loss(x, w, labels).loss, layer.loss(x, w, labels).loss, "resumed");
  }
});

Deno.test("adaptive: a larger batch (threads, several blocks) against the reference", () => {
  for (const o of SPECS) {
    const n = 300, d = 24, C = 60, K = rowsPerClass(o);
    const { x, w, labels } = problem(71, n, d, C, o, 0.6);
    const ref = referenceAdaptive(x, w, labels, d, o);
    const one = run(x, w, labels, o);
    const blocked = run(x, w, labels, o, { workspace: 7 * K * n * 8 * 2 });
    loss(x, w, labels, { ...o, backend: "cpu", workspace: 64 << 20 } as never);
    assertClose([one.loss, blocked.loss], [ref.loss, ref.loss], 1e-9, `${o.kind}: loss`);
    assertClose(blocked.gradX, one.gradX, 1e-11, `${o.kind}: blocks' dL/dx`, maxAbs(one.gradX));
    assertClose(blocked.gradW, one.gradW, 1e-11, `${o.kind}: blocks' dL/dW`, maxAbs(one.gradW));
    const f32 = run(toF32(x), toF32(w), labels, o);
    assertClose([f32.loss], [ref.loss], 5e-4, `${o.kind}: float32 loss`);
    assertClose(f32.gradW, one.gradW, 5e-4, `${o.kind}: float32 dL/dW`, maxAbs(one.gradW));
    if (ref.batchMean !== undefined) assertClose([one.batchMean], [ref.batchMean], 1e-12, "μ");
    if (ref.t !== undefined) assertClose([one.t, f32.t], [ref.t, ref.t], 1e-6, "t");
  }
});

Deno.test({
  name: "adaptive cuda: AdaFace, CurricularFace and MagFace equal the CPU backend (shards too)",
  ignore: !cudaAvailable,
  fn: () => {
    for (const o of SPECS.slice(1)) {
      for (const f32 of [false, true]) {
        const n = 24, d = 8, C = 20;
        const p = problem(81, n, d, C, o);
        const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w;
        const tol = f32 ? 2e-4 : 1e-10;
        const cpu = run(x, w, p.labels, o, { backend: "cpu" });
        const what = `${o.kind} ${f32 ? "f32" : "f64"}`;
        for (const extra of [{}, { workspace: 7 * n * 8 * 2 }, { backend: ["cpu", "cuda"] }]) {
          const cuda = run(x, w, p.labels, o, { backend: "cuda", ...extra });
          assertClose([cuda.loss], [cpu.loss], tol, `${what} ${JSON.stringify(extra)}: loss`);
          const floor = maxAbs(cpu.gradW);
          assertClose(cuda.gradX, cpu.gradX, tol, `${what}: dL/dx`, maxAbs(cpu.gradX));
          assertClose(cuda.gradW, cpu.gradW, tol, `${what}: dL/dW`, floor);
          for (const key of ["batchMean", "batchStd", "t"]) {
            if (cpu[key] !== undefined) {
              assertClose([cuda[key]], [cpu[key]], tol, `${what}: ${key}`);
            }
          }
        }
        loss(x, w, p.labels, { ...o, backend: "cuda", workspace: 64 << 20 } as never);
      }
    }
  },
});
