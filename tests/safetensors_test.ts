// safetensors_test.ts: checkpoints of MarginHead in the safetensors format. A trained head's state
// (float32 and float64, with and without momentum, class shards) to a file and back bit for bit,
// training on from the loaded state as the original does; every refusal of the reader on crafted
// files (each by name, with the expected and the actual value); the checksum; and the file read
// by an independent Python reader (the standard library only), and by safetensors.torch where
// it is installed.

import assert from "node:assert/strict";
import { MarginHead } from "../mod.ts";
import {
  CHECKSUM_KEY,
  readSafetensors,
  SafetensorsError,
  type TensorData,
  writeSafetensors,
} from "../src/safetensors.ts";
import { loadHeadState, saveHeadState } from "../src/head/checkpoint.ts";
import type { HeadState } from "../src/head/options.ts";
import { randomArray, randomLabels, Rng, succeeds, toF32 } from "./helpers.ts";

const FIXTURE = new URL("./fixtures/read_safetensors.py", import.meta.url).pathname;

const hasPython = await succeeds("python3", ["-c", "import hashlib, json, struct"]);
const hasTorch = hasPython && await succeeds("python3", ["-c", "import safetensors, torch"]);

const te = new TextEncoder();
const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

async function sha256(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes.slice());
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

// The same bits, and the same typed array type.
function assertSameBits(a: unknown, b: unknown, what: string): void {
  assert.equal(Object.prototype.toString.call(a), Object.prototype.toString.call(b), what);
  assert.deepEqual(bytesOf(a as ArrayBufferView), bytesOf(b as ArrayBufferView), what);
}

