// fused_step_test.ts: lsm_loss with an optimizer step (args.update) against the same loss
// followed by lsm_sgd_update or lsm_adam_update, to the last bit (W, the optimizer's state,
// dL/dx, the row losses and the skip flag), for every optimizer option, both dtypes, CPU and
// (where usable, the emulator too) CUDA; on the CPU, that the step went block by block where it
// can (most of grad_w is left as it was) and after the loss where it must (grad_w holds dL/dW):
// another path, label smoothing, several class blocks, a NaN under "skip", a bound that does not
// hold; a MarginHead's step (fused) against the same step through clipping's path (unfused) with
// a norm it never reaches; and the new arguments' errors by name.

import assert from "node:assert/strict";
import { type FloatArray, newFloatArray } from "../ffi/arrays.ts";
import { OPS } from "../ffi/ops.ts";
import {
  encodeAdam,
  encodeLossUpdate,
  encodeSgd,
  LSM_ADAM,
  LSM_LOSS_UPDATE,
  LSM_SGD,
  type MarginStruct,
} from "../ffi/structs.ts";
import { SgdNonFinite } from "../ffi/symbols.ts";
import { MarginHead } from "../mod.ts";
import { openContext } from "../src/backends.ts";
import { address } from "../src/head/calls.ts";
import { cudaAvailable, type DType, type TestBackend } from "./check.ts";
import { randomArray, Rng } from "./helpers.ts";

const SENTINEL = 12345;

const LSOFTMAX: MarginStruct = {
  kind: 0,
  m: 4,
  lambda: 0.5,
  scale: 0,
  m1: 0,
  m2: 0,
  m3: 0,
  flags: 0,
  ...{ h: 0, tAlpha: 0, batchMean: 0, batchStd: 0, t: 0 },
  ...{ lowerNorm: 0, upperNorm: 0, lambdaG: 0, upperMargin: 0 },
};
const PLAIN: MarginStruct = { ...LSOFTMAX, m: 1, lambda: 0 };
const COSFACE: MarginStruct = { ...LSOFTMAX, kind: 2, m: 0, lambda: 0, scale: 16, m3: 0.35 };

/** The optimizers of the comparison: every option of each (mode, momentum, Nesterov, amsgrad). */
const OPTIMIZERS = [
  { sgd: { lr: 0.05, momentum: 0, weightDecay: 0, nesterov: 0, first: 0 } },
  { sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4, nesterov: 0, first: 1 } },
  { sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4, nesterov: 0, first: 0 } },
  { sgd: { lr: 0.05, momentum: 0.8, weightDecay: 0, nesterov: 1, first: 0 } },
  ...[[0, 0, 0], [0, 0.01, 0], [1, 0.01, 0], [1, 0.01, 1], [0, 0.02, 1]].map((
    [decoupled, wd, ams],
  ) => ({
    adam: {
      lr: 1e-2,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: wd,
      gradScale: 1,
      step: 3,
      decoupled,
      amsgrad: ams,
    },
  })),
] as const;
type Optimizer = typeof OPTIMIZERS[number];

interface Case {
  n: number;
  d: number;
  c: number;
  margin: MarginStruct;
  optimizer: Optimizer;
  nonfinite: number;
  /** Label smoothing, a class shard (offset into more classes), the workspace's bytes. */
  smoothing?: number;
  shard?: boolean;
  workspace?: number;
  /** x scaled (large values: the bound), a NaN put into x. */
  xScale?: number;
  nan?: boolean;
  wScale?: number;
}

interface Outcome {
  w: Uint8Array;
  state: Uint8Array[];
  gx: Uint8Array;
  rows: Uint8Array;
  flag: number;
  /** Whether grad_w kept sentinel values (the CPU's block by block step), else it holds dL/dW. */
  blockwise: boolean;
}

const bytesOf = (a: FloatArray | Float64Array) => new Uint8Array(a.buffer.slice(0));

