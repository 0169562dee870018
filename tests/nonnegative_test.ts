// nonnegative_test.ts: a loss is never negative and matches its gradient, for every kind, both
// dtypes, the CPU and (where backends() reports one: the emulator) the CUDA backend, and every
// path to the fused loss: one class block, many (a small workspace), class shards (a list of
// backends: the combine of src/shards.ts), MarginHead's step and evaluate, and the tfjs adapter.
//
// One class: every row's loss is exactly 0 (the log-sum-exp of one logit is that logit), so a
// batch's sum is exactly 0. Fitted float32 rows (the target far above every other logit): the
// loss is positive and tiny, below the float32 rounding of the target logit. A float64 central
// difference of the reported loss against the reported gradients, and for L-Softmax rows whose
// other logits are plain products, the loss against the softmax its gradient holds.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { backends, type FloatArray, loss, type LossOptions, MarginHead } from "../mod.ts";
import { marginLoss } from "../tfjs.ts";
import { Rng } from "./helpers.ts";

type DType = "float32" | "float64";
type Margin = Omit<LossOptions, "backend" | "workspace" | "reduction" | "gradients">;
const BACKENDS = backends().cuda.available ? (["cpu", "cuda"] as const) : (["cpu"] as const);
type B = (typeof BACKENDS)[number];
const opts = { sanitizeOps: false, sanitizeResources: false };

const KINDS: Margin[] = [
  { margin: 2, lambda: 0 },
  { margin: 4, lambda: 0.5 },
  { kind: "asoftmax", margin: 3, lambda: 0 },
  { kind: "cosface", scale: 64, margin: 0.35 },
  { kind: "arcface", scale: 64, margin: 0.5 },
  { kind: "combined", scale: 32, m1: 1.2, m2: 0.3, m3: 0.1 },
];

function array(dtype: DType, v: ArrayLike<number>): FloatArray {
  return dtype === "float32" ? Float32Array.from(v) : Float64Array.from(v);
}

const BIG = 1 << 26; // bytes: every test problem fits one class block

// A path to the fused loss: the summed loss of x [N, D], w [C, D], labels, and the gradients
// where the path returns them.
interface Path {
  name: string;
  /** Whether it can run this problem (float32 only through tfjs; shards need C >= 2). */
  takes(dtype: DType, c: number): boolean;
  run(
    b: B,
    dtype: DType,
    x: FloatArray,
    w: FloatArray,
    labels: Int32Array,
    m: Margin,
  ): { sum: number; gradX?: FloatArray; gradW?: FloatArray };
}

const PATHS: Path[] = [
  {
    name: "one block",
    takes: () => true,
    run: (b, _t, x, w, labels, m) => {
      const r = loss(x, w, labels, { ...m, backend: b, workspace: BIG, reduction: "sum" });
      return { sum: r.loss, gradX: r.gradX, gradW: r.gradW };
    },
  },
  {
    name: "loss alone",
    takes: () => true,
    run: (b, _t, x, w, labels, m) => ({
      sum: loss(x, w, labels, {
        ...m,
        backend: b,
        workspace: BIG,
        reduction: "sum",
        gradients: false,
      }).loss,
    }),
  },
  {
    name: "class blocks",
    takes: () => true,
    run: (b, t, x, w, labels, m) => {
      // Two classes a block: the online log-sum-exp across blocks, the gradients made again.
      const workspace = labels.length * (t === "float32" ? 4 : 8) * 2;
      const r = loss(x, w, labels, { ...m, backend: b, workspace, reduction: "sum" });
      return { sum: r.loss, gradX: r.gradX, gradW: r.gradW };
    },
  },
  {
    name: "shards",
    takes: () => true,
    run: (b, _t, x, w, labels, m) => {
      const c = w.length / (x.length / labels.length);
      const r = loss(x, w, labels, {
        ...m,
        backend: c >= 3 ? [b, b, b] : c === 2 ? [b, b] : [b],
        workspace: BIG,
        reduction: "sum",
      });
      return { sum: r.loss, gradX: r.gradX, gradW: r.gradW };
    },
  },
  {
    name: "head",
    takes: () => true,
    run: (b, dtype, x, w, labels, m) => {
      const n = labels.length, d = x.length / n, c = w.length / d;
      const sum: number[] = [];
      for (const backend of c >= 2 ? [b, [b, b]] : [b]) {
        using head = new MarginHead(
          {
            ...m,
            classes: c,
            features: d,
            dtype,
            weights: w,
            backend,
            optimizer: { lr: 0 },
            workspace: BIG,
          } as ConstructorParameters<typeof MarginHead>[0],
        );
        sum.push(head.evaluate(x, labels).loss * n, head.step(x, labels).loss * n);
      }
      // Each is a mean times n: exact for 0, else within a rounding of the sum; the smallest.
      return { sum: Math.min(...sum) };
    },
  },
  {
    name: "tfjs",
    takes: (dtype) => dtype === "float32",
    run: (b, _t, x, w, labels, m) => {
      const n = labels.length, d = x.length / n;
      const value = tf.tidy(() =>
        marginLoss(
          tf.tensor2d(x as Float32Array, [n, d]),
          tf.tensor2d(w as Float32Array, [w.length / d, d]),
          labels,
          {
            ...m,
            backend: b,
            workspace: BIG,
            reduction: "sum",
          },
        ).dataSync()[0]
      );
      return { sum: value };
    },
  },
];

