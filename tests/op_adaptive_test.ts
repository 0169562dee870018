// op_adaptive_test.ts: forward() and backward() of the adaptive kinds (subcenter, adaface,
// curricularface, magface), and the layer's, on the CPU and (where present) the CUDA backend:
// - the logits, MagFace's regulariser and the updated state against the independent float64
//   reference (reference_adaptive.ts);
// - backward against central differences of the reference's sum_ij G_ij f_ij + sum_i g_i r_i for
//   random G and g, with the spec's constants held fixed;
// - the cross-entropy over forward's logits (plus the regulariser) is loss(), and backward with
//   G = dCE/dlogits gives loss()'s gradients; CUDA equals the CPU;
// - the layer carries the state through its forward, and its backward makes that forward's
//   margins; the options' errors.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax, loss } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { rowsPerClass, SPECS } from "./adaptive_specs.ts";
import {
  allFinite,
  assertClose,
  maxAbs,
  randomArray,
  randomLabels,
  Rng,
  toF32,
} from "./helpers.ts";
import { type AdaptiveSpec, referenceAdaptive } from "./reference_adaptive.ts";

// deno-lint-ignore no-explicit-any
type Any = any;
type Floats = Float64Array | Float32Array;

function problem(seed: number, n: number, d: number, C: number, o: AdaptiveSpec) {
  const rng = new Rng(seed);
  const x = randomArray(rng, n * d, -1.2, 1.2);
  const w = randomArray(rng, C * rowsPerClass(o) * d);
  const labels = randomLabels(rng, n, C);
  return { x, w, labels, g: randomArray(rng, n * C), gr: randomArray(rng, n) };
}

/** sum_ij G_ij f_ij + sum_i g_i r_i of the reference, with `frozen` constants. */
function weighted(
  x: Float64Array,
  w: Float64Array,
  labels: Int32Array,
  d: number,
  o: AdaptiveSpec,
  g: Float64Array,
  gr: Float64Array,
  frozen: Any,
): number {
  const r = referenceAdaptive(x, w, labels, d, o, frozen);
  let s = 0;
  for (let e = 0; e < g.length; e++) s += g[e] * r.logits[e];
  if (o.kind === "magface") { for (let i = 0; i < gr.length; i++) s += gr[i] * r.regulariser[i]; }
  return s;
}

/** Central differences of `weighted` in every element of v (x or w), constants frozen. */
function differences(v: Float64Array, d: number, f: () => number): Float64Array {
  const out = new Float64Array(v.length);
  for (let e = 0; e < v.length; e++) {
    const row = Math.floor(e / d);
    let len = 0;
    for (let k = 0; k < d; k++) len += v[row * d + k] ** 2;
    const step = 1e-6 * Math.max(1e-3, Math.sqrt(len));
    const keep = v[e];
    v[e] = keep + step;
    const up = f();
    v[e] = keep - step;
    const down = f();
    v[e] = keep;
    out[e] = (up - down) / (2 * step);
  }
  return out;
}

/** The cross-entropy (mean) of logits [n, C] and its gradient with respect to them. */
function crossEntropy(logits: Floats, labels: Int32Array, C: number) {
  const n = labels.length;
  const g = new Float64Array(n * C);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let mx = -Infinity;
    for (let j = 0; j < C; j++) mx = Math.max(mx, logits[i * C + j]);
    let se = 0;
    for (let j = 0; j < C; j++) se += Math.exp(logits[i * C + j] - mx);
    total += (mx + Math.log(se) - logits[i * C + labels[i]]) / n;
    for (let j = 0; j < C; j++) {
      g[i * C + j] = (Math.exp(logits[i * C + j] - mx) / se - (j === labels[i] ? 1 : 0)) / n;
    }
  }
  return { loss: total, g };
}

const BACKENDS = ["cpu", ...(cudaAvailable ? ["cuda"] : [])];

