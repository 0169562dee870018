/**
 * The sweep behind the Fashion-MNIST demo's settings: the demo's training (`train` of
 * examples/fashion_mnist.ts) over a small grid per kind, at 64 features, 5 epochs, one seed:
 * L-Softmax's λ floor × m, and the scale × margin of ArcFace, AdaFace and sub-center ArcFace
 * (K = 3), with the authors' scale 64 at their margin as well. It prints the table and writes
 * docs/fashion_mnist_sweep.md. About 15 minutes on 2 cores, beyond the demo's budget.
 *
 *   make demo-sweep            sets up the dataset, then runs this (niced: the machine is shared)
 *   deno run --allow-ffi --allow-env --allow-read --allow-write=docs \
 *     examples/demo_sweep.ts [--quick] [--data DIR] [--out DIR] [--backend wasm|cpu]
 *
 * `--quick` trains each setting for one epoch on a subset (a smoke test) and writes only where
 * `--out` says.
 *
 * @module
 */

import {
  adaface,
  lsoftmax,
  type Run,
  setUp,
  SUBCENTERS,
  tfjsName,
  train,
  type Training,
} from "./fashion_mnist.ts";
import { parseDemoArgs } from "./demo_args.ts";
import { clock } from "./progress.ts";

/** The grid: each kind's runs, named by their settings. */
function grid(): { kind: string; setting: string; run: Run }[] {
  const rows: { kind: string; setting: string; run: Run }[] = [];
  const add = (kind: string, setting: string, run: Training) =>
    rows.push({ kind, setting, run: { name: `${kind}, ${setting}`, file: "", ...run } });
  add("softmax", "m = 1", { layer: lsoftmax(1, 1) });
  for (const floor of [1, 5]) {
    for (const m of [2, 3, 4]) {
      add("L-Softmax", `m = ${m}, λ floor ${floor}`, { layer: lsoftmax(m, floor) });
    }
  }
  const normalised: {
    kind: string;
    margins: number[];
    authors: number;
    options: (s: number, m: number) => Training;
  }[] = [
    {
      kind: "ArcFace",
      margins: [0.2, 0.35, 0.5],
      authors: 0.5,
      options: (scale, margin) => ({ loss: { kind: "arcface", scale, margin }, predict: "cosine" }),
    },
    {
      kind: "AdaFace",
      margins: [0.2, 0.3, 0.4],
      authors: 0.4,
      options: (scale, margin) => ({ layer: adaface(scale, margin), predict: "cosine" }),
    },
    {
      kind: "sub-center ArcFace",
      margins: [0.2, 0.35, 0.5],
      authors: 0.5,
      options: (scale, margin) => ({
        loss: { kind: "subcenter", scale, margin, subcenters: SUBCENTERS },
        predict: "cosine",
        subcenters: SUBCENTERS,
      }),
    },
  ];
  for (const { kind, margins, authors, options } of normalised) {
    for (const scale of [16, 32]) {
      for (const margin of margins) {
        add(kind, `s = ${scale}, m = ${margin}`, options(scale, margin));
      }
    }
    add(kind, `s = 64, m = ${authors} (the authors')`, options(64, authors));
  }
  return rows;
}

async function main(): Promise<void> {
  const args = parseDemoArgs(Deno.args);
  const setup = await setUp(args.data, args.quick, args.backend);
  const epochs = args.quick ? 1 : 5;
  const start = performance.now();
  const results = grid().map((row) => {
    const r = train(row.run, 64, setup.data, {
      epochs,
      batch: setup.batch,
      plotPoints: 0,
      seed: 0,
    });
    console.log(`${row.run.name}: ${(100 * r.accuracy).toFixed(2)}% in ${clock(r.seconds)}`);
    return { ...row, ...r };
  });
  const total = (performance.now() - start) / 1000;
  const best = new Map<string, number>();
  for (const r of results) best.set(r.kind, Math.max(best.get(r.kind) ?? 0, r.accuracy));
  const table = [
    `| kind | settings | test accuracy (64 features, ${epochs} epochs, seed 0) | training time |`,
    `| --- | --- | --- | --- |`,
    ...results.map((r) => {
      const a = `${(100 * r.accuracy).toFixed(2)}%`;
      return `| ${r.kind} | ${r.setting} | ${r.accuracy === best.get(r.kind) ? `**${a}**` : a} | ` +
        `${clock(r.seconds)} |`;
    }),
  ].join("\n");
  console.log(`\n${table}\n\ntotal ${clock(total)}`);
  if (!args.out) return;
  // The step at which λ = 1000 (1 + 0.01 t)^-3 reaches each floor.
  const floors = [1, 5].map((f) => `${f} by step ${Math.round(100 * (Math.cbrt(1000 / f) - 1))}`)
    .join(", ");
  const md = [
    `# Fashion-MNIST: the sweep behind the demo's settings`,
    ``,
    `Made by \`make demo-sweep\` (examples/demo_sweep.ts): the training of ` +
    `[the demo](fashion_mnist.md) (the same function), at 64 features, ${epochs} epochs, one seed ` +
    `(0), ${setup.data.train.n} training and ${setup.data.test.n} test images, in ${tfjsName()}, ` +
    `over a grid per kind: L-Softmax's margin m and the floor of its λ schedule (λ anneals from ` +
    `1000 as (1 + 0.01 t)^-3 to the floor: ${floors} of ` +
    `${Math.floor(setup.data.train.n / setup.batch) * epochs}), ` +
    `and the scale s × margin m of ArcFace, AdaFace (the authors' h 0.333, α 0.01, moving ` +
    `averages from 20 and 100) and sub-center ArcFace (K = ${SUBCENTERS}), each also at the ` +
    `authors' s = 64 and margin. The best of each kind in bold. One seed: differences smaller ` +
    `than the demo's spread over seeds are noise. Total ${clock(total)} on ` +
    `${navigator.hardwareConcurrency} cores.`,
    ``,
    table,
    ``,
  ].join("\n");
  await Deno.mkdir(args.out, { recursive: true });
  await Deno.writeTextFile(`${args.out}/fashion_mnist_sweep.md`, md);
  console.log(`wrote ${args.out}/fashion_mnist_sweep.md`);
}

if (import.meta.main) await main();
