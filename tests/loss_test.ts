// loss_test.ts: the fused loss (softmax cross-entropy over the margin logits) against central
// differences of itself (float64), against the independent reference's logits with a plain
// TypeScript softmax cross-entropy, against forward + that cross-entropy + backward, at extreme
// logits, with NaN rows, in class blocks and in class shards. CPU and, where usable, CUDA.

import assert from "node:assert/strict";
import { backward, forward, LargeMarginSoftmax, loss } from "../mod.ts";
import { cudaAvailable, LAMBDAS, MARGINS, type TestBackend } from "./check.ts";
import { allFinite, assertClose, maxAbs, randomProblem, Rng, rowScale, toF32 } from "./helpers.ts";
import { referenceForward } from "./reference.ts";

/** Softmax cross-entropy of logits [n, c] in float64: the row losses and dL/dlogits. */
function crossEntropy(logits: ArrayLike<number>, labels: Int32Array, c: number, mean: boolean) {
  const n = labels.length, scale = mean ? 1 / n : 1;
  const rows = new Float64Array(n), grad = new Float64Array(n * c);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, logits[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(logits[i * c + j] - m);
    const lse = m + Math.log(s);
    rows[i] = lse - logits[i * c + labels[i]];
    for (let j = 0; j < c; j++) {
      grad[i * c + j] = scale * (Math.exp(logits[i * c + j] - lse) - (j === labels[i] ? 1 : 0));
    }
  }
  const total = rows.reduce((a, b) => a + b, 0);
  return { loss: mean ? total / n : total, rows, grad };
}

const SHAPES: [number, number, number][] = [[7, 5, 3], [1, 1, 1], [3, 1, 4], [9, 6, 11]];