for (const o of SPECS) {
  for (const backend of BACKENDS) {
    Deno.test(`op ${o.kind} (${backend}): logits, regulariser and state against the reference`, () => {
      const n = 7, d = 5, C = 6;
      const { x, w, labels } = problem(21, n, d, C, o);
      const r: Any = forward(x, w, labels, { ...o, backend } as never);
      const ref = referenceAdaptive(x, w, labels, d, o);
      assert.equal(r.logits.length, n * C);
      assertClose(r.logits, ref.logits, 1e-12, `${o.kind}: logits`, o.scale);
      assert.equal(r.regulariser === undefined, o.kind !== "magface", "regulariser returned");
      if (o.kind === "magface") assertClose(r.regulariser, ref.regulariser, 1e-13, "regulariser");
      for (const key of ["batchMean", "batchStd", "t"] as const) {
        assert.equal(r[key] === undefined, ref[key] === undefined, `${o.kind}: ${key} returned`);
        if (ref[key] !== undefined) assertClose([r[key]], [ref[key]!], 1e-12, `${o.kind}: ${key}`);
      }
    });

    Deno.test(`op ${o.kind} (${backend}): backward against central differences (constants fixed)`, () => {
      const n = 6, d = 4, C = 5;
      const { x, w, labels, g, gr } = problem(22, n, d, C, o);
      const extra = o.kind === "magface" ? { gradRegulariser: gr } : {};
      const r = backward(x, w, labels, g, { ...o, backend, ...extra } as never);
      const frozen = referenceAdaptive(x, w, labels, d, o).frozen;
      const f = () => weighted(x, w, labels, d, o, g, gr, frozen);
      const gx = differences(x, d, f), gw = differences(w, d, f);
      const floor = Math.max(maxAbs(gx), maxAbs(gw));
      assert.ok(allFinite(r.gradX) && allFinite(r.gradW), "finite gradients");
      assertClose(r.gradX, gx, 1e-6, `${o.kind}: dL/dx`, floor);
      assertClose(r.gradW, gw, 1e-6, `${o.kind}: dL/dW`, floor);
    });

    Deno.test(`op ${o.kind} (${backend}): the cross-entropy over forward's logits is loss()`, () => {
      const n = 9, d = 8, C = 7;
      const { x, w, labels } = problem(23, n, d, C, o);
      for (const [dtype, tol] of [["float64", 1e-12], ["float32", 2e-5]] as const) {
        const [xs, ws] = dtype === "float64" ? [x, w] : [toF32(x), toF32(w)];
        const opts: Any = { ...o, backend };
        const f: Any = forward(xs, ws, labels, opts);
        const ce = crossEntropy(f.logits, labels, C);
        let reg = 0;
        if (o.kind === "magface") { for (const v of f.regulariser) reg += v / n; }
        const l: Any = loss(xs, ws, labels, opts);
        assertClose([ce.loss + reg], [l.loss], tol, `${o.kind} ${dtype}: loss`);
        for (const key of ["batchMean", "batchStd", "t"] as const) assert.equal(f[key], l[key]);
        const gLogits = dtype === "float64" ? ce.g : Float32Array.from(ce.g);
        const extra = o.kind === "magface"
          ? { gradRegulariser: new Float64Array(n).fill(1 / n) }
          : {};
        const b = backward(xs, ws, labels, gLogits as never, { ...opts, ...extra } as never);
        const floor = Math.max(maxAbs(l.gradX), maxAbs(l.gradW));
        assertClose(b.gradX, l.gradX, tol * 10, `${o.kind} ${dtype}: dL/dx`, floor);
        assertClose(b.gradW, l.gradW, tol * 10, `${o.kind} ${dtype}: dL/dW`, floor);
        if (backend === "cuda") {
          const cpu: Any = forward(xs, ws, labels, { ...o, backend: "cpu" } as never);
          assertClose(f.logits, cpu.logits, tol, `${o.kind} ${dtype}: CUDA's logits`, o.scale);
          const bc = backward(
            xs,
            ws,
            labels,
            gLogits as never,
            { ...o, backend: "cpu", ...extra } as never,
          );
          assertClose(b.gradX, bc.gradX, tol, `${o.kind} ${dtype}: CUDA's dL/dx`, floor);
          assertClose(b.gradW, bc.gradW, tol, `${o.kind} ${dtype}: CUDA's dL/dW`, floor);
        }
      }
    });
  }
}