// A state equal to another field by field: typed arrays bit for bit, numbers by Object.is.
function assertSameState(a: unknown, b: unknown, what = "state"): void {
  if (ArrayBuffer.isView(a)) return assertSameBits(a, b, what);
  if (typeof a !== "object" || a === null) return assert.ok(Object.is(a, b), `${what}: ${a} ${b}`);
  assert.equal(typeof b, "object", what);
  assert.deepEqual(Object.keys(a).sort(), Object.keys(b as object).sort(), what);
  for (const [k, v] of Object.entries(a)) {
    assertSameState(v, (b as Record<string, unknown>)[k], `${what}.${k}`);
  }
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "lsm_safetensors_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const C = 11, D = 4, N = 5;
type Dtype = "float32" | "float64";

function batches(rng: Rng, dtype: Dtype, count: number) {
  return Array.from({ length: count }, () => ({
    x: dtype === "float32" ? toF32(randomArray(rng, N * D)) : randomArray(rng, N * D),
    labels: randomLabels(rng, N, C),
  }));
}

function newHead(dtype: Dtype, momentum: boolean, backend: "cpu" | ["cpu", "cpu"]) {
  return new MarginHead({
    classes: C,
    features: D,
    dtype,
    backend,
    margin: 4,
    base: 100,
    gamma: 0.1,
    power: 1,
    lambdaMin: 0,
    seed: 7,
    optimizer: momentum
      ? { lr: 0.2, momentum: 0.9, nesterov: true, weightDecay: 1e-3 }
      : { lr: 0.3, weightDecay: 0.01 },
  });
}

const CASES = [
  { dtype: "float32", momentum: true, backend: "cpu" },
  { dtype: "float32", momentum: false, backend: "cpu" },
  { dtype: "float64", momentum: true, backend: "cpu" },
  { dtype: "float64", momentum: false, backend: "cpu" },
  { dtype: "float32", momentum: true, backend: ["cpu", "cpu"] },
  { dtype: "float64", momentum: true, backend: ["cpu", "cpu"] },
] as const;

// The file of a head of `dtype` with momentum, trained 3 steps, and its state.
async function savedHead(dir: string, dtype: Dtype = "float32") {
  using head = newHead(dtype, true, "cpu");
  for (const b of batches(new Rng(5), dtype, 3)) head.step(b.x, b.labels);
  const state = head.state(), path = `${dir}/head.safetensors`;
  await saveHeadState(path, state);
  return { path, state, bytes: await Deno.readFile(path) };
}

// A file from a header (an object or its text) and data, with the header's length or another.
function craft(header: unknown, data: Uint8Array = new Uint8Array(), length?: bigint): Uint8Array {
  const text = te.encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

// The header length, header and data section of a file's bytes.
function split(bytes: Uint8Array) {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  return { n, header, data: bytes.subarray(8 + n) };
}

async function refuses(dir: string, bytes: Uint8Array, pattern: RegExp, head = false) {
  const path = `${dir}/crafted.safetensors`;
  await Deno.writeFile(path, bytes);
  await assert.rejects(head ? loadHeadState(path) : readSafetensors(path), (e: Error) => {
    assert.ok(e instanceof SafetensorsError, `a SafetensorsError, got ${e}`);
    assert.match(e.message, pattern);
    assert.ok(e.message.startsWith(path + ": "), `the message names the file: ${e.message}`);
    return true;
  });
}

const one = (dtype: unknown, shape: unknown, offsets: unknown) => ({
  a: { dtype, shape, data_offsets: offsets },
});

for (const c of CASES) {
  const label = `${c.dtype}, ${c.momentum ? "momentum" : "no momentum"}, ${
    Array.isArray(c.backend) ? "2 shards" : "1 context"
  }`;
  Deno.test(`safetensors: a head's state round-trips bit for bit and trains on (${label})`, () =>
    withDir(async (dir) => {
      const rng = new Rng(2026);
      const [first, later] = [batches(rng, c.dtype, 3), batches(rng, c.dtype, 3)];
      using a = newHead(c.dtype, c.momentum, c.backend as "cpu");
      const path = `${dir}/head.safetensors`;
      // Before the first step (no momentum buffer yet) and after three.
      await saveHeadState(path, a.state());
      assertSameState(await loadHeadState(path), a.state());
      for (const b of first) a.step(b.x, b.labels);
      const state = a.state();
      assert.equal(state.velocity !== null, c.momentum);
      await saveHeadState(path, state);
      const loaded = await loadHeadState(path);
      assertSameState(loaded, state);
      using b = MarginHead.fromState(await loadHeadState(path));
      assert.equal(b.iteration, 3);
      for (const batch of later) {
        const ra = a.step(batch.x, batch.labels), rb = b.step(batch.x, batch.labels);
        assert.ok(Object.is(ra.loss, rb.loss), `loss ${ra.loss} ${rb.loss}`);
        assert.equal(ra.lambda, rb.lambda);
        assertSameBits(ra.gradX, rb.gradX, "gradX");
      }
      assertSameState(b.state(), a.state());
      // What torch sees: weight [C, D] and momentum_buffer in the head's dtype, the rest as text.
      const file = await readSafetensors(path);
      const dt = c.dtype === "float32" ? "F32" : "F64";
      assert.deepEqual(
        [...file.tensors].map(([name, t]) => [name, t.dtype, t.shape]),
        [["weight", dt, [C, D]], ...(c.momentum ? [["momentum_buffer", dt, [C, D]]] : [])],
      );
      assert.equal(file.metadata.iteration, "3");
      assert.deepEqual(JSON.parse(file.metadata.options), state.options);
      assert.ok(file.checksummed);
    }));
}

Deno.test("safetensors: a checkpoint of class shards loads onto one context and back", () =>
  withDir(async (dir) => {
    using sharded = newHead("float32", true, ["cpu", "cpu"]);
    for (const b of batches(new Rng(77), "float32", 2)) sharded.step(b.x, b.labels);
    const path = `${dir}/sharded.safetensors`;
    await saveHeadState(path, sharded.state());
    const state = await loadHeadState(path);
    using single = MarginHead.fromState({
      ...state,
      options: { ...state.options, backend: "cpu" },
    });
    assert.equal(single.iteration, 2);
    assertSameBits(single.weights(), sharded.weights(), "weights");
    assertSameBits(single.state().velocity, sharded.state().velocity, "velocity");
  }));

Deno.test("safetensors: every other state field flows through, numbers exact", () =>
  withDir(async (dir) => {
    // A state with fields the head may gain: each must come back as it went, bit for bit.
    const state = {
      options: {
        classes: 2,
        features: 3,
        dtype: "float64",
        lr: 0.1 + 0.2,
        tiny: 5e-324,
        huge: 1.7976931348623157e308,
        negativeZero: -0,
        third: 1 / 3,
        nested: { list: [1, 2.5, "x", null, true, [-0, 1e21]], text: 'quote " \\ \n é 😀' },
        classWeights: new Float32Array([0.5, 2]),
        backend: ["cpu", "cpu"],
      },
      iteration: Number.MAX_SAFE_INTEGER,
      format: 1,
      skippedSteps: 0,
      nonFinite: "skip",
      weights: Float64Array.from({ length: 6 }, (_, i) => Math.PI * (i - 2.5)),
      velocity: null,
      expAvg: Float64Array.from({ length: 6 }, (_, i) => 1 / (i + 1)),
      counts: new Int32Array([-1, 2, 3]),
      steps: new BigInt64Array([2n ** 62n, -5n]),
    };
    const path = `${dir}/fields.safetensors`;
    await saveHeadState(path, state as unknown as HeadState);
    const loaded = await loadHeadState(path);
    assertSameState(loaded, state);
    const { tensors, metadata } = await readSafetensors(path);
    assert.deepEqual([...tensors.keys()].sort(), [
      "counts",
      "exp_avg",
      "options.classWeights",
      "steps",
      "weight",
    ]);
    assert.deepEqual(tensors.get("exp_avg")!.shape, [2, 3]); // Adam's buffer: W's shape
    assert.deepEqual(tensors.get("counts")!.shape, [3]);
    assert.equal(metadata.format, "1");
    assert.equal(metadata.nonFinite, '"skip"');
    assert.match(metadata.options, /"negativeZero":-0,/);
    assert.match(metadata.options, /"classWeights":\{"__tensor__":"options.classWeights"\}/);
    assert.equal(metadata.velocity, undefined); // a null tensor field: no tensor, no text
  }));

Deno.test("safetensors: saving refuses what would not read back, naming the field", async () => {
  const base = {
    options: { classes: 2, features: 2, dtype: "float32" },
    iteration: 0,
    weights: new Float32Array(4),
    velocity: null,
  };
  const cases: [Record<string, unknown>, RegExp][] = [
    [
      { options: { ...base.options, lr: Infinity } },
      /^state\.options\.lr: expected a finite number/,
    ],
    [
      { options: { ...base.options, list: [1, undefined] } },
      /^state\.options\.list\[1\]: expected a val/,
    ],
    [
      { options: { ...base.options, when: new Date(0) } },
      /^state\.options\.when: expected null, .*Date/,
    ],
    [
      { options: { ...base.options, x: { __tensor__: "weight" } } },
      /^state\.options\.x: expected no key "__tensor__"/,
    ],
    [{ weights: new Float64Array(4) }, /weight.*dtype: expected F32 \(options.dtype "float32"\)/],
    [{ weights: new Float32Array(5) }, /tensor "weight": shape: expected \[2,2\].*got \[5\]/],
    [{ weights: null }, /^state\.weights: expected a Float32Array or Float64Array, got null/],
    [
      { weights: { [Symbol.toStringTag]: "Float32Array", length: 4 } }, // not one, as the engine sees
      /^state\.weights: expected a Float32Array or Float64Array, got Object/,
    ],
    [{ velocity: new Float32Array(3) }, /"momentum_buffer": shape: expected \[2,2\]/],
    [{ weight: new Float32Array(4) }, /^state\.weight: expected a tensor field's name/],
    [{ options: undefined }, /^state: options: expected the head's options/],
    [{ "lsoftmax.x": 1 }, /^state\.lsoftmax\.x: expected a name not starting "lsoftmax\."/],
  ];
  await withDir(async (dir) => {
    const path = `${dir}/refused.safetensors`;
    for (const [change, pattern] of cases) {
      await assert.rejects(
        saveHeadState(path, { ...base, ...change } as unknown as HeadState),
        (e: Error) => (assert.match(e.message, pattern), true),
      );
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []); // nothing written
  });
});

Deno.test("safetensors: the file is the format's: header padded to 8, data back to back", () =>
  withDir(async (dir) => {
    const { bytes, state } = await savedHead(dir);
    const { n, header, data } = split(bytes);
    assert.equal(n % 8, 0);
    assert.equal(new TextDecoder().decode(bytes.subarray(8, 8 + n)).trimEnd().length > 0, true);
    assert.deepEqual(header.weight, {
      dtype: "F32",
      shape: [C, D],
      data_offsets: [0, C * D * 4],
    });
    assert.deepEqual(header.momentum_buffer.data_offsets, [C * D * 4, 2 * C * D * 4]);
    assert.equal(data.length, 2 * C * D * 4);
    assert.deepEqual(data.subarray(0, C * D * 4), bytesOf(state.weights)); // little-endian
    assert.match(header.__metadata__[CHECKSUM_KEY], /^[0-9a-f]{64}$/);
  }));

Deno.test("safetensors: a failed save leaves the earlier file as it was, and no temporary", () =>
  withDir(async (dir) => {
    const { path, bytes } = await savedHead(dir);
    // A directory where the file goes: writing succeeds, the rename onto it fails.
    const blocked = `${dir}/blocked`;
    await Deno.mkdir(blocked);
    await Deno.writeFile(`${blocked}/keep`, new Uint8Array(1));
    const state = await loadHeadState(path);
    await assert.rejects(saveHeadState(blocked, state));
    assert.ok((await Deno.stat(blocked)).isDirectory);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "blocked",
      "head.safetensors",
    ]);
    assert.deepEqual(await Deno.readFile(path), bytes);
  }));

Deno.test("safetensors: a file shorter than 8 bytes is refused", () =>
  withDir(async (dir) => {
    for (const size of [0, 3, 7]) {
      await refuses(
        dir,
        new Uint8Array(size),
        new RegExp(`expected at least 8 bytes \\(the header length\\), got ${size}$`),
      );
    }
  }));

Deno.test("safetensors: a truncated file is refused at every cut", () =>
  withDir(async (dir) => {
    const { bytes } = await savedHead(dir);
    const { n } = split(bytes);
    const cuts: [number, RegExp][] = [
      [5, /expected at least 8 bytes/],
      [8, /header length: expected at most 0 bytes \(the file's 8 less 8\)/],
      [8 + (n >> 1), /header length: expected at most \d+ bytes/],
      [8 + n - 1, /header length: expected at most/],
      [
        8 + n,
        /tensor "momentum_buffer": data_offsets \[176, 352\]: expected an end within the data section's 0 bytes/,
      ],
      [8 + n + 100, /"momentum_buffer".*within the data section's 100 bytes/],
      [bytes.length - 1, /"momentum_buffer".*within the data section's 351 bytes .*truncated/],
    ];
    for (const [cut, pattern] of cuts) await refuses(dir, bytes.slice(0, cut), pattern);
  }));

Deno.test("safetensors: a header length beyond the file or absurd is refused", () =>
  withDir(async (dir) => {
    const { bytes } = await savedHead(dir);
    const size = bytes.length;
    const altered = (n: bigint) => {
      const b = bytes.slice();
      new DataView(b.buffer).setBigUint64(0, n, true);
      return b;
    };
    await refuses(
      dir,
      altered(BigInt(size - 7)),
      new RegExp(`header length: expected at most ${size - 8} bytes .*got ${size - 7}$`),
    );
    await refuses(
      dir,
      altered(2n ** 64n - 1n),
      /header length: expected at most 100000000 bytes, got 18446744073709551615$/,
    );
    // Just over the limit, within a (sparse) file large enough to hold it.
    const large = `${dir}/large.safetensors`;
    await Deno.writeFile(large, altered(100_000_001n).subarray(0, 8));
    await Deno.truncate(large, 100_000_100);
    await assert.rejects(
      readSafetensors(large),
      /header length: expected at most 100000000 bytes, got 100000001$/,
    );
    // Shorter: the header's JSON cut, or the JSON ending and the data starting elsewhere.
    const { n } = split(bytes);
    await refuses(dir, altered(BigInt(n - 40)), /header: expected JSON, got text that does not/);
    await refuses(dir, altered(BigInt(n + 8)), /header: expected (UTF-8 text|JSON)/);
  }));

Deno.test("safetensors: a header not UTF-8 JSON or not an object is refused", () =>
  withDir(async (dir) => {
    const bad = new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]);
    const file = new Uint8Array(12);
    new DataView(file.buffer).setBigUint64(0, 4n, true);
    file.set(bad, 8);
    await refuses(dir, file, /header: expected UTF-8 text, got 4 bytes that are not UTF-8$/);
    await refuses(dir, craft('{"a": '), /header: expected JSON, got text that does not parse/);
    await refuses(dir, craft("\ufeff{}"), /header: expected JSON/); // a BOM is not JSON
    await refuses(dir, craft("[1, 2]"), /header: expected a JSON object, got an array$/);
    await refuses(dir, craft("null"), /header: expected a JSON object, got null$/);
    await refuses(dir, craft('"x"'), /header: expected a JSON object, got "x"$/);
  }));

Deno.test("safetensors: an unknown dtype is refused", () =>
  withDir(async (dir) => {
    const data = new Uint8Array(4);
    await refuses(
      dir,
      craft(one("F33", [1], [0, 4]), data),
      /tensor "a": dtype: expected one of F64, F32, I64, U64, I32, U32, I16, U16, I8, U8, got "F33"$/,
    );
    await refuses(
      dir,
      craft(one("F16", [2], [0, 4]), data),
      /dtype: expected one of .*, got "F16" \(a safetensors dtype this reader does not read\)$/,
    );
    await refuses(dir, craft(one(32, [1], [0, 4]), data), /dtype: expected one of .*, got 32$/);
  }));

Deno.test("safetensors: a shape not of integers >= 0 is refused", () =>
  withDir(async (dir) => {
    const data = new Uint8Array(4);
    await refuses(dir, craft(one("F32", [-1], [0, 4]), data), /"a": shape\[0\]: .*, got -1$/);
    await refuses(dir, craft(one("F32", [1.5], [0, 4]), data), /"a": shape\[0\]: .*, got 1.5$/);
    await refuses(dir, craft(one("F32", [1, "2"], [0, 4]), data), /shape\[1\]: .*, got "2"$/);
    await refuses(dir, craft(one("F32", 1, [0, 4]), data), /"a": shape: expected an array/);
    await refuses(
      dir,
      craft(one("F32", [2 ** 30, 2 ** 30, 2 ** 30], [0, 4]), data),
      /shape: expected a product below 2\^53/,
    );
  }));

Deno.test("safetensors: bytes other than shape × dtype size are refused", () =>
  withDir(async (dir) => {
    await refuses(
      dir,
      craft(one("F64", [2, 3], [0, 40]), new Uint8Array(40)),
      /"a": data_offsets \[0, 40\]: expected shape \[2,3\] × 8 bytes \(F64\) = 48 bytes, got 40$/,
    );
  }));

Deno.test("safetensors: offsets out of order, with gaps, overlapping or beyond the data", () =>
  withDir(async (dir) => {
    const two = (a: number[], b: number[]) => ({
      a: { dtype: "U8", shape: [a[1] - a[0]], data_offsets: a },
      b: { dtype: "U8", shape: [b[1] - b[0]], data_offsets: b },
    });
    const data = (n: number) => new Uint8Array(n);
    // In another order than the header's: allowed, as the format has it.
    await Deno.writeFile(`${dir}/ok.safetensors`, craft(two([4, 8], [0, 4]), data(8)));
    const ok = await readSafetensors(`${dir}/ok.safetensors`);
    assert.deepEqual([...ok.tensors.keys()], ["b", "a"]);
    await refuses(
      dir,
      craft(two([0, 4], [2, 6]), data(6)),
      /tensor "b": data_offsets \[2, 6\] overlap tensor "a" \[0, 4\]: expected a begin of 4$/,
    );
    await refuses(
      dir,
      craft(two([0, 4], [6, 8]), data(8)),
      /"b": data_offsets \[6, 8\] leave bytes \[4, 6\) to no tensor: expected a begin of 4$/,
    );
    await refuses(
      dir,
      craft(two([2, 4], [4, 6]), data(6)),
      /"a": data_offsets \[2, 4\] leave bytes \[0, 2\) to no tensor/,
    );
    await refuses(dir, craft(two([0, 4], [4, 8]), data(6)), /"b".*within the data section's 6/);
    await refuses(
      dir,
      craft(one("U8", [0], [4, 0]), data(0)),
      /"a": data_offsets: expected \[begin, end\], integers with 0 <= begin <= end, got \[4,0\]$/,
    );
    await refuses(dir, craft(one("U8", [1], [-1, 0]), data(1)), /data_offsets: expected/);
    await refuses(dir, craft(one("U8", [1], [0]), data(1)), /got \[0\]$/);
    await refuses(
      dir,
      craft({ a: { dtype: "U8", shape: [1], data_offsets: [0, 1], extra: 1 } }, data(1)),
      /tensor "a": unknown key "extra"; expected dtype, shape and data_offsets$/,
    );
    await refuses(dir, craft({ a: [1] }, data(1)), /tensor "a": expected an object of dtype/);
  }));

Deno.test("safetensors: a data section longer than the last tensor is refused", () =>
  withDir(async (dir) => {
    const { bytes } = await savedHead(dir);
    const longer = new Uint8Array(bytes.length + 3);
    longer.set(bytes);
    await refuses(
      dir,
      longer,
      /data section: expected 352 bytes \(the end of the last tensor\), got 355: 3 bytes/,
    );
  }));

Deno.test("safetensors: metadata not of strings is refused", () =>
  withDir(async (dir) => {
    await refuses(
      dir,
      craft({ __metadata__: { n: 3 } }),
      /__metadata__\."n": expected a string, got 3$/,
    );
    await refuses(dir, craft({ __metadata__: ["x"] }), /__metadata__: expected an object of str/);
    await refuses(dir, craft({ __metadata__: null }), /__metadata__: expected an object.*null$/);
  }));

Deno.test("safetensors: an altered file is refused by its checksum", () =>
  withDir(async (dir) => {
    const { bytes } = await savedHead(dir);
    const { n, header } = split(bytes);
    const stored = header.__metadata__[CHECKSUM_KEY];
    const mismatch = new RegExp(
      `__metadata__\\."lsoftmax\\.sha256": expected the SHA-256 of the file's content, ${stored}, ` +
        `got [0-9a-f]{64}: the file was altered`,
    );
    // A flipped bit in each tensor's data, first and last byte.
    for (const at of [0, C * D * 4 - 1, C * D * 4, 2 * C * D * 4 - 1]) {
      const b = bytes.slice();
      b[8 + n + at] ^= 0x01;
      await refuses(dir, b, mismatch);
      await refuses(dir, b, mismatch, true);
    }
    // A metadata value changed in place, same length: the iteration 3 made 4.
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert.ok(text.includes('"iteration":"3"'));
    const b = bytes.slice();
    b.set(te.encode(text.replace('"iteration":"3"', '"iteration":"4"')), 8);
    await refuses(dir, b, mismatch);
    // A shape changed in place, the bytes the same: [11, 4] read as [4, 11].
    const c = bytes.slice();
    c.set(te.encode(text.replace('"shape":[11,4]', '"shape":[4,11]')), 8);
    await refuses(dir, c, mismatch);
    // A checksum that is not one.
    const d = bytes.slice();
    d.set(te.encode(text.replace(stored, "z".repeat(64))), 8);
    await refuses(dir, d, /"lsoftmax\.sha256": expected 64 lowercase hex digits, got "z{64}"$/);
  }));

Deno.test("safetensors: the checksum holds when another tool rewrites the layout", () =>
  withDir(async (dir) => {
    const { bytes, state } = await savedHead(dir);
    const { header, data } = split(bytes);
    // The data in the other order (as safetensors' writer sorts by name), keys reordered.
    const size = C * D * 4;
    const rewritten = {
      __metadata__: Object.fromEntries(Object.entries(header.__metadata__).reverse()),
      momentum_buffer: { ...header.momentum_buffer, data_offsets: [0, size] },
      weight: { ...header.weight, data_offsets: [size, 2 * size] },
    };
    const swapped = new Uint8Array(2 * size);
    swapped.set(data.subarray(size), 0);
    swapped.set(data.subarray(0, size), size);
    const path = `${dir}/rewritten.safetensors`;
    await Deno.writeFile(path, craft(rewritten, swapped));
    assertSameState(await loadHeadState(path), state);
  }));

Deno.test("safetensors: a file without the checksum (another tool's) loads", () =>
  withDir(async (dir) => {
    const w = Float64Array.from({ length: C * D }, (_, i) => Math.sin(i));
    const options = { classes: C, features: D, dtype: "float64", margin: 2, lambda: 0.5 };
    const file = craft(
      {
        weight: { dtype: "F64", shape: [C, D], data_offsets: [0, w.byteLength] },
        __metadata__: {
          format: "1",
          options: JSON.stringify(options),
          iteration: "7",
          skippedSteps: "0",
        },
      },
      bytesOf(w),
    );
    const path = `${dir}/foreign.safetensors`;
    await Deno.writeFile(path, file);
    assert.equal((await readSafetensors(path)).checksummed, false);
    const state = await loadHeadState(path);
    assertSameBits(state.weights, w, "weights");
    assert.equal(state.velocity, null);
    using head = MarginHead.fromState(state);
    assert.equal(head.iteration, 7);
    assertSameBits(head.weights(), w, "the head's weights");
  }));

Deno.test("safetensors: loading checks the tensors against the options, naming each", () =>
  withDir(async (dir) => {
    const options = JSON.stringify({ classes: 3, features: 2, dtype: "float32" });
    const meta = { options, iteration: "0" };
    const path = `${dir}/head.safetensors`;
    const f32 = (n: number) => new Float32Array(n), f64 = (n: number) => new Float64Array(n);
    const cases: [Record<string, { shape: number[]; data: TensorData }>, unknown, RegExp][] = [
      [
        { weight: { shape: [3, 2], data: f64(6) } },
        meta,
        /"weight": dtype: expected F32 \(options.dtype "float32"\), got F64$/,
      ],
      [
        { weight: { shape: [2, 3], data: f32(6) } },
        meta,
        /"weight": shape: expected \[3,2\] \(options.classes, options.features\), got \[2,3\]$/,
      ],
      [
        { weight: { shape: [6], data: f32(6) } },
        meta,
        /"weight": shape: expected \[3,2\].*got \[6\]$/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) }, momentum_buffer: { shape: [6], data: f32(6) } },
        meta,
        /"momentum_buffer": shape: expected \[3,2\] \(weight's\), got \[6\]$/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) }, exp_avg: { shape: [3, 2], data: f64(6) } },
        meta,
        /"exp_avg": dtype: expected F32 \(weight's\), got F64$/,
      ],
      [
        { w: { shape: [3, 2], data: f32(6) } },
        meta,
        /tensor "weight": expected W \[3,2\], got none \(tensors: w\)$/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) } },
        { iteration: "0" },
        /: options: expected the head's options \(an object\), got undefined$/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) } },
        { options: '{"classes":0}' },
        /options\.classes: expected an integer >= 1, got 0$/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) } },
        { ...meta, note: "hello" },
        /__metadata__\."note": expected the JSON of a state field, got "hello"/,
      ],
      [
        { weight: { shape: [3, 2], data: f32(6) } },
        { ...meta, x: '{"__tensor__":"gone"}' },
        /__metadata__\."x": .*refers to tensor "gone", which is absent/,
      ],
    ];
    for (const [tensors, metadata, pattern] of cases) {
      await writeSafetensors(path, tensors, metadata as Record<string, string>);
      await assert.rejects(loadHeadState(path), (e: Error) => {
        assert.ok(e instanceof SafetensorsError, String(e));
        assert.match(e.message, pattern);
        return true;
      });
    }
  }));

