// margins_test.ts: the margin family (kind: lsoftmax, asoftmax, cosface, arcface, combined)
// through forward, backward, the fused loss and the layer, on the CPU and the CUDA backend
// (emulated under make test-emu; "cuda ..." tests are ignored without CUDA):
// - forward against the independent float64 reference (reference_margins.ts);
// - backward and the fused loss's gradients against central differences of the reference's
//   logits and loss (float64), and of the library's own forward;
// - adversarial geometry: x_i parallel and antiparallel to W_y, within 1e-4 .. 1e-6 rad of it,
//   either side of ArcFace's switch point, zero rows of x and of W: finite outputs, the reference,
//   and the documented rules (no gradient through a zero vector; the singular term taken as 0);
// - float32 against float64, and the CPU against the CUDA backend.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax, loss, type MarginOptions } from "../mod.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import {
  allFinite,
  assertClose,
  maxAbs,
  maxRelErr,
  orthogonalUnit,
  randomArray,
  randomLabels,
  randomProblem,
  Rng,
  rowScale,
  toF32,
  Worst,
} from "./helpers.ts";
import { type MarginSpec, referenceMarginForward } from "./reference_margins.ts";
import { KINDS } from "../src/kinds.ts";

/** One or two parameter sets per kind, with the papers' typical values. */
const SPECS: MarginSpec[] = [
  { kind: "lsoftmax", margin: 4, lambda: 0.5 },
  { kind: "asoftmax", margin: 4, lambda: 0.5 },
  { kind: "asoftmax", margin: 3, lambda: 0 },
  { kind: "cosface", scale: 30, margin: 0.35 },
  { kind: "arcface", scale: 64, margin: 0.5 },
  { kind: "arcface", scale: 64, margin: 0.5, easyMargin: true },
  { kind: "combined", scale: 64, m1: 1, m2: 0.3, m3: 0.2 },
  { kind: "combined", scale: 30, m1: 1.35, m2: 0.25, m3: 0.1 },
];

const name = (s: MarginSpec) => JSON.stringify(s);
const cudaTest = (title: string, fn: () => void) =>
  Deno.test({ name: title, ignore: !cudaAvailable, fn });

type Floats = Float32Array | Float64Array;

function opts(spec: MarginSpec, backend: TestBackend): MarginOptions & { backend: TestBackend } {
  return { ...spec, backend } as MarginOptions & { backend: TestBackend };
}

/** L = sum_ij R_ij f_ij of the reference logits. */
function functional(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  r: Float64Array,
  spec: MarginSpec,
): number {
  const f = referenceMarginForward(x, w, labels, spec);
  let s = 0;
  for (let k = 0; k < f.length; k++) s += r[k] * f[k];
  return s;
}

/** Central differences of fn at a, coordinate by coordinate (a restored). */
function centralDifferences(a: Float64Array, fn: () => number, h: number): Float64Array {
  const g = new Float64Array(a.length);
  for (let k = 0; k < a.length; k++) {
    const v = a[k];
    a[k] = v + h;
    const plus = fn();
    a[k] = v - h;
    const minus = fn();
    a[k] = v;
    g[k] = (plus - minus) / (2 * h);
  }
  return g;
}

/**
 * Error of a gradient against its finite differences, relative to the tensor's scale (at least
 * 1e-4: a gradient that is 0 in exact arithmetic, as W's in D = 1, comes out as rounding).
 */