Deno.test("op: parallel, antiparallel and zero rows stay finite; ties between sub-centers", () => {
  for (const o of SPECS) {
    const n = 6, d = 4, C = 3, K = rowsPerClass(o);
    const { x, w, g } = problem(24, n, d, C, o);
    const labels = new Int32Array([0, 1, 2, 0, 1, 2]);
    for (let k = 0; k < d; k++) x[k] = 1.5 * w[k], x[d + k] = -1.5 * w[K * d + k];
    x.fill(0, 2 * d, 3 * d);
    w.fill(0, 2 * K * d, (2 * K + 1) * d);
    if (K > 1) w.copyWithin(d, 0, d); // class 0's first two sub-centers tie
    for (const backend of BACKENDS) {
      const f: Any = forward(x, w, labels, { ...o, backend } as never);
      assert.ok(allFinite(f.logits), `${o.kind} ${backend}: finite logits`);
      assertClose(f.logits, referenceAdaptive(x, w, labels, d, o).logits, 1e-12, o.kind, o.scale);
      const b = backward(x, w, labels, g, { ...o, backend } as never);
      assert.ok(allFinite(b.gradX) && allFinite(b.gradW), `${o.kind} ${backend}: finite gradients`);
      assert.equal(maxAbs(b.gradX.subarray(2 * d, 3 * d)), 0, "no gradient through a zero feature");
    }
  }
});

Deno.test("op: the layer carries the state through forward, and backward makes that forward's margins", () => {
  for (const o of SPECS) {
    const n = 6, d = 4, C = 5;
    const { x, w, labels, g, gr } = problem(25, n, d, C, o);
    using layer = new LargeMarginSoftmax({ ...o, backend: "cpu" } as never);
    const first: Any = layer.forward(x, w, labels);
    const same: Any = forward(x, w, labels, { ...o, backend: "cpu" } as never);
    assert.deepEqual(Array.from(first.logits), Array.from(same.logits), `${o.kind}: logits`);
    const extra = o.kind === "magface" ? { gradRegulariser: gr } : {};
    const b = layer.backward(g, extra as never);
    const want = backward(x, w, labels, g, { ...o, backend: "cpu", ...extra } as never);
    assert.deepEqual(Array.from(b.gradX), Array.from(want.gradX), `${o.kind}: dL/dx`);
    assert.deepEqual(Array.from(b.gradW), Array.from(want.gradW), `${o.kind}: dL/dW`);
    // The second forward starts from the first's state.
    const moved: Any = { ...o, batchMean: first.batchMean, batchStd: first.batchStd, t: first.t };
    for (const key of ["batchMean", "batchStd", "t"]) {
      if (moved[key] === undefined) delete moved[key];
    }
    const second: Any = layer.forward(x, w, labels);
    const again: Any = forward(x, w, labels, { ...moved, backend: "cpu" } as never);
    assert.deepEqual(Array.from(second.logits), Array.from(again.logits), `${o.kind}: moved state`);
    const json: Any = layer.toJSON();
    for (const key of ["batchMean", "batchStd", "t"]) {
      if (first[key] !== undefined) {
        assert.equal(json[key], second[key], `${o.kind}: toJSON ${key}`);
      }
    }
  }
});

Deno.test("op: the adaptive kinds' errors name the argument; the library stays usable", () => {
  const o = SPECS[1]; // adaface
  const { x, w, labels, g } = problem(26, 4, 3, 5, o);
  assert.throws(
    () => backward(x, w, labels, g, { ...o, gradRegulariser: new Float64Array(4) } as never),
    /gradRegulariser: expected none but with kind "magface"/,
  );
  const mag = SPECS[3];
  assert.throws(
    () => backward(x, w, labels, g, { ...mag, gradRegulariser: new Float64Array(3) } as never),
    /gradRegulariser: expected N = 4 elements, got 3/,
  );
  assert.throws(
    () => backward(x, w, labels, g, { ...mag, gradRegulariser: new Float32Array(4) } as never),
    /gradRegulariser: expected a Float64Array/,
  );
  assert.throws(
    () => forward(x, w, new Int32Array([0, 1, 5, 2]), { ...o, backend: "cpu" } as never),
    /labels\[2\]: expected an integer in \[0, 5\)/,
  );
  const sub = SPECS[0]; // K = 3: 5 rows are not whole classes
  assert.throws(
    () => forward(x, w, labels, { ...sub, backend: "cpu" } as never),
    /w: expected C·K rows \(whole classes of subcenters K = 3\), got 5 rows/,
  );
  assert.throws(
    () => backward(x, w, labels, g.subarray(1), { ...o, backend: "cpu" } as never),
    /gradLogits: expected N\*C = 4\*5 = 20 elements, got 19/,
  );
  assert.ok(allFinite(forward(x, w, labels, { ...o, backend: "cpu" } as never).logits));
});
