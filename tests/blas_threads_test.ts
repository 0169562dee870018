// The library's OpenBLAS is loaded with a short spin for its idle workers (ffi/library.ts): after
// a product its worker threads sleep within microseconds instead of spinning a tenth of a second
// beside the passes that follow. Each case runs tests/fixtures/blas_threads_probe.ts in a process
// of its own and reads the states of its threads (/proc) a few milliseconds after a threaded
// product: with OpenBLAS's own timeout the worker is seen running, with the library's it is not.
// The environment is left as the user had it.
import assert from "node:assert/strict";

const PROBE = new URL("./fixtures/blas_threads_probe.ts", import.meta.url).pathname;
const cores = navigator.hardwareConcurrency;

interface Probe {
  env: string | null;
  samples: number[][] | null;
}

async function probe(env: Record<string, string>, denied: string[] = []): Promise<Probe> {
  const base: Record<string, string> = { ...Deno.env.toObject(), ...env };
  if (!("OPENBLAS_THREAD_TIMEOUT" in env)) delete base.OPENBLAS_THREAD_TIMEOUT;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    // /proc/self is behind --allow-all in Deno; the env permission is narrowed by --deny-env.
    args: ["run", "--no-prompt", "--allow-all", ...denied, PROBE],
    env: base,
    clearEnv: true,
  }).output();
  const err = new TextDecoder().decode(stderr);
  assert.equal(code, 0, err);
  return JSON.parse(new TextDecoder().decode(stdout));
}

// Threads seen running besides the one reading /proc: at least one in every sample while a
// worker spins; none in some sample once it sleeps.
const spinning = (p: Probe) => p.samples !== null && p.samples.every((s) => s.every((r) => r >= 2));
const quiet = (p: Probe) => p.samples !== null && p.samples.some((s) => s.some((r) => r <= 1));

Deno.test({
  name:
    "blas threads: OpenBLAS's workers sleep right after a product; with its own timeout they spin",
  ignore: cores < 2,
  fn: async () => {
    const ours = await probe({});
    assert.equal(ours.env, null, "the variable is not left in the environment");
    assert.ok(
      quiet(ours),
      `a worker still running after the product: ${JSON.stringify(ours.samples)}`,
    );
    // The control: OpenBLAS's default, 2^28 cycles (about 0.1 s), set by the user and kept.
    const theirs = await probe({ OPENBLAS_THREAD_TIMEOUT: "28" });
    assert.equal(theirs.env, "28", "the user's value is kept");
    assert.ok(
      spinning(theirs),
      `no worker spinning after the product: ${JSON.stringify(theirs.samples)}`,
    );
  },
});

Deno.test({
  name:
    "blas threads: without env permission for the variable the library loads as before, without a prompt",
  ignore: cores < 2,
  fn: async () => {
    const p = await probe({}, ["--deny-env=OPENBLAS_THREAD_TIMEOUT"]);
    assert.equal(p.env, "(unreadable)");
    assert.equal(p.samples, null);
  },
});
