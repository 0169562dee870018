// reference_test.ts: the reference checked against itself and the math, without the library:
// psi's forms agree, psi is continuous and monotone, psi' is its derivative, the gradients are
// the derivatives of the forward, and m = 1 is the plain inner product.

import assert from "node:assert/strict";
import { assertClose, maxRelErr, randomProblem, Rng } from "./helpers.ts";
import {
  caffeTargetLogit,
  plainBackward,
  plainForward,
  psiCaffe,
  psiTrig,
  referenceBackward,
  referenceForward,
} from "./reference.ts";

/** T_m(c) by its recurrence, only to check the trigonometric form here. */
function chebyshevT(c: number, m: number): number {
  let a = 1, b = c;
  for (let j = 1; j < m; ++j) [a, b] = [b, 2 * c * b - a];
  return m === 0 ? 1 : b;
}

function cosines(): number[] {
  const cs: number[] = [-1, 1, 0, 0.5, -0.5];
  for (let i = 0; i <= 2000; ++i) cs.push(-1 + i / 1000);
  for (let i = 1; i < 100; ++i) cs.push(1 - 1e-12 * i * i, -1 + 1e-12 * i * i);
  return cs;
}

Deno.test("reference: psiTrig is (-1)^k T_m(c) - 2k and psi(1) = 1, psi(-1) = 1 - 2m", () => {
  for (let m = 1; m <= 16; ++m) {
    for (const c of cosines()) {
      const { psi } = psiTrig(c, m);
      const theta = Math.acos(c);
      const k = Math.min(m - 1, Math.floor(m * theta / Math.PI));
      const expected = (k % 2 ? -1 : 1) * chebyshevT(c, m) - 2 * k;
      assert.ok(Math.abs(psi - expected) <= 1e-12 * m * m, `m ${m} c ${c}: ${psi} vs ${expected}`);
    }
    assert.ok(Math.abs(psiTrig(1, m).psi - 1) < 1e-14);
    assert.ok(Math.abs(psiTrig(-1, m).psi - (1 - 2 * m)) < 1e-13);
  }
});

Deno.test("reference: psiTrig is continuous and increasing in c, psi' = 0 on the boundaries", () => {
  for (let m = 1; m <= 16; ++m) {
    let prev = -Infinity;
    for (let i = 0; i <= 20000; ++i) {
      const c = -1 + i / 10000;
      const { psi } = psiTrig(c, m);
      assert.ok(psi >= prev - 1e-12, `m ${m}: psi not increasing at c ${c}`);
      prev = psi;
    }
    for (let k = 1; k < m; ++k) {
      const cb = Math.cos(k * Math.PI / m);
      const lo = psiTrig(cb - 1e-9, m).psi, hi = psiTrig(cb + 1e-9, m).psi;
      assert.ok(Math.abs(lo - hi) < 1e-6, `m ${m}: jump at boundary ${k}: ${lo} vs ${hi}`);
      assert.ok(Math.abs(psiTrig(cb, m).dpsi) < 1e-6, `m ${m}: psi' at boundary ${k}`);
    }
  }
});

Deno.test("reference: psi' is the derivative of psi (incl. near c = +-1)", () => {
  for (let m = 1; m <= 16; ++m) {
    for (const c of cosines()) {
      const h = 1e-7;
      if (Math.abs(c) > 1 - 2 * h) continue;
      const fd = (psiTrig(c + h, m).psi - psiTrig(c - h, m).psi) / (2 * h);
      const { dpsi } = psiTrig(c, m);
      assert.ok(Math.abs(fd - dpsi) <= 1e-5 * m * m + 1e-6 * Math.abs(dpsi), `m ${m} c ${c}`);
    }
    // U_{m-1}(1) = m and U_{m-1}(-1) = (-1)^(m-1) m; (-1)^k flips it to m^2 at both ends.
    assert.ok(Math.abs(psiTrig(1, m).dpsi - m * m) < 1e-12 * m * m);
    assert.ok(Math.abs(psiTrig(-1, m).dpsi - m * m) < 1e-12 * m * m);
    assert.ok(Math.abs(psiTrig(1 - 1e-14, m).dpsi - m * m) < 1e-9 * m * m);
  }
});

Deno.test("reference: the Caffe closed forms equal psiTrig for m = 1..4", () => {
  for (let m = 1; m <= 4; ++m) {
    for (const c of cosines()) {
      const a = psiTrig(c, m), b = psiCaffe(c, m);
      assert.ok(Math.abs(a.psi - b.psi) < 1e-12, `m ${m} c ${c}: psi ${a.psi} vs ${b.psi}`);
      assert.ok(Math.abs(a.dpsi - b.dpsi) < 1e-11, `m ${m} c ${c}: dpsi ${a.dpsi} vs ${b.dpsi}`);
    }
  }
});

