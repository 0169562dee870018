// The adaptive kinds through the TensorFlow.js adapter: marginLoss (stateless) equals loss(), its
// gradients the library's; MarginLoss carries AdaFace's and CurricularFace's state step to step
// as the layer does, and its toJSON keeps it.

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { LargeMarginSoftmax, loss } from "../mod.ts";
import { MarginLoss, marginLoss } from "../tfjs.ts";
import { assertClose, maxAbs, randomArray, randomLabels, Rng, toF32 } from "./helpers.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

const KINDS = [
  { kind: "subcenter", scale: 16, margin: 0.5, subcenters: 2 },
  { kind: "adaface", scale: 16, margin: 0.4, h: 0.333, tAlpha: 0.2, batchMean: 2, batchStd: 1 },
  { kind: "curricularface", scale: 16, margin: 0.5, tAlpha: 0.2, t: 0 },
  {
    kind: "magface",
    ...{ scale: 16, lowerMargin: 0.45, upperMargin: 0.8, lowerNorm: 1, upperNorm: 4, lambdaG: 2 },
  },
] as const;

Deno.test({
  name: "adaptive tfjs: marginLoss equals loss(), with its gradients",
  ...opts,
  fn: () => {
    for (const o of KINDS) {
      const rng = new Rng(3);
      const n = 6, d = 4, C = 5, rows = C * (o.kind === "subcenter" ? 2 : 1);
      const x = toF32(randomArray(rng, n * d, -1.5, 1.5)), w = toF32(randomArray(rng, rows * d));
      const labels = randomLabels(rng, n, C);
      const want = loss(x, w, labels, { ...o, backend: "cpu" } as never);
      const xt = tf.tensor2d(x, [n, d]), wt = tf.variable(tf.tensor2d(w, [rows, d]));
      const { value, grads } = tf.variableGrads(() =>
        marginLoss(xt, wt, labels, { ...o, backend: "cpu" } as never)
      );
      assertClose([value.dataSync()[0]], [want.loss], 1e-6, `${o.kind}: loss`);
      const gw = grads[wt.name].dataSync();
      assertClose(gw, want.gradW, 1e-6, `${o.kind}: dL/dW`, maxAbs(want.gradW));
      tf.dispose([xt, wt, value, ...Object.values(grads)]);
    }
  },
});

Deno.test({
  name: "adaptive tfjs: MarginLoss carries the state as the layer does",
  ...opts,
  fn: () => {
    for (const o of [KINDS[1], KINDS[2]]) {
      const rng = new Rng(5);
      const n = 6, d = 4, C = 5;
      const x = toF32(randomArray(rng, n * d, -1.5, 1.5)), w = toF32(randomArray(rng, C * d));
      const labels = randomLabels(rng, n, C);
      using head = new MarginLoss({ ...o, backend: "cpu" } as never);
      using layer = new LargeMarginSoftmax({ ...o, backend: "cpu" } as never);
      const xt = tf.tensor2d(x, [n, d]), wt = tf.tensor2d(w, [C, d]);
      for (let step = 0; step < 3; step++) {
        const got = head.loss(xt, wt, labels);
        assertClose([got.dataSync()[0]], [layer.loss(x, w, labels).loss], 1e-6, `step ${step}`);
        got.dispose();
      }
      const saved = head.toJSON() as Record<string, unknown>;
      const moved = o.kind === "adaface" ? saved.batchMean : saved.t;
      assert.notEqual(moved, o.kind === "adaface" ? o.batchMean : o.t, `${o.kind}: state moved`);
      assert.deepEqual(saved, layer.toJSON());
      tf.dispose([xt, wt]);
    }
  },
});
