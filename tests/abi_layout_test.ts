// abi_layout_test.ts: the TypeScript struct tables (ffi/structs.ts) against the library's own
// layout of each ABI struct (lsm_layout: sizeof, and every field's offset and size), so that a
// field moved, resized or added on either side fails here; and a table encoded and read back
// through the bytes the library reports.

import assert from "node:assert/strict";
import { loadLibrary } from "../ffi/library.ts";
import {
  encodeAdam,
  encodeLossArgs,
  encodeLossUpdate,
  encodeMargin,
  encodeSgd,
  FIELD_BYTES,
  LSM_ADAM,
  LSM_LOSS_ARGS,
  LSM_LOSS_UPDATE,
  LSM_MARGIN,
  LSM_SGD,
  STRUCTS,
} from "../ffi/structs.ts";
import { Status } from "../ffi/symbols.ts";
import { info } from "./check.ts";

const lib = loadLibrary(info.library);
const cstr = (s: string) => new TextEncoder().encode(s + "\0");

/** What lsm_layout reports: its status, and the offset and bytes when it succeeded. */
function layout(type: string, field: string): { status: number; offset: number; bytes: number } {
  const offset = new BigInt64Array([-1n]), bytes = new BigInt64Array([-1n]);
  const status = lib.symbols.lsm_layout(cstr(type), cstr(field), offset, bytes);
  return { status, offset: Number(offset[0]), bytes: Number(bytes[0]) };
}

for (const struct of STRUCTS) {
  Deno.test(`abi layout: ${struct.name} has the size and every field of the TypeScript table`, () => {
    assert.deepEqual(layout(struct.name, ""), {
      status: Status.OK,
      offset: 0,
      bytes: struct.bytes,
    });
    let end = 0;
    for (const f of struct.fields) {
      const bytes = FIELD_BYTES[f.type] * (f.count ?? 1);
      assert.deepEqual(
        layout(struct.name, f.c),
        { status: Status.OK, offset: f.offset, bytes },
        `${struct.name}.${f.c}`,
      );
      // The table leaves no byte out: fields in order, back to back, up to sizeof.
      assert.equal(f.offset, end, `${struct.name}.${f.c} follows the field before it`);
      end = f.offset + bytes;
    }
    assert.equal(end, struct.bytes, `${struct.name}: its fields fill sizeof`);
  });
}

Deno.test("abi layout: an unknown struct or field is refused (LSM_ERR_INVALID_ARGUMENT)", () => {
  for (
    const [type, field] of [["lsm_margin", "lamda"], ["lsm_sgd", "class_offset"], [
      "lsm_adam",
      "momentum",
    ], [
      "lsm_nope",
      "",
    ]]
  ) {
    const r = layout(type, field);
    assert.equal(r.status, Status.INVALID_ARGUMENT, `${type}.${field}`);
    const message = Deno.UnsafePointerView.getCString(lib.symbols.lsm_last_error()!);
    assert.ok(message.includes(field === "" ? type : field), `"${message}" names ${type}.${field}`);
  }
});

Deno.test("abi layout: the encoders write each value at its field's offset, reserved bytes 0", () => {
  const read = (bytes: Uint8Array, f: { type: string; offset: number }) => {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const le = true; // the platforms the library builds for are little-endian
    switch (f.type) {
      case "int32":
        return view.getInt32(f.offset, le);
      case "uint32":
        return view.getUint32(f.offset, le);
      case "int64":
        return Number(view.getBigInt64(f.offset, le));
      default:
        return view.getFloat64(f.offset, le);
    }
  };
  const cases = [
    [LSM_MARGIN, encodeMargin, {
      kind: 3,
      m: 7,
      lambda: 0.5,
      scale: 64,
      m1: 1.5,
      m2: 0.25,
      m3: 0.125,
      flags: 1,
      h: 0.333,
      tAlpha: 0.01,
      batchMean: 20,
      batchStd: 100,
      t: -0.75,
      lowerNorm: 10,
      upperNorm: 110,
      lambdaG: 35,
      upperMargin: 0.8,
    }],
    [LSM_LOSS_ARGS, encodeLossArgs, {
      classOffset: 12,
      totalClasses: 2 ** 40,
      gradScale: 1 / 3,
      labelSmoothing: 0.25,
      weightSum: 7.5,
      classWeights: 2 ** 44 + 64,
      ignoreIndex: -100,
      flags: 1,
      update: 2 ** 44 + 128,
      stateOut: 2 ** 45 + 128,
      rowTargets: 2 ** 46 + 256,
    }],
    [LSM_SGD, encodeSgd, {
      lr: 0.1,
      momentum: 0.9,
      weightDecay: 1e-4,
      nesterov: 1,
      first: 0,
      nonfinite: 2,
    }],
    [LSM_ADAM, encodeAdam, {
      lr: 1e-3,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.01,
      gradScale: 0.5,
      step: 2 ** 40 + 3,
      decoupled: 1,
      amsgrad: 1,
      nonfinite: 1,
    }],
    [LSM_LOSS_UPDATE, encodeLossUpdate, {
      sgd: 2 ** 44 + 8,
      adam: 2 ** 44 + 16,
      velocity: 2 ** 44 + 24,
      expAvg: 2 ** 44 + 32,
      expAvgSq: 2 ** 44 + 40,
      maxExpAvgSq: 2 ** 44 + 48,
      nonfinite: 2 ** 44 + 56,
    }],
  ] as const;
  for (const [struct, encode, values] of cases) {
    const into = new Uint8Array(struct.bytes).fill(0);
    (encode as (v: unknown, into: Uint8Array) => Uint8Array)(values, into);
    const kept = (encode as (v: unknown) => Uint8Array)(values);
    assert.deepEqual(kept, into, `${struct.name}: the kept buffer and a new one agree`);
    for (const f of struct.fields) {
      const got = read(into, f);
      const want = f.key !== undefined ? (values as Record<string, number>)[f.key] : 0;
      assert.equal(got, want, `${struct.name}.${f.c}`);
      if (f.key === undefined) {
        const bytes = into.subarray(f.offset, f.offset + FIELD_BYTES[f.type] * (f.count ?? 1));
        assert.ok(bytes.every((b) => b === 0), `${struct.name}.${f.c}: reserved bytes are 0`);
      }
    }
  }
});

Deno.test("abi layout: cross-entropy options left out of lsm_loss_args are written 0", () => {
  const into = encodeLossArgs(
    { classOffset: 3, totalClasses: 9, gradScale: 0.5 },
    new Uint8Array(LSM_LOSS_ARGS.bytes).fill(7),
  );
  for (const f of LSM_LOSS_ARGS.fields) {
    if (f.key === undefined || ["classOffset", "totalClasses", "gradScale"].includes(f.key)) {
      continue;
    }
    const bytes = into.subarray(f.offset, f.offset + FIELD_BYTES[f.type] * (f.count ?? 1));
    assert.ok(bytes.every((b) => b === 0), `lsm_loss_args.${f.c}: 0`);
  }
});