// One case twice on a context: the loss, then the update (unfused = true), or the loss with the
// step; the same inputs and state either way.
function runCase(backend: TestBackend, dtype: DType, k: Case, unfused: boolean): Outcome {
  const rng = new Rng(7);
  const { n, d, c } = k;
  const total = k.shard ? c + 13 : c, offset = k.shard ? 5 : 0;
  const fill = (count: number, lo: number, hi: number, scale = 1) => {
    const a = newFloatArray(dtype, count);
    randomArray(rng, count, lo, hi).forEach((v, i) => a[i] = v * scale);
    return a;
  };
  const x = fill(n * d, -1, 1, k.xScale ?? 1), w = fill(c * d, -1, 1, k.wScale ?? 1);
  if (k.nan) x[3 * d + 1] = NaN;
  // labels: spread over the shard's classes and beyond them (the rows it does not own)
  const labels = Int32Array.from({ length: n }, (_, i) => (i * 1543 + 3) % total);
  const states = [fill(c * d, -0.01, 0.01), fill(c * d, 0, 1e-4), fill(c * d, 1e-4, 2e-4)];
  const ctx = openContext(backend);
  try {
    if (k.workspace !== undefined) ctx.setWorkspace(k.workspace);
    const e = dtype === "float32" ? 4 : 8;
    const put = (a: ArrayBufferView) => {
      const p = ctx.allocate(a.byteLength);
      ctx.upload(p, a);
      return p;
    };
    const [px, pw, pl] = [put(x), put(w), put(labels)];
    const ps = states.map(put);
    const rows = ctx.allocate(n * 8), gx = ctx.allocate(n * d * e);
    const gw = put(newFloatArray(dtype, c * d).fill(SENTINEL));
    const o = k.optimizer;
    const isAdam = "adam" in o;
    const momentum = !isAdam && o.sgd.momentum !== 0;
    const flag = new Int32Array([7]);
    const stateArgs = isAdam
      ? [ps[0], ps[1], o.adam.amsgrad ? ps[2] : null]
      : [momentum ? ps[0] : null];
    const args = {
      classOffset: offset,
      totalClasses: total,
      gradScale: 1 / n,
      labelSmoothing: k.smoothing ?? 0,
    };
    const lossCall = { dtype, n, d, c, margin: k.margin, args };
    const nonfinite = k.nonfinite;
    if (unfused) {
      ctx.call(OPS.loss, lossCall, [px, pw, pl, rows, gx, gw]);
      const count = c * d;
      // the step's checks, as args.update makes them: the row losses, dL/dx, then dL/dW
      const check = (values: Deno.PointerValue, dt: DType, size: number) => {
        const f = new Int32Array(1), unused = ctx.allocate(size * 8);
        const sgd = { lr: 0, momentum: 0, weightDecay: 0, nesterov: 0, first: 0, nonfinite: 2 };
        ctx.call(OPS.sgd, { dtype: dt, n: 0, d: 0, c: 0, count: size, sgd }, [
          unused,
          values,
          null,
          f,
        ]);
        return f[0];
      };
      flag[0] = 0;
      if (nonfinite === SgdNonFinite.SKIP) {
        flag[0] = check(rows, "float64", n) || check(gx, dtype, n * d);
      }
      if (flag[0] === 0) {
        if (isAdam) {
          const call = { dtype, n: 0, d: 0, c: 0, count, adam: { ...o.adam, nonfinite } };
          ctx.call(OPS.adam, call, [pw, gw, ...stateArgs, flag]);
        } else {
          const call = { dtype, n: 0, d: 0, c: 0, count, sgd: { ...o.sgd, nonfinite } };
          ctx.call(OPS.sgd, call, [pw, gw, ...stateArgs, flag]);
        }
      }
    } else {
      const settings = isAdam
        ? encodeAdam({ ...o.adam, nonfinite }, new Uint8Array(LSM_ADAM.bytes))
        : encodeSgd({ ...o.sgd, nonfinite }, new Uint8Array(LSM_SGD.bytes));
      const update = encodeLossUpdate(
        isAdam
          ? {
            adam: address(settings),
            expAvg: address(stateArgs[0]),
            expAvgSq: address(stateArgs[1]),
            maxExpAvgSq: address(stateArgs[2]),
            nonfinite: address(flag),
          }
          : { sgd: address(settings), velocity: address(stateArgs[0]), nonfinite: address(flag) },
        new Uint8Array(LSM_LOSS_UPDATE.bytes),
      );
      const call = { ...lossCall, args: { ...args, update: address(update) } };
      ctx.call(OPS.loss, call, [px, pw, pl, rows, gx, gw]);
      assert.ok(settings.length > 0 && update.length > 0); // both alive through the call
    }
    const read = (p: Deno.PointerValue, count: number, dt: DType = dtype) => {
      const out = newFloatArray(dt, count);
      ctx.download(out, p);
      return out;
    };
    const gwOut = read(gw, c * d);
    return {
      w: bytesOf(read(pw, c * d)),
      state: ps.map((p) => bytesOf(read(p, c * d))),
      gx: bytesOf(read(gx, n * d)),
      rows: bytesOf(read(rows, n, "float64")),
      flag: nonfinite === SgdNonFinite.APPLY ? 0 : flag[0],
      blockwise: gwOut.filter((v) => v === SENTINEL).length > (c * d) / 2,
    };
  } finally {
    ctx.close();
  }
}

