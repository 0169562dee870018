// The safetensors writer: each tensor streamed from its typed array in blocks (never one buffer
// of the whole file) to a temporary name renamed at the end, so an interrupted save leaves no file
// that loads.

import { describe, elementCount } from "../../ffi/arrays.ts";
import { blockwise, checksum, checksumHead } from "./checksum.ts";
import {
  bytesOf,
  checkShape,
  CHECKSUM_KEY,
  dtypeOf,
  DTYPES,
  fail,
  hostOrder,
  type SafetensorsDType,
  SUPPORTED,
  type TensorData,
} from "./format.ts";

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
