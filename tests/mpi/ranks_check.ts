// ranks_check.ts: MarginHead with distributed: "mpi" (or "nccl"), run by `make test-mpi` in every process of
// `mpirun -np K` (K = 3, 2, 1, in that order). Each rank checks its results against a head of one
// process on the concatenated batch (float64 within 1e-12): the loss (the same on every rank),
// its own rows of dL/dx, W after the steps, with and without class sampling (the one-process
// head on K backends draws the same classes), evaluate and predict over all classes; the
// failure rule (a rank's bad labels: every rank throws the same Error, and the head still
// works); checkpoints: the run of 3 ranks saves one file, the runs of 2 and 1 load it and
// continue as a one-process head loaded from it. Exits non-zero on the first failure.
//
// With DISTRIBUTED=nccl the same checks go through NCCL (on the emulated CUDA backend, its
// stand-in: LSOFTMAX_NCCL=build/emu/libnccl_stand_in.so); NO_NCCL=1 checks instead that without
// NCCL (LSOFTMAX_NCCL naming a missing file) the head is an Error saying what to install, and
// where one rank alone lacks it, the others fail too (no hang) saying which rank. With NCCL and
// K > 1, first one rank's ncclCommInitRank fails (the stand-in's LSM_NCCL_STAND_IN_FAIL_INIT_RANK;
// the other ranks' init waits for it): every rank throws the same Error, and the next head works;
// then one rank's init never completes (LSM_NCCL_STAND_IN_HANG_INIT_RANK): every rank gives up at
// the deadline (LSOFTMAX_NCCL_INIT_TIMEOUT) with the same Error.
//
//   LSOFTMAX_LIB=... BACKEND=cpu|cuda:0 [DISTRIBUTED=nccl] CHECKPOINT=/tmp/dir mpirun -np K deno run ... ranks_check.ts

import assert from "node:assert/strict";
import { MarginHead } from "../../mod.ts";
import { randomArray, randomLabels, Rng } from "../helpers.ts";

const backend = (Deno.env.get("BACKEND") ?? "cpu") as "cpu" | "cuda" | "cuda:0";
const dir = Deno.env.get("CHECKPOINT") ?? "/tmp";
const distributed = (Deno.env.get("DISTRIBUTED") ?? "mpi") as "mpi" | "nccl";
const SPEC = { kind: "arcface", scale: 8, margin: 0.3 } as const;
const C = 23, D = 5;

function close(a: number, b: number, what: string) {
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
}

function allClose(a: ArrayLike<number>, b: ArrayLike<number>, what: string) {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let k = 0; k < a.length; k++) close(a[k], b[k], `${what}[${k}]`);
}

// Every rank's batch of a step (rank r has 3 + r rows), the same on every rank.
function batches(step: number, size: number) {
  const rng = new Rng(100 + step);
  return Array.from({ length: size }, (_, r) => {
    const n = 3 + r;
    return { x: randomArray(rng, n * D), labels: randomLabels(rng, n, C) };
  });
}

function concat(parts: { x: Float64Array; labels: Int32Array }[]) {
  const x = new Float64Array(parts.reduce((a, p) => a + p.x.length, 0));
  const labels = new Int32Array(parts.reduce((a, p) => a + p.labels.length, 0));
  let at = 0, li = 0;
  for (const p of parts) {
    x.set(p.x, at), labels.set(p.labels, li);
    at += p.x.length, li += p.labels.length;
  }
  return { x, labels };
}

const options = (sampleRate: number) => ({
  classes: C,
  features: D,
  ...SPEC,
  dtype: "float64" as const,
  optimizer: { lr: 0.2, momentum: 0.9, weightDecay: 0.01, clipNorm: 5 },
  seed: 7,
  sampleRate,
});