function compare(backend: TestBackend, dtype: DType, k: Case, blockwise: boolean, what: string) {
  const a = runCase(backend, dtype, k, true), b = runCase(backend, dtype, k, false);
  const name = `${backend} ${dtype} ${what} ${
    JSON.stringify(k.optimizer)
  } nonfinite ${k.nonfinite}`;
  assert.deepEqual(b.w, a.w, `${name}: w`);
  for (let s = 0; s < 3; s++) assert.deepEqual(b.state[s], a.state[s], `${name}: state ${s}`);
  assert.deepEqual(b.gx, a.gx, `${name}: grad_x`);
  assert.deepEqual(b.rows, a.rows, `${name}: row losses`);
  assert.equal(b.flag, a.flag, `${name}: flag`);
  assert.equal(b.blockwise, blockwise, `${name}: the step block by block`);
  return a.flag;
}

const BACKENDS = ["cpu", "cuda"] as const;
const DTYPES = ["float32", "float64"] as const;

for (const backend of BACKENDS) {
  const cpu = backend === "cpu";
  Deno.test({
    name:
      `${backend}: fused step: every optimizer option equals the loss then the update, to the bit`,
    ignore: !cpu && !cudaAvailable,
    fn() {
      for (const dtype of DTYPES) {
        for (const optimizer of OPTIMIZERS) {
          for (const nonfinite of [SgdNonFinite.APPLY, SgdNonFinite.SKIP]) {
            const base = { n: 13, d: 9, c: 301, optimizer, nonfinite };
            compare(backend, dtype, { ...base, margin: LSOFTMAX }, cpu, "lsoftmax");
            compare(backend, dtype, { ...base, margin: PLAIN, shard: true }, cpu, "plain, shard");
          }
        }
        // dL/dW in several blocks of the step (4 MB each), targets in each: the CPU's alone
        for (const optimizer of cpu ? [OPTIMIZERS[2], OPTIMIZERS[7]] : []) {
          const k = { n: 13, d: 64, c: 20000, optimizer, nonfinite: SgdNonFinite.SKIP };
          compare(backend, dtype, { ...k, margin: LSOFTMAX }, cpu, "several blocks");
        }
      }
    },
  });

  Deno.test({
    name: `${backend}: fused step: the paths it cannot go with run the update after the loss`,
    ignore: !cpu && !cudaAvailable,
    fn() {
      const optimizer = OPTIMIZERS[2], nonfinite = SgdNonFinite.SKIP;
      for (const dtype of DTYPES) {
        const base = { n: 13, d: 9, c: 301, optimizer, nonfinite, margin: LSOFTMAX };
        compare(backend, dtype, { ...base, margin: COSFACE }, false, "cosface");
        compare(backend, dtype, { ...base, smoothing: 0.1 }, false, "label smoothing");
        // several class blocks: 13 rows x 100 classes a block
        compare(backend, dtype, { ...base, workspace: 13 * 100 * 8 }, false, "class blocks");
        // a NaN in x: skipped both ways, W and the state as they were
        assert.equal(compare(backend, dtype, { ...base, nan: true }, false, "NaN"), 1);
        const apply = { ...base, nan: true, nonfinite: SgdNonFinite.APPLY };
        compare(backend, dtype, apply, cpu, "NaN, apply");
      }
      // float32 x near its largest values, W tiny: finite losses and dL/dW, but the a-priori
      // bound does not hold, so the update comes after the loss (and is applied)
      const big = { n: 13, d: 9, c: 301, optimizer, nonfinite, margin: PLAIN };
      const flag = compare(
        backend,
        "float32",
        { ...big, xScale: 4e37, wScale: 1e-37 },
        false,
        "bound",
      );
      assert.equal(flag, 0);
      compare(backend, "float32", { ...big, xScale: 1e30, wScale: 1e-30 }, cpu, "within the bound");
    },
  });
}

