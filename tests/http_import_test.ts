// http_import_test.ts: mod.ts imported over http, as users of a published module would: a
// local server (127.0.0.1, port 0) serves mod.ts and ffi/*.ts, and a child Deno process imports
// http://127.0.0.1:PORT/mod.ts. With LSOFTMAX_LIB naming the library, a forward works; without
// it there is no local build/ to fall back on, and a checkout served as it is carries no prebuilt
// library (the folder `make dist` writes does: tests/dist_test.ts), so the error must say so and
// name LSOFTMAX_LIB.
//
// Needs --allow-run (the child), --allow-net (the server), --allow-read, --allow-env.

import assert from "node:assert/strict";
import { info } from "./check.ts";
import { assertClose } from "./helpers.ts";
import { referenceForward } from "./reference.ts";

const ROOT = new URL("../", import.meta.url);

/** The library under test, as an absolute path. */
function libraryPath(): string {
  return Deno.realPathSync(info.library);
}

const X = [0.5, -1, 2, 0.25, 1.5, -0.75];
const W = [1, 0.5, -1, 0.25, 2, -1, 0.5, 0.5, 0.5];
const LABELS = [2, 0];

/** The child's program: imports mod.ts over http and prints one forward's logits as JSON. */
function childScript(base: string): string {
  return `import { backends, forward } from "${base}mod.ts";
const { logits } = forward(
  new Float64Array(${JSON.stringify(X)}),
  new Float64Array(${JSON.stringify(W)}),
  new Int32Array(${JSON.stringify(LABELS)}),
  { margin: 3, lambda: 0.5, backend: "cpu" },
);
console.log(JSON.stringify({ logits: Array.from(logits), library: backends().library }));
`;
}

/** Serves mod.ts and ffi/*.ts of this checkout, and the child's script, on 127.0.0.1. */
function serve(): { server: Deno.HttpServer<Deno.NetAddr>; base: string; requests: string[] } {
  const requests: string[] = [];
  let base = "";
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    requests.push(path);
    const ts = { "content-type": "application/typescript; charset=utf-8" };
    if (path === "/child.ts") return new Response(childScript(base), { headers: ts });
    if (path === "/mod.ts" || /^\/(ffi|src)\/([A-Za-z0-9_-]+\/)?[A-Za-z0-9_.-]+\.ts$/.test(path)) {
      try {
        return new Response(Deno.readTextFileSync(new URL(`.${path}`, ROOT)), { headers: ts });
      } catch {
        return new Response("not found", { status: 404 });
      }
    }
    return new Response("not found", { status: 404 });
  });
  base = `http://127.0.0.1:${server.addr.port}/`;
  return { server, base, requests };
}

/** Runs the child Deno on base/child.ts with a clean environment plus `env`. */
async function runChild(base: string, env: Record<string, string>) {
  const keep: Record<string, string> = { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" };
  for (const k of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) keep[k] = v;
  }
  const host = new URL(base).host;
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-config",
      "--no-lock",
      `--reload=${base}`,
      "--allow-ffi",
      "--allow-env",
      "--allow-read",
      `--allow-net=${host}`,
      `--allow-import=${host}`,
      `${base}child.ts`,
    ],
    clearEnv: true,
    env: { ...keep, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cmd.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function permitted(): Promise<void> {
  for (const name of ["run", "net"] as const) {
    const { state } = await Deno.permissions.query({ name });
    assert.equal(state, "granted", `this test needs --allow-${name}`);
  }
}

Deno.test("http import: mod.ts from http://127.0.0.1 with LSOFTMAX_LIB set runs a forward", async () => {
  await permitted();
  const { server, base, requests } = serve();
  try {
    const lib = libraryPath();
    const r = await runChild(base, { LSOFTMAX_LIB: lib });
    assert.equal(r.code, 0, `child failed (${r.code}):\n${r.stderr}\n${r.stdout}`);
    const result = JSON.parse(r.stdout.trim().split("\n").pop()!);
    assert.equal(result.library, lib);
    const ref = referenceForward(X, W, LABELS, { margin: 3, lambda: 0.5 });
    assertClose(result.logits, ref, 1e-12, "logits over http", 1e-12);
    assert.ok(requests.includes("/mod.ts"), `served: ${requests.join(", ")}`);
    assert.ok(requests.some((p) => p.startsWith("/ffi/")), `served: ${requests.join(", ")}`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("http import: a checkout served as is, without LSOFTMAX_LIB: the error names make dist and LSOFTMAX_LIB", async () => {
  await permitted();
  const { server, base } = serve();
  try {
    const r = await runChild(base, {});
    console.log(`child: ${r.stderr.split("\n").find((l) => l.startsWith("error")) ?? r.stderr}`);
    assert.notEqual(r.code, 0, `child succeeded without LSOFTMAX_LIB:\n${r.stdout}`);
    assert.ok(
      r.stderr.includes("LSOFTMAX_LIB"),
      `stderr does not mention LSOFTMAX_LIB:\n${r.stderr}`,
    );
    assert.match(r.stderr, /carries no prebuilt library \(the folder `make dist` writes does\)/);
    // It fails for the library, not for the import itself.
    assert.ok(
      !/Module not found|Import .* not allowed|Requires import access/.test(r.stderr),
      r.stderr,
    );
  } finally {
    await server.shutdown();
  }
});
