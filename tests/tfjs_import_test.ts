// tfjs_import_test.ts: tfjs.ts used where the checkout's import map does not reach: imported
// from a program outside the project (run with --no-config), and over http from a server on
// 127.0.0.1. Its npm specifiers resolve to the user's TensorFlow.js: one instance, so the
// backend the user sets (wasm here) is the one the adapter computes on, and the adapter's
// tensors are the user's.
//
// Needs --allow-run, --allow-net (the server), --allow-read, --allow-write, --allow-env.

import assert from "node:assert/strict";
import { info } from "./check.ts";
import { runClean, serveFolder } from "./serve.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
const LIB = Deno.realPathSync(info.library);

/** The user's program: its own tfjs on the wasm backend, the adapter from `base`. */
function program(base: string): string {
  return `import * as tf from "npm:@tensorflow/tfjs@^4.22.0";
import "npm:@tensorflow/tfjs-backend-wasm@^4.22.0";
import { loss } from "${base}mod.ts";
import { marginLoss } from "${base}tfjs.ts";

if (!(await tf.setBackend("wasm"))) throw new Error("no wasm backend");
await tf.ready();
const wasm = tf.findBackend("wasm");
const x = tf.tensor2d([[0.5, 1], [-1, 2], [1.5, -0.5]]);
const w = tf.variable(tf.tensor2d([[1, 0], [0, 1], [-1, 1]]));
const labels = new Int32Array([1, 2, 0]);
const options = { margin: 2, lambda: 0.5 };
const made = wasm.numDataIds();
const { value, grads } = tf.variableGrads(() => marginLoss(x, w, labels, options));
const onWasm = wasm.numDataIds() - made;
const want = loss(new Float32Array(x.dataSync()), new Float32Array(w.dataSync()), labels, options);
console.log(JSON.stringify({
  backend: tf.getBackend(),
  tensor: value instanceof tf.Tensor && grads[w.name] instanceof tf.Tensor,
  onWasm,
  loss: value.dataSync()[0],
  want: want.loss,
  grad: Array.from(grads[w.name].dataSync()),
  wantGrad: Array.from(want.gradW),
}));
`;
}

async function check(
  base: string,
  flags: string[],
  what: string,
): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "lsoftmax-tfjs-user-" });
  try {
    Deno.writeTextFileSync(`${dir}/main.ts`, program(base));
    const r = await runClean(
      ["deno", "run", "--no-config", "--no-lock", "--no-prompt", ...flags, "main.ts"],
      { LSOFTMAX_LIB: LIB },
      { cwd: dir, keep: ["HOME", "DENO_DIR", "XDG_CACHE_HOME"] },
    );
    assert.equal(r.code, 0, `${what}: the child failed (${r.code}):\n${r.stderr}\n${r.stdout}`);
    const got = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.equal(got.backend, "wasm", what);
    assert.ok(got.tensor, `${what}: the adapter's tensors are not the user's tf.Tensor`);
    assert.ok(got.onWasm > 0, `${what}: the adapter made no tensor on the user's wasm backend`);
    assert.ok(Math.abs(got.loss - got.want) <= 1e-5 * Math.abs(got.want), what);
    for (let i = 0; i < got.grad.length; i++) {
      assert.ok(Math.abs(got.grad[i] - got.wantGrad[i]) <= 1e-5, `${what}: dL/dW[${i}]`);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

const FLAGS = ["--allow-ffi", "--allow-env", "--allow-read"];

Deno.test("tfjs.ts from a program outside the project: the user's tfjs, its wasm backend", async () => {
  await check(`file://${ROOT}/`, FLAGS, "outside the project");
});

Deno.test("tfjs.ts over http: the user's tfjs, its wasm backend", async () => {
  const served = serveFolder(ROOT);
  try {
    await check(
      served.base,
      [
        ...FLAGS,
        `--allow-import=${served.host}`,
        `--allow-net=${served.host}`,
        "--reload=" +
        served.base,
      ],
      "over http",
    );
    assert.ok(served.requests.includes("/tfjs.ts"), served.requests.join(", "));
  } finally {
    await served.close();
  }
});
