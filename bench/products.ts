/**
 * The CUDA products on cuBLAS against the library's own kernels, each precision: the fused ArcFace
 * loss with its gradients (three products per class block) at N=256 D=512 C=10,000 and N=512
 * D=256 C=1,000,000, float32, median of 5 calls after a warm-up. The library picks its products
 * once a process, so this runs itself again with LSOFTMAX_CUBLAS=off for the kernels' column.
 * Prints a markdown table (scripts/gpu-check.sh keeps it); `--one` measures this process only.
 *
 * Run: deno run --allow-ffi --allow-env --allow-read --allow-run bench/products.ts
 *
 * @module
 */

import { backends, loss, type Precision } from "../mod.ts";

const SHAPES: [number, number, number][] = [[256, 512, 10_000], [512, 256, 1_000_000]];
const PRECISIONS: Precision[] = ["exact", "tf32", "bf16"];

function random(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** Milliseconds per call (median of 5) for each shape and precision, in this process. */
function measure(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [n, d, c] of SHAPES) {
    const x = random(n * d, 1), w = random(c * d, 2);
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 7919) % c);
    const outX = new Float32Array(n * d), outW = new Float32Array(c * d);
    for (const precision of PRECISIONS) {
      const opts = {
        kind: "arcface" as const,
        scale: 64,
        margin: 0.5,
        backend: "cuda" as const,
        precision,
      };
      loss(x, w, labels, { ...opts, outX, outW });
      const times: number[] = [];
      for (let r = 0; r < 5; ++r) {
        const t0 = performance.now();
        loss(x, w, labels, { ...opts, outX, outW });
        times.push(performance.now() - t0);
      }
      out[`${n}x${d}x${c} ${precision}`] = times.sort((a, b) => a - b)[2];
    }
  }
  return out;
}

if (Deno.args.includes("--one")) {
  console.log(JSON.stringify({ products: backends().cuda.products, ms: measure() }));
} else {
  const run = async (env: Record<string, string>) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", "--allow-env", "--allow-read", import.meta.filename!, "--one"],
      env,
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (out.code !== 0) throw new Error(`bench/products.ts --one exited with ${out.code}`);
    return JSON.parse(new TextDecoder().decode(out.stdout)) as {
      products: string;
      ms: Record<string, number>;
    };
  };
  const blas = await run({});
  const own = await run({ LSOFTMAX_CUBLAS: "off" });
  console.log(`Products: ${blas.products}; against ${own.products}.\n`);
  console.log("| N x D x C, precision | cuBLAS ms | own kernels ms | own / cuBLAS |");
  console.log("|---|---|---|---|");
  for (const key of Object.keys(blas.ms)) {
    const a = blas.ms[key], b = own.ms[key];
    console.log(`| ${key} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(b / a).toFixed(2)} |`);
  }
}
