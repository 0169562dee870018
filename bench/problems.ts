/**
 * The benchmark shapes and their deterministic inputs, shared by `deno bench` and the README's
 * table so both measure the same problems.
 *
 * @example
 * ```ts
 * import { problem, SHAPES } from "./problems.ts";
 * const [n, d, c] = SHAPES[0];
 * const { x, w, g, labels } = problem(n, d, c);
 * ```
 * @module
 */

import type { MarginOptions } from "../mod.ts";

/** (N, D, C) of the benchmarks, as issue 4 names them. */
export const SHAPES: readonly [number, number, number][] = [
  [64, 128, 1000],
  [256, 512, 10000],
  [512, 512, 100000],
];

/** Uniform values in [-0.5, 0.5) from a linear congruential generator: cheap and repeatable. */
export function random(length: number, seed: number): Float32Array {
  const a = new Float32Array(length);
  let s = seed >>> 0;
  for (let i = 0; i < length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

/** Features x [N, D], weights w [C, D], an upstream gradient g [N, C] and spread-out labels. */
export function problem(n: number, d: number, c: number): {
  x: Float32Array;
  w: Float32Array;
  g: Float32Array;
  labels: Int32Array;
} {
  return {
    x: random(n * d, 1),
    w: random(c * d, 2),
    g: random(n * c, 3),
    labels: Int32Array.from({ length: n }, (_, i) => (i * 7919) % c),
  };
}

/**
 * What a user writes today without the fused loss: the mean softmax cross-entropy of logits
 * [N, C] in TypeScript, its gradient written into `grad`. Returns the loss.
 *
 * @example
 * ```ts
 * import { handWrittenCrossEntropy } from "./problems.ts";
 * const grad = new Float32Array(6);
 * handWrittenCrossEntropy(new Float32Array(6), new Int32Array([0, 2]), 3, grad);
 * ```
 */
export function handWrittenCrossEntropy(
  logits: Float32Array,
  labels: Int32Array,
  c: number,
  grad: Float32Array,
): number {
  const n = labels.length;
  let total = 0;
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, logits[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; j++) s += Math.exp(logits[i * c + j] - m);
    const lse = m + Math.log(s);
    total += lse - logits[i * c + labels[i]];
    for (let j = 0; j < c; j++) grad[i * c + j] = Math.exp(logits[i * c + j] - lse) / n;
    grad[i * c + labels[i]] -= 1 / n;
  }
  return total / n;
}

/** The margin kinds the benchmarks time, each with typical values from its paper. */
export const KINDS: readonly { label: string; options: MarginOptions }[] = [
  { label: "lsoftmax m=4", options: { kind: "lsoftmax", margin: 4, lambda: 0.5 } },
  { label: "asoftmax m=4", options: { kind: "asoftmax", margin: 4, lambda: 0.5 } },
  { label: "cosface s=64 m=0.35", options: { kind: "cosface", scale: 64, margin: 0.35 } },
  { label: "arcface s=64 m=0.5", options: { kind: "arcface", scale: 64, margin: 0.5 } },
  {
    label: "combined s=64 (1, 0.3, 0.2)",
    options: { kind: "combined", scale: 64, m1: 1, m2: 0.3, m3: 0.2 },
  },
];

/**
 * The adaptive kinds the benchmarks time, with their authors' training settings (the state as at
 * the first step). `subcenters` K: W holds C·K rows, and the kind's baseline is the three
 * products with C·K rows.
 */
export const ADAPTIVE_KINDS: readonly {
  label: string;
  options: MarginOptions;
  subcenters: number;
}[] = [
  {
    label: "subcenter s=64 m=0.5 K=3",
    options: { kind: "subcenter", scale: 64, margin: 0.5, subcenters: 3 },
    subcenters: 3,
  },
  {
    label: "adaface s=64 m=0.4 h=0.333",
    options: {
      kind: "adaface",
      scale: 64,
      margin: 0.4,
      h: 0.333,
      tAlpha: 0.01,
      batchMean: 20,
      batchStd: 100,
    },
    subcenters: 1,
  },
  {
    label: "curricularface s=64 m=0.5",
    options: { kind: "curricularface", scale: 64, margin: 0.5, tAlpha: 0.01, t: 0 },
    subcenters: 1,
  },
  {
    label: "magface s=64 (0.45, 0.8; 10, 110)",
    options: {
      kind: "magface",
      scale: 64,
      lowerMargin: 0.45,
      upperMargin: 0.8,
      lowerNorm: 10,
      upperNorm: 110,
      lambdaG: 35,
    },
    subcenters: 1,
  },
];
