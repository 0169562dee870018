// large_nc_test.ts: the fused loss and top-k hold no N×C tensor, so N·C may pass 2^31 − 1 (the
// bound of one tensor): N = 2148, C = 1,000,000, D = 1, float32 on the CPU, against a float64
// reference computed row by row in plain TypeScript. W takes few distinct values (the reference
// sums each value's exponential once, times its count), and the top and bottom classes are the
// last two, so that 64-bit offsets into W, dW and the class blocks are exercised at their ends.
// The op (forward), which holds the logits [N, C], still refuses them, naming the reason.

import assert from "node:assert/strict";
import { forward, loss, MarginHead } from "../mod.ts";
import { Rng } from "./helpers.ts";

const N = 2148, C = 1_000_000, K = 7; // N·C = 2,148,000,000 > 2^31 − 1
const opts = { sanitizeOps: false, sanitizeResources: false };

function problem() {
  const rng = new Rng(4001);
  const values = Array.from({ length: K }, () => Math.fround(rng.uniform(-1, 1)));
  const w = new Float32Array(C);
  for (let j = 0; j < C; j++) w[j] = values[j % K];
  w[C - 1] = 1.5, w[C - 2] = -1.5;
  const x = Float32Array.from({ length: N }, () => {
    const v = rng.uniform(0.1, 2);
    return rng.next() < 0.5 ? -v : v;
  });
  const labels = Int32Array.from(
    { length: N },
    (_, i) => i % 3 === 0 ? C - 1 - (i % 2) : rng.int(C),
  );
  // Each distinct value of W and how many classes hold it.
  const counts = new Map<number, number>();
  for (let j = 0; j < C; j++) counts.set(w[j], (counts.get(w[j]) ?? 0) + 1);
  return { x, w, labels, counts };
}

// Row i's softmax by distinct value of W: the log-sum-exp and each value's probability.
function row(xi: number, counts: Map<number, number>): { lse: number; p: Map<number, number> } {
  let m = -Infinity;
  for (const v of counts.keys()) m = Math.max(m, Math.fround(xi * v));
  let s = 0;
  for (const [v, k] of counts) s += k * Math.exp(Math.fround(xi * v) - m);
  const lse = m + Math.log(s);
  const p = new Map<number, number>();
  for (const v of counts.keys()) p.set(v, Math.exp(Math.fround(xi * v) - lse));
  return { lse, p };
}

Deno.test(
  "N·C past 2^31 − 1: the fused loss and its gradients against a row-by-row reference",
  opts,
  () => {
    const { x, w, labels, counts } = problem();
    assert.ok(N * C > 2 ** 31 - 1);
    const r = loss(x, w, labels, { margin: 1, lambda: 0, backend: "cpu", reduction: "sum" });
    let want = 0;
    const gx = new Float64Array(N);
    const rows = Array.from(x, (xi) => row(xi, counts));
    for (let i = 0; i < N; i++) {
      const { lse, p } = rows[i];
      const wy = w[labels[i]];
      want += lse - Math.fround(x[i] * wy);
      let e = 0;
      for (const [v, k] of counts) e += k * p.get(v)! * v;
      gx[i] = e - wy;
    }
    assert.ok(Math.abs(r.loss - want) <= 1e-6 * want, `loss ${r.loss}, reference ${want}`);
    for (let i = 0; i < N; i++) {
      // float32 sums of 132 class blocks: about 132 roundings of the block sums.
      const close = Math.abs(r.gradX[i] - gx[i]) <= 1e-4 * (1 + Math.abs(gx[i]));
      assert.ok(close, `gradX[${i}]: ${r.gradX[i]} vs ${gx[i]}`);
    }
    // dL/dw_j = sum_i (p_ij - [y_i = j]) x_i, for classes at both ends and in between.
    for (const j of [0, 1, 6, 123_457, C / 2 + 3, C - 9, C - 3, C - 2, C - 1]) {
      let g = 0;
      for (let i = 0; i < N; i++) g += (rows[i].p.get(w[j])! - (labels[i] === j ? 1 : 0)) * x[i];
      assert.ok(
        Math.abs(r.gradW[j] - g) <= 1e-5 * (1 + Math.abs(g)),
        `gradW[${j}]: ${r.gradW[j]} vs ${g}`,
      );
    }
  },
);

Deno.test(
  "N·C past 2^31 − 1: top-k of every row, and the op still refuses its logits",
  opts,
  () => {
    const { x, w } = problem();
    using head = new MarginHead({
      classes: C,
      features: 1,
      weights: w,
      backend: "cpu",
      margin: 1,
      lambda: 0,
    });
    const k = 3;
    const { indices } = head.predict(x, { k });
    // The candidates: the last two classes and the first three of each value (ties go to the
    // lower index).
    const candidates = [C - 1, C - 2];
    for (let v = 0; v < K; v++) for (let t = 0; t < 3; t++) candidates.push(v + K * t);
    for (let i = 0; i < N; i++) {
      const best = candidates
        .map((j) => ({ j, s: Math.fround(x[i] * w[j]) }))
        .sort((a, b) => b.s - a.s || a.j - b.j)
        .slice(0, k)
        .map((e) => e.j);
      assert.deepEqual(Array.from(indices.subarray(i * k, i * k + k)), best, `row ${i}`);
    }
    assert.throws(
      () => forward(x, w, new Int32Array(N), { margin: 1, lambda: 0, backend: "cpu" }),
      (e: Error) =>
        e instanceof RangeError && e.message.includes("N*C (out)") &&
        e.message.includes("2148000000"),
    );
  },
);
