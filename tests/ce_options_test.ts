// ce_options_test.ts: the cross-entropy options of the fused loss (labelSmoothing, classWeights,
// ignoreIndex, reduction "none") against an independent float64 reference of torch's
// F.cross_entropy over the reference margin logits (reference_margins.ts), against central
// differences of the library's own loss, and across its paths: one block, class blocks (a small
// workspace) and class shards, float64 and float32, CPU and (emulated) CUDA. Then the mean over
// no counted row, and the options' errors.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { backward, LargeMarginSoftmax, loss } from "../mod.ts";
import { MarginLoss, marginLoss } from "../tfjs.ts";
import { OPS } from "../ffi/ops.ts";
import type { LossArgs } from "../ffi/structs.ts";
import { openContext } from "../src/backends.ts";
import { withClassWeights } from "../src/loss.ts";
import { cudaAvailable, type TestBackend } from "./check.ts";
import { assertClose, maxAbs, randomProblem, Rng, toF32 } from "./helpers.ts";
import { type MarginSpec, referenceMarginForward } from "./reference_margins.ts";

const SPECS: MarginSpec[] = [
  { kind: "lsoftmax", margin: 3, lambda: 0.5 },
  { kind: "asoftmax", margin: 2, lambda: 0 },
  { kind: "cosface", scale: 8, margin: 0.2 },
  { kind: "arcface", scale: 8, margin: 0.3 },
  { kind: "combined", scale: 8, m1: 1.2, m2: 0.2, m3: 0.1 },
];

interface Options {
  labelSmoothing?: number;
  classWeights?: Float64Array | Float32Array;
  ignoreIndex?: number;
}

/**
 * torch's F.cross_entropy over full logits [n, c], written from its definition: the row losses
 * (0 for ignored rows), the reduced loss, and dL/dlogits.
 */
function torchCrossEntropy(
  f: ArrayLike<number>,
  labels: Int32Array,
  c: number,
  o: Options,
  reduction: "mean" | "sum" | "none",
) {
  const n = labels.length, eps = o.labelSmoothing ?? 0;
  const wt = (j: number) => (o.classWeights === undefined ? 1 : o.classWeights[j]);
  const rows = new Float64Array(n), grad = new Float64Array(n * c);
  let denominator = 0;
  const logp = new Float64Array(c);
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (y === o.ignoreIndex) continue;
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, f[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(f[i * c + j] - m);
    for (let j = 0; j < c; j++) logp[j] = f[i * c + j] - m - Math.log(s);
    let smooth = 0;
    for (let j = 0; j < c; j++) smooth += wt(j) * -logp[j];
    rows[i] = (1 - eps) * wt(y) * -logp[y] + (eps / c) * smooth;
    denominator += wt(y);
    // d/df_ij of -log p_ik is p_ij - [j = k].
    for (let j = 0; j < c; j++) {
      const p = Math.exp(logp[j]);
      let g = (1 - eps) * wt(y) * (p - (j === y ? 1 : 0));
      for (let k = 0; k < c; k++) g += (eps / c) * wt(k) * (p - (j === k ? 1 : 0));
      grad[i * c + j] = g;
    }
  }
  const total = rows.reduce((a, b) => a + b, 0);
  const scale = reduction === "mean" ? (denominator === 0 ? 0 : 1 / denominator) : 1;
  for (let e = 0; e < grad.length; e++) grad[e] *= scale;
  return { loss: reduction === "mean" ? total * scale : total, rows, grad };
}

const marginOptions = (spec: MarginSpec) => {
  const { kind, ...rest } = spec;
  return { kind, ...rest } as Record<string, unknown>;
};

/** The option sets: each option alone, and together. */
function optionSets(rng: Rng, c: number): [string, Options][] {
  const weights = Float64Array.from({ length: c }, () => 0.25 + 2 * rng.next());
  weights[1 % c] = 0; // a class of weight 0
  return [
    ["none", {}],
    ["smoothing", { labelSmoothing: 0.2 }],
    ["weights", { classWeights: weights }],
    ["ignore", { ignoreIndex: -100 }],
    ["ignore a class", { ignoreIndex: 0 }],
    ["all", { labelSmoothing: 0.1, classWeights: toF32(weights), ignoreIndex: -100 }],
  ];
}

