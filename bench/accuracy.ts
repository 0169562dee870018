/**
 * The float32 accuracy table of docs/math.md: for each margin, the typical (median) and worst
 * relative error of float32 logits and gradients against the float64 result of the same inputs
 * (the inputs rounded to float32 first, then computed by the float64 CPU backend). Each error is
 * relative to the element's scale: the larger of the largest magnitude of its row of the float64
 * result (a sample's row of logits and gradX, a class's row of gradW) and the sum of the
 * magnitudes of the terms the matrix product adds into the element (|x||W|ᵀ, |G||W|, |G|ᵀ|x|),
 * which is what a float32 product can be accurate to where its terms cancel (D = 1 rows). Inputs: random problems, samples near the margin's slice
 * boundaries (θ = kπ/m ± δ) and samples near-parallel or antiparallel to their class's weights
 * (D = 1, and θ within 1e-6 .. 1e-2 of 0 or π). CPU backend, and the CUDA backend when there is
 * one (the emulated one under `LSOFTMAX_LIB=build/liblsoftmax_emu.so`).
 *
 * ```sh
 * scripts/deno run --allow-ffi --allow-env --allow-read bench/accuracy.ts
 * ```
 *
 * @module
 */

import { backends, backward, forward } from "../mod.ts";
import { orthogonalUnit, randomProblem, Rng } from "../tests/helpers.ts";

/** Margins of the table. */
const MARGINS = [1, 2, 3, 4, 5, 6, 8, 16];
const LAMBDA = 0;

interface Problem {
  n: number;
  d: number;
  c: number;
  x: Float64Array;
  w: Float64Array;
  labels: Int32Array;
  g: Float64Array;
}

/** Sample i at angle angles[i] from its class's weight row (labels i % c), norms in [0.5, 2]. */
function atAngles(rng: Rng, angles: number[], d: number, c: number): Problem {
  const n = angles.length;
  const p = randomProblem(rng, n, d, c);
  for (let i = 0; i < n; ++i) {
    const y = p.labels[i] = i % c;
    const row = p.w.subarray(y * d, (y + 1) * d);
    const nw = Math.hypot(...row);
    const u = Float64Array.from(row, (v) => v / nw);
    const v = d > 1 ? orthogonalUnit(rng, u) : new Float64Array(d);
    const r = rng.uniform(0.5, 2);
    const [cs, sn] = [Math.cos(angles[i]), Math.sin(angles[i])];
    for (let k = 0; k < d; ++k) p.x[i * d + k] = r * (cs * u[k] + sn * v[k]);
  }
  return p;
}

/** The problems measured at margin m. */
function problems(m: number, rng: Rng): Problem[] {
  const out = [randomProblem(rng, 48, 24, 10), randomProblem(rng, 48, 24, 10)];
  // Boundaries kπ/m ± δ, k = 0..m.
  for (const delta of [1e-3, 1e-6]) {
    const angles: number[] = [];
    for (let k = 0; k <= m; ++k) {
      const t = (k * Math.PI) / m;
      for (let rep = 0; rep < 3; ++rep) {
        if (k > 0) angles.push(t - delta * (rep + 1));
        if (k < m) angles.push(t + delta * (rep + 1));
      }
    }
    out.push(atAngles(rng, angles, 16, 10));
  }
  // Near-parallel and near-antiparallel: D = 1 (cos θ = ±1 exactly), and small angles.
  const signs = Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? 0 : Math.PI));
  out.push(atAngles(rng, signs, 1, 10));
  for (const a of [1e-6, 1e-4, 1e-2]) {
    out.push(atAngles(rng, signs.map((t) => (t === 0 ? a : Math.PI - a)), 8, 10));
  }
  return out;
}

/**
 * Per-element errors |got - ref| / max(largest |ref| of the element's row, terms[element]),
 * appended to out.
 */
function rowErrors(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  terms: ArrayLike<number>,
  rows: number,
  out: number[],
) {
  const cols = ref.length / rows;
  for (let r = 0; r < rows; ++r) {
    let rowMax = 0;
    for (let j = 0; j < cols; ++j) rowMax = Math.max(rowMax, Math.abs(ref[r * cols + j]));
    for (let j = 0; j < cols; ++j) {
      const k = r * cols + j, scale = Math.max(rowMax, terms[k]);
      if (scale === 0) continue;
      const e = Math.abs(got[k] - ref[k]) / scale;
      out.push(Number.isNaN(e) ? Infinity : e);
    }
  }
}

function median(a: number[]): number {
  const s = a.slice().sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)];
}

const fmt = (v: number) => (v === 0 ? "0" : v.toExponential(1));

const info = backends();
const list: ("cpu" | "cuda")[] = info.cuda.available ? ["cpu", "cuda"] : ["cpu"];
const rows: string[] = [
  "| backend | m | logits median | logits worst | gradX median | gradX worst | gradW median | gradW worst |",
  "| ------- | -: | ------------: | -----------: | -----------: | ----------: | -----------: | ----------: |",
];
let count = 0;
for (const backend of list) {
  for (const m of MARGINS) {
    const rng = new Rng(7000 + m); // the same inputs for every backend
    const err = { logits: [] as number[], gradX: [] as number[], gradW: [] as number[] };
    for (const p of problems(m, rng)) {
      const [x, w, g] = [p.x, p.w, p.g].map((a) => Float32Array.from(a));
      const [x64, w64, g64] = [x, w, g].map((a) => Float64Array.from(a));
      const o = { margin: m, lambda: LAMBDA };
      const ref = {
        logits: forward(x64, w64, p.labels, { ...o, backend: "cpu" }).logits,
        ...backward(x64, w64, p.labels, g64, { ...o, backend: "cpu" }),
      };
      const got = {
        logits: forward(x, w, p.labels, { ...o, backend }).logits,
        ...backward(x, w, p.labels, g, { ...o, backend }),
      };
      // The products' terms' magnitudes: the plain layer (m = 1) on the absolute values.
      const [ax, aw, ag] = [x64, w64, g64].map((a) => a.map(Math.abs));
      const plain = { margin: 1, lambda: 0, backend: "cpu" as const };
      const terms = {
        logits: forward(ax, aw, p.labels, plain).logits,
        ...backward(ax, aw, p.labels, ag, plain),
      };
      rowErrors(got.logits, ref.logits, terms.logits, p.n, err.logits);
      rowErrors(got.gradX, ref.gradX, terms.gradX, p.n, err.gradX);
      rowErrors(got.gradW, ref.gradW, terms.gradW, p.c, err.gradW);
      if (backend === "cpu") count += p.n;
    }
    const cells = [err.logits, err.gradX, err.gradW].flatMap((e) => [
      fmt(median(e)),
      fmt(Math.max(...e)),
    ]);
    rows.push(`| ${backend} | ${m} | ${cells.join(" | ")} |`);
  }
}
console.log(rows.join("\n"));
console.log(
  `\n${count} samples per backend over the margins; λ = ${LAMBDA}; library ${info.library}` +
    (info.cuda.available ? `; cuda: ${info.cuda.devices[0].name}` : "; no CUDA backend here"),
);
