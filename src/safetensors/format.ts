// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length n, n bytes of UTF-8 JSON (padded with spaces to a multiple of 8),
// then the tensors' bytes, little-endian and row-major, back to back in the header's offsets.
// This module: its types and dtypes, the error, and the checks the writer and the reader share.

import {
  bufferOfView,
  byteOffsetOfView,
  describe,
  elementCount,
  typedArrayName,
} from "../../ffi/arrays.ts";

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

/** The block of the checksum and of each write and read. */
export const BLOCK = 1 << 24;

/** Each dtype: its element size and typed array. */
export const DTYPES = {
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
/** The format's other types, which this module names but does not read. */
export const KNOWN = [
  "BOOL",
  "F16",
  "BF16",
  "F8_E4M3",
  "F8_E5M2",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "E8M0",
];
/** The dtypes this module reads and writes. */
export const SUPPORTED = Object.keys(DTYPES) as SafetensorsDType[];
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

/** Throws a {@link SafetensorsError} naming the file and what is wrong. */
export function fail(path: string, what: string): never {
  throw new SafetensorsError(`${path}: ${what}`);
}

/** Refuses a big-endian host, whose typed arrays are not in the format's byte order. */
export function hostOrder(path: string): void {
  if (!LITTLE_ENDIAN) fail(path, "expected a little-endian host (the format's byte order)");
}

/** The safetensors dtype of a typed array, or undefined for anything else. */
export function dtypeOf(data: unknown): SafetensorsDType | undefined {
  const name = typedArrayName(data);
  return name === undefined ? undefined : BY_ARRAY.get(name);
}

/** The bytes of a typed array, as the engine measures it (ffi/arrays.ts). */
export function bytesOf(data: TensorData): Uint8Array {
  const size = DTYPES[dtypeOf(data)!].size;
  return new Uint8Array(bufferOfView(data), byteOffsetOfView(data), elementCount(data) * size);
}

/** Checks a shape (integers >= 0, their product below 2^53) and returns a copy. */
export function checkShape(path: string, what: string, v: unknown): number[] {
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