Deno.test("safetensors: what loads becomes a head only through fromState's checks", () =>
  withDir(async (dir) => {
    // A file that is well formed but whose state is not (an unknown option): fromState names it.
    const path = `${dir}/head.safetensors`;
    const options = JSON.stringify({ classes: 3, features: 2, dtype: "float32", margn: 2 });
    await writeSafetensors(path, { weight: { shape: [3, 2], data: new Float32Array(6) } }, {
      format: "1",
      options,
      iteration: "0",
      skippedSteps: "0",
    });
    const state = await loadHeadState(path);
    assert.throws(() => MarginHead.fromState(state), /unknown option "margn"/);
  }));

Deno.test("safetensors: tensors of 16 MiB and more (several checksum blocks) round-trip", () =>
  withDir(async (dir) => {
    const big = new Float64Array((1 << 21) + 3).map((_, i) => i * 0.5 - 7);
    const path = `${dir}/big.safetensors`;
    await writeSafetensors(path, { big: { shape: [big.length], data: big } });
    const { tensors } = await readSafetensors(path);
    assertSameBits(tensors.get("big")!.data, big, "big");
    const b = await Deno.readFile(path);
    b[b.length - 1] ^= 0x80;
    await refuses(dir, b, /the file was altered/);
  }));

async function python(args: string[]): Promise<string> {
  const out = await new Deno.Command("python3", { args: [FIXTURE, ...args] }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

// The Python reader's view of each file's tensors (one process: torch is slow to import).
async function pythonViews(paths: string[], torch = false) {
  const out = await python([...(torch ? ["--torch"] : []), ...paths]);
  return out.trim().split("\n").map((line) => JSON.parse(line));
}
const pythonView = async (path: string) => (await pythonViews([path]))[0];

async function ourView(path: string, checksum = "ok") {
  const { tensors, metadata } = await readSafetensors(path);
  const list = [];
  for (const [name, t] of [...tensors].sort(([a], [b]) => a < b ? -1 : 1)) {
    const values = t.dtype.startsWith("F")
      ? bytesOf(Float64Array.from(t.data as Float32Array))
      : te.encode(Array.from(t.data as Int32Array).join(","));
    list.push({
      name,
      dtype: t.dtype,
      shape: t.shape,
      bytes_sha256: await sha256(bytesOf(t.data)),
      values_sha256: await sha256(values),
    });
  }
  return { tensors: list, metadata, checksum };
}

async function mixedFile(dir: string) {
  const path = `${dir}/mixed.safetensors`;
  await writeSafetensors(path, {
    f32: { shape: [2, 3], data: new Float32Array([1.5, -2, 3.25, 1e-40, -0, 7]) },
    i32: { shape: [3], data: new Int32Array([-1, 2 ** 31 - 1, -(2 ** 31)]) },
    i64: { shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]) },
    u8: { shape: [0], data: new Uint8Array(0) },
    "é name": { shape: [1, 1], data: new Float64Array([Math.E]) },
  }, { note: "ünïcode 😀", empty: "" });
  return path;
}