function gradErr(got: ArrayLike<number>, fd: ArrayLike<number>): number {
  const scale = Math.max(maxAbs(fd), maxAbs(got), 1e-4);
  let worst = 0;
  for (let k = 0; k < fd.length; k++) {
    const e = Math.abs(got[k] - fd[k]) / scale;
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst;
}

/** The reference's softmax cross-entropy (mean over rows) from its logits. */
function referenceLoss(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  spec: MarginSpec,
): number {
  const f = referenceMarginForward(x, w, labels, spec);
  const n = labels.length, c = f.length / n;
  let total = 0;
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, f[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(f[i * c + j] - m);
    total += m + Math.log(s) - f[i * c + labels[i]];
  }
  return total / n;
}

const SHAPES: [number, number, number][] = [[4, 5, 3], [6, 3, 7], [3, 1, 2], [2, 40, 5]];

function forwardAgainstReference(backend: TestBackend): void {
  const rng = new Rng(1201);
  const worst = new Worst();
  for (const spec of SPECS) {
    for (const [n, d, c] of SHAPES) {
      const p = randomProblem(rng, n, d, c);
      const want = referenceMarginForward(p.x, p.w, p.labels, spec);
      const { logits } = forward(p.x, p.w, p.labels, opts(spec, backend));
      worst.add(
        spec.kind,
        assertClose(logits, want, 1e-12, `${name(spec)} ${n}x${d}x${c}`, rowScale(want, n)),
      );
    }
  }
  worst.report(`margins ${backend} forward vs reference (float64)`);
}

Deno.test("margins cpu: forward matches the reference, every kind (float64)", () => {
  forwardAgainstReference("cpu");
});
cudaTest("cuda margins: forward matches the reference, every kind (float64)", () => {
  forwardAgainstReference("cuda");
});

/** Backward against central differences of the reference's logits, h = 1e-6. */
function backwardAgainstReference(backend: TestBackend, shapes: [number, number, number][]): void {
  const rng = new Rng(1202);
  const worst = new Worst();
  for (const spec of SPECS) {
    for (const [n, d, c] of shapes) {
      const p = randomProblem(rng, n, d, c);
      const { gradX, gradW } = backward(p.x, p.w, p.labels, p.g, opts(spec, backend));
      const fn = () => functional(p.x, p.w, p.labels, p.g, spec);
      const ex = gradErr(gradX, centralDifferences(p.x, fn, 1e-6));
      const ew = gradErr(gradW, centralDifferences(p.w, fn, 1e-6));
      worst.add(spec.kind, Math.max(ex, ew));
      assert.ok(ex < 1e-6 && ew < 1e-6, `${name(spec)} ${n}x${d}x${c}: gradX ${ex}, gradW ${ew}`);
    }
  }
  worst.report(`margins ${backend} backward vs central differences of the reference`);
}

Deno.test("margins cpu: backward matches central differences of the reference", () => {
  backwardAgainstReference("cpu", SHAPES);
});
cudaTest("cuda margins: backward matches central differences of the reference", () => {
  backwardAgainstReference("cuda", [[4, 5, 3], [3, 1, 2]]);
});

Deno.test("margins cpu: backward matches central differences of the library's forward", () => {
  const rng = new Rng(1203);
  const worst = new Worst();
  for (const spec of SPECS) {
    const p = randomProblem(rng, 5, 4, 6);
    const o = opts(spec, "cpu");
    const { gradX, gradW } = backward(p.x, p.w, p.labels, p.g, o);
    const fn = () => {
      const f = forward(p.x, p.w, p.labels, o).logits;
      let s = 0;
      for (let k = 0; k < f.length; k++) s += p.g[k] * f[k];
      return s;
    };
    const e = Math.max(
      gradErr(gradX, centralDifferences(p.x, fn, 1e-6)),
      gradErr(gradW, centralDifferences(p.w, fn, 1e-6)),
    );
    worst.add(spec.kind, e);
    assert.ok(e < 1e-6, `${name(spec)}: ${e}`);
  }
  worst.report("margins cpu backward vs central differences of forward");
});

/** The fused loss: value against the reference's loss, gradients against its differences. */
function lossAgainstReference(backend: TestBackend | TestBackend[]): void {
  const rng = new Rng(1204);
  const worst = new Worst();
  for (const spec of SPECS) {
    for (const [n, d, c] of [[5, 4, 6], [3, 1, 4], [4, 9, 2]] as const) {
      const p = randomProblem(rng, n, d, c);
      const r = loss(p.x, p.w, p.labels, { ...spec, backend } as never) as {
        loss: number;
        gradX: Float64Array;
        gradW: Float64Array;
      };
      const want = referenceLoss(p.x, p.w, p.labels, spec);
      const el = Math.abs(r.loss - want) / Math.max(Math.abs(want), 1);
      const fn = () => referenceLoss(p.x, p.w, p.labels, spec);
      const ex = gradErr(r.gradX, centralDifferences(p.x, fn, 1e-6));
      const ew = gradErr(r.gradW, centralDifferences(p.w, fn, 1e-6));
      worst.add(spec.kind, Math.max(el, ex, ew));
      assert.ok(el < 1e-12, `${name(spec)}: loss ${r.loss} vs ${want}`);
      assert.ok(ex < 1e-6 && ew < 1e-6, `${name(spec)} ${n}x${d}x${c}: gradX ${ex}, gradW ${ew}`);
    }
  }
  worst.report(`margins loss ${JSON.stringify(backend)} vs the reference`);
}

Deno.test("margins cpu: fused loss matches the reference loss and its differences", () => {
  lossAgainstReference("cpu");
});
Deno.test("margins cpu: fused loss sharded over two cpu contexts", () => {
  lossAgainstReference(["cpu", "cpu"]);
});
cudaTest("cuda margins: fused loss matches the reference loss and its differences", () => {
  lossAgainstReference("cuda");
});
cudaTest("cuda margins: fused loss sharded over cuda and cpu", () => {
  lossAgainstReference(["cuda", "cpu"]);
});

/**
 * Adversarial geometry, one sample per case, with the target W_y a random row: x_i parallel (x =
 * 2 W_y, x = 3 W_y), antiparallel, at angles 1e-4 and 1e-6 from W_y and from -W_y, either side of
 * ArcFace's switch at pi - m (1e-6 away), x_i = 0; and a zero row of W (class 0).
 */
function adversarial(rng: Rng, d: number, c: number, m: number) {
  const w = new Float64Array(c * d);
  for (let k = d; k < w.length; k++) w[k] = rng.uniform(); // row 0 stays zero
  const unit = (v: Float64Array) => {
    const s = Math.hypot(...v);
    return v.map((e) => e / s);
  };
  const rows: Float64Array[] = [];
  const labels: number[] = [];
  const at = (y: number, angle: number, len = 1.7) => {
    const u = unit(w.slice(y * d, (y + 1) * d));
    const v = orthogonalUnit(rng, u);
    rows.push(u.map((e, k) => len * (Math.cos(angle) * e + Math.sin(angle) * v[k])));
    labels.push(y);
  };
  const y = () => 1 + rng.int(c - 1);
  for (const k of [2, 3, -2]) {
    const t = y();
    rows.push(w.slice(t * d, (t + 1) * d).map((e) => k * e));
    labels.push(t);
  }
  for (const a of [1e-4, 1e-6, Math.PI - 1e-4, Math.PI - 1e-6]) at(y(), a);
  for (const a of [Math.PI - m - 1e-6, Math.PI - m + 1e-6, Math.PI / 2 - 1e-6]) at(y(), a);
  rows.push(new Float64Array(d)); // x_i = 0
  labels.push(y());
  rows.push(new Float64Array(d).map(() => rng.uniform())); // target: the zero row of W
  labels.push(0);
  const x = new Float64Array(rows.length * d);
  rows.forEach((r, i) => x.set(r, i * d));
  return { x, w, labels: Int32Array.from(labels), n: rows.length, d, c };
}

function adversarialCheck(backend: TestBackend): void {
  const rng = new Rng(1205);
  const worst = new Worst();
  for (const spec of SPECS) {
    const m = spec.kind === "arcface" ? spec.margin : 0.5;
    const p = adversarial(rng, 6, 4, m);
    const o = opts(spec, backend);
    const want = referenceMarginForward(p.x, p.w, p.labels, spec);
    const { logits } = forward(p.x, p.w, p.labels, o);
    assert.ok(allFinite(logits), `${name(spec)}: logits not finite`);
    // Near-parallel cosines lose digits in the reference's acos, not in the library: 1e-7 of
    // the row's scale.
    worst.add(
      `${spec.kind} logits`,
      assertClose(logits, want, 1e-7, `${name(spec)} logits`, rowScale(want, p.n)),
    );
    const g = new Float64Array(p.n * p.c).map(() => rng.uniform());
    const { gradX, gradW } = backward(p.x, p.w, p.labels, g, o);
    assert.ok(allFinite(gradX) && allFinite(gradW), `${name(spec)}: gradients not finite`);
    const normalised = spec.kind === "cosface" || spec.kind === "arcface" ||
      spec.kind === "combined";
    const zeroRow = p.n - 2; // x_i = 0
    if (normalised) {
      // No gradient through a zero vector: x_i's row, W_0's row.
      for (let k = 0; k < p.d; k++) {
        assert.ok(gradX[zeroRow * p.d + k] === 0, `${name(spec)}: gradX of the zero x row`);
        assert.ok(gradW[k] === 0, `${name(spec)}: gradW of the zero W row`);
      }
    }
    if (spec.kind !== "lsoftmax" && spec.kind !== "asoftmax") {
      // The parallel samples (x = 2 W_y, 3 W_y): with only the target's upstream gradient, the
      // target's gradient is the singular rule's: 0 (to rounding), for x and for W_y.
      for (const i of [0, 1]) {
        const gi = new Float64Array(p.n * p.c);
        gi[i * p.c + p.labels[i]] = 1;
        const r = backward(p.x, p.w, p.labels, gi, o);
        const sx = maxAbs(r.gradX.subarray(i * p.d, (i + 1) * p.d));
        const sw = maxAbs(r.gradW);
        assert.ok(sx < 1e-12 * spec.scale && sw < 1e-12 * spec.scale, `${name(spec)} sample ${i}`);
      }
    }
    // Gradients by central differences of the library's forward (whose angle comes from sin t,
    // accurate here; the reference's acos loses ~eps/t of it), on the samples 1e-4 and 1e-6 from
    // +-W_y and either side of the switch, each alone (the others' rows of R zero), with a step
    // well inside the geometry.
    for (const i of [3, 4, 5, 6, 7, 8]) {
      const r = new Float64Array(p.n * p.c);
      for (let j = 0; j < p.c; j++) r[i * p.c + j] = g[i * p.c + j];
      const got = backward(p.x, p.w, p.labels, r, o);
      const fn = () => {
        const f = forward(p.x, p.w, p.labels, o).logits;
        let s = 0;
        for (let k = 0; k < f.length; k++) s += r[k] * f[k];
        return s;
      };
      const xi = p.x.subarray(i * p.d, (i + 1) * p.d);
      const e = gradErr(
        got.gradX.subarray(i * p.d, (i + 1) * p.d),
        centralDifferences(xi, fn, 1e-9),
      );
      worst.add(`${spec.kind} gradX`, e);
      assert.ok(e < 1e-5, `${name(spec)} sample ${i}: gradX ${e}`);
    }
  }
  worst.report(`margins ${backend} adversarial geometry`);
}

Deno.test("margins cpu: adversarial geometry (cos = +-1, near it, the switch, zero rows)", () => {
  adversarialCheck("cpu");
});
cudaTest("cuda margins: adversarial geometry (cos = +-1, near it, the switch, zero rows)", () => {
  adversarialCheck("cuda");
});

/** Float32 results against float64 ones from the same (float32-representable) inputs. */
function float32Check(backend: TestBackend): void {
  const rng = new Rng(1206);
  const worst = new Worst();
  for (const spec of SPECS) {
    const p = randomProblem(rng, 16, 24, 10);
    const x32 = toF32(p.x), w32 = toF32(p.w), g32 = toF32(p.g);
    const x = Float64Array.from(x32), w = Float64Array.from(w32), g = Float64Array.from(g32);
    const o = opts(spec, backend);
    const f64 = forward(x, w, p.labels, o).logits;
    const b64 = backward(x, w, p.labels, g, o);
    const l64 = loss(x, w, p.labels, o as never) as { loss: number; gradX: Floats; gradW: Floats };
    const f32 = forward(x32, w32, p.labels, o).logits;
    const b32 = backward(x32, w32, p.labels, g32, o);
    const l32 = loss(x32, w32, p.labels, o as never) as {
      loss: number;
      gradX: Floats;
      gradW: Floats;
    };
    const errs = [
      assertClose(f32, f64, 2e-6, `${name(spec)} logits`, rowScale(f64, p.n)),
      assertClose(b32.gradX, b64.gradX, 2e-6, `${name(spec)} gradX`, maxAbs(b64.gradX)),
      assertClose(b32.gradW, b64.gradW, 2e-6, `${name(spec)} gradW`, maxAbs(b64.gradW)),
      Math.abs(l32.loss - l64.loss) / Math.max(1, Math.abs(l64.loss)),
      assertClose(l32.gradX, l64.gradX, 2e-5, `${name(spec)} loss gradX`, maxAbs(l64.gradX)),
      assertClose(l32.gradW, l64.gradW, 2e-5, `${name(spec)} loss gradW`, maxAbs(l64.gradW)),
    ];
    assert.ok(errs[3] < 2e-6, `${name(spec)} loss: ${l32.loss} vs ${l64.loss}`);
    worst.add(spec.kind, Math.max(...errs));
  }
  worst.report(`margins ${backend} float32 vs float64`);
}

Deno.test("margins cpu: float32 against float64", () => float32Check("cpu"));
cudaTest("cuda margins: float32 against float64", () => float32Check("cuda"));

cudaTest("cuda margins: the CUDA backend matches the CPU (float64 and float32)", () => {
  const rng = new Rng(1208);
  const worst = new Worst();
  for (const spec of SPECS) {
    for (const [n, d, c] of [[7, 33, 5], [40, 3, 9]] as const) {
      const p = randomProblem(rng, n, d, c);
      for (const f32 of [false, true]) {
        const conv = (a: Float64Array) => (f32 ? toF32(a) : a) as Float64Array;
        const [x, w, g] = [conv(p.x), conv(p.w), conv(p.g)];
        const tol = f32 ? 2e-6 : 1e-13;
        const run = (b: TestBackend) => ({
          f: forward(x, w, p.labels, opts(spec, b)).logits,
          ...backward(x, w, p.labels, g, opts(spec, b)),
        });
        const cpu = run("cpu"), cuda = run("cuda");
        const what = `${name(spec)} ${f32 ? "float32" : "float64"}`;
        worst.add(
          `${spec.kind} ${f32 ? "f32" : "f64"}`,
          Math.max(
            assertClose(cuda.f, cpu.f, tol, `${what} logits`, rowScale(cpu.f, n)),
            assertClose(cuda.gradX, cpu.gradX, tol, `${what} gradX`, maxAbs(cpu.gradX)),
            assertClose(cuda.gradW, cpu.gradW, tol, `${what} gradW`, maxAbs(cpu.gradW)),
          ),
        );
      }
    }
  }
  worst.report("margins cuda vs cpu");
});

Deno.test("margins: options are checked per kind, with named errors", () => {
  const p = randomProblem(new Rng(1209), 2, 3, 4);
  const call = (o: unknown) => () =>
    forward(p.x, p.w, p.labels, { backend: "cpu", ...o as object });
  const cases: [unknown, ErrorConstructor, string][] = [
    [{ kind: "sphereface", margin: 2, lambda: 0 }, RangeError, "kind"],
    [{ kind: 3, margin: 2, lambda: 0 }, RangeError, "kind"],
    [
      { kind: "cosface", scale: 30, margin: 0.35, lambda: 0 },
      TypeError,
      'lambda: not an option of kind "cosface"',
    ],
    [
      { kind: "lsoftmax", margin: 2, lambda: 0, scale: 1 },
      TypeError,
      'scale: not an option of kind "lsoftmax"',
    ],
    [{ kind: "arcface", scale: 64, margin: 0.5, m1: 1 }, TypeError, "m1: not an option"],
    [{ kind: "cosface", scale: 30, margin: 0.35, easyMargin: true }, TypeError, "easyMargin"],
    [{ kind: "combined", scale: 64, m1: 1, m2: 0.3, m3: 0.2, margin: 1 }, TypeError, "margin: not"],
    [{ kind: "cosface", margin: 0.35 }, TypeError, "scale"],
    [{ kind: "cosface", scale: 0, margin: 0.35 }, RangeError, "scale"],
    [{ kind: "cosface", scale: -1, margin: 0.35 }, RangeError, "scale"],
    [{ kind: "cosface", scale: Infinity, margin: 0.35 }, RangeError, "scale"],
    [{ kind: "cosface", scale: 30, margin: -0.1 }, RangeError, "margin"],
    [{ kind: "arcface", scale: 64, margin: Math.PI / 2 }, RangeError, "margin"],
    [{ kind: "arcface", scale: 64 }, TypeError, "margin"],
    [{ kind: "arcface", scale: 64, margin: 0.5, easyMargin: 1 }, TypeError, "easyMargin"],
    [{ kind: "combined", scale: 64, m1: 0.5, m2: 0.3, m3: 0.2 }, RangeError, "m1"],
    [{ kind: "combined", scale: 64, m1: 1, m2: -1, m3: 0.2 }, RangeError, "m2"],
    [{ kind: "combined", scale: 64, m1: 1, m2: 0.3 }, TypeError, "m3"],
    [{ kind: "asoftmax", margin: 17, lambda: 0 }, RangeError, "margin"],
    [{ kind: "asoftmax", margin: 2 }, TypeError, "lambda"],
  ];
  for (const [o, type, text] of cases) {
    assert.throws(
      call(o),
      (e: Error) => e instanceof type && e.message.includes(text),
      JSON.stringify(o),
    );
  }
  // The library stays usable, and `kind` absent is L-Softmax.
  const a = forward(p.x, p.w, p.labels, { margin: 3, lambda: 0.5, backend: "cpu" }).logits;
  const b =
    forward(p.x, p.w, p.labels, { kind: "lsoftmax", margin: 3, lambda: 0.5, backend: "cpu" })
      .logits;
  assert.deepEqual(a, b);
});

Deno.test("margins: the layer takes every kind, and toJSON round-trips it", () => {
  const rng = new Rng(1210);
  const p = randomProblem(rng, 4, 5, 3);
  const schedule = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };
  for (const spec of SPECS) {
    const { lambda: _, ...margin } = spec as MarginSpec & { lambda?: number };
    const withLambda = spec.kind === "lsoftmax" || spec.kind === "asoftmax";
    using layer = new LargeMarginSoftmax({
      ...margin,
      ...(withLambda ? schedule : {}),
      backend: "cpu",
    });
    const { logits, lambda } = layer.forward(p.x, p.w, p.labels, { step: 10 });
    const want = referenceMarginForward(
      p.x,
      p.w,
      p.labels,
      { ...spec, lambda: lambda } as MarginSpec,
    );
    assertClose(logits, want, 1e-12, `${name(spec)} layer`, rowScale(want, p.n));
    assert.equal(lambda, withLambda ? 1000 * Math.pow(1 + 0.000025 * 10, -35) : 0);
    const { gradX, gradW } = layer.backward(p.g);
    const at = withLambda ? { ...spec, lambda } : spec;
    const op = backward(p.x, p.w, p.labels, p.g, { ...at, backend: "cpu" } as never);
    assert.deepEqual([gradX, gradW], [op.gradX, op.gradW]);
    const l = layer.loss(p.x, p.w, p.labels, { step: 10 });
    assert.ok(Number.isFinite(l.loss));
    const saved = JSON.parse(JSON.stringify(layer));
    assert.equal(saved.kind, spec.kind);
    using again = new LargeMarginSoftmax(saved);
    assert.deepEqual(again.toJSON(), layer.toJSON());
    assert.deepEqual(again.forward(p.x, p.w, p.labels, { step: 10 }).logits, logits);
  }
  // The ArcFace layer of the issue, with no schedule; a schedule or lambda for it is an error.
  using arc = new LargeMarginSoftmax({ kind: "arcface", scale: 64, margin: 0.5, backend: "cpu" });
  assert.equal(arc.kind, "arcface");
  assert.equal(arc.margin, 0.5);
  assert.equal(arc.schedule, undefined);
  assert.throws(
    () => new LargeMarginSoftmax({ kind: "arcface", scale: 64, margin: 0.5, ...schedule }),
    (e: Error) => e instanceof TypeError && e.message.includes("base"),
  );
  assert.throws(
    () => new LargeMarginSoftmax({ kind: "cosface", scale: 64, margin: 0.5, lambda: 1 } as never),
    (e: Error) => e instanceof TypeError && e.message.includes("lambda"),
  );
  assert.throws(
    () => new LargeMarginSoftmax({ kind: "asoftmax", margin: 2 }),
    (e: Error) => e instanceof TypeError && e.message.includes("base"),
  );
});

