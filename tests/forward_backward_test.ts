// forward_backward_test.ts: the library (CPU backend) against the independent reference:
// float64 to ~1e-12, float32 to ~1e-5 (inputs rounded to float32), m = 1 is exactly the plain
// inner product for any lambda, m = 2, 3, 4 are the Caffe closed forms; plus the options and
// array layouts mod.ts accepts (features, subarray views, "auto"), and inputs left untouched.

import assert from "node:assert/strict";
import { backward, forward } from "../mod.ts";
import {
  boundaryProblem,
  compareWithReference,
  cudaAvailable,
  describeErrors,
  type DType,
  LAMBDAS,
  MARGINS,
  SHAPES,
} from "./check.ts";
import {
  assertClose,
  firstDifference,
  randomArray,
  randomLabels,
  randomProblem,
  Rng,
  rowScale,
  toF32,
  Worst,
} from "./helpers.ts";
import {
  caffeTargetLogit,
  plainBackward,
  plainForward,
  psiCaffe,
  referenceForward,
} from "./reference.ts";

const TOL: Record<DType, number> = { float64: 1e-12, float32: 1e-5 };

for (const dtype of ["float64", "float32"] as const) {
  Deno.test(`reference cpu ${dtype}: forward and backward, m 1..6 and 16, odd shapes`, () => {
    const rng = new Rng(dtype === "float64" ? 201 : 202);
    const worst = new Worst();
    for (const [n, d, c] of [...SHAPES, [64, 100, 129], [300, 40, 257]]) {
      for (const m of [...MARGINS, 11, 16]) {
        for (const lambda of [...LAMBDAS, 3.25]) {
          const p = randomProblem(rng, n, d, c);
          const e = compareWithReference(p, m, lambda, "cpu", dtype);
          worst.add("logits", e.logits);
          worst.add("gradX", e.gradX);
          worst.add("gradW", e.gradW);
          assert.ok(
            e.max <= TOL[dtype],
            `cpu ${dtype} (N,D,C)=(${n},${d},${c}) m=${m} lambda=${lambda}: ${describeErrors(e)}`,
          );
        }
      }
    }
    worst.report(`reference cpu ${dtype}`);
  });

  Deno.test(`reference cpu ${dtype}: inputs at angle k pi/m +- 1e-3 and +- 1e-7`, () => {
    const rng = new Rng(dtype === "float64" ? 203 : 204);
    const worst = new Worst();
    for (const m of [...MARGINS, 16]) {
      for (const lambda of LAMBDAS) {
        for (const delta of [1e-3, 1e-7]) {
          const p = boundaryProblem(rng, m, 6, 4, delta);
          const e = compareWithReference(p, m, lambda, "cpu", dtype);
          worst.add("all", e.max);
          assert.ok(
            e.max <= TOL[dtype],
            `cpu ${dtype} boundary m=${m} lambda=${lambda} delta=${delta}: ${describeErrors(e)}`,
          );
        }
      }
    }
    worst.report(`reference cpu ${dtype} near boundaries`);
  });

  Deno.test(`reference cpu ${dtype}: m = 2, 3, 4 equal the Caffe closed forms`, () => {
    const rng = new Rng(dtype === "float64" ? 205 : 206);
    const worst = new Worst();
    for (const m of [2, 3, 4]) {
      for (const lambda of LAMBDAS) {
        for (const p of [randomProblem(rng, 23, 7, 5), boundaryProblem(rng, m, 7, 5)]) {
          const e = compareWithReference(p, m, lambda, "cpu", dtype, psiCaffe);
          worst.add(`m=${m}`, e.max);
          assert.ok(e.max <= TOL[dtype], `Caffe m=${m} lambda=${lambda}: ${describeErrors(e)}`);
          // And the target logits against Caffe's own expression in x.w and |x||w|.
          const x = dtype === "float32" ? toF32(p.x) : p.x;
          const w = dtype === "float32" ? toF32(p.w) : p.w;
          const { logits } = dtype === "float32"
            ? forward(x as Float32Array, w as Float32Array, p.labels, { margin: m, lambda })
            : forward(x as Float64Array, w as Float64Array, p.labels, { margin: m, lambda });
          for (let i = 0; i < p.n; ++i) {
            const y = p.labels[i];
            let dot = 0, xx = 0, ww = 0;
            for (let k = 0; k < p.d; ++k) {
              dot += x[i * p.d + k] * w[y * p.d + k];
              xx += x[i * p.d + k] ** 2;
              ww += w[y * p.d + k] ** 2;
            }
            const nn = Math.sqrt(xx) * Math.sqrt(ww);
            const t = caffeTargetLogit(dot, nn, m, lambda);
            const err = Math.abs(logits[i * p.c + y] - t) / Math.max(Math.abs(t), nn);
            worst.add(`m=${m} target`, err);
            assert.ok(err <= TOL[dtype], `Caffe m=${m} target of sample ${i}: ${err}`);
          }
        }
      }
    }
    worst.report(`Caffe closed forms cpu ${dtype}`);
  });
}

