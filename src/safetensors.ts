// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length n, n bytes of UTF-8 JSON (padded with spaces to a multiple of 8),
// then the tensors' bytes, little-endian and row-major, back to back in the header's offsets.
// Writing streams each tensor from its typed array in blocks (never one buffer of the whole file)
// to a temporary name renamed at the end, so an interrupted save leaves no file that loads.
// Reading checks every field before it allocates a tensor, and a SHA-256 over the header's
// entries and the data (CHECKSUM_KEY in __metadata__) refuses a file altered after it was written.

import {
  bufferOfView,
  byteOffsetOfView,
  describe,
  elementCount,
  typedArrayName,
} from "../ffi/arrays.ts";

/** The element types this module reads and writes, by their safetensors names. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "I64"
  | "U64"
  | "I32"
  | "U32"
  | "I16"
  | "U16"
  | "I8"
  | "U8";

/** A tensor's elements: the typed array of its dtype. */
export type TensorData =
  | Float64Array
  | Float32Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

/** A tensor as a file holds it: its element type, its shape and its elements, row-major. */
export interface Tensor {
  /** The element type, by its safetensors name. */
  dtype: SafetensorsDType;
  /** The extent of each dimension (empty for a scalar). */
  shape: number[];
  /** The elements, row-major: as many as the shape's product. */
  data: TensorData;
}

/** What {@link readSafetensors} returns. */
export interface SafetensorsFile {
  /** The tensors by name, in the order of their data in the file. */
  tensors: Map<string, Tensor>;
  /** `__metadata__` (empty when the file has none), {@link CHECKSUM_KEY} included. */
  metadata: Record<string, string>;
  /** Whether the file held {@link CHECKSUM_KEY} (and so was checked by it). */
  checksummed: boolean;
}

/**
 * The `__metadata__` key of the file's checksum: 64 lowercase hex digits of SHA-256 over (1) the
 * UTF-8 bytes of the compact JSON `[metadata, tensors]`, where metadata is the list of
 * `[key, value]` pairs of `__metadata__` but this key, and tensors the list of
 * `[name, dtype, shape]`, both sorted by code point, then (2) for each tensor in the order of
 * its name, the SHA-256 of each 16 MiB block of its bytes. It depends on what the file holds, not
 * on the header's layout or the order of the data, so a file rewritten by another tool with the
 * same metadata still checks. A file without it (written by another tool) loads unchecked.
 */
export const CHECKSUM_KEY = "lsoftmax.sha256";

/** An error in a safetensors file, or in what was given to write one: the message says which. */
export class SafetensorsError extends Error {
  /**
   * An error with its message.
   *
   * @param message What is wrong, with the expected and the actual value.
   */
  constructor(message: string) {
    super(message);
    this.name = "SafetensorsError";
  }
}

/** The greatest header this reader accepts, in bytes (as the safetensors library's). */
export const MAX_HEADER_BYTES = 100_000_000;

// The block of the checksum and of each write and read.
const BLOCK = 1 << 24;

// Each dtype: its element size and typed array; KNOWN lists the format's other types, which this
// module names but does not read.
const DTYPES = {
  F64: { size: 8, array: Float64Array },
  F32: { size: 4, array: Float32Array },
  I64: { size: 8, array: BigInt64Array },
  U64: { size: 8, array: BigUint64Array },
  I32: { size: 4, array: Int32Array },
  U32: { size: 4, array: Uint32Array },
  I16: { size: 2, array: Int16Array },
  U16: { size: 2, array: Uint16Array },
  I8: { size: 1, array: Int8Array },
  U8: { size: 1, array: Uint8Array },
} as const;
const KNOWN = ["BOOL", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "F6_E3M2", "E8M0"];
const SUPPORTED = Object.keys(DTYPES) as SafetensorsDType[];
const BY_ARRAY = new Map<string, SafetensorsDType>(
  SUPPORTED.map((d) => [DTYPES[d].array.name, d]),
);

// The byte order of the typed arrays, whose bytes are written and read as they are.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Sets an own enumerable property, even for the key `__proto__`, which plain assignment would
 * take as the prototype (a file may name a tensor or a metadata key so).
 *
 * @param o The object.
 * @param key The key.
 * @param value The value.
 */