Deno.test("reference: caffeTargetLogit equals the forward's target logit for m = 2, 3, 4", () => {
  const rng = new Rng(11);
  const p = randomProblem(rng, 40, 6, 5);
  for (const m of [2, 3, 4]) {
    for (const lambda of [0, 0.5, 1000]) {
      const f = referenceForward(p.x, p.w, p.labels, { margin: m, lambda });
      for (let i = 0; i < p.n; ++i) {
        const y = p.labels[i];
        let dot = 0, xx = 0, ww = 0;
        for (let k = 0; k < p.d; ++k) {
          dot += p.x[i * p.d + k] * p.w[y * p.d + k];
          xx += p.x[i * p.d + k] ** 2;
          ww += p.w[y * p.d + k] ** 2;
        }
        const t = caffeTargetLogit(dot, Math.sqrt(xx) * Math.sqrt(ww), m, lambda);
        assert.ok(Math.abs(t - f[i * p.c + y]) < 1e-12 * (1 + Math.abs(t)), `m ${m} i ${i}`);
      }
    }
  }
});

Deno.test("reference: m = 1 is the plain inner product, forward and backward", () => {
  const rng = new Rng(12);
  const p = randomProblem(rng, 9, 4, 6);
  for (const lambda of [0, 0.5, 1000]) {
    const o = { margin: 1, lambda };
    assertClose(
      referenceForward(p.x, p.w, p.labels, o),
      plainForward(p.x, p.w, p.labels),
      1e-14,
      "f",
      1e-12,
    );
    const a = referenceBackward(p.x, p.w, p.labels, p.g, o);
    const b = plainBackward(p.x, p.w, p.labels, p.g);
    assertClose(a.gradX, b.gradX, 1e-13, "gradX", 1e-12);
    assertClose(a.gradW, b.gradW, 1e-13, "gradW", 1e-12);
  }
});

Deno.test("reference: backward is the derivative of forward (central differences)", () => {
  const rng = new Rng(13);
  let worst = 0;
  for (const m of [1, 2, 3, 4, 5, 6, 16]) {
    for (const lambda of [0, 0.5, 1000]) {
      const p = randomProblem(rng, 4, 3, 5);
      const o = { margin: m, lambda };
      const { gradX, gradW } = referenceBackward(p.x, p.w, p.labels, p.g, o);
      const L = (x: Float64Array, w: Float64Array) => {
        const f = referenceForward(x, w, p.labels, o);
        let s = 0;
        for (let k = 0; k < f.length; ++k) s += p.g[k] * f[k];
        return s;
      };
      const h = 1e-6;
      const fd = (arr: Float64Array, k: number, isX: boolean) => {
        const v = arr[k];
        arr[k] = v + h;
        const a = isX ? L(arr, p.w) : L(p.x, arr);
        arr[k] = v - h;
        const b = isX ? L(arr, p.w) : L(p.x, arr);
        arr[k] = v;
        return (a - b) / (2 * h);
      };
      const fx = Float64Array.from(p.x, (_, k) => fd(p.x, k, true));
      const fw = Float64Array.from(p.w, (_, k) => fd(p.w, k, false));
      worst = Math.max(worst, maxRelErr(gradX, fx, 1e-2), maxRelErr(gradW, fw, 1e-2));
    }
  }
  console.log(`reference self-check: worst FD relative error ${worst.toExponential(2)}`);
  assert.ok(worst < 1e-5, `reference gradients disagree with FD: ${worst}`);
});

Deno.test("reference: zero vectors give the plain inner product and its gradients", () => {
  const rng = new Rng(14);
  const p = randomProblem(rng, 3, 4, 3);
  p.x.fill(0, 4, 8); // sample 1 is zero
  p.labels[0] = 2;
  p.w.fill(0, 8, 12); // class 2 is zero
  const o = { margin: 4, lambda: 0 };
  const f = referenceForward(p.x, p.w, p.labels, o);
  const plain = plainForward(p.x, p.w, p.labels);
  assert.equal(f[1 * 3 + p.labels[1]], plain[1 * 3 + p.labels[1]]);
  assert.equal(f[0 * 3 + 2], 0);
  const a = referenceBackward(p.x, p.w, p.labels, p.g, o);
  const b = plainBackward(p.x, p.w, p.labels, p.g);
  for (let k = 4; k < 8; ++k) assert.ok(Math.abs(a.gradX[k] - b.gradX[k]) < 1e-15);
  for (let k = 0; k < 4; ++k) assert.ok(Math.abs(a.gradX[k] - b.gradX[k]) < 1e-15);
});