/**
 * The range: x scaled by 2^k and W by 2^j (exact), every kind gives the scaled results (to
 * float64 rounding) from 2^-1000 to 2^1000: its norms are taken of power-of-two scaled rows.
 * L-Softmax is homogeneous of degree 1 in x and in W, A-Softmax in x only, and the normalised
 * kinds are invariant (their gradients scale by 2^-k, 2^-j).
 */
function rangeCheck(backend: TestBackend): void {
  const rng = new Rng(1211);
  const worst = new Worst();
  const p = randomProblem(rng, 5, 7, 4);
  for (const spec of SPECS) {
    const o = opts(spec, backend);
    const base = {
      f: forward(p.x, p.w, p.labels, o).logits,
      ...backward(p.x, p.w, p.labels, p.g, o),
    };
    for (const [k, j] of [[-500, -500], [500, 500], [-1000, 0], [0, 1000], [1000, -20]]) {
      const x = p.x.map((v) => v * 2 ** k), w = p.w.map((v) => v * 2 ** j);
      const got = { f: forward(x, w, p.labels, o).logits, ...backward(x, w, p.labels, p.g, o) };
      const [ef, ex, ew] = spec.kind === "lsoftmax"
        ? [k + j, j, k]
        : spec.kind === "asoftmax"
        ? [k, 0, k - j]
        : [0, -k, -j];
      const scaled = (a: Float64Array, e: number) => a.map((v) => v * 2 ** e);
      const what = `${name(spec)} 2^${k} x, 2^${j} w`;
      worst.add(
        spec.kind,
        Math.max(
          assertClose(
            got.f,
            scaled(base.f, ef),
            1e-14,
            `${what} logits`,
            rowScale(scaled(base.f, ef), p.n),
          ),
          assertClose(
            got.gradX,
            scaled(base.gradX, ex),
            1e-14,
            `${what} gradX`,
            maxAbs(scaled(base.gradX, ex)),
          ),
          assertClose(
            got.gradW,
            scaled(base.gradW, ew),
            1e-14,
            `${what} gradW`,
            maxAbs(scaled(base.gradW, ew)),
          ),
        ),
      );
    }
  }
  worst.report(`margins ${backend} across the float64 range`);
}