export function put<T>(o: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

function fail(path: string, what: string): never {
  throw new SafetensorsError(`${path}: ${what}`);
}

function hostOrder(path: string): void {
  if (!LITTLE_ENDIAN) fail(path, "expected a little-endian host (the format's byte order)");
}

/** The safetensors dtype of a typed array, or undefined for anything else. */
export function dtypeOf(data: unknown): SafetensorsDType | undefined {
  const name = typedArrayName(data);
  return name === undefined ? undefined : BY_ARRAY.get(name);
}

// Order by code point (as UTF-8 bytes and Python's str compare), not by UTF-16 unit.
function byCodePoint(a: string, b: string): number {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

// The bytes of a typed array, as the engine measures it (ffi/arrays.ts).
function bytesOf(data: TensorData): Uint8Array {
  const size = DTYPES[dtypeOf(data)!].size;
  return new Uint8Array(bufferOfView(data), byteOffsetOfView(data), elementCount(data) * size);
}

async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The checksum's first part: the header's entries, the checksum itself left out.
function checksumHead(
  metadata: Record<string, string>,
  tensors: [string, { dtype: string; shape: number[] }][],
): Uint8Array {
  const meta = Object.entries(metadata).filter(([k]) => k !== CHECKSUM_KEY)
    .sort(([a], [b]) => byCodePoint(a, b));
  const list = tensors.map(([name, t]) => [name, t.dtype, t.shape])
    .sort(([a], [b]) => byCodePoint(a as string, b as string));
  return new TextEncoder().encode(JSON.stringify([meta, list]));
}

// Each block's write or read here, while the previous block's digest runs off this thread: the
// SHA-256 of the checksum, when `hash`, in the blocks of its definition.
async function blockwise(
  bytes: Uint8Array,
  io: (block: Uint8Array) => void,
  hash: boolean,
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let pending: Promise<Uint8Array> | undefined;
  for (let p = 0; p < bytes.length; p += BLOCK) {
    const block = bytes.subarray(p, Math.min(p + BLOCK, bytes.length));
    io(block);
    if (pending) out.push(await pending);
    pending = hash ? sha256(block) : undefined;
  }
  if (pending) out.push(await pending);
  return out;
}

async function checksum(head: Uint8Array, digests: Map<string, Uint8Array[]>): Promise<string> {
  const names = [...digests.keys()].sort(byCodePoint);
  const parts = [head, ...names.flatMap((n) => digests.get(n)!)];
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return hex(await sha256(all));
}

// Synchronous writes and reads of a block each: Deno's asynchronous ones copy through a buffer and
// move a block 5 to 10 times slower; a 16 MiB block holds the event loop a few milliseconds.
function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let p = 0; p < bytes.length;) p += file.writeSync(bytes.subarray(p));
}

function headerBytes(header: Record<string, unknown>): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  return padded;
}

function checkText(path: string, what: string, v: unknown): string {
  if (typeof v !== "string") fail(path, `${what}: expected a string, got ${describe(v)}`);
  if (!v.isWellFormed()) fail(path, `${what}: expected well-formed text, got a lone surrogate`);
  return v;
}