// Unit vector of dimension d.
function unit(rng: Rng, d: number): number[] {
  const v = Array.from({ length: d }, () => rng.normal());
  const s = Math.hypot(...v);
  return v.map((e) => e / s);
}

Deno.test(
  "one class, {margin: 2, lambda: 0}, |x| ~ 1 and ~ 1e30: the loss is exactly 0",
  opts,
  () => {
    const rng = new Rng(2001);
    for (const b of BACKENDS) {
      for (const dtype of ["float32", "float64"] as const) {
        for (const size of [1, 1e30]) {
          for (let trial = 0; trial < 8; trial++) {
            const d = 3;
            const x = array(dtype, unit(rng, d).map((v) => v * size * rng.uniform(0.5, 2)));
            const w = array(dtype, unit(rng, d).map((v) => v * rng.uniform(0.5, 2)));
            const labels = new Int32Array([0]);
            for (const path of PATHS) {
              if (!path.takes(dtype, 1)) continue;
              const { sum } = path.run(b, dtype, x, w, labels, { margin: 2, lambda: 0 });
              assert.equal(sum, 0, `${b} ${dtype} |x| ~ ${size} ${path.name} (trial ${trial})`);
            }
          }
        }
      }
    }
  },
);

Deno.test(
  "one class, every kind, 512 rows: every row's loss is exactly 0 on every path",
  opts,
  () => {
    const rng = new Rng(2002);
    const d = 6;
    for (const b of BACKENDS) {
      const n = b === "cpu" ? 512 : 16; // the emulator runs every CUDA thread on the CPU
      for (const dtype of ["float32", "float64"] as const) {
        const x = array(dtype, Array.from({ length: n * d }, () => rng.normal() * 3));
        const w = array(dtype, Array.from({ length: d }, () => rng.normal()));
        const labels = new Int32Array(n);
        for (const m of KINDS) {
          for (const path of PATHS) {
            if (!path.takes(dtype, 1)) continue;
            const { sum } = path.run(b, dtype, x, w, labels, m);
            assert.equal(sum, 0, `${b} ${dtype} ${JSON.stringify(m)} ${path.name}`);
          }
        }
      }
    }
  },
);

// A row fitted almost perfectly: x = alpha (w_y + noise) with the other classes' rows random, so
// that the target logit lies far above the rest and the loss is a few float32 roundings of it.
function fitted(rng: Rng, d: number, c: number, alpha: number): { x: number[]; w: number[] } {
  const w: number[] = [];
  for (let j = 0; j < c; j++) w.push(...unit(rng, d));
  const x = w.slice(0, d).map((v) => alpha * (v + 0.02 * rng.normal()));
  return { x, w };
}

const FITTED: { m: Margin; alpha: [number, number] }[] = [
  { m: { margin: 2, lambda: 0 }, alpha: [18, 40] },
  { m: { kind: "cosface", scale: 64, margin: 0.35 }, alpha: [0.5, 50] },
  { m: { kind: "arcface", scale: 64, margin: 0.5 }, alpha: [0.5, 50] },
];

Deno.test(
  "2,000 fitted float32 rows per kind (lsoftmax, cosface, arcface): none negative (60 on CUDA)",
  opts,
  () => {
    const rng = new Rng(2003);
    const d = 8, c = 6;
    for (const b of BACKENDS) {
      for (const { m, alpha } of FITTED) {
        // One call a row on the one-block path (every row's loss seen); batches on the others.
        const count = b === "cpu" ? 2000 : 60;
        let negative = 0, min = Infinity;
        const rows: { x: number[]; w: number[] }[] = [];
        for (let k = 0; k < count; k++) rows.push(fitted(rng, d, c, rng.uniform(...alpha)));
        for (const { x, w } of rows) {
          const r = loss(Float32Array.from(x), Float32Array.from(w), new Int32Array([0]), {
            ...m,
            backend: b,
            workspace: BIG,
            gradients: false,
          });
          if (!(r.loss >= 0)) negative++;
          min = Math.min(min, r.loss);
        }
        assert.equal(
          negative,
          0,
          `${b} ${JSON.stringify(m)}: ${negative} of ${count} negative, min ${min}`,
        );
        // The other paths, a row a call for the first rows.
        for (const path of PATHS.slice(1)) {
          for (const { x, w } of rows.slice(0, b === "cpu" ? 100 : 6)) {
            const { sum } = path.run(
              b,
              "float32",
              Float32Array.from(x),
              Float32Array.from(w),
              new Int32Array([0]),
              m,
            );
            assert.ok(sum >= 0, `${b} ${JSON.stringify(m)} ${path.name}: ${sum}`);
          }
        }
      }
    }
  },
);

