// dist_test.ts: the route of a user who imports the module from a URL. scripts/dist.sh writes
// the served folder with the library under test (LSOFTMAX_LIB's file) into a temporary folder, a
// server on 127.0.0.1 serves it, and child Deno processes run the README's first program with the
// README's own `deno run` command (the host and the cache folder put in): the first run
// downloads, verifies and caches the library and trains; a second, with the server stopped, works
// from the cache; a tampered file or a download cut short is refused and leaves nothing cached;
// a cached file altered later is downloaded anew; LSOFTMAX_LIB and useLibrary(path) win; a mirror
// is used; a missing permission is an error naming its flag.
//
// Needs --allow-run, --allow-net (the server), --allow-read, --allow-write (temporary folders),
// --allow-env.

import assert from "node:assert/strict";
import { info } from "./check.ts";
import {
  type ChildResult,
  filesUnder,
  onCpuWhenEmulated,
  runClean,
  type Served,
  serveFolder,
} from "./serve.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
/** Where the README's program imports the module from: replaced by the local server's URL. */
const PUBLISHED = "https://example.com/lsoftmax/";
const PLATFORM = `${Deno.build.os}-${Deno.build.arch}`;
const LIB = Deno.realPathSync(info.library);
const FILE = `liblsoftmax-${info.version}-${PLATFORM}.so`;
const EMULATED = info.cuda.devices.some((d) => d.name.startsWith("lsm-emu"));

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The README's first TypeScript program and its `deno run` command, lines joined. */
function readmeRoute(): { program: string; command: string } {
  const text = Deno.readTextFileSync(`${ROOT}/README.md`);
  const blocks = [...text.matchAll(/^```(\w+)[^\n]*\n([\s\S]*?)^```$/gm)];
  const program = blocks.find(([, lang, body]) => lang === "ts" && body.includes(PUBLISHED));
  const command = blocks.find(([, lang, body]) => lang === "sh" && /^deno run /m.test(body));
  assert.ok(program, `README.md has no ts block importing ${PUBLISHED}`);
  assert.ok(command, "README.md has no sh block with a `deno run` command");
  const run = command[2].replace(/\\\n\s*/g, " ").split("\n").find((l) => l.startsWith("deno run"));
  return { program: program[2], command: run!.trim() };
}