// Steps of the ranks' head against one process's; returns the ranks' head.
function compare(ranks: MarginHead, one: MarginHead, steps: number[], what: string) {
  const k = ranks.worldSize, r = ranks.rank;
  for (const step of steps) {
    const parts = batches(step, k), all = concat(parts);
    const offset = parts.slice(0, r).reduce((a, p) => a + p.labels.length, 0);
    const mine = parts[r], n = mine.labels.length;
    const got = ranks.step(mine.x, mine.labels), want = one.step(all.x, all.labels);
    close(got.loss, want.loss, `${what} step ${step}: loss`);
    allClose(got.gradX, want.gradX.subarray(offset * D, (offset + n) * D), `${what}: dL/dx`);
    assert.deepEqual(got.sampled, want.sampled, `${what}: sampled`);
  }
  allClose(ranks.weights(), one.weights(), `${what}: W`);
}

const head = (sampleRate: number) =>
  new MarginHead({ ...options(sampleRate), backend, distributed });
if (Deno.env.get("NO_NCCL") === "1") {
  assert.throws(
    () => head(1),
    (e: Error) =>
      Deno.env.get("LSOFTMAX_NCCL")?.endsWith(".so") // this rank has NCCL (its stand-in), rank 1 not
        ? /distributed: "nccl": rank 1 of 2 could not open NCCL or its CUDA device/.test(e.message)
        : /distributed: "nccl" needs NCCL's libnccl\.so\.2 .*LSOFTMAX_NCCL/.test(e.message),
  );
  // the library still works: a one-process head
  using one = new MarginHead({ ...options(1), backend });
  assert.ok(Number.isFinite(one.step(batches(0, 1)[0].x, batches(0, 1)[0].labels).loss));
  assert.throws(
    () => new MarginHead({ ...options(1), backend: "cpu", distributed: "nccl" }),
    /backend: expected a CUDA backend with distributed: "nccl", got "cpu"/,
  );
  console.log(`rank ${Deno.env.get("OMPI_COMM_WORLD_RANK")}: without NCCL: ok`);
  Deno.exit(0);
}
// One rank's NCCL init fails (rank 1's, then rank 0's, the rendezvous' root): every rank throws
// the same Error within a minute. The alarm (libc's, through FFI) ends a rank that hangs instead,
// since a hang inside the synchronous constructor would stop any timer of Deno's.
const world = Number(Deno.env.get("OMPI_COMM_WORLD_SIZE") ?? "1");
if (distributed === "nccl" && world > 1) {
  const libc = Deno.dlopen("libc.so.6", { alarm: { parameters: ["u32"], result: "u32" } });
  for (const failing of [1, 0]) {
    Deno.env.set("LSM_NCCL_STAND_IN_FAIL_INIT_RANK", String(failing));
    libc.symbols.alarm(60);
    const start = performance.now();
    try {
      assert.throws(
        () => head(1),
        (e: Error) =>
          e.constructor === Error &&
          e.message ===
            `NCCL: distributed: "nccl": rank ${failing} of ${world}: ncclCommInitRankConfig failed: ` +
              "unhandled cuda error (the stand-in: LSM_NCCL_STAND_IN_FAIL_INIT_RANK named this rank); " +
              "every rank aborted its communicator",
      );
    } finally {
      libc.symbols.alarm(0);
      Deno.env.delete("LSM_NCCL_STAND_IN_FAIL_INIT_RANK");
    }
    assert.ok(performance.now() - start < 30_000, "a failed NCCL init took 30 s or more");
  }
  // The last rank's init never completes (nor, then, anyone's): every rank gives up at the
  // deadline LSOFTMAX_NCCL_INIT_TIMEOUT sets, with the same Error. Which rank it names is the
  // first to pass its deadline: from inside a stuck rendezvous no rank can tell whose peer is gone.
  Deno.env.set("LSM_NCCL_STAND_IN_HANG_INIT_RANK", String(world - 1));
  Deno.env.set("LSOFTMAX_NCCL_INIT_TIMEOUT", "2");
  libc.symbols.alarm(60);
  const start = performance.now();
  try {
    assert.throws(() => head(1), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(
          `^NCCL: distributed: "nccl": rank \\d+ of ${world}: ncclCommInitRankConfig did not ` +
            "complete in [2-9] s; every rank aborted its communicator$",
        ),
      );
      return true;
    });
  } finally {
    libc.symbols.alarm(0);
    Deno.env.delete("LSM_NCCL_STAND_IN_HANG_INIT_RANK");
  }
  const waited = performance.now() - start;
  assert.ok(
    waited >= 2000 && waited < 30_000,
    `a stuck NCCL init gave up after ${waited} ms, expected 2 s`,
  );
  // A deadline that is not whole seconds is refused by name on every rank, before any init.
  Deno.env.set("LSOFTMAX_NCCL_INIT_TIMEOUT", "soon");
  try {
    assert.throws(
      () => head(1),
      /LSOFTMAX_NCCL_INIT_TIMEOUT: expected whole seconds in \[1, 86400\], got "soon"/,
    );
  } finally {
    Deno.env.delete("LSOFTMAX_NCCL_INIT_TIMEOUT");
  }
  libc.close();
}
using probe = head(1); // after the failed inits: NCCL's init works
const K = probe.worldSize, R = probe.rank;
assert.equal(probe.worldSize, Number(Deno.env.get("OMPI_COMM_WORLD_SIZE")));
assert.equal(probe.rank, Number(Deno.env.get("OMPI_COMM_WORLD_RANK")));

