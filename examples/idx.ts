/**
 * The IDX files of MNIST and Fashion-MNIST (gzip-compressed or not): a magic number whose third
 * byte is the element type (0x08: unsigned bytes) and fourth the rank, the dimensions as
 * big-endian 32-bit integers, then the elements.
 *
 * @example
 * ```ts
 * import { readIdx } from "./idx.ts";
 * const dir = "/usr/share/datasets/fashion-mnist";
 * const { dims, data } = await readIdx(`${dir}/t10k-labels-idx1-ubyte.gz`);
 * console.log(dims, data[0]); // [10000] 9
 * ```
 * @module
 */

/** An IDX array of unsigned bytes: its dimensions and elements. */
export interface Idx {
  dims: number[];
  data: Uint8Array;
}

/** Reads an IDX file of unsigned bytes; names ending in `.gz` are decompressed first. */
export async function readIdx(path: string): Promise<Idx> {
  let bytes = await Deno.readFile(path);
  if (path.endsWith(".gz")) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  }
  return parseIdx(bytes, path);
}

/** Parses the bytes of an IDX file of unsigned bytes; `what` names it in errors. */
export function parseIdx(bytes: Uint8Array, what: string): Idx {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4 || view.getUint16(0) !== 0 || bytes[2] !== 0x08) {
    throw new Error(`${what}: not an IDX file of unsigned bytes (magic 0x0000 08 xx)`);
  }
  const rank = bytes[3], head = 4 + 4 * rank;
  if (bytes.length < head) throw new Error(`${what}: truncated IDX header`);
  const dims = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i));
  const size = dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== head + size) {
    throw new Error(
      `${what}: expected ${head + size} bytes for dimensions [${dims}], got ${bytes.length}`,
    );
  }
  return { dims, data: bytes.subarray(head) };
}

/** The bytes of an IDX file of unsigned bytes with these dimensions and elements. */
export function encodeIdx({ dims, data }: Idx): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  const view = new DataView(out.buffer);
  out[2] = 0x08;
  out[3] = dims.length;
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d));
  out.set(data, 4 + 4 * dims.length);
  return out;
}
