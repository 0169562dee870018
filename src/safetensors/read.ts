// The safetensors reader: every field checked before a tensor is allocated, and the checksum
// when the file holds one.

import { describe } from "../../ffi/arrays.ts";
import { blockwise, checksum, checksumHead } from "./checksum.ts";
import {
  BLOCK,
  bytesOf,
  checkShape,
  CHECKSUM_KEY,
  DTYPES,
  fail,
  hostOrder,
  KNOWN,
  MAX_HEADER_BYTES,
  put,
  type SafetensorsDType,
  type SafetensorsFile,
  SUPPORTED,
  type Tensor,
} from "./format.ts";

function readFully(file: Deno.FsFile, bytes: Uint8Array): number {
  let p = 0;
  while (p < bytes.length) {
    const got = file.readSync(bytes.subarray(p, Math.min(p + BLOCK, bytes.length)));
    if (got === null) break;
    p += got;
  }
  return p;
}

interface Entry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
}

function checkEntry(path: string, name: string, v: unknown): Entry {
  const what = `tensor "${name}"`;
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    fail(path, `${what}: expected an object of dtype, shape and data_offsets, got ${describe(v)}`);
  }
  const o = v as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (key !== "dtype" && key !== "shape" && key !== "data_offsets") {
      fail(path, `${what}: unknown key "${key}"; expected dtype, shape and data_offsets`);
    }
  }
  const dtype = o.dtype;
  if (typeof dtype !== "string" || !(dtype in DTYPES)) {
    const known = typeof dtype === "string" && KNOWN.includes(dtype)
      ? " (a safetensors dtype this reader does not read)"
      : "";
    fail(
      path,
      `${what}: dtype: expected one of ${SUPPORTED.join(", ")}, got ${
        JSON.stringify(dtype) ?? describe(dtype)
      }${known}`,
    );
  }
  const shape = checkShape(path, `${what}: shape`, o.shape);
  const offsets = o.data_offsets;
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((e) => Number.isSafeInteger(e) && e >= 0) || offsets[0] > offsets[1]
  ) {
    fail(
      path,
      `${what}: data_offsets: expected [begin, end], integers with 0 <= begin <= end, got ${
        JSON.stringify(offsets) ?? describe(offsets)
      }`,
    );
  }
  const [begin, end] = offsets as number[];
  const size = DTYPES[dtype as SafetensorsDType].size;
  const count = shape.reduce((a, b) => a * b, 1);
  if (end - begin !== count * size) {
    fail(
      path,
      `${what}: data_offsets [${begin}, ${end}]: expected shape [${shape}] × ${size} bytes ` +
        `(${dtype}) = ${count * size} bytes, got ${end - begin}`,
    );
  }
  return { name, dtype: dtype as SafetensorsDType, shape, begin, end };
}