/**
 * Writes tensors and string metadata to a safetensors file: the header, then each tensor's bytes
 * in blocks straight from its typed array (no copy of the data). The file is written under a
 * temporary name beside `path`, flushed, then renamed to `path`, so a save that fails or is
 * interrupted leaves any earlier file at `path` as it was. The metadata gets {@link CHECKSUM_KEY}.
 *
 * @param path The file to write (replaced when it exists).
 * @param tensors Each tensor by name: its shape and its elements (a typed array of a
 * {@link SafetensorsDType}, as many elements as the shape's product); the file holds them in
 * this order.
 * @param metadata String values for `__metadata__` (not {@link CHECKSUM_KEY}).
 * @returns When the file is in place.
 * @example
 * ```ts
 * import { readSafetensors, writeSafetensors } from "./src/safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, { w: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } }, {
 *   note: "hello",
 * });
 * const { tensors, metadata } = await readSafetensors(path);
 * console.log(tensors.get("w")!.shape, metadata.note); // [2, 2] hello
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, { shape: readonly number[]; data: TensorData }>,
  metadata: Record<string, string> = {},
): Promise<void> {
  hostOrder(path);
  const entries: [string, { dtype: SafetensorsDType; shape: number[]; bytes: Uint8Array }][] = [];
  for (const [name, t] of Object.entries(tensors)) {
    checkText(path, "tensor name", name);
    if (name === "__metadata__" || name === "") {
      fail(path, `tensor name: expected a name other than "" and "__metadata__", got "${name}"`);
    }
    const dtype = dtypeOf(t?.data);
    if (dtype === undefined) {
      fail(
        path,
        `tensor "${name}": data: expected a typed array of ${SUPPORTED.join(", ")} ` +
          `(${SUPPORTED.map((d) => DTYPES[d].array.name).join(", ")}), got ${describe(t?.data)}`,
      );
    }
    const shape = checkShape(path, `tensor "${name}": shape`, t.shape);
    const count = shape.reduce((a, b) => a * b, 1);
    const length = elementCount(t.data);
    if (count !== length) {
      fail(
        path,
        `tensor "${name}": data: expected the shape's product [${shape}] = ${count} elements, ` +
          `got ${length}`,
      );
    }
    entries.push([name, { dtype, shape, bytes: bytesOf(t.data) }]);
  }
  const meta: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(metadata)) {
    checkText(path, "__metadata__ key", k);
    if (k === CHECKSUM_KEY) fail(path, `__metadata__: "${k}" is the checksum's, written here`);
    meta[k] = checkText(path, `__metadata__."${k}"`, v);
  }
  const header: Record<string, unknown> = Object.create(null);
  let offset = 0;
  for (const [name, t] of entries) {
    header[name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.bytes.length],
    };
    offset += t.bytes.length;
  }
  // The checksum's 64 digits are known after the data; the header is written with a placeholder
  // of the same length first and rewritten in place at the end.
  header.__metadata__ = { ...meta, [CHECKSUM_KEY]: "0".repeat(64) };
  const head = checksumHead(meta, entries);
  const placeholder = headerBytes(header);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/") + 1) : "";
  const base = path.slice(dir.length);
  const temp = `${dir}.${base}.${crypto.randomUUID()}.tmp`;
  const file = await Deno.open(temp, { write: true, createNew: true });
  let renamed = false;
  try {
    const length = new Uint8Array(8);
    new DataView(length.buffer).setBigUint64(0, BigInt(placeholder.length), true);
    writeAll(file, length);
    writeAll(file, placeholder);
    const digests = new Map<string, Uint8Array[]>();
    for (const [name, t] of entries) {
      digests.set(name, await blockwise(t.bytes, (block) => writeAll(file, block), true));
    }
    header.__metadata__ = { ...meta, [CHECKSUM_KEY]: await checksum(head, digests) };
    const final = headerBytes(header);
    if (final.length !== placeholder.length) fail(path, "the header changed length"); // cannot
    file.seekSync(8, Deno.SeekMode.Start);
    writeAll(file, final);
    await file.syncData();
    file.close();
    await Deno.rename(temp, path);
    renamed = true;
  } finally {
    if (!renamed) {
      try {
        file.close();
      } catch { /* closed already */ }
      await Deno.remove(temp).catch(() => {});
    }
  }
}

function checkShape(path: string, what: string, v: unknown): number[] {
  if (!Array.isArray(v)) {
    fail(path, `${what}: expected an array of integers >= 0, got ${describe(v)}`);
  }
  let count = 1;
  v.forEach((e, i) => {
    if (!Number.isSafeInteger(e) || e < 0) {
      fail(
        path,
        `${what}[${i}]: expected an integer >= 0, got ${JSON.stringify(e) ?? describe(e)}`,
      );
    }
    count *= e;
  });
  if (!Number.isSafeInteger(count)) {
    fail(path, `${what}: expected a product below 2^53, got [${v}]`);
  }
  return [...v];
}

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