// Without and with sampling: the one-process head on K backends draws as the ranks do.
for (const rate of [1, 0.3]) {
  using ranks = head(rate);
  using one = new MarginHead({ ...options(rate), backend: Array(K).fill(backend) });
  compare(ranks, one, [0, 1, 2], `K=${K} r=${rate}`);
  // evaluate and predict over all classes
  const parts = batches(9, K), all = concat(parts), mine = parts[R];
  const offset = parts.slice(0, R).reduce((a, p) => a + p.labels.length, 0);
  const e = ranks.evaluate(mine.x, mine.labels), f = one.evaluate(all.x, all.labels);
  close(e.loss, f.loss, "evaluate: loss");
  assert.equal(e.accuracy, f.accuracy);
  const p = ranks.predict(mine.x, { k: 4 }), q = one.predict(all.x, { k: 4 });
  const n = mine.labels.length;
  assert.deepEqual(p.indices, q.indices.slice(offset * 4, (offset + n) * 4));
  allClose(p.scores, q.scores.subarray(offset * 4, (offset + n) * 4), "predict: scores");
}

// The cross-entropy options across ranks: label smoothing, class weights, an ignored label.
{
  const ce = {
    labelSmoothing: 0.1,
    classWeights: Float64Array.from({ length: C }, (_, j) => 0.5 + (j % 4) / 4),
    ignoreIndex: -100,
  };
  using ranks = new MarginHead({ ...options(1), ...ce, backend, distributed });
  using one = new MarginHead({ ...options(1), ...ce, backend: Array(K).fill(backend) });
  for (const step of [13, 14]) {
    const parts = batches(step, K);
    parts.forEach((p) => (p.labels[0] = -100)); // every rank's first row left out
    const all = concat(parts), mine = parts[R];
    const offset = parts.slice(0, R).reduce((a, p) => a + p.labels.length, 0);
    const got = ranks.step(mine.x, mine.labels), want = one.step(all.x, all.labels);
    close(got.loss, want.loss, `cross-entropy options ${step}: loss`);
    allClose(
      got.gradX,
      want.gradX.subarray(offset * D, (offset + mine.labels.length) * D),
      "dL/dx",
    );
  }
  allClose(ranks.weights(), one.weights(), "cross-entropy options: W");
}

// Micro-batches: each rank's two micro-batches, then the applying step, as one process's.
{
  using ranks = head(0.5);
  using one = new MarginHead({ ...options(0.5), backend: Array(K).fill(backend) });
  for (const [step, accumulate] of [[10, true], [11, true], [12, false]] as const) {
    const parts = batches(step, K), all = concat(parts), mine = parts[R];
    const offset = parts.slice(0, R).reduce((a, p) => a + p.labels.length, 0);
    const got = ranks.step(mine.x, mine.labels, { accumulate });
    const want = one.step(all.x, all.labels, { accumulate });
    close(got.loss, want.loss, `accumulate ${step}: loss`);
    allClose(
      got.gradX,
      want.gradX.subarray(offset * D, (offset + mine.labels.length) * D),
      "dL/dx",
    );
    assert.deepEqual(got.sampled, want.sampled);
  }
  assert.equal(ranks.iteration, 1);
  allClose(ranks.weights(), one.weights(), "accumulate: W");
}