for (const torch of [false, true]) {
  const reader = torch ? "safetensors.torch.load_file" : "an independent Python reader";
  Deno.test({
    name: `safetensors: ${reader} reads the file as this one does`,
    ignore: torch ? !hasTorch : !hasPython,
    fn: () =>
      withDir(async (dir) => {
        const paths = [];
        for (const dtype of ["float32", "float64"] as const) {
          const { path } = await savedHead(dir, dtype);
          await Deno.rename(path, `${dir}/${dtype}.safetensors`);
          paths.push(`${dir}/${dtype}.safetensors`);
        }
        using sharded = newHead("float64", true, ["cpu", "cpu"]);
        for (const b of batches(new Rng(9), "float64", 2)) sharded.step(b.x, b.labels);
        const path = `${dir}/sharded.safetensors`;
        await saveHeadState(path, sharded.state());
        paths.push(path);
        const ours = [];
        for (const p of paths) ours.push(await ourView(p));
        assert.deepEqual(await pythonViews(paths, torch), ours);
        if (torch) {
          // A checkpoint torch wrote (no checksum, torch's layout) loads into a head.
          const foreign = `${dir}/torch.safetensors`;
          await python(["--torch-save", foreign, "3", "2"]);
          const state = await loadHeadState(foreign);
          const w = Float32Array.from({ length: 6 }, (_, i) => 0.25 * i);
          assertSameBits(state.weights, w, "weights");
          assertSameBits(state.velocity, w.map((v) => -v), "velocity");
          using head = MarginHead.fromState(state);
          assert.equal(head.iteration, 5);
          assert.equal(head.optimizer.type === "sgd" && head.optimizer.momentum, 0.9);
        }
        if (!torch) {
          // Integer dtypes, an empty tensor, names and metadata beyond ASCII.
          const mixed = await mixedFile(dir);
          assert.deepEqual(await pythonView(mixed), await ourView(mixed));
          // Several checksum blocks.
          const big = `${dir}/big.safetensors`;
          const data = new Float64Array((1 << 21) + 3).map((_, i) => i * 0.5 - 7);
          await writeSafetensors(big, { big: { shape: [data.length], data } });
          assert.deepEqual(await pythonView(big), await ourView(big));
          // The Python checksum can fail: a flipped byte is a mismatch there too.
          const b = await Deno.readFile(path);
          b[b.length - 1] ^= 0x01;
          await Deno.writeFile(path, b);
          assert.equal((await pythonView(path)).checksum, "mismatch");
        }
      }),
  });
}

