// reference_margins.ts: an independent float64 reference of the margin family's logits, written
// from the formulas (docs/math.md), sharing no code with the library: angles by acos, the margin
// functions by cos, norms by Math.hypot. Gradients are checked against central differences of
// these logits (tests/margins_test.ts), not against formulas of their own.
//
// Layout: x [n, d], w [c, d], labels [n], logits [n, c], all row-major.

import { psiTrig } from "./reference.ts";

/** A margin kind and its parameters, as the library's options name them. */
export type MarginSpec =
  | { kind: "lsoftmax"; margin: number; lambda: number }
  | { kind: "asoftmax"; margin: number; lambda: number }
  | { kind: "cosface"; scale: number; margin: number }
  | { kind: "arcface"; scale: number; margin: number; easyMargin?: boolean }
  | { kind: "combined"; scale: number; m1: number; m2: number; m3: number };

function row(a: ArrayLike<number>, i: number, d: number): number[] {
  return Array.from({ length: d }, (_, k) => a[i * d + k]);
}

const norm = (v: number[]) => Math.hypot(...v);
const dot = (a: number[], b: number[]) => a.reduce((s, v, k) => s + v * b[k], 0);

/** The unit vector, or the zero vector for a zero vector (the library's rule). */
function unit(v: number[]): number[] {
  const n = norm(v);
  return n === 0 ? v.map(() => 0) : v.map((e) => e / n);
}

/** The target logit of one sample under a normalised kind, from its cosine. */
function normalisedTarget(spec: MarginSpec, cos: number): number {
  const c = Math.max(-1, Math.min(1, cos));
  const t = Math.acos(c);
  switch (spec.kind) {
    case "cosface":
      return spec.scale * (c - spec.margin);
    case "arcface": {
      const m = spec.margin;
      if (spec.easyMargin) return spec.scale * (c > 0 ? Math.cos(t + m) : c);
      return spec.scale * (c > Math.cos(Math.PI - m) ? Math.cos(t + m) : c - m * Math.sin(m));
    }
    case "combined":
      return spec.scale * (Math.cos(spec.m1 * t + spec.m2) - spec.m3);
    default:
      throw new Error(`not a normalised kind: ${spec.kind}`);
  }
}

/** The logits of every kind, by the formulas taken literally. */
export function referenceMarginForward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: ArrayLike<number>,
  spec: MarginSpec,
): Float64Array {
  const n = labels.length, d = x.length / n, c = w.length / d;
  const f = new Float64Array(n * c);
  for (let i = 0; i < n; i++) {
    const xi = row(x, i, d), xh = unit(xi), nx = norm(xi);
    for (let j = 0; j < c; j++) {
      const wj = row(w, j, d), wh = unit(wj), nw = norm(wj);
      const cos = dot(xh, wh);
      const target = j === labels[i];
      switch (spec.kind) {
        case "lsoftmax":
        case "asoftmax": {
          // A-Softmax: W rows normalised, so |W_j| = 1 (0 for a zero row) and W_j.x = |x| cos.
          const wn = spec.kind === "asoftmax" ? (nw === 0 ? 0 : 1) : nw;
          const plain = spec.kind === "asoftmax" ? dot(xi, wh) : dot(xi, wj);
          if (!target || nx === 0 || nw === 0 || spec.margin === 1) f[i * c + j] = plain;
          else {
            const psi = psiTrig(Math.max(-1, Math.min(1, cos)), spec.margin).psi;
            f[i * c + j] = (spec.lambda * plain + wn * nx * psi) / (1 + spec.lambda);
          }
          break;
        }
        default:
          f[i * c + j] = target ? normalisedTarget(spec, cos) : spec.scale * cos;
      }
    }
  }
  return f;
}