// Labels with some rows ignored (-100) where the options ignore them.
function labelsFor(labels: Int32Array, o: Options): Int32Array {
  if (o.ignoreIndex !== -100) return labels;
  const out = labels.slice();
  for (let i = 0; i < out.length; i += 3) out[i] = -100;
  return out;
}

for (const backend of ["cpu", "cuda"] as TestBackend[]) {
  const test = (name: string, fn: () => void) =>
    Deno.test({
      name: `${backend}: ce options: ${name}`,
      ignore: backend === "cuda" && !cudaAvailable,
      fn,
    });
  const emulated = backend === "cuda";

  test("every kind and option against torch's definition (value, row losses, gradients)", () => {
    const rng = new Rng(2101);
    const [n, d, c] = [7, 4, 6];
    for (const spec of SPECS) {
      for (const [what, o] of optionSets(rng, c)) {
        for (const reduction of ["mean", "sum", "none"] as const) {
          const p = randomProblem(rng, n, d, c);
          const labels = labelsFor(p.labels, o);
          const opts = { ...marginOptions(spec), backend, reduction, ...o };
          const r = loss(p.x, p.w, labels, opts as never) as {
            loss: number;
            losses?: Float64Array;
            gradX: Float64Array;
            gradW: Float64Array;
          };
          const f = referenceMarginForward(p.x, p.w, labels.map((y) => (y < 0 ? 0 : y)), spec);
          const ref = torchCrossEntropy(f, labels, c, o, reduction);
          const tag = `${spec.kind} ${what} ${reduction}`;
          const tol = 1e-11 * Math.max(1, Math.abs(ref.loss));
          assert.ok(Math.abs(r.loss - ref.loss) <= tol, `${tag}: ${r.loss} vs ${ref.loss}`);
          if (reduction === "none") {
            assertClose(r.losses!, ref.rows, 1e-11, `${tag} losses`, Math.max(1, maxAbs(ref.rows)));
          } else {
            assert.equal(r.losses, undefined, tag);
          }
          // The gradients: the reference's dL/dlogits through the op's backward (checked against
          // central differences of its own in gradient_test.ts) at the same logits.
          const fwdLabels = labels.map((y) => (y < 0 ? 0 : y));
          const b = backward(
            p.x,
            p.w,
            fwdLabels,
            ref.grad,
            { ...marginOptions(spec), backend } as never,
          );
          assertClose(r.gradX, b.gradX, 1e-10, `${tag} gradX`, Math.max(maxAbs(b.gradX), 1e-12));
          assertClose(r.gradW, b.gradW, 1e-10, `${tag} gradW`, Math.max(maxAbs(b.gradW), 1e-12));
        }
      }
    }
  });

  test("central differences in float64 of the loss with each option and all together", () => {
    const rng = new Rng(2102);
    const h = 1e-6;
    const [n, d, c] = [4, 3, 5];
    for (const [s, spec] of SPECS.entries()) {
      for (const [k, [what, o]] of optionSets(rng, c).entries()) {
        if (emulated && (s + k) % 3 !== 0) continue; // the emulator is slow: a third of them
        const p = randomProblem(rng, n, d, c);
        const labels = labelsFor(p.labels, o);
        const opts = { ...marginOptions(spec), backend, ...o } as never;
        const { gradX, gradW } = loss(p.x, p.w, labels, opts);
        const value = (x: Float64Array, w: Float64Array) =>
          loss(x, w, labels, { ...(opts as object), gradients: false } as never).loss;
        for (const [name, a, g] of [["x", p.x, gradX], ["w", p.w, gradW]] as const) {
          const fd = new Float64Array(a.length);
          for (let e = 0; e < a.length; e++) {
            const v = a[e];
            a[e] = v + h;
            const plus = name === "x" ? value(a, p.w) : value(p.x, a);
            a[e] = v - h;
            const minus = name === "x" ? value(a, p.w) : value(p.x, a);
            a[e] = v;
            fd[e] = (plus - minus) / (2 * h);
          }
          assertClose(g, fd, 1e-6, `${spec.kind} ${what} grad${name}`, Math.max(maxAbs(fd), 1e-3));
        }
      }
    }
  });

  test("class blocks and class shards give the one-block result (float64 and float32)", () => {
    const rng = new Rng(2103);
    const [n, d, c] = [6, 4, 23];
    for (const dtype of ["float64", "float32"] as const) {
      for (const spec of [SPECS[0], SPECS[3]]) {
        for (const [what, o] of optionSets(rng, c)) {
          if (what === "none") continue;
          const q = randomProblem(rng, n, d, c);
          const x = dtype === "float32" ? toF32(q.x) : q.x;
          const w = dtype === "float32" ? toF32(q.w) : q.w;
          const labels = labelsFor(q.labels, o);
          const base = { ...marginOptions(spec), ...o, reduction: "none" };
          const one = loss(x, w, labels, { ...base, backend } as never) as {
            loss: number;
            losses: Float64Array;
            gradX: Float64Array;
            gradW: Float64Array;
          };
          const tol = dtype === "float64" ? 1e-12 : 2e-5;
          const tag = `${dtype} ${spec.kind} ${what}`;
          for (
            const [how, extra] of [
              ["blocks", { backend, workspace: n * 5 * (dtype === "float32" ? 4 : 8) }],
              ["shards", { backend: [backend, backend, backend] }],
            ] as const
          ) {
            const r = loss(x, w, labels, { ...base, ...extra } as never) as typeof one;
            assertClose(
              r.losses,
              one.losses,
              tol,
              `${tag} ${how} losses`,
              Math.max(1, maxAbs(one.losses)),
            );
            assert.ok(Math.abs(r.loss - one.loss) <= tol * Math.max(1, Math.abs(one.loss)), tag);
            for (const t of ["gradX", "gradW"] as const) {
              assertClose(
                r[t],
                one[t],
                tol * 10,
                `${tag} ${how} ${t}`,
                Math.max(maxAbs(one[t]), 1e-12),
              );
            }
          }
          // Against the reference, float32 with a looser tolerance.
          const f = referenceMarginForward(x, w, labels.map((y) => (y < 0 ? 0 : y)), spec);
          const ref = torchCrossEntropy(f, labels, c, o, "none");
          assertClose(
            one.losses,
            ref.rows,
            dtype === "float64" ? 1e-11 : 1e-4,
            `${tag} ref`,
            Math.max(1, maxAbs(ref.rows)),
          );
        }
      }
    }
  });

  test("losses are never negative with smoothing on fitted rows, and finite", () => {
    const rng = new Rng(2104);
    const [n, d, c] = [5, 8, 9];
    const p = randomProblem(rng, n, d, c);
    // Rows fitted hard: x_i a large multiple of its target's row of W.
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < d; k++) p.x[i * d + k] = 40 * p.w[p.labels[i] * d + k];
    }
    for (const dtype of ["float64", "float32"] as const) {
      const x = dtype === "float32" ? toF32(p.x) : p.x, w = dtype === "float32" ? toF32(p.w) : p.w;
      for (const eps of [0, 1e-9, 0.1, 0.999]) {
        const r = loss(x, w, p.labels, {
          backend,
          margin: 1,
          lambda: 0,
          labelSmoothing: eps,
          reduction: "none",
          classWeights: new Float64Array(c).fill(3),
          gradients: false,
        }) as { losses: Float64Array };
        for (const l of r.losses) {
          assert.ok(l >= 0 && Number.isFinite(l), `${dtype} eps ${eps}: ${l}`);
        }
      }
    }
  });

  test("a mean over no counted row is 0 with zero gradients; sum and none too", () => {
    const rng = new Rng(2105);
    const p = randomProblem(rng, 4, 3, 5);
    const ignored = new Int32Array(4).fill(-1);
    for (const reduction of ["mean", "sum", "none"] as const) {
      for (const labelSmoothing of [0, 0.3]) {
        const r = loss(p.x, p.w, ignored, {
          backend,
          margin: 2,
          lambda: 0.5,
          ignoreIndex: -1,
          labelSmoothing,
          reduction,
        }) as { loss: number; losses?: Float64Array; gradX: Float64Array; gradW: Float64Array };
        assert.equal(r.loss, 0, reduction);
        assert.ok(r.gradX.every((v) => v === 0) && r.gradW.every((v) => v === 0), reduction);
        if (reduction === "none") assert.ok(r.losses!.every((v) => v === 0));
      }
    }
    // Rows of total weight 0: the same rule.
    const zero = loss(p.x, p.w, p.labels, {
      backend,
      margin: 2,
      lambda: 0.5,
      classWeights: new Float64Array(5),
    });
    assert.equal(zero.loss, 0);
    assert.ok(zero.gradX.every((v) => v === 0) && zero.gradW.every((v) => v === 0));
  });

  test("option errors name the option, the expected and the actual value", () => {
    const p = randomProblem(new Rng(2106), 3, 2, 4);
    const m = { backend, margin: 2, lambda: 0.5 };
    const cases: [Record<string, unknown>, RegExp, ErrorConstructor][] = [
      [{ labelSmoothing: 1 }, /^labelSmoothing: expected a number in \[0, 1\), got 1$/, RangeError],
      [{ labelSmoothing: -0.1 }, /^labelSmoothing: .*got -0\.1$/, RangeError],
      [{ labelSmoothing: NaN }, /^labelSmoothing: .*got NaN$/, RangeError],
      [{ labelSmoothing: "0.1" }, /^labelSmoothing: expected a number/, TypeError],
      [
        { classWeights: new Float64Array(3) },
        /^classWeights: expected C = 4 elements, got 3$/,
        RangeError,
      ],
      [
        { classWeights: [1, 1, 1, 1] },
        /^classWeights: expected a Float32Array or Float64Array/,
        TypeError,
      ],
      [
        { classWeights: new Float32Array([1, -1, 1, 1]) },
        /^classWeights\[1\]: expected a finite number >= 0, got -1$/,
        RangeError,
      ],
      [
        { classWeights: new Float64Array([1, 1, NaN, 1]) },
        /^classWeights\[2\]: .*got NaN$/,
        RangeError,
      ],
      [{ ignoreIndex: 1.5 }, /^ignoreIndex: expected an integer/, TypeError],
      [{ ignoreIndex: 2 ** 31 }, /^ignoreIndex: expected an integer/, RangeError],
      [
        { reduction: "avg" },
        /^reduction: expected "mean", "sum" or "none", got "avg"$/,
        RangeError,
      ],
    ];
    for (const [o, message, type] of cases) {
      assert.throws(() => loss(p.x, p.w, p.labels, { ...m, ...o } as never), (e: Error) => {
        assert.ok(e instanceof type, `${e.constructor.name}: ${e.message}`);
        assert.match(e.message, message);
        return true;
      });
    }
    // A label that is neither in range nor the ignored one: named by the native check.
    const bad = new Int32Array([0, -7, 1]);
    assert.throws(
      () => loss(p.x, p.w, bad, { ...m, ignoreIndex: -100 }),
      /labels\[1\]: expected an integer in \[0, 4\).*got -7/,
    );
    // The native checks, past the TypeScript ones: each names the field.
    const ctx = openContext(backend);
    const x = new Float64Array(4), w = new Float64Array(6);
    const margin = {
      ...{ kind: 0, m: 1, lambda: 0, scale: 0, m1: 0, m2: 0, m3: 0, flags: 0, h: 0, tAlpha: 0 },
      ...{
        batchMean: 0,
        batchStd: 0,
        t: 0,
        lowerNorm: 0,
        upperNorm: 0,
        lambdaG: 0,
        upperMargin: 0,
      },
    };
    const base: LossArgs = { classOffset: 0, totalClasses: 3, gradScale: 1 };
    const native: [LossArgs, Float64Array | undefined, Int32Array, RegExp][] = [
      [
        { ...base, labelSmoothing: 1 },
        undefined,
        new Int32Array(2),
        /^args\.label_smoothing: .*got 1$/,
      ],
      [
        base,
        new Float64Array([1, -1, 1]),
        new Int32Array(2),
        /class_weights\[1\]: .*>= 0, got -1$/,
      ],
      [
        { ...base, weightSum: 2 },
        undefined,
        new Int32Array(2),
        /^args\.weight_sum: expected 0 without/,
      ],
      [{ ...base, flags: 2 }, undefined, new Int32Array(2), /^args\.flags: .*got 2$/],
      [{ ...base, ignoreIndex: 5 }, undefined, new Int32Array(2), /^args\.ignore_index: .*got 5$/],
      [
        base,
        undefined,
        new Int32Array([0, 5]),
        /labels\[1\]: expected an integer in \[0, 3\).*got 5/,
      ],
    ];
    for (const [args, weights, labels, message] of native) {
      const call = { dtype: "float64" as const, n: 2, d: 2, c: 3, margin, args };
      const a = withClassWeights(
        ctx,
        { ...args, weightSum: args.weightSum ?? (weights ? 3 : 0) },
        weights,
      );
      assert.throws(
        () =>
          ctx.run(OPS.loss, { ...call, args: a }, [x, w, labels, new Float64Array(2), null, null]),
        (e: Error) => (assert.match(e.message, message), true),
      );
    }
    const smoothing = { dtype: "float64" as const, n: 2, d: 2, c: 3, margin };
    const args = { ...base, labelSmoothing: 0.1 };
    assert.throws(
      () =>
        ctx.run(OPS.lossPartials, { ...smoothing, args }, [
          x,
          w,
          new Int32Array(2),
          ...[1, 2, 3].map(() => new Float64Array(2)),
          null,
        ]),
      /row_smooth: expected a pointer, got NULL/,
    );
    const ignoring = { ...base, ignoreIndex: 5, flags: 1 };
    const rows = new Float64Array(2);
    ctx.run(OPS.loss, { ...smoothing, args: ignoring }, [
      x,
      w,
      new Int32Array([0, 5]),
      rows,
      null,
      null,
    ]);
    assert.equal(rows[1], 0);
    ctx.close();
    // The library stays usable, and the ignored label passes.
    assert.ok(
      Number.isFinite(
        loss(p.x, p.w, new Int32Array([0, -100, 1]), { ...m, ignoreIndex: -100 }).loss,
      ),
    );
  });
}