// A head's step (fused on one shard without clipping or accumulation) against the same step
// through clipping's path with a norm no gradient reaches (the loss, then the update).
Deno.test("cpu: fused step: MarginHead steps equal the unfused path's, SGD and AdamW", () => {
  const rng = new Rng(3);
  const [n, d, c] = [24, 16, 200];
  const weights = Float32Array.from(randomArray(rng, c * d));
  const x = Float32Array.from(randomArray(rng, n * d));
  const labels = Int32Array.from({ length: n }, (_, i) => (i * 11) % c);
  for (
    const optimizer of [
      { lr: 0.1, momentum: 0.9, weightDecay: 1e-3 },
      { type: "adamw" as const, lr: 1e-2, amsgrad: true },
    ]
  ) {
    const make = (clipNorm?: number) =>
      new MarginHead({
        classes: c,
        features: d,
        margin: 4,
        lambda: 0.5,
        weights,
        optimizer: { ...optimizer, ...(clipNorm === undefined ? {} : { clipNorm }) },
      });
    const fused = make(), unfused = make(1e300);
    try {
      for (let t = 0; t < 3; t++) {
        assert.deepEqual(fused.step(x, labels), unfused.step(x, labels), `step ${t}`);
      }
      assert.deepEqual(fused.weights(), unfused.weights());
      const { options: _a, ...stateA } = fused.state(),
        { options: _b, ...stateB } = unfused.state();
      assert.deepEqual(stateA, stateB); // W, the optimizer's state and step (options differ)
    } finally {
      fused.close();
      unfused.close();
    }
  }
});

Deno.test("fused step: its arguments are checked and named", () => {
  const ctx = openContext("cpu");
  try {
    const [n, d, c] = [2, 3, 4];
    const buf = (bytes: number) => ctx.allocate(bytes);
    const [x, w, labels, rows, gx, gw, v] = [
      buf(n * d * 4),
      buf(c * d * 4),
      buf(n * 4),
      buf(n * 8),
      buf(n * d * 4),
      buf(c * d * 4),
      buf(c * d * 4),
    ];
    ctx.upload(labels, new Int32Array([0, 1]));
    const flag = new Int32Array(1);
    const sgd = (nonfinite: number) =>
      encodeSgd(
        { lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: 0, first: 0, nonfinite },
        new Uint8Array(LSM_SGD.bytes),
      );
    const s1 = sgd(1), s2 = sgd(2);
    const upd = (fields: Record<string, number>) =>
      encodeLossUpdate(fields, new Uint8Array(LSM_LOSS_UPDATE.bytes));
    const good = upd({ sgd: address(s1), velocity: address(v), nonfinite: address(flag) });
    const cases: [Uint8Array, RegExp, Deno.PointerValue][] = [
      [
        upd({ velocity: address(v), nonfinite: address(flag) }),
        /args\.update.*exactly one of sgd and adam.*neither/,
        gw,
      ],
      [
        upd({ sgd: address(s2), velocity: address(v), nonfinite: address(flag) }),
        /sgd\.nonfinite.*LSM_SGD_CHECK/,
        gw,
      ],
      [upd({ sgd: address(s1), nonfinite: address(flag) }), /velocity/, gw],
      [upd({ sgd: address(s1), velocity: address(v) }), /nonfinite: expected a flag/, gw],
      [good, /grad_w: expected a pointer/, null],
    ];
    const margin = LSOFTMAX;
    for (const [update, want, outW] of cases) {
      const args = { classOffset: 0, totalClasses: c, gradScale: 0.5, update: address(update) };
      assert.throws(
        () =>
          ctx.call(OPS.loss, { dtype: "float32", n, d, c, margin, args }, [
            x,
            w,
            labels,
            rows,
            gx,
            outW,
          ]),
        want,
      );
    }
    const args = { classOffset: 0, totalClasses: c, gradScale: 0.5, update: address(good) };
    const call = { dtype: "float32" as const, n, d, c, margin, args };
    const partials = [x, w, labels, buf(n * 8), buf(n * 8), buf(n * 8)];
    assert.throws(() => ctx.call(OPS.lossPartials, call, partials), /args\.update: expected NULL/);
    // and the context stays usable
    ctx.call(OPS.loss, call, [x, w, labels, rows, gx, gw]);
    assert.ok(s1.length + s2.length > 0);
  } finally {
    ctx.close();
  }
});