Deno.test("m = 1 is exactly the plain inner product, for any lambda", () => {
  const rng = new Rng(207);
  const worst = new Worst();
  for (const [n, d, c] of [...SHAPES, [50, 64, 33]]) {
    const p = randomProblem(rng, n, d, c);
    const plain = plainForward(p.x, p.w, p.labels);
    const plainGrad = plainBackward(p.x, p.w, p.labels, p.g);
    const first = forward(p.x, p.w, p.labels, { margin: 1, lambda: 0, backend: "cpu" }).logits;
    const firstGrad = backward(p.x, p.w, p.labels, p.g, { margin: 1, lambda: 0, backend: "cpu" });
    for (const lambda of [0, 0.5, 1000, 1e-300, 1e300]) {
      const o = { margin: 1, lambda, backend: "cpu" as const };
      const { logits } = forward(p.x, p.w, p.labels, o);
      worst.add(
        "logits",
        assertClose(logits, plain, 1e-12, `m=1 lambda=${lambda}`, rowScale(plain, n)),
      );
      assert.equal(firstDifference(logits, first), -1, `m=1 logits depend on lambda (${lambda})`);
      const { gradX, gradW } = backward(p.x, p.w, p.labels, p.g, o);
      worst.add(
        "gradX",
        assertClose(gradX, plainGrad.gradX, 1e-12, "m=1 gradX", rowScale(plainGrad.gradX, n)),
      );
      worst.add(
        "gradW",
        assertClose(gradW, plainGrad.gradW, 1e-12, "m=1 gradW", rowScale(plainGrad.gradW, c)),
      );
      assert.equal(firstDifference(gradX, firstGrad.gradX), -1, "m=1 gradX depends on lambda");
      assert.equal(firstDifference(gradW, firstGrad.gradW), -1, "m=1 gradW depends on lambda");
    }
    // In float32 too: the same values as x W^T computed in float64 and rounded, to float rounding.
    const x32 = toF32(p.x), w32 = toF32(p.w);
    const plain32 = plainForward(x32, w32, p.labels);
    const a = forward(x32, w32, p.labels, { margin: 1, lambda: 0, backend: "cpu" }).logits;
    const b = forward(x32, w32, p.labels, { margin: 1, lambda: 1000, backend: "cpu" }).logits;
    assert.equal(firstDifference(a, b), -1, "float32 m=1 logits depend on lambda");
    worst.add("float32", assertClose(a, plain32, 1e-5, "float32 m=1", rowScale(plain32, n)));
  }
  worst.report("m = 1 vs plain inner product");
});

Deno.test("non-target logits are the plain inner products (paper, not the seed op)", () => {
  const rng = new Rng(208);
  const p = randomProblem(rng, 9, 5, 7);
  const plain = plainForward(p.x, p.w, p.labels);
  for (const lambda of [0, 0.5, 1000]) {
    const { logits } = forward(p.x, p.w, p.labels, { margin: 4, lambda, backend: "cpu" });
    for (let i = 0; i < p.n; ++i) {
      for (let j = 0; j < p.c; ++j) {
        if (j === p.labels[i]) continue;
        const k = i * p.c + j;
        assert.ok(Math.abs(logits[k] - plain[k]) <= 1e-13 * Math.max(1, Math.abs(plain[k])));
      }
    }
  }
});

Deno.test("forward: the target logit falls with the margin (f(m) <= f(1)) and rises with lambda", () => {
  const rng = new Rng(209);
  const p = randomProblem(rng, 30, 6, 4);
  const at = (m: number, lambda: number) =>
    forward(p.x, p.w, p.labels, { margin: m, lambda, backend: "cpu" }).logits;
  const plain = at(1, 0);
  for (let m = 2; m <= 6; ++m) {
    const f0 = at(m, 0), f1 = at(m, 1), big = at(m, 1e9);
    for (let i = 0; i < p.n; ++i) {
      const k = i * p.c + p.labels[i];
      assert.ok(f0[k] <= plain[k] + 1e-12, `m=${m} sample ${i}: margin logit above plain`);
      assert.ok(f0[k] <= f1[k] + 1e-12 && f1[k] <= big[k] + 1e-12, `m=${m} sample ${i}`);
      assert.ok(Math.abs(big[k] - plain[k]) < 1e-7 * (1 + Math.abs(plain[k])));
    }
  }
});