// The failure rule: the last rank's bad label, the same Error on every rank, and no hang.
{
  using ranks = head(0.5);
  const parts = batches(3, K), mine = parts[R];
  const bad = R === K - 1
    ? Int32Array.from(mine.labels, (y, i) => i === 1 ? C + 4 : y)
    : mine.labels;
  const message = new RegExp(
    `^rank ${K - 1} of ${K}: labels\\[1\\]: expected an integer in \\[0, ${C}\\), got ${C + 4}$`,
  );
  assert.throws(
    () => ranks.step(mine.x, bad),
    (e: Error) => e instanceof RangeError && message.test(e.message),
  );
  assert.equal(ranks.iteration, 0);
  const wrong = R === 0 ? new Float64Array(mine.x.length + 1) : mine.x;
  assert.throws(() => ranks.evaluate(wrong, mine.labels), /rank 0 of \d+: x: expected/);
  ranks.step(mine.x, mine.labels); // the head works after
  assert.equal(ranks.iteration, 1);
  // stepAsync: the same step (its collectives on this thread), its inputs copied at the call
  const x = mine.x.slice(), pending = ranks.stepAsync(x, mine.labels);
  x.fill(NaN);
  assert.ok(Number.isFinite((await pending).loss));
  assert.equal(ranks.iteration, 2);
}

// A non-finite step: every rank skips it together, or every rank throws (nonFinite: "throw").
for (const nonFinite of ["skip", "throw"] as const) {
  using ranks = new MarginHead({ ...options(1), backend, distributed, nonFinite });
  const mine = batches(8, K)[R], w = ranks.weights();
  const x = R === 0 ? mine.x.map((v, i) => i === 0 ? NaN : v) : mine.x;
  if (nonFinite === "skip") assert.equal(ranks.step(x, mine.labels).skipped, true);
  else assert.throws(() => ranks.step(x, mine.labels), /nonFinite: "throw"/);
  assert.deepEqual(ranks.weights(), w);
}

// Checkpoints across world sizes: 3 ranks save one file; 2 and 1 load it and continue.
const path = `${dir}/ranks_check.safetensors`;
if (K === 3) {
  using ranks = head(0.4);
  using one = new MarginHead({ ...options(0.4), backend: Array(K).fill(backend) });
  compare(ranks, one, [4, 5], "before saving");
  await ranks.save(path);
  using back = await MarginHead.load(path);
  assert.deepEqual(back.weights(), one.weights()); // the file holds every rank's shard
  assert.deepEqual(back.state().sampler, one.state().sampler);
  // loaded into as many ranks: the steps continue bit for bit
  using again = await MarginHead.load(path, { distributed });
  for (const step of [6, 7]) {
    const mine: { x: Float64Array; labels: Int32Array } = batches(step, K)[R];
    const a: { loss: number; gradX: Float64Array; sampled?: Int32Array } = ranks.step(
      mine.x,
      mine.labels,
    );
    const b = again.step(mine.x, mine.labels);
    assert.equal(b.loss, a.loss);
    assert.deepEqual(b.gradX, a.gradX);
    assert.deepEqual(b.sampled, a.sampled);
  }
  assert.deepEqual(again.weights(), ranks.weights());
}
if (K < 3 && Deno.env.get("NO_CHECKPOINT") !== "1") { // a run without the run of 3 before it
  using ranks = await MarginHead.load(path, { distributed });
  using one = await MarginHead.load(path, { backend: Array(K).fill(backend) });
  const saved = await MarginHead.load(path);
  assert.deepEqual(ranks.weights(), saved.weights()); // loaded bit for bit
  assert.deepEqual(ranks.state(), saved.state());
  saved.close();
  compare(ranks, one, [6, 7], `loaded into ${K}`);
}
console.log(`rank ${R} of ${K} (${backend}, ${distributed}): ok`);
