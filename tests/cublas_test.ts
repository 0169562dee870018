// cublas_test.ts: the CUDA products through cuBLAS, loaded at run time. Without a GPU the
// emulated library loads the stand-in (emulator/cublas_stand_in.cpp) as cuBLAS: make test-emu runs
// this file, the precision tests and the CUDA suites again with LSOFTMAX_CUBLAS naming it. The
// search and the refusals run in child processes (the library looks for cuBLAS once a process).
// Everything here is ignored where backends() reports no CUDA.

import assert from "node:assert/strict";
import { backends, backward, forward, loss, releaseContexts } from "../mod.ts";
import { cudaAvailable } from "./check.ts";
import { maxRelErr, randomProblem, Rng, rowScale, toF32 } from "./helpers.ts";
import { plainBackward, plainForward } from "./reference.ts";

const named = Deno.env.get("LSOFTMAX_CUBLAS");
const standIn = named !== undefined && /libcublas_stand_in\.so$/.test(named) ? named : undefined;
const library = new URL("../build/emu/libcublas_stand_in.so", import.meta.url).pathname;
// The search runs against the emulated device, where no real cuBLAS can be found first.
const emulated = cudaAvailable && backends().cuda.devices[0].name.startsWith("lsm-emu");

/** The stand-in's counters, through its own exported function (the same loaded copy). */
function counts(): { handles: number; gemms: number } {
  const lib = Deno.dlopen(standIn!, {
    lsm_stand_in_counts: { parameters: ["buffer", "buffer"], result: "void" },
  });
  const h = new BigInt64Array(1), g = new BigInt64Array(1);
  lib.symbols.lsm_stand_in_counts(h, g);
  lib.close();
  return { handles: Number(h[0]), gemms: Number(g[0]) };
}

