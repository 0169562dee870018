// The Fashion-MNIST demo's code path (examples/fashion_mnist.ts --quick) on a committed subset of
// the data (tests/fixtures/fashion-mnist: 400 training and 200 test images), so CI needs no
// dataset: it trains every run (64 features over two seeds), writes the table and one SVG per run,
// and a missing dataset is an error that names the Debian package. The sweep (demo_sweep.ts
// --quick) on the same subset. The IDX reader and the SVG writer on their own.

import assert from "node:assert/strict";
import { encodeIdx, parseIdx } from "../examples/idx.ts";
import { featurePlot } from "../examples/feature_plot.ts";

const root = new URL("..", import.meta.url).pathname;
const fixture = `${root}tests/fixtures/fashion-mnist`;

async function sh(
  cmd: string,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(cmd, { args, cwd: root, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder();
  return { code: r.code, out: text.decode(r.stdout), err: text.decode(r.stderr) };
}

function demo(args: string[], write?: string) {
  return sh(Deno.execPath(), [
    "run",
    "--allow-ffi",
    "--allow-env",
    "--allow-read",
    ...(write ? [`--allow-write=${write}`] : []),
    "examples/fashion_mnist.ts",
    ...args,
  ]);
}

Deno.test("demo --quick trains every run on the fixture, writes the table and SVGs", async () => {
  // The test has no write permission: a temporary directory from mktemp, removed by rm.
  const dir = (await sh("mktemp", ["-d"])).out.trim();
  try {
    const r = await demo(["--quick", "--seeds", "2", "--data", fixture, "--out", dir], dir);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /400 training and 200 test images/);
    const md = await Deno.readTextFile(`${dir}/fashion_mnist.md`);
    const rows = md.split("\n").filter((l) =>
      /^\| (softmax|L-Softmax|ArcFace|AdaFace|sub-center ArcFace) /.test(l)
    );
    assert.deepEqual(
      rows.map((row) => row.split("|")[1].trim()),
      [
        "softmax (m = 1)",
        "L-Softmax m = 2",
        "L-Softmax m = 3",
        "L-Softmax m = 4",
        "ArcFace",
        "AdaFace",
        "sub-center ArcFace",
      ],
    );
    assert.match(md, /mean \(min–max\) over 2 seeds/);
    for (const row of rows) {
      const cells = row.split("|").map((c) => c.trim());
      // 64 features: the mean and the min–max over the two seeds; 2 features: seed 0.
      const wide = cells[3].match(/^(\d+\.\d+)% \((\d+\.\d+)–(\d+\.\d+)%\)$/);
      assert.ok(wide, row);
      const [mean, min, max] = wide.slice(1).map(Number);
      assert.ok(min <= mean && mean <= max, row);
      // Better than chance (10%) after one epoch on 400 images, at 64 features.
      assert.ok(min > 20, row);
      assert.match(cells[4], /^\d+\.\d+%$/, row);
    }
    assert.match(
      md,
      /inside the spread of softmax \(the min–max ranges overlap\): .*; outside it: /,
    );
    const svgs = [...md.matchAll(/\((fashion_mnist_\w+\.svg)\)/g)].map((m) => m[1]);
    assert.equal(svgs.length, rows.length);
    for (const name of svgs) {
      const svg = await Deno.readTextFile(`${dir}/${name}`);
      assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      const dots = svg.match(/<circle [^>]*r="1.6"/g)?.length ?? 0;
      assert.ok(dots > 150 && dots <= 200, `${name}: ${dots} points`);
      // A ray per row of W: one per class, three for sub-center ArcFace's sub-centers.
      const rays = name === "fashion_mnist_subcenter.svg" ? 30 : 10;
      assert.equal(svg.match(/stroke-width="2.5"/g)?.length, rays, `${name}: rays`);
    }
    // The progress reaches stderr as plain lines when it is not a terminal.
    assert.match(r.err, /\[#+\] \d+\/\d+ {2}loss \d+\.\d+ {2}acc \d+\.\d+% .* ETA \d+:\d\d/);
  } finally {
    await sh("rm", ["-rf", dir]);
  }
});

Deno.test("demo sweep --quick trains the grid with the demo's training, writes its table", async () => {
  const dir = (await sh("mktemp", ["-d"])).out.trim();
  try {
    const r = await sh(Deno.execPath(), [
      "run",
      "--allow-ffi",
      "--allow-env",
      "--allow-read",
      `--allow-write=${dir}`,
      "examples/demo_sweep.ts",
      "--quick",
      "--data",
      fixture,
      "--out",
      dir,
    ]);
    assert.equal(r.code, 0, r.err);
    const md = await Deno.readTextFile(`${dir}/fashion_mnist_sweep.md`);
    const rows = md.split("\n").filter((l) =>
      /^\| (softmax|L-Softmax|ArcFace|AdaFace|sub-center)/.test(l)
    );
    const count = (kind: string) => rows.filter((row) => row.startsWith(`| ${kind} |`)).length;
    // softmax; L-Softmax m 2, 3, 4 × floor 1, 5; each normalised kind s 16, 32 × 3 margins + 64.
    assert.deepEqual(
      ["softmax", "L-Softmax", "ArcFace", "AdaFace", "sub-center ArcFace"].map(count),
      [1, 6, 7, 7, 7],
    );
    assert.match(md, /\| L-Softmax \| m = 4, λ floor 5 \|/);
    assert.match(md, /\| sub-center ArcFace \| s = 32, m = 0\.35 \|/);
    for (const row of rows) {
      const a = row.match(/(\d+\.\d+)%/);
      assert.ok(a && Number(a[1]) > 15, row); // above chance (10%)
    }
    // The best of each kind is in bold.
    assert.equal(rows.filter((row) => row.includes("**")).length >= 5, true, md);
  } finally {
    await sh("rm", ["-rf", dir]);
  }
});

Deno.test("demo: a missing dataset names the Debian package and the override", async () => {
  const r = await demo(["--quick", "--data", `${root}tests/fixtures/no-such-dir`]);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /dataset-fashion-mnist/);
  assert.match(r.err, /--data DIR/);
});

Deno.test("idx: round trip, and truncated or foreign files are named errors", () => {
  const idx = { dims: [2, 3], data: Uint8Array.from([1, 2, 3, 4, 5, 6]) };
  const bytes = encodeIdx(idx);
  assert.deepEqual(parseIdx(bytes, "t"), idx);
  assert.throws(() => parseIdx(bytes.subarray(0, bytes.length - 1), "t"), /t: expected 18 bytes/);
  assert.throws(() => parseIdx(Uint8Array.from([0, 0, 0x0d, 1]), "f"), /f: not an IDX file/);
});

Deno.test("featurePlot: a dot per point in the frame and a ray per class", () => {
  const svg = featurePlot({
    title: "a <b>",
    points: new Float32Array([1, 0, 0, 1, -1, -1]),
    labels: new Int32Array([0, 1, 1]),
    weights: new Float32Array([1, 0, 0, 2]),
    classes: ["x", "y"],
  });
  assert.equal(svg.match(/r="1.6"/g)?.length, 3);
  assert.equal(svg.match(/stroke-width="2.5"/g)?.length, 2);
  assert.match(svg, /a &lt;b&gt;/);
  // K = 2 sub-centers: a ray per row of W, in its class's colour (rows 2j, 2j + 1 are class j's).
  const sub = featurePlot({
    title: "sub",
    points: new Float32Array([1, 0]),
    labels: new Int32Array([0]),
    weights: new Float32Array([1, 0, 1, 1, 0, 1, -1, 1]),
    classes: ["x", "y"],
    subcenters: 2,
  });
  const colours = [...sub.matchAll(/stroke="(#[0-9a-f]+)" stroke-width="2.5"/g)].map((m) => m[1]);
  assert.deepEqual(colours, ["#1f77b4", "#1f77b4", "#ff7f0e", "#ff7f0e"]);
});
