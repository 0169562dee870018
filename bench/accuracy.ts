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
 * Then the fused loss's table: the float32 loss (relative error) and its gradients (worst error
 * relative to a sample's row of gradX, to the whole of gradW) against float64 on the same inputs, from 10 to 20,000
 * classes, with logits of order 1 and up to 1e4, the classes in one block and in several.
 *
 * ```sh
 * scripts/deno run --allow-ffi --allow-env --allow-read bench/accuracy.ts
 * ```
 *
 * @module
 */

import { backends, backward, forward, loss } from "../mod.ts";
import { maxAbs, orthogonalUnit, randomProblem, Rng } from "../tests/helpers.ts";

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

// The fused loss: float32 against float64 on the same (float32) inputs. Each row is the worst of
// four runs: labels at random and at each row's largest logit (a trained model: softmax_iy near 1,
// gradients near 0), each with the classes in one block and in seven.
const lossRows: string[] = [
  "| backend | C | logits up to | loss error | gradX worst | gradW worst |",
  "| ------- | -: | -----------: | ---------: | ----------: | ----------: |",
];
for (const backend of list) {
  for (const c of [10, 1000, 20000]) {
    for (const size of [10, 1e4]) {
      const rng = new Rng(8000 + c);
      const [n, d] = [16, 16];
      const p = randomProblem(rng, n, d, c);
      const s = size / (d * maxAbs(p.x) * maxAbs(p.w)); // |f| <= d max|x| max|w|
      const x = Float32Array.from(p.x, (v) => v * s), w = Float32Array.from(p.w);
      const [x64, w64] = [x, w].map((a) => Float64Array.from(a));
      const plain = forward(x64, w64, p.labels, { margin: 1, lambda: 0 }).logits;
      const argmax = Int32Array.from({ length: n }, (_, i) => {
        let best = 0;
        for (let j = 1; j < c; j++) if (plain[i * c + j] > plain[i * c + best]) best = j;
        return best;
      });
      const worst = [0, 0, 0];
      for (const labels of [p.labels, argmax]) {
        for (const blocks of [1, 7]) {
          const workspace = Math.ceil(c / blocks) * n * 4;
          const o = { margin: 4, lambda: 0 };
          const ref = loss(x64, w64, labels, { ...o, backend: "cpu", workspace: workspace * 2 });
          const got = loss(x, w, labels, { ...o, backend, workspace });
          const ex: number[] = [], ew: number[] = [];
          rowErrors(got.gradX, ref.gradX, new Float64Array(n * d), n, ex);
          // A class whose softmax is below float32's range has a float64 gradient float32
          // rounds to 0: gradW's errors are relative to its largest element.
          rowErrors(got.gradW, ref.gradW, new Float64Array(c * d).fill(maxAbs(ref.gradW)), c, ew);
          const e = [Math.abs(got.loss - ref.loss) / Math.abs(ref.loss), maxAbs(ex), maxAbs(ew)];
          e.forEach((v, k) => worst[k] = Math.max(worst[k], v));
        }
      }
      loss(x, w, p.labels, { margin: 4, lambda: 0, backend, workspace: 64 << 20 }); // the default
      loss(x64, w64, p.labels, { margin: 4, lambda: 0, backend: "cpu", workspace: 64 << 20 });
      lossRows.push(
        `| ${backend} | ${c} | ${maxAbs(plain).toExponential(0)} | ${worst.map(fmt).join(" | ")} |`,
      );
    }
  }
}
console.log("\nThe fused loss, float32 against float64 (margin 4, N = 16, D = 16):\n");
console.log(lossRows.join("\n"));