const ROUTE = readmeRoute();
const TEMP = Deno.makeTempDirSync({ prefix: "lsoftmax-dist-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(TEMP, { recursive: true }));
const DIST = `${TEMP}/dist`;

// The served folder, written once for all the tests below.
const made = await runClean(
  [`${ROOT}/scripts/dist.sh`, "--out", DIST, LIB],
  { DENO: Deno.execPath() },
  { keep: ["HOME", "DENO_DIR", "XDG_CACHE_HOME"] },
);
assert.equal(made.code, 0, `scripts/dist.sh failed:\n${made.stderr}\n${made.stdout}`);
const SHA = await sha256(await Deno.readFile(LIB));

let runs = 0;

interface RouteOptions {
  /** The program instead of the README's (PUBLISHED in it is replaced too). */
  program?: string;
  /** DENO_DIR for the child (and the README's cache flags pointed at it). */
  denoDir?: string;
  /** HOME for the child; a fresh folder by default. */
  home?: string;
  /** More variables. */
  env?: Record<string, string>;
  /** A flag of the README's command to leave out (its name, e.g. "--allow-net"). */
  without?: string;
  /** Flags added after `deno run`. */
  extra?: string[];
  /** The folder to run in (a new one by default). */
  work?: string;
}

/** Runs a program importing the served module, with the README's command. */
async function runRoute(served: Served, options: RouteOptions = {}): Promise<ChildResult> {
  const work = options.work ?? `${TEMP}/run${++runs}`;
  Deno.mkdirSync(work, { recursive: true });
  const program = onCpuWhenEmulated(options.program ?? ROUTE.program, EMULATED)
    .replaceAll(PUBLISHED, served.base);
  Deno.writeTextFileSync(`${work}/main.ts`, program);
  let command = ROUTE.command.replaceAll("example.com", served.host);
  if (options.denoDir) command = command.replaceAll("$HOME/.cache/deno", "$DENO_DIR");
  if (options.extra) command = command.replace("deno run", `deno run ${options.extra.join(" ")}`);
  if (options.without) {
    const flag = options.without;
    command = command.split(" ").filter((a) => a.split("=")[0] !== flag).join(" ");
  }
  const env: Record<string, string> = { HOME: options.home ?? `${work}/home`, ...options.env };
  if (options.denoDir) env.DENO_DIR = options.denoDir;
  return await runClean(["bash", "-c", command], env, { cwd: work });
}

/** The losses a program printed ("step K: loss X"). */
function losses(r: ChildResult): number[] {
  return [...r.stdout.matchAll(/step \d+: loss ([0-9.eE+-]+)/g)].map((m) => Number(m[1]));
}

function assertTrained(r: ChildResult, what: string): void {
  assert.equal(r.code, 0, `${what}: the child failed (${r.code}):\n${r.stderr}\n${r.stdout}`);
  const l = losses(r);
  assert.ok(l.length >= 2, `${what}: no losses printed:\n${r.stdout}`);
  assert.ok(l[l.length - 1] < 0.5 * l[0], `${what}: the loss did not fall: ${l.join(" -> ")}`);
}

/** The cached library of a DENO_DIR. */
function cachedPath(denoDir: string): string {
  return `${denoDir}/plug/lsoftmax/${info.version}-${SHA}/${FILE}`;
}

function fresh(name: string): string {
  return Deno.makeTempDirSync({ dir: TEMP, prefix: `${name}-` });
}

const PROBE = `import { backends, useLibrary } from "${PUBLISHED}mod.ts";
const path = Deno.args[0];
if (path) useLibrary(path);
console.log(JSON.stringify({ library: backends().library }));
`;

Deno.test("dist: scripts/dist.sh writes the module's files and the library, pinned", async () => {
  const files = filesUnder(DIST);
  for (const f of ["mod.ts", "tfjs.ts", "ffi/library.ts", "ffi/fetch.ts", "ffi/prebuilt.ts"]) {
    assert.ok(files.includes(f), `dist has no ${f}: ${files.join(", ")}`);
  }
  assert.ok(files.includes(`lib/${FILE}`), `dist has no lib/${FILE}: ${files.join(", ")}`);
  assert.ok(!files.some((f) => f.startsWith("tests/") || f === "deno.json"), files.join(", "));
  // The module's files are the checkout's, but for the pin.
  for (const f of files.filter((f) => f.endsWith(".ts") && f !== "ffi/prebuilt.ts")) {
    assert.equal(
      Deno.readTextFileSync(`${DIST}/${f}`),
      Deno.readTextFileSync(`${ROOT}/${f}`),
      `dist/${f} differs from the checkout's`,
    );
  }
  assert.deepEqual(await Deno.readFile(`${DIST}/lib/${FILE}`), await Deno.readFile(LIB));
  const { PREBUILT } = await import(`file://${DIST}/ffi/prebuilt.ts`);
  assert.deepEqual(PREBUILT, {
    version: info.version,
    files: { [PLATFORM]: { file: FILE, sha256: SHA } },
  });
  // The checkout's own copy pins nothing.
  const local = await import("../ffi/prebuilt.ts");
  assert.deepEqual(local.PREBUILT, { version: "", files: {} });
});

Deno.test("dist: the README's program and command: the first run downloads, verifies, caches and trains; the next needs no server", async () => {
  const served = serveFolder(DIST);
  const home = fresh("home");
  let first: ChildResult;
  try {
    first = await runRoute(served, { home });
    assertTrained(first, "first run");
    assert.ok(served.requests.includes("/mod.ts"), served.requests.join(", "));
    assert.ok(served.requests.includes(`/lib/${FILE}`), served.requests.join(", "));
  } finally {
    await served.close();
  }
  // Cached where the README says, under the checksum, and nothing else there.
  const cache = `${home}/.cache/deno/plug/lsoftmax`;
  assert.deepEqual(filesUnder(cache), [`${info.version}-${SHA}/${FILE}`]);
  assert.equal(await sha256(await Deno.readFile(`${cache}/${info.version}-${SHA}/${FILE}`)), SHA);
  // The server is gone: modules and library come from the caches.
  const second = await runRoute(served, { home });
  assertTrained(second, "second run, server stopped");
  assert.deepEqual(losses(second), losses(first!));
});

Deno.test("dist: a lock file pins the library's checksum: a changed pin fails the lock's check", async () => {
  const served = serveFolder(DIST);
  const denoDir = fresh("deno-dir"), work = fresh("locked");
  try {
    const lock = ["--lock=deno.lock"];
    const first = await runRoute(served, { denoDir, work, program: PROBE, extra: lock });
    assert.equal(first.code, 0, first.stderr);
    const pinned = JSON.parse(Deno.readTextFileSync(`${work}/deno.lock`)).remote;
    assert.ok(pinned[`${served.base}ffi/prebuilt.ts`], `not in the lock: ${Object.keys(pinned)}`);
    // The server now pins another library: Deno refuses the module before any of it runs.
    const text = Deno.readTextFileSync(`${DIST}/ffi/prebuilt.ts`).replace(SHA, "0".repeat(64));
    served.overrides.set("/ffi/prebuilt.ts", text);
    const extra = [...lock, "--reload"];
    const r = await runRoute(served, { denoDir, work, program: PROBE, extra });
    assert.notEqual(r.code, 0, `ran with a changed pin:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stderr, /Integrity check failed[\s\S]*Specifier: \S+\/ffi\/prebuilt\.ts/);
  } finally {
    await served.close();
  }
});

Deno.test("dist: a tampered library is refused with both checksums and leaves nothing cached", async () => {
  const served = serveFolder(DIST);
  served.faults.set(`/lib/${FILE}`, "tamper");
  const denoDir = fresh("deno-dir");
  try {
    const r = await runRoute(served, { denoDir });
    assert.notEqual(r.code, 0, `the child ran on a tampered library:\n${r.stdout}`);
    const tampered = await Deno.readFile(LIB);
    tampered[tampered.length >> 1] ^= 0xff;
    const actual = await sha256(tampered);
    const url = `${served.base}lib/${FILE}`;
    assert.ok(r.stderr.includes(url), `the error does not name ${url}:\n${r.stderr}`);
    assert.ok(r.stderr.includes(`expected ${SHA}`), `no expected SHA-256:\n${r.stderr}`);
    assert.ok(r.stderr.includes(`SHA-256 ${actual}`), `no actual SHA-256:\n${r.stderr}`);
    assert.ok(served.requests.includes(`/lib/${FILE}`));
    assert.deepEqual(filesUnder(`${denoDir}/plug`), []);
  } finally {
    await served.close();
  }
});

Deno.test("dist: a download cut short leaves nothing cached, and the next run downloads it whole", async () => {
  const served = serveFolder(DIST);
  served.faults.set(`/lib/${FILE}`, "cut");
  const denoDir = fresh("deno-dir");
  try {
    const r = await runRoute(served, { denoDir });
    assert.notEqual(r.code, 0, `the child ran on half a library:\n${r.stdout}`);
    assert.match(r.stderr, /the download of \S+ broke off/);
    assert.deepEqual(filesUnder(`${denoDir}/plug`), []);
    served.faults.clear();
    assertTrained(await runRoute(served, { denoDir }), "after the cut");
    assert.deepEqual(filesUnder(`${denoDir}/plug/lsoftmax`), [`${info.version}-${SHA}/${FILE}`]);
  } finally {
    await served.close();
  }
});

Deno.test("dist: a cached file that no longer matches is downloaded anew before it is opened", async () => {
  const served = serveFolder(DIST);
  const denoDir = fresh("deno-dir");
  try {
    assertTrained(await runRoute(served, { denoDir }), "first run");
    const cached = await Deno.readFile(cachedPath(denoDir));
    cached[100] ^= 0xff;
    await Deno.writeFile(cachedPath(denoDir), cached);
    const before = served.requests.filter((p) => p.startsWith("/lib/")).length;
    assertTrained(await runRoute(served, { denoDir }), "run on an altered cache");
    assert.equal(served.requests.filter((p) => p.startsWith("/lib/")).length, before + 1);
    assert.equal(await sha256(await Deno.readFile(cachedPath(denoDir))), SHA);
  } finally {
    await served.close();
  }
});

Deno.test("dist: LSOFTMAX_LIB wins: nothing is downloaded or cached", async () => {
  const served = serveFolder(DIST);
  const denoDir = fresh("deno-dir");
  try {
    const r = await runRoute(served, { denoDir, program: PROBE, env: { LSOFTMAX_LIB: LIB } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).library, LIB);
    assert.ok(!served.requests.some((p) => p.startsWith("/lib/")), served.requests.join(", "));
    assert.deepEqual(filesUnder(`${denoDir}/plug`), []);
    // With it, the README's shorter command for one's own library is enough.
    const work = fresh("own");
    Deno.writeTextFileSync(`${work}/main.ts`, PROBE.replaceAll(PUBLISHED, served.base));
    const own = await runClean(
      [
        "deno",
        "run",
        `--allow-import=${served.host}`,
        "--allow-ffi",
        "--allow-env=LSOFTMAX_LIB",
        "main.ts",
      ],
      { LSOFTMAX_LIB: LIB, DENO_DIR: denoDir, HOME: work },
      { cwd: work },
    );
    assert.equal(own.code, 0, own.stderr);
    assert.equal(JSON.parse(own.stdout).library, LIB);
  } finally {
    await served.close();
  }
});

Deno.test("dist: useLibrary(path) after a URL import opens that path, even when the download failed", async () => {
  const served = serveFolder(DIST);
  served.faults.set(`/lib/${FILE}`, "tamper");
  const denoDir = fresh("deno-dir");
  try {
    const program = PROBE.replace("Deno.args[0]", JSON.stringify(LIB));
    const r = await runRoute(served, { denoDir, program });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).library, LIB);
    // Without it, the same import's first call throws the checksum error.
    const plain = await runRoute(served, { denoDir, program: PROBE });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}/);
  } finally {
    await served.close();
  }
});

Deno.test("dist: LSOFTMAX_MIRROR names the folder the library is taken from", async () => {
  const served = serveFolder(DIST);
  served.aliases.set("/mirror/", `${DIST}/lib`);
  served.faults.set(`/lib/${FILE}`, "tamper"); // so that only the mirror can serve it
  const denoDir = fresh("deno-dir");
  try {
    const r = await runRoute(served, {
      denoDir,
      program: PROBE,
      env: { LSOFTMAX_MIRROR: `${served.base}mirror` },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).library, cachedPath(denoDir));
    assert.ok(served.requests.includes(`/mirror/${FILE}`), served.requests.join(", "));
    assert.ok(!served.requests.includes(`/lib/${FILE}`), served.requests.join(", "));
  } finally {
    await served.close();
  }
});

Deno.test("dist: each of the README's flags is needed, and its absence names it", async () => {
  const served = serveFolder(DIST);
  const denoDir = fresh("deno-dir");
  try {
    const cache = `${denoDir}/plug/lsoftmax`;
    const expect: [string, RegExp][] = [
      ["--allow-net", new RegExp(`--allow-net=${served.host.replaceAll(".", "\\.")}`)],
      ["--allow-env", /--allow-env=LSOFTMAX_LIB,LSOFTMAX_MIRROR,DENO_DIR/],
      ["--allow-read", new RegExp(`--allow-read=${cache} --allow-write=${cache}`)],
      ["--allow-write", new RegExp(`--allow-read=${cache} --allow-write=${cache}`)],
      ["--allow-ffi", /run with --allow-ffi/],
    ];
    for (const [flag, said] of expect) {
      const r = await runRoute(served, { denoDir, program: PROBE, without: flag });
      assert.notEqual(r.code, 0, `ran without ${flag}:\n${r.stdout}`);
      assert.match(r.stderr, said, `without ${flag}`);
      if (flag !== "--allow-ffi") assert.deepEqual(filesUnder(`${denoDir}/plug`), [], flag);
    }
    // And with all of them it runs.
    const r = await runRoute(served, { denoDir, program: PROBE });
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await served.close();
  }
});