/**
 * Reads a safetensors file, checking it whole before any tensor is returned: the header length
 * (at least 8 bytes of file; a header within the file and at most {@link MAX_HEADER_BYTES}),
 * the header (UTF-8 JSON, an object), each tensor's dtype (a {@link SafetensorsDType}), shape
 * (integers >= 0) and data_offsets (contiguous from 0 in some order, no gap, no overlap, the
 * bytes of shape × dtype size), the data section (exactly as long as the tensors need),
 * `__metadata__` (strings), and {@link CHECKSUM_KEY} when the file holds it. Each error is a
 * {@link SafetensorsError} naming the file, the field, what was expected and what came.
 *
 * @param path The file to read.
 * @returns The tensors (in the order of their data), the metadata, and whether a checksum was
 * checked.
 * @example
 * ```ts
 * import { readSafetensors } from "./src/safetensors.ts";
 * const path = await Deno.makeTempFile();
 * // 8 bytes of length, an 8-byte header, one float32 element.
 * const header = new TextEncoder().encode('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}');
 * const bytes = new Uint8Array(8 + header.length + 4);
 * new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
 * bytes.set(header, 8);
 * new DataView(bytes.buffer).setFloat32(8 + header.length, 1.5, true);
 * await Deno.writeFile(path, bytes);
 * const { tensors, checksummed } = await readSafetensors(path);
 * console.log(tensors.get("a")!.data[0], checksummed); // 1.5 false
 * ```
 */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  hostOrder(path);
  using file = await Deno.open(path, { read: true });
  const size = (await file.stat()).size;
  if (size < 8) fail(path, `expected at least 8 bytes (the header length), got ${size}`);
  const lengthBytes = new Uint8Array(8);
  if (readFully(file, lengthBytes) !== 8) fail(path, "the file shrank while read");
  const n64 = new DataView(lengthBytes.buffer).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    fail(path, `header length: expected at most ${MAX_HEADER_BYTES} bytes, got ${n64}`);
  }
  const n = Number(n64);
  if (n > size - 8) {
    fail(
      path,
      `header length: expected at most ${size - 8} bytes (the file's ${size} less 8), got ${n}`,
    );
  }
  const headBytes = new Uint8Array(n);
  if (readFully(file, headBytes) !== n) fail(path, "the file shrank while read");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headBytes);
  } catch {
    fail(path, `header: expected UTF-8 text, got ${n} bytes that are not UTF-8`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(path, `header: expected JSON, got text that does not parse (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail(
      path,
      `header: expected a JSON object, got ${
        Array.isArray(header) ? "an array" : describe(header)
      }`,
    );
  }
  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name !== "__metadata__") {
      entries.push(checkEntry(path, name, v));
      continue;
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      fail(path, `__metadata__: expected an object of strings, got ${describe(v)}`);
    }
    for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
      if (typeof s !== "string") {
        fail(path, `__metadata__."${k}": expected a string, got ${JSON.stringify(s)}`);
      }
      put(metadata, k, s);
    }
  }
  // The data: the tensors back to back from 0 in the order of their offsets, and nothing after.
  const data = size - 8 - n;
  const order = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0, previous: Entry | undefined;
  for (const e of order) {
    if (e.begin < at) {
      fail(
        path,
        `tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] overlap tensor ` +
          `"${previous!.name}" [${previous!.begin}, ${previous!.end}]: expected a begin of ${at}`,
      );
    }
    if (e.begin > at) {
      fail(
        path,
        `tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] leave bytes [${at}, ${e.begin}) ` +
          `to no tensor: expected a begin of ${at}`,
      );
    }
    at = e.end;
    previous = e;
  }
  if (at > data) {
    fail(
      path,
      `tensor "${previous!.name}": data_offsets [${previous!.begin}, ${at}]: expected an end ` +
        `within the data section's ${data} bytes (the file is ${size} bytes: truncated?)`,
    );
  }
  if (at < data) {
    fail(
      path,
      `data section: expected ${at} bytes (the end of the last tensor), got ${data}: ` +
        `${data - at} bytes belong to no tensor`,
    );
  }
  const tensors = new Map<string, Tensor>();
  const digests = new Map<string, Uint8Array[]>();
  const stored = metadata[CHECKSUM_KEY];
  if (stored !== undefined && !/^[0-9a-f]{64}$/.test(stored)) {
    fail(
      path,
      `__metadata__."${CHECKSUM_KEY}": expected 64 lowercase hex digits, got ${
        JSON.stringify(stored)
      }`,
    );
  }
  for (const e of order) {
    const { array, size: bytesPer } = DTYPES[e.dtype];
    const t = new array((e.end - e.begin) / bytesPer);
    const read = (block: Uint8Array) => {
      if (readFully(file, block) !== block.length) fail(path, "the file shrank while read");
    };
    const list = await blockwise(bytesOf(t), read, stored !== undefined);
    if (stored !== undefined) digests.set(e.name, list);
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: t });
  }
  if (stored !== undefined) {
    const got = await checksum(checksumHead(metadata, entries.map((e) => [e.name, e])), digests);
    if (got !== stored) {
      fail(
        path,
        `__metadata__."${CHECKSUM_KEY}": expected the SHA-256 of the file's content, ${stored}, ` +
          `got ${got}: the file was altered after it was written`,
      );
    }
  }
  return { tensors, metadata, checksummed: stored !== undefined };
}
