// python_bindings_test.ts: the ctypes bindings of bench/torch_*.py (what gpu-check measures
// against PyTorch) speak this library's ABI: each script runs on the CPU backend at a small shape
// and its results agree with its own float64 numpy reference. Where python3 cannot import numpy
// the tests are ignored (the scripts need it).

import assert from "node:assert/strict";
import { succeeds } from "./helpers.ts";
import { backends } from "../mod.ts";

const hasNumpy = await succeeds("python3", ["-c", "import numpy"]);
const lib = backends().library;

for (const script of ["torch_compare", "torch_loss", "torch_head"]) {
  Deno.test({
    name: `bench/${script}.py: its C ABI bindings give results within float32 of its reference`,
    ignore: !hasNumpy,
    async fn() {
      const path = new URL(`../bench/${script}.py`, import.meta.url).pathname;
      const out = await new Deno.Command("python3", {
        args: [path, "--lib", lib, "--backend", "cpu", "--shapes", "16x32x50", "--reps", "1"],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text);
      // The table's last column: the relative errors against the float64 reference.
      const row = text.split("\n").find((l) => l.startsWith("| ") && l.includes("(16, 32, 50)"));
      assert.ok(row !== undefined, text);
      const errors = row.split("|").at(-2)!.split(",").map(Number);
      assert.ok(errors.length >= 2 && errors.every((e) => e >= 0 && e < 1e-5), row);
    },
  });
}