Deno.test("options.features gives the same result as the inferred D", () => {
  const rng = new Rng(210);
  const p = randomProblem(rng, 6, 4, 5);
  const o = { margin: 3, lambda: 0.5, backend: "cpu" as const };
  const a = forward(p.x, p.w, p.labels, o).logits;
  const b = forward(p.x, p.w, p.labels, { ...o, features: 4 }).logits;
  assert.equal(firstDifference(a, b), -1);
  const ga = backward(p.x, p.w, p.labels, p.g, o);
  const gb = backward(p.x, p.w, p.labels, p.g, { ...o, features: 4 });
  assert.equal(firstDifference(ga.gradX, gb.gradX), -1);
  assert.equal(firstDifference(ga.gradW, gb.gradW), -1);
});

Deno.test("subarray views (non-zero byteOffset) give the same results as compact arrays", () => {
  const rng = new Rng(211);
  const [n, d, c] = [5, 3, 4];
  for (const dtype of ["float64", "float32"] as const) {
    const make = (len: number, off: number) => {
      const base = randomArray(rng, len + off + 3);
      return dtype === "float64"
        ? base.subarray(off, off + len)
        : toF32(base).subarray(off, off + len);
    };
    const x = make(n * d, 3), w = make(c * d, 5), g = make(n * c, 1);
    const labelsBase = new Int32Array(n + 4);
    labelsBase.set(randomLabels(rng, n, c), 2);
    labelsBase[0] =
      labelsBase[1] =
      labelsBase[n + 2] =
      labelsBase[n + 3] =
        1_000_000; // invalid
    const labels = labelsBase.subarray(2, 2 + n);
    const o = { margin: 4, lambda: 0.5, backend: "cpu" as const };
    const run = (xx: typeof x, ww: typeof x, ll: Int32Array, gg: typeof x) => ({
      f: forward(xx as Float64Array, ww as Float64Array, ll, o).logits,
      b: backward(xx as Float64Array, ww as Float64Array, ll, gg as Float64Array, o),
    });
    const views = run(x, w, labels, g);
    const copies = run(x.slice(), w.slice(), labels.slice(), g.slice());
    assert.equal(firstDifference(views.f, copies.f), -1, `${dtype} logits differ for views`);
    assert.equal(firstDifference(views.b.gradX, copies.b.gradX), -1, `${dtype} gradX differ`);
    assert.equal(firstDifference(views.b.gradW, copies.b.gradW), -1, `${dtype} gradW differ`);
  }
});

Deno.test("forward and backward leave their inputs unchanged and return fresh arrays", () => {
  const rng = new Rng(212);
  const p = randomProblem(rng, 4, 3, 5);
  const keep = { x: p.x.slice(), w: p.w.slice(), labels: p.labels.slice(), g: p.g.slice() };
  const o = { margin: 3, lambda: 0, backend: "cpu" as const };
  const f1 = forward(p.x, p.w, p.labels, o).logits;
  const b1 = backward(p.x, p.w, p.labels, p.g, o);
  const f2 = forward(p.x, p.w, p.labels, o).logits;
  assert.equal(firstDifference(p.x, keep.x), -1);
  assert.equal(firstDifference(p.w, keep.w), -1);
  assert.equal(firstDifference(p.labels, keep.labels), -1);
  assert.equal(firstDifference(p.g, keep.g), -1);
  assert.ok(f1 instanceof Float64Array && b1.gradX instanceof Float64Array);
  assert.equal(f1.length, 20);
  assert.equal(b1.gradX.length, 12);
  assert.equal(b1.gradW.length, 15);
  assert.notEqual(f1, f2);
  assert.equal(firstDifference(f1, f2), -1, "forward is not deterministic");
  const x32 = toF32(p.x), w32 = toF32(p.w);
  const f32 = forward(x32, w32, p.labels, o).logits;
  const b32 = backward(x32, w32, p.labels, toF32(p.g), o);
  assert.ok(f32 instanceof Float32Array && b32.gradX instanceof Float32Array);
  assert.ok(b32.gradW instanceof Float32Array);
});

Deno.test("backend auto (the default) computes the same as cpu (or cuda when there is one)", () => {
  const rng = new Rng(213);
  const p = randomProblem(rng, 6, 5, 4);
  const o = { margin: 4, lambda: 0.5 };
  const auto = forward(p.x, p.w, p.labels, o).logits;
  const auto2 = forward(p.x, p.w, p.labels, { ...o, backend: "auto" }).logits;
  const cpu = forward(p.x, p.w, p.labels, { ...o, backend: "cpu" }).logits;
  const ref = referenceForward(p.x, p.w, p.labels, o);
  assert.equal(firstDifference(auto, auto2), -1);
  if (!cudaAvailable) assert.equal(firstDifference(auto, cpu), -1);
  assertClose(auto, ref, 1e-12, "auto vs reference", rowScale(ref, p.n));
});