Deno.test(
  "fitted float32 L-Softmax rows: the loss is the one of the softmax in dL/dW",
  opts,
  () => {
    // One row labelled 0: the other classes' logits are plain products x . w_j, so
    // dL/dw_j = softmax_j x (j >= 1) and sum_j>=1 softmax_j = 1 - exp(-loss).
    const rng = new Rng(2004);
    const d = 8, c = 6;
    for (const b of BACKENDS) {
      for (
        const path of PATHS.filter((p) => ["one block", "class blocks", "shards"].includes(p.name))
      ) {
        for (let k = 0; k < (b === "cpu" ? 300 : 20); k++) {
          const { x, w } = fitted(rng, d, c, rng.uniform(14, 30));
          const xs = Float32Array.from(x);
          const r = path.run(b, "float32", xs, Float32Array.from(w), new Int32Array([0]), {
            margin: 2,
            lambda: 0,
          });
          const xx = xs.reduce((a, v) => a + v * v, 0);
          let others = 0;
          for (let j = 1; j < c; j++) {
            for (let q = 0; q < d; q++) others += r.gradW![j * d + q] * xs[q] / xx;
          }
          const fromLoss = -Math.expm1(-r.sum);
          assert.ok(
            Math.abs(fromLoss - others) <= 1e-5 * others + 1e-15,
            `${b} ${path.name}: loss ${r.sum} gives ${fromLoss}, dL/dW holds ${others}`,
          );
        }
      }
    }
  },
);

Deno.test(
  "float64: the reported loss's central differences are its gradients, every kind and path",
  opts,
  () => {
    const rng = new Rng(2005);
    const n = 3, d = 4, c = 5, h = 1e-6;
    for (const b of BACKENDS) {
      for (const m of KINDS) {
        const x = Float64Array.from({ length: n * d }, () => rng.normal());
        const w = Float64Array.from({ length: c * d }, () => rng.normal());
        const labels = Int32Array.from({ length: n }, () => rng.int(c));
        for (const path of PATHS.filter((p) => p.name !== "tfjs")) {
          const r = path.run(b, "float64", x, w, labels, m);
          assert.ok(r.sum >= 0);
          if (r.gradX === undefined) continue;
          for (const [v, g, name] of [[x, r.gradX, "x"], [w, r.gradW!, "w"]] as const) {
            // Every element on the CPU; every fifth on the emulator (it runs each CUDA thread).
            for (let e = 0; e < v.length; e += b === "cpu" ? 1 : 5) {
              const keep = v[e];
              v[e] = keep + h;
              const up = path.run(b, "float64", x, w, labels, m).sum;
              v[e] = keep - h;
              const down = path.run(b, "float64", x, w, labels, m).sum;
              v[e] = keep;
              const numeric = (up - down) / (2 * h);
              assert.ok(
                Math.abs(numeric - g[e]) <= 1e-6 * (1 + Math.abs(g[e])),
                `${b} ${JSON.stringify(m)} ${path.name} d/d${name}[${e}]: ${numeric} vs ${g[e]}`,
              );
            }
          }
        }
      }
    }
  },
);

Deno.test(
  "the gradient of the logits sums to 0 over the classes (plain products, float32)",
  opts,
  () => {
    // Margin 1: every logit is x_i . w_j, so sum_j dL/dw_j = sum_i (sum_j G_ij) x_i = 0.
    const rng = new Rng(2006);
    const n = 4, d = 5, c = 7;
    for (const b of BACKENDS) {
      for (
        const path of PATHS.filter((p) => ["one block", "class blocks", "shards"].includes(p.name))
      ) {
        for (let k = 0; k < 20; k++) {
          const x = Float32Array.from({ length: n * d }, () => rng.normal() * 4);
          const w = Float32Array.from({ length: c * d }, () => rng.normal());
          const labels = Int32Array.from({ length: n }, () => rng.int(c));
          const { gradW } = path.run(b, "float32", x, w, labels, { margin: 1, lambda: 0 });
          const bound = 1e-6 * x.reduce((a, v) => a + Math.abs(v), 0);
          for (let q = 0; q < d; q++) {
            let s = 0;
            for (let j = 0; j < c; j++) s += gradW![j * d + q];
            assert.ok(Math.abs(s) <= bound, `${b} ${path.name}: sum_j dL/dw_j[${q}] = ${s}`);
          }
        }
      }
    }
  },
);