Deno.test("margins cpu: exact across the float64 range (2^-1000 to 2^1000)", () =>
  rangeCheck("cpu"));
cudaTest(
  "cuda margins: exact across the float64 range (2^-1000 to 2^1000)",
  () => rangeCheck("cuda"),
);

Deno.test("margins cpu: the fused loss's paths agree (one block direct, blocks, range fallback)", () => {
  const rng = new Rng(1212);
  const worst = new Worst();
  const p = randomProblem(rng, 6, 5, 9);
  for (const spec of SPECS) {
    // The workspace is the context's setting, kept: each call names its own.
    const o = { ...spec, backend: "cpu", workspace: 64 << 20 } as never;
    type R = { loss: number; gradX: Float64Array; gradW: Float64Array };
    const one = loss(p.x, p.w, p.labels, o) as R;
    // Blocks of 2 classes (the workspace holds 2 columns of 6 rows).
    const blocks = loss(
      p.x,
      p.w,
      p.labels,
      { ...spec, backend: "cpu", workspace: 96 } as never,
    ) as R;
    const what = name(spec);
    const e = [
      Math.abs(one.loss - blocks.loss) / Math.abs(one.loss),
      assertClose(blocks.gradX, one.gradX, 1e-13, `${what} blocks gradX`, maxAbs(one.gradX)),
      assertClose(blocks.gradW, one.gradW, 1e-13, `${what} blocks gradW`, maxAbs(one.gradW)),
    ];
    assert.ok(e[0] < 1e-14, `${what}: loss ${blocks.loss} vs ${one.loss}`);
    // W at 2^600 (outside the direct path's range): the normalised kinds' loss is unchanged and
    // dL/dW scales by 2^-600.
    if (spec.kind !== "lsoftmax") {
      const big = loss(p.x, p.w.map((v) => v * 2 ** 600), p.labels, o) as R;
      const ew = -600; // every kind that normalises W
      e.push(
        Math.abs(big.loss - one.loss) / Math.abs(one.loss),
        assertClose(big.gradX, one.gradX, 1e-13, `${what} 2^600 w gradX`, maxAbs(one.gradX)),
        assertClose(
          big.gradW,
          one.gradW.map((v) => v * 2 ** ew),
          1e-13,
          `${what} 2^600 w gradW`,
          maxAbs(one.gradW) * 2 ** ew,
        ),
      );
      assert.ok(e[3] < 1e-14, `${what}: loss at 2^600 w ${big.loss} vs ${one.loss}`);
    }
    worst.add(spec.kind, Math.max(...e));
  }
  worst.report("margins cpu fused loss paths");
});