for (const backend of ["cpu", "cuda"] as TestBackend[]) {
  const test = (name: string, fn: () => void) =>
    Deno.test({
      name: `${backend}: loss: ${name}`,
      ignore: backend === "cuda" && !cudaAvailable,
      fn,
    });

  test("equals forward + a TypeScript cross-entropy + backward, and the reference's logits", () => {
    const rng = new Rng(1101);
    for (const [n, d, c] of SHAPES) {
      for (const margin of MARGINS) {
        for (const lambda of LAMBDAS) {
          for (const reduction of ["mean", "sum"] as const) {
            const p = randomProblem(rng, n, d, c);
            const opts = { margin, lambda, backend };
            const r = loss(p.x, p.w, p.labels, { ...opts, reduction });
            const what = `n${n} d${d} c${c} m${margin} l${lambda} ${reduction}`;
            const ref = crossEntropy(
              referenceForward(p.x, p.w, p.labels, { margin, lambda }),
              p.labels,
              c,
              reduction === "mean",
            );
            assert.ok(Math.abs(r.loss - ref.loss) <= 1e-12 * Math.max(1, Math.abs(ref.loss)), what);
            const ce = crossEntropy(
              forward(p.x, p.w, p.labels, opts).logits,
              p.labels,
              c,
              reduction === "mean",
            );
            const b = backward(p.x, p.w, p.labels, ce.grad, opts);
            assertClose(r.gradX, b.gradX, 1e-12, `${what} gradX`, rowScale(b.gradX, n));
            assertClose(
              r.gradW,
              b.gradW,
              1e-12,
              `${what} gradW`,
              Math.max(maxAbs(b.gradW), 1e-300),
            );
          }
        }
      }
    }
  });

  test("central differences of the loss (float64, m 1..6, lambda 0/0.5/1000, both reductions)", () => {
    const rng = new Rng(1102);
    const h = 1e-6;
    for (const margin of MARGINS) {
      for (const [l, lambda] of LAMBDAS.entries()) {
        for (const [r, reduction] of (["mean", "sum"] as const).entries()) {
          // The emulated kernels are slow: a third of the cases, still every margin, lambda and
          // reduction (the equality with backward above covers every case).
          if (backend === "cuda" && (margin + l + r) % 3 !== 0) continue;
          const p = randomProblem(rng, 4, 3, 5);
          const opts = { margin, lambda, backend, reduction };
          const { gradX, gradW } = loss(p.x, p.w, p.labels, opts);
          const value = (x: Float64Array, w: Float64Array) =>
            loss(x, w, p.labels, { ...opts, gradients: false }).loss;
          for (const [name, a, g] of [["x", p.x, gradX], ["w", p.w, gradW]] as const) {
            const fd = new Float64Array(a.length);
            for (let k = 0; k < a.length; k++) {
              const v = a[k];
              a[k] = v + h;
              const plus = name === "x" ? value(a, p.w) : value(p.x, a);
              a[k] = v - h;
              const minus = name === "x" ? value(a, p.w) : value(p.x, a);
              a[k] = v;
              fd[k] = (plus - minus) / (2 * h);
            }
            assertClose(
              g,
              fd,
              1e-6,
              `m${margin} l${lambda} ${reduction} grad${name}`,
              Math.max(maxAbs(fd), 1e-3),
            );
          }
        }
      }
    }
  });

  test("class blocks (a small workspace) give the one-block result", () => {
    const rng = new Rng(1103);
    for (const dtype of ["float64", "float32"] as const) {
      const p = randomProblem(rng, 6, 4, 23);
      const [x, w] = dtype === "float64" ? [p.x, p.w] : [toF32(p.x), toF32(p.w)];
      const opts = { margin: 3, lambda: 0.5, backend };
      const whole = loss(x, w, p.labels, opts);
      const bytes = dtype === "float64" ? 8 : 4;
      for (const classes of [1, 2, 5, 22]) {
        const blocked = loss(x, w, p.labels, { ...opts, workspace: classes * 6 * bytes });
        const tol = dtype === "float64" ? 1e-13 : 1e-5;
        assert.ok(
          Math.abs(blocked.loss - whole.loss) <= tol * Math.abs(whole.loss),
          `${dtype} ${classes}`,
        );
        assertClose(
          blocked.gradX,
          whole.gradX,
          tol,
          `${dtype} ${classes} gradX`,
          maxAbs(whole.gradX),
        );
        assertClose(
          blocked.gradW,
          whole.gradW,
          tol,
          `${dtype} ${classes} gradW`,
          maxAbs(whole.gradW),
        );
      }
      loss(x, w, p.labels, { ...opts, workspace: 64 << 20 }); // the default again
    }
  });

  test("thousands of classes: rows in chunks, classes in blocks, against the reference", () => {
    const rng = new Rng(1108);
    const [n, d, c] = [3, 4, 9000];
    const p = randomProblem(rng, n, d, c);
    const opts = { margin: 3, lambda: 0.5, backend };
    const ref = crossEntropy(referenceForward(p.x, p.w, p.labels, opts), p.labels, c, true);
    const b = backward(p.x, p.w, p.labels, ref.grad, opts);
    // The default workspace (one block), then blocks of 5000 and 4000 classes.
    for (const workspace of [64 << 20, 5000 * n * 8, 4000 * n * 8]) {
      const r = loss(p.x, p.w, p.labels, { ...opts, workspace });
      const what = `workspace ${workspace}`;
      assert.ok(Math.abs(r.loss - ref.loss) <= 1e-12 * Math.abs(ref.loss), what);
      assertClose(r.gradX, b.gradX, 1e-11, `${what} gradX`, rowScale(b.gradX, n));
      assertClose(r.gradW, b.gradW, 1e-11, `${what} gradW`, Math.max(maxAbs(b.gradW), 1e-300));
    }
    loss(p.x, p.w, p.labels, { ...opts, workspace: 64 << 20 }); // the default again
  });

  test("class shards over a list of backends equal the unsharded result (float64, 1e-12)", () => {
    const rng = new Rng(1104);
    for (const k of [1, 2, 3, 7]) {
      for (const margin of [1, 4]) {
        const p = randomProblem(rng, 5, 3, 7);
        const opts = { margin, lambda: 0.5 };
        const whole = loss(p.x, p.w, p.labels, { ...opts, backend });
        const sharded = loss(p.x, p.w, p.labels, { ...opts, backend: Array(k).fill(backend) });
        const what = `${k} shards m${margin}`;
        assert.ok(Math.abs(sharded.loss - whole.loss) <= 1e-12 * Math.abs(whole.loss), what);
        assertClose(sharded.gradX, whole.gradX, 1e-12, `${what} gradX`, rowScale(whole.gradX, 5));
        assertClose(sharded.gradW, whole.gradW, 1e-12, `${what} gradW`, maxAbs(whole.gradW));
        const value = loss(p.x, p.w, p.labels, {
          ...opts,
          backend: Array(k).fill(backend),
          gradients: false,
        });
        assert.deepEqual(Object.keys(value), ["loss"]);
        assert.ok(Math.abs(value.loss - whole.loss) <= 1e-12 * Math.abs(whole.loss), what);
      }
    }
  });

  test("logits up to +-1e4 (float32) and +-1e300 (float64) do not overflow", () => {
    const rng = new Rng(1105);
    for (const [dtype, size] of [["float32", 1e4], ["float64", 1e300]] as const) {
      const p = randomProblem(rng, 4, 3, 6);
      // Scale x so that the logits reach `size`: |f| <= |x||w| <= sqrt(d) max|x| sqrt(d) max|w|.
      const s = size / (3 * maxAbs(p.x) * maxAbs(p.w));
      const x64 = p.x.map((v) => v * s);
      const [x, w] = dtype === "float64" ? [x64, p.w] : [toF32(x64), toF32(p.w)];
      const r = loss(x, w, p.labels, { margin: 2, lambda: 0.1, backend });
      const ref = crossEntropy(
        referenceForward(Float64Array.from(x), Float64Array.from(w), p.labels, {
          margin: 2,
          lambda: 0.1,
        }),
        p.labels,
        6,
        true,
      );
      assert.ok(Number.isFinite(r.loss) && allFinite(r.gradX) && allFinite(r.gradW), dtype);
      const tol = dtype === "float64" ? 1e-12 : 1e-4;
      assert.ok(
        Math.abs(r.loss - ref.loss) <= tol * Math.abs(ref.loss),
        `${dtype} ${r.loss} ${ref.loss}`,
      );
    }
  });

  test("a near-certain target keeps its gradient's digits (float32, one block and several)", () => {
    // softmax_iy = 1 - 1.8e-6: dL/df_iy = softmax - 1 must not come from rounding softmax first.
    for (const a of [11.5, 16]) {
      const x = new Float32Array([1, 0.5]), w = new Float32Array([a, 0, 0, 0, -a, 0.25]);
      const labels = new Int32Array([0]);
      const opts = { margin: 1, lambda: 0, backend };
      const ref = loss(Float64Array.from(x), Float64Array.from(w), labels, opts);
      for (const workspace of [64 << 20, 4]) {
        const r = loss(x, w, labels, { ...opts, workspace });
        assertClose(r.gradX, ref.gradX, 1e-6, `a=${a} workspace ${workspace}`, maxAbs(ref.gradX));
      }
      loss(x, w, labels, { ...opts, workspace: 64 << 20 }); // the default again
    }
  });

  test("a NaN feature row makes the loss NaN, the other rows of gradX stay finite", () => {
    const p = randomProblem(new Rng(1106), 5, 3, 4);
    p.x[2 * 3 + 1] = NaN;
    const r = loss(p.x, p.w, p.labels, { margin: 3, lambda: 0.5, backend });
    assert.ok(Number.isNaN(r.loss));
    for (let i = 0; i < 5; i++) {
      const row = r.gradX.subarray(i * 3, i * 3 + 3);
      assert.equal(allFinite(row), i !== 2, `row ${i}`);
    }
  });

  test("the layer: iteration and lambda as forward, gradients at that lambda", () => {
    const p = randomProblem(new Rng(1107), 4, 3, 5);
    const schedule = { base: 100, gamma: 0.5, power: 2, lambdaMin: 0 };
    using layer = new LargeMarginSoftmax({ margin: 4, ...schedule, backend });
    const a = layer.loss(p.x, p.w, p.labels);
    assert.equal(layer.iteration, 1);
    const b = layer.loss(p.x, p.w, p.labels, { step: 10, reduction: "sum" });
    assert.equal(layer.iteration, 10);
    assert.equal(b.lambda, layer.lambda);
    const direct = loss(p.x, p.w, p.labels, {
      margin: 4,
      lambda: b.lambda,
      reduction: "sum",
      backend,
    });
    assert.equal(b.loss, direct.loss);
    assertClose(b.gradX, direct.gradX, 0, "layer gradX", 1);
    assert.ok(a.lambda > b.lambda);
  });
}

