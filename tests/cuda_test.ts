// cuda_test.ts: what backends() reports, and the CUDA backend against the reference and the CPU
// backend. The CUDA tests are ignored (by name, "cuda ...") where backends() reports no CUDA;
// under the emulated library (LSOFTMAX_LIB pointing to an emu build) they run, so their shapes
// stay small (N, D, C <= 70) and their cases few.

import assert from "node:assert/strict";
import { backends, backward, forward, lambdaAt, LargeMarginSoftmax } from "../mod.ts";
import {
  boundaryProblem,
  checkNonFiniteRow,
  checkZeroRows,
  compareWithReference,
  CUDA_SHAPES,
  cudaAvailable,
  describeErrors,
  info,
  MARGINS,
} from "./check.ts";
import {
  assertClose,
  firstDifference,
  randomProblem,
  Rng,
  rowScale,
  toF32,
  Worst,
} from "./helpers.ts";
import { psiCaffe, referenceForward } from "./reference.ts";

Deno.test("backends(): cpu always, cuda devices with ids and names, or the reason there are none", () => {
  const b = backends();
  assert.equal(typeof b.version, "string");
  assert.ok(/^\d+\.\d+\.\d+/.test(b.version), `version ${b.version}`);
  assert.equal(typeof b.library, "string");
  assert.ok(b.library.length > 0);
  assert.equal(b.cpu.available, true);
  assert.equal(typeof b.cpu.name, "string");
  assert.ok(b.cpu.name.length > 0);
  assert.equal(typeof b.cuda.available, "boolean");
  assert.ok(Array.isArray(b.cuda.devices));
  if (b.cuda.available) {
    assert.ok(b.cuda.devices.length >= 1);
    assert.equal(b.cuda.reason, null);
    b.cuda.devices.forEach((dev, k) => {
      assert.equal(dev.index, k);
      assert.equal(dev.id, `cuda:${k}`);
      assert.equal(typeof dev.name, "string");
      assert.ok(dev.name.length > 0);
    });
  } else {
    assert.equal(b.cuda.devices.length, 0);
    assert.equal(typeof b.cuda.reason, "string");
    assert.ok(b.cuda.reason!.length > 0);
  }
  const lib = Deno.env.get("LSOFTMAX_LIB");
  if (lib) assert.equal(b.library, lib);
  // Stable across calls.
  assert.deepEqual(backends(), b);
  console.log(
    `library ${b.library} ${b.version}; cpu: ${b.cpu.name}; cuda: ${
      b.cuda.available ? b.cuda.devices.map((d) => `${d.id} ${d.name}`).join(", ") : b.cuda.reason
    }`,
  );
});

const cudaTest = (name: string, fn: () => void) => Deno.test({ name, ignore: !cudaAvailable, fn });

for (const dtype of ["float64", "float32"] as const) {
  const tol = dtype === "float64" ? 1e-12 : 1e-5;
  cudaTest(`cuda ${dtype}: forward and backward against the reference, small shapes`, () => {
    const rng = new Rng(dtype === "float64" ? 601 : 602);
    const worst = new Worst();
    for (const [n, d, c] of CUDA_SHAPES) {
      for (const m of dtype === "float64" ? [...MARGINS, 16] : [1, 3, 4, 6]) {
        for (const lambda of dtype === "float64" ? [0, 0.5, 1000] : [0, 1000]) {
          const e = compareWithReference(randomProblem(rng, n, d, c), m, lambda, "cuda", dtype);
          worst.add("logits", e.logits);
          worst.add("gradX", e.gradX);
          worst.add("gradW", e.gradW);
          assert.ok(
            e.max <= tol,
            `cuda ${dtype} (N,D,C)=(${n},${d},${c}) m=${m} lambda=${lambda}: ${describeErrors(e)}`,
          );
        }
      }
    }
    worst.report(`reference cuda ${dtype}`);
  });

  cudaTest(`cuda ${dtype}: near boundaries and the Caffe closed forms`, () => {
    const rng = new Rng(dtype === "float64" ? 603 : 604);
    const worst = new Worst();
    for (const m of MARGINS) {
      const e = compareWithReference(boundaryProblem(rng, m, 6, 4), m, 0.5, "cuda", dtype);
      worst.add("boundary", e.max);
      assert.ok(e.max <= tol, `cuda ${dtype} boundary m=${m}: ${describeErrors(e)}`);
    }
    for (const m of [2, 3, 4]) {
      const e = compareWithReference(randomProblem(rng, 9, 7, 5), m, 0, "cuda", dtype, psiCaffe);
      worst.add("Caffe", e.max);
      assert.ok(e.max <= tol, `cuda ${dtype} Caffe m=${m}: ${describeErrors(e)}`);
    }
    worst.report(`cuda ${dtype}`);
  });
}