Deno.test("ce options: the layer and the tfjs adapter pass them on (value and gradients)", async () => {
  await tf.setBackend("cpu");
  const rng = new Rng(2107);
  const [n, d, c] = [6, 3, 5];
  const p = randomProblem(rng, n, d, c);
  const x = toF32(p.x), w = toF32(p.w);
  const labels = p.labels.slice();
  labels[2] = -100;
  const o = {
    labelSmoothing: 0.15,
    classWeights: Float32Array.from({ length: c }, (_, j) => 0.5 + j),
    ignoreIndex: -100,
  };
  const margin = { kind: "cosface", scale: 8, margin: 0.2 } as const;
  const direct = loss(x, w, labels, { ...margin, ...o, backend: "cpu" });
  using layer = new LargeMarginSoftmax({ ...margin, backend: "cpu" });
  const viaLayer = layer.loss(x, w, labels, o);
  assert.equal(viaLayer.loss, direct.loss);
  assert.deepEqual(viaLayer.gradX, direct.gradX);
  const none = layer.loss(x, w, labels, { ...o, reduction: "none" });
  assert.equal(none.losses!.length, n);
  assert.equal(none.losses![2], 0);
  const xt = tf.tensor2d(x, [n, d]), wt = tf.tensor2d(w, [c, d]);
  const grads = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
    marginLoss(a, b, labels, { ...margin, ...o, backend: "cpu" })
  );
  const [gx, gw] = grads([xt, wt]);
  assertClose(gx.dataSync(), direct.gradX, 1e-6, "tfjs gradX", maxAbs(direct.gradX));
  assertClose(gw.dataSync(), direct.gradW, 1e-6, "tfjs gradW", maxAbs(direct.gradW));
  const value = marginLoss(xt, wt, labels, { ...margin, ...o, backend: "cpu" });
  assert.ok(Math.abs(value.dataSync()[0] - direct.loss) <= 1e-6 * Math.abs(direct.loss));
  using stateful = new MarginLoss({ ...margin, backend: "cpu" });
  const s = stateful.loss(xt, wt, labels, o);
  assert.ok(Math.abs(s.dataSync()[0] - direct.loss) <= 1e-6 * Math.abs(direct.loss));
  assert.throws(
    () => marginLoss(xt, wt, labels, { ...margin, reduction: "none", backend: "cpu" }),
    /^RangeError: reduction: expected "mean" or "sum" \(the tfjs losses are scalars\), got "none"$/,
  );
  tf.dispose([xt, wt, gx, gw, value, s]);
});