Deno.test("safetensors: head.save and MarginHead.load continue bit for bit, elsewhere too", () =>
  withDir(async (dir) => {
    const rng = new Rng(41);
    const x = toF32(randomArray(rng, N * D)), labels = randomLabels(rng, N, C);
    const options = { classes: C, features: D, margin: 2, lambda: 0.5, backend: "cpu" as const };
    using head = new MarginHead({ ...options, optimizer: { lr: 0.1, momentum: 0.9 }, seed: 3 });
    head.step(x, labels);
    const pending = head.stepAsync(x, labels); // save waits for the steps asked before it
    const path = `${dir}/head.safetensors`;
    await head.save(path);
    await pending;
    assert.equal(head.iteration, 2);
    using one = await MarginHead.load(path);
    using split = await MarginHead.load(path, { backend: ["cpu", "cpu", "cpu"] });
    assert.equal(one.iteration, 2);
    assertSameState(one.state(), head.state());
    const next = head.step(x, labels), r = one.step(x, labels);
    assert.ok(Object.is(r.loss, next.loss), `${r.loss} ${next.loss}`);
    assertSameBits(r.gradX, next.gradX, "gradX");
    assertSameBits(one.weights(), head.weights(), "weights");
    // Split again, the rows' partials combine in another order: the same step within rounding.
    const s = split.step(x, labels), w = split.weights(), w0 = head.weights();
    assert.ok(Math.abs(s.loss - next.loss) < 1e-6, `${s.loss} ${next.loss}`);
    for (let i = 0; i < w.length; i++) assert.ok(Math.abs(w[i] - w0[i]) < 1e-6, `W[${i}]`);
    await assert.rejects(
      () => MarginHead.load(path, { seed: 1 } as never),
      /unknown option "seed"/,
    );
  }));

Deno.test("safetensors: MarginHead.load refuses a cut file by name and builds no head", () =>
  withDir(async (dir) => {
    using head = new MarginHead({ classes: C, features: D, margin: 2, lambda: 0, backend: "cpu" });
    const path = `${dir}/head.safetensors`;
    await head.save(path);
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 5));
    await assert.rejects(() => MarginHead.load(path), (e: Error) => {
      assert.ok(e instanceof SafetensorsError, String(e));
      assert.match(e.message, /head\.safetensors/);
      return true;
    });
    head.close();
    await assert.rejects(() => head.save(path), /closed/);
  }));