cudaTest("cuda vs cpu: the same results (float64 1e-12, float32 1e-5)", () => {
  const rng = new Rng(605);
  const worst = new Worst();
  for (const [n, d, c] of [[33, 70, 65], [64, 64, 64], [1, 70, 2]] as const) {
    for (const m of [1, 4]) {
      const p = randomProblem(rng, n, d, c);
      for (const dtype of ["float64", "float32"] as const) {
        const [x, w, g] = dtype === "float32"
          ? [toF32(p.x), toF32(p.w), toF32(p.g)]
          : [p.x, p.w, p.g];
        const o = { margin: m, lambda: 0.5 };
        const run = (backend: "cpu" | "cuda") => ({
          f: forward(x as Float64Array, w as Float64Array, p.labels, { ...o, backend }).logits,
          ...backward(x as Float64Array, w as Float64Array, p.labels, g as Float64Array, {
            ...o,
            backend,
          }),
        });
        const a = run("cuda"), b = run("cpu");
        const tol = dtype === "float64" ? 1e-12 : 1e-5;
        const key = `${dtype}`;
        worst.add(key, assertClose(a.f, b.f, tol, `${key} logits`, rowScale(b.f, n)));
        worst.add(key, assertClose(a.gradX, b.gradX, tol, `${key} gradX`, rowScale(b.gradX, n)));
        worst.add(key, assertClose(a.gradW, b.gradW, tol, `${key} gradW`, rowScale(b.gradW, c)));
      }
    }
  }
  worst.report("cuda vs cpu");
});

cudaTest("cuda: NaN/Inf rows contained, zero rows finite and plain", () => {
  const rng = new Rng(606);
  for (const dtype of ["float64", "float32"] as const) {
    for (const value of [NaN, Infinity]) checkNonFiniteRow("cuda", dtype, value, 4, 0, rng);
    checkNonFiniteRow("cuda", dtype, -Infinity, 1, 1000, rng);
    for (const m of [1, 3]) checkZeroRows("cuda", dtype, m, 0.5, rng);
  }
});

cudaTest("cuda: every device by id (cuda:K), and auto picks cuda", () => {
  const rng = new Rng(607);
  const p = randomProblem(rng, 5, 4, 3);
  const o = { margin: 3, lambda: 0.5 };
  const first = forward(p.x, p.w, p.labels, { ...o, backend: "cuda" }).logits;
  const auto = forward(p.x, p.w, p.labels, o).logits;
  assert.equal(firstDifference(first, auto), -1, "auto differs from cuda");
  for (const dev of info.cuda.devices) {
    const f = forward(p.x, p.w, p.labels, { ...o, backend: dev.id }).logits;
    assertClose(f, first, 1e-12, dev.id, rowScale(first, 5));
  }
  assert.throws(
    () => forward(p.x, p.w, p.labels, { ...o, backend: `cuda:${info.cuda.devices.length}` }),
    (e: Error) => e.message.includes("backend"),
  );
});

cudaTest("cuda: errors leave the backend working; buffers regrow across sizes", () => {
  const rng = new Rng(608);
  const o = { margin: 2, lambda: 0, backend: "cuda" as const };
  const small = randomProblem(rng, 2, 3, 2);
  const big = randomProblem(rng, 40, 50, 60);
  const bad = small.labels.slice();
  bad[1] = 2;
  assert.throws(() => forward(small.x, small.w, bad, o), RangeError);
  assert.throws(() => backward(small.x, small.w, small.labels, new Float64Array(3), o), RangeError);
  for (const p of [small, big, small, big]) {
    const e = compareWithReference(p, 2, 0, "cuda", "float64");
    assert.ok(e.max <= 1e-12, describeErrors(e));
  }
});

cudaTest("cuda: LargeMarginSoftmax on cuda matches the op at the layer's lambda", () => {
  const rng = new Rng(609);
  const p = randomProblem(rng, 6, 5, 4);
  const schedule = { base: 1000, gamma: 0.000025, power: 35, lambdaMin: 0 };
  using layer = new LargeMarginSoftmax({ margin: 4, ...schedule, backend: "cuda" });
  const { logits, lambda } = layer.forward(p.x, p.w, p.labels, { step: 8700 });
  assert.equal(lambda, lambdaAt(8700, schedule));
  const o = { margin: 4, lambda, backend: "cuda" as const };
  assert.equal(firstDifference(logits, forward(p.x, p.w, p.labels, o).logits), -1);
  const g = layer.backward(p.g);
  const want = backward(p.x, p.w, p.labels, p.g, o);
  assert.equal(firstDifference(g.gradX, want.gradX), -1);
  assert.equal(firstDifference(g.gradW, want.gradW), -1);
  layer.close();
  assert.throws(() => layer.forward(p.x, p.w, p.labels), Error);
});

// Only the emulated library can offer a device too old for this build (LSM_EMU_SM).
Deno.test({
  name: "cuda auto: a listed device that cannot host a context falls back to the cpu",
  ignore: !info.library.endsWith("liblsoftmax_emu.so"),
  fn: async () => {
    const child = new URL("./fixtures/auto_fallback_child.ts", import.meta.url);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", "--allow-env", "--no-check", child.pathname],
      env: { LSM_EMU_SM: "70", LSOFTMAX_LIB: info.library },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, `child failed: ${new TextDecoder().decode(out.stderr)}`);
    const r = JSON.parse(text);
    assert.equal(r.listed, 1, "the old device is listed");
    assert.match(r.cudaError, /7\.0/, "backend cuda names the compute capability");
    const x = new Float64Array([0.5, 1, -1, 2, 0.25, -0.75]);
    const w = new Float64Array([1, 0, 0, 1, -1, 1]);
    const labels = new Int32Array([1, 2, 0]);
    const ref = referenceForward(x, w, labels, { margin: 3, lambda: 0.5 });
    for (const name of ["first", "fromLayer", "after"]) {
      assertClose(new Float64Array(r[name]), ref, 1e-12, `auto ${name}`, rowScale(ref, 3));
    }
  },
});