Deno.test("loss: bad options are named errors, and the library stays usable", () => {
  const p = randomProblem(new Rng(1108), 3, 2, 4);
  const ok = { margin: 2, lambda: 0.5, backend: "cpu" as const };
  const cases: [string, () => unknown, typeof Error, string][] = [
    [
      "reduction",
      () => loss(p.x, p.w, p.labels, { ...ok, reduction: "avg" as never }),
      RangeError,
      "reduction",
    ],
    [
      "gradients",
      () => loss(p.x, p.w, p.labels, { ...ok, gradients: 1 as never }),
      TypeError,
      "gradients",
    ],
    ["workspace", () => loss(p.x, p.w, p.labels, { ...ok, workspace: 0 }), RangeError, "workspace"],
    ["empty list", () => loss(p.x, p.w, p.labels, { ...ok, backend: [] }), RangeError, "backend"],
    [
      "outX length",
      () => loss(p.x, p.w, p.labels, { ...ok, outX: new Float64Array(5) }),
      RangeError,
      "outX",
    ],
    [
      "outW dtype",
      () => loss(p.x, p.w, p.labels, { ...ok, outW: new Float32Array(8) as never }),
      TypeError,
      "outW",
    ],
    ["outX over x", () => loss(p.x, p.w, p.labels, { ...ok, outX: p.x }), RangeError, "outX"],
    [
      "sharded outW over w",
      () => loss(p.x, p.w, p.labels, { ...ok, backend: ["cpu", "cpu"], outW: p.w }),
      RangeError,
      "outW",
    ],
    ["label", () => loss(p.x, p.w, new Int32Array([0, 4, 1]), ok), RangeError, "labels[1]"],
    [
      "sharded label",
      () => loss(p.x, p.w, new Int32Array([0, -1, 1]), { ...ok, backend: ["cpu", "cpu"] }),
      RangeError,
      "labels[1]",
    ],
    [
      "misspelt",
      () => loss(p.x, p.w, p.labels, { ...ok, reduce: "sum" } as never),
      TypeError,
      '"reduce"',
    ],
  ];
  for (const [what, call, cls, mention] of cases) {
    assert.throws(call, (e: unknown) => {
      assert.ok(e instanceof cls, `${what}: expected ${cls.name}, got ${e}`);
      assert.ok((e as Error).message.includes(mention), `${what}: ${(e as Error).message}`);
      return true;
    });
  }
  const r = loss(p.x, p.w, p.labels, ok);
  assert.ok(Number.isFinite(r.loss));
});
