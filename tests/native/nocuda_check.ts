// nocuda_check.ts: the library built without the CUDA toolkit (make test-nocuda: NVCC pointing
// nowhere): the CUDA backend is there but reports "built without CUDA", every call on it is an
// Error saying so, and the CPU backend serves, auto included. Run with LSOFTMAX_LIB naming that
// build; not a *_test.ts file, so that the suite (deno test tests/) leaves it out; loss_test.ts
// checks that build's CPU loss in depth.

import assert from "node:assert/strict";
import { backends, forward, loss } from "../../mod.ts";
import { randomProblem, Rng } from "../helpers.ts";

Deno.test("no CUDA toolkit: backends() reports the CUDA backend built without CUDA", () => {
  const info = backends();
  assert.equal(info.cuda.available, false);
  assert.deepEqual(info.cuda.devices, []);
  assert.match(info.cuda.reason ?? "", /built without CUDA/);
  assert.equal(info.cpu.available, true);
});

Deno.test("no CUDA toolkit: a call on cuda is an Error naming the reason; auto runs on the CPU", () => {
  const p = randomProblem(new Rng(7), 5, 4, 6);
  const opts = { margin: 2, lambda: 0.5 };
  assert.throws(() => loss(p.x, p.w, p.labels, { ...opts, backend: "cuda" }), /built without CUDA/);
  assert.throws(
    () => forward(p.x, p.w, p.labels, { ...opts, backend: "cuda:0" }),
    /built without CUDA/,
  );
  const auto = loss(p.x, p.w, p.labels, opts);
  const cpu = loss(p.x, p.w, p.labels, { ...opts, backend: "cpu" });
  assert.ok(Number.isFinite(auto.loss) && auto.loss > 0, `loss ${auto.loss}`);
  assert.equal(auto.loss, cpu.loss);
  assert.deepEqual(auto.gradX, cpu.gradX);
  assert.deepEqual(auto.gradW, cpu.gradW);
});