Deno.test("margins cpu: the direct path split across threads agrees with class blocks (float32)", () => {
  // C·D and N·C past parallel_for's thresholds: W's norms, the row pass and dL/dW's fill run in
  // threads. Blocks of 1024 classes take the other path; both in float32, so 1e-4 of the largest.
  const rng = new Rng(1213);
  const n = 64, d = 256, c = 8192;
  const x = toF32(randomArray(rng, n * d)), w = toF32(randomArray(rng, c * d));
  const labels = randomLabels(rng, n, c);
  for (const spec of SPECS.filter((s) => s.kind !== "lsoftmax")) {
    type R = { loss: number; gradX: Float32Array; gradW: Float32Array };
    const one = loss(x, w, labels, { ...spec, backend: "cpu", workspace: 64 << 20 } as never) as R;
    const blocks = loss(
      x,
      w,
      labels,
      { ...spec, backend: "cpu", workspace: n * 4 * 1024 } as never,
    ) as R;
    const what = name(spec);
    assert.ok(Math.abs(one.loss - blocks.loss) <= 1e-5 * Math.abs(one.loss), `${what}: loss`);
    assertClose(one.gradX, blocks.gradX, 1e-4, `${what} gradX`, maxAbs(blocks.gradX));
    assertClose(one.gradW, blocks.gradW, 1e-4, `${what} gradW`, maxAbs(blocks.gradW));
  }
});

Deno.test("margins: the kinds the kind table calls normalised do not see the scale of x", () => {
  const p = randomProblem(new Rng(977), 6, 5, 7);
  const x100 = p.x.map((v) => 100 * v);
  for (const spec of SPECS) {
    const row = KINDS[spec.kind as keyof typeof KINDS];
    const { logits } = forward(p.x, p.w, p.labels, opts(spec, "cpu"));
    const { logits: scaled } = forward(x100, p.w, p.labels, opts(spec, "cpu"));
    const worst = maxRelErr(scaled, logits);
    if (row.normalised) {
      assert.ok(worst < 1e-9, `${name(spec)}: x scaled 100 moved logits ${worst}`);
    } else assert.ok(worst > 1, `${name(spec)}: x scaled 100 should scale the logits, ${worst}`);
    assert.equal(row.lambda, "lambda" in spec, `${name(spec)}: the table's λ matches its options`);
  }
});