/** backends().cuda.products in a fresh process with `env` (the emulated library, as here). */
async function productsWith(env: Record<string, string>, call = false): Promise<string> {
  const code = `import { backends, forward } from "${new URL("../mod.ts", import.meta.url).href}";
    const p = backends().cuda.products;
    try {
      if (${call}) forward(new Float32Array([1, 2]), new Float32Array([1, 0, 0, 1]), new Int32Array([0]),
        { margin: 1, lambda: 0, backend: "cuda" });
      console.log(p);
    } catch (e) { console.log("ERROR " + e.message); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    env: { ...Deno.env.toObject(), LSOFTMAX_CUBLAS: "", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test({
  name: "cuda cublas: the stand-in named by LSOFTMAX_CUBLAS serves the products",
  ignore: !cudaAvailable || standIn === undefined,
  fn() {
    assert.equal(backends().cuda.products, `cuBLAS 13.0.0 (${standIn})`);
  },
});

Deno.test({
  name: "cuda cublas: every product through cuBLAS, against the plain float64 products",
  ignore: !cudaAvailable || standIn === undefined,
  fn() {
    const before = counts().gemms;
    const rng = new Rng(3401);
    // Odd sizes: leading dimensions that are no multiple of a vector, and N = 1.
    for (const [n, d, c] of [[1, 1, 1], [7, 5, 3], [13, 37, 70], [3, 130, 9]]) {
      const p = randomProblem(rng, n, d, c);
      for (const f32 of [false, true]) {
        const x = f32 ? toF32(p.x) : p.x, w = f32 ? toF32(p.w) : p.w, g = f32 ? toF32(p.g) : p.g;
        const tol = f32 ? 1e-5 : 1e-12;
        const opts = { margin: 1, lambda: 0, backend: "cuda" as const };
        const { logits } = forward(x, w, p.labels, opts);
        const { gradX, gradW } = backward(x, w, p.labels, g, opts);
        const xs = Float64Array.from(x), ws = Float64Array.from(w), gs = Float64Array.from(g);
        const f = plainForward(xs, ws, p.labels), b = plainBackward(xs, ws, p.labels, gs);
        assert.ok(maxRelErr(logits, f, rowScale(f, n)) <= tol, `logits n=${n} d=${d} c=${c}`);
        assert.ok(
          maxRelErr(gradX, b.gradX, rowScale(b.gradX, n)) <= tol,
          `gradX n=${n} d=${d} c=${c}`,
        );
        assert.ok(
          maxRelErr(gradW, b.gradW, rowScale(b.gradW, c)) <= tol,
          `gradW n=${n} d=${d} c=${c}`,
        );
      }
    }
    assert.ok(counts().gemms - before >= 4 * 2 * 3, "the products did not go through the stand-in");
  },
});

Deno.test({
  name: "cuda cublas: the fused loss in class blocks equals the CPU backend's",
  ignore: !cudaAvailable || standIn === undefined,
  fn() {
    const p = randomProblem(new Rng(3402), 17, 33, 101);
    for (
      const kind of [{ margin: 4, lambda: 1 }, { kind: "cosface" as const, scale: 8, margin: 0.2 }]
    ) {
      const cpu = loss(p.x, p.w, p.labels, { ...kind, backend: "cpu" });
      const before = counts().gemms;
      const gpu = loss(p.x, p.w, p.labels, { ...kind, backend: "cuda", workspace: 17 * 8 * 20 });
      assert.ok(
        counts().gemms - before >= 3 * 5,
        "the class blocks did not go through the stand-in",
      );
      assert.ok(Math.abs(gpu.loss - cpu.loss) <= 1e-12 * cpu.loss);
      assert.ok(maxRelErr(gpu.gradX, cpu.gradX, rowScale(cpu.gradX, 17)) <= 1e-11);
      assert.ok(maxRelErr(gpu.gradW, cpu.gradW, rowScale(cpu.gradW, 101)) <= 1e-11);
    }
  },
});

Deno.test({
  name:
    "cuda cublas: a failing product or handle is an Error naming cuBLAS, and the library goes on",
  ignore: !cudaAvailable || standIn === undefined,
  fn() {
    const x = new Float32Array([1, 2, 3, 4]), w = new Float32Array([1, 0, 0, 1]);
    const labels = new Int32Array([0, 1]);
    const opts = { margin: 2, lambda: 0, backend: "cuda" as const };
    const good = forward(x, w, labels, opts).logits;
    try {
      Deno.env.set("LSM_STAND_IN_FAIL", "gemm");
      assert.throws(
        () => forward(x, w, labels, opts),
        /cublasGemmEx \(2 x 2 x 2\): CUBLAS_STATUS_EXECUTION_FAILED/,
      );
      Deno.env.set("LSM_STAND_IN_FAIL", "create");
      releaseContexts();
      assert.throws(
        () => forward(x, w, labels, opts),
        /cuBLAS \(.*\) cannot run on device 0: cublasCreate: CUBLAS_STATUS_NOT_INITIALIZED; LSOFTMAX_CUBLAS=off/,
      );
    } finally {
      Deno.env.delete("LSM_STAND_IN_FAIL");
    }
    assert.deepEqual(forward(x, w, labels, opts).logits, good);
    const { handles } = counts();
    releaseContexts();
    assert.equal(counts().handles, handles - 1, "a context's cuBLAS handle outlived it");
  },
});

Deno.test({
  name: "cuda cublas: the search order, 'off', and a named library that does not load",
  ignore: !emulated,
  async fn() {
    const tmp = await Deno.makeTempDir();
    try {
      // Nothing to find: the library's kernels, saying where it looked.
      assert.match(
        await productsWith({ CUDA_HOME: tmp, VIRTUAL_ENV: tmp, HOME: tmp }),
        /^the library's own kernels \(cuBLAS: no libcublas\.so\.13 or \.12 .*LSOFTMAX_CUBLAS/,
      );
      assert.equal(
        await productsWith({ LSOFTMAX_CUBLAS: "off" }, true),
        "the library's own kernels (cuBLAS: LSOFTMAX_CUBLAS=off)",
      );
      // A toolkit under CUDA_HOME, then a pip wheel under VIRTUAL_ENV (the stand-in in their places).
      await Deno.mkdir(`${tmp}/cuda/lib64`, { recursive: true });
      await Deno.symlink(library, `${tmp}/cuda/lib64/libcublas.so.13`);
      assert.equal(
        await productsWith({ CUDA_HOME: `${tmp}/cuda`, HOME: tmp }, true),
        `cuBLAS 13.0.0 (${tmp}/cuda/lib64/libcublas.so.13)`,
      );
      const wheel = `${tmp}/venv/lib/python3.12/site-packages/nvidia/cublas/lib`;
      await Deno.mkdir(wheel, { recursive: true });
      await Deno.symlink(library, `${wheel}/libcublas.so.12`);
      assert.equal(
        await productsWith(
          { CUDA_HOME: `${tmp}/none`, VIRTUAL_ENV: `${tmp}/venv`, HOME: tmp },
          true,
        ),
        `cuBLAS 13.0.0 (${wheel}/libcublas.so.12)`,
      );
      // A named path that does not load: said by backends(), and every CUDA context refuses.
      const bad = await productsWith({ LSOFTMAX_CUBLAS: `${tmp}/missing.so` }, true);
      assert.match(bad, new RegExp(`^ERROR .*LSOFTMAX_CUBLAS=${tmp}/missing\\.so did not load: `));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
