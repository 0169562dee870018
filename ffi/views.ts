/**
 * Facts about typed arrays read through the engine's own getters (those of
 * `%TypedArray%.prototype`) and by address, never through the object: a subclass may override
 * `length` or `buffer`, an object may wear another array's prototype, and a Proxy may run code on
 * every look-up. What is read here is what the native code will be handed, and reading it runs no
 * caller code, so nothing can change an array between a check and the call that uses it.
 *
 * @example
 * ```ts
 * import { elementCount, typedArrayName } from "./views.ts";
 * const fake = Object.setPrototypeOf(new Float32Array(4), Float64Array.prototype);
 * console.log(typedArrayName(fake), elementCount(fake)); // "Float32Array" 4
 * ```
 * @module
 */

// Taken once at load: later changes to these globals or prototypes do not reach the checks.
const apply = Reflect.apply;
const toNumber = Number;
const pointerOf = Deno.UnsafePointer.of;
const pointerValue = Deno.UnsafePointer.value;
const plainByteLength = Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, "byteLength")!.get!;
const TypedArrayPrototype = Object.getPrototypeOf(Int8Array.prototype);
function intrinsic(key: PropertyKey): (this: unknown) => unknown {
  return Object.getOwnPropertyDescriptor(TypedArrayPrototype, key)!.get!;
}
const tagOf = intrinsic(Symbol.toStringTag);
const lengthOf = intrinsic("length");
const bufferOf = intrinsic("buffer");
const byteOffsetOf = intrinsic("byteOffset");

/** The element types the library reads and writes. */
export type ViewName = "Float32Array" | "Float64Array" | "Int32Array";

/**
 * The engine's name of a typed array's element type ("Float32Array", ...), or undefined for
 * anything that is not a typed array (a DataView, a Proxy, a plain object with a typed array's
 * prototype).
 *
 * @example
 * ```ts
 * import { typedArrayName } from "./views.ts";
 * class Features extends Float64Array {}
 * console.log(typedArrayName(new Features(2)), typedArrayName(new DataView(new ArrayBuffer(8))));
 * // "Float64Array" undefined
 * ```
 */
export function typedArrayName(v: unknown): string | undefined {
  return apply(tagOf, v, []) as string | undefined;
}

/**
 * The element count of a typed array as the engine sees it now: 0 once its buffer is
 * transferred or shrunk below the view. Throws a TypeError for anything else.
 *
 * @example
 * ```ts
 * import { elementCount } from "./views.ts";
 * const a = new Float32Array(new ArrayBuffer(16, { maxByteLength: 16 }));
 * (a.buffer as ArrayBuffer).resize(8);
 * console.log(elementCount(a)); // 2
 * ```
 */
export function elementCount(v: ArrayBufferView): number {
  return apply(lengthOf, v, []) as number;
}

/**
 * One array a native call reads (`output: false`) or writes, with the element count it uses.
 * Make it with {@link region}: {@link placeRegions} fills in the placement fields.
 */
export interface Region {
  role: string;
  view: ArrayBufferView;
  name: ViewName;
  count: number;
  output: boolean;
  /** Filled in by {@link placeRegions}: the buffer, whether it is shared, where the view starts. */
  buffer: unknown;
  shared: boolean;
  start: number;
}

/**
 * A region for {@link placeRegions} and {@link checkRegions}, with every field present: they only
 * ever write and read own data properties, never anything a prototype could intercept.
 *
 * @example
 * ```ts
 * import { region } from "./views.ts";
 * const r = region("x", new Float32Array(6), "Float32Array", 6, false);
 * console.log(r.role, r.count); // "x" 6
 * ```
 */
export function region(
  role: string,
  view: ArrayBufferView,
  name: ViewName,
  count: number,
  output: boolean,
): Region {
  return { role, view, name, count, output, buffer: null, shared: false, start: 0 };
}

function isShared(buffer: unknown): boolean {
  try {
    apply(plainByteLength, buffer, []); // throws for a SharedArrayBuffer only
    return false;
  } catch {
    return true;
  }
}

/**
 * The first half of the guard before a native call: every region is a typed array of its element
 * type, and where it lies (its buffer, and its offset there or, when two distinct
 * SharedArrayBuffer objects meet, which may be the same memory, e.g. after `structuredClone`, its
 * address). Taking an address may run caller code (Deno.UnsafePointer.of consults the array's own
 * `length` and prototype chain), so call this before taking any state a call depends on (the
 * native context, its precision, device buffers), then {@link checkRegions} last.
 *
 * @example
 * ```ts
 * import { checkRegions, placeRegions, region } from "./views.ts";
 * const x = new Float64Array(6), out = new Float64Array(4);
 * const regions = [region("x", x, "Float64Array", 6, false), region("out", out, "Float64Array", 4, true)];
 * placeRegions(regions);
 * checkRegions(regions);
 * ```
 */
export function placeRegions(regions: Region[]): void {
  const k = regions.length;
  let shared = 0;
  for (let i = 0; i < k; i++) {
    const r = regions[i];
    const got = typedArrayName(r.view);
    if (got !== r.name) {
      throw new TypeError(`${r.role}: expected a ${r.name}, got ${got ?? "something else"}`);
    }
    r.buffer = apply(bufferOf, r.view, []);
    r.shared = isShared(r.buffer);
    if (r.shared) shared++;
  }
  // Addresses only where two shared buffers meet: Deno.UnsafePointer.of is slow. Neither a view's
  // buffer, nor its offset, nor a SharedArrayBuffer's memory can move afterwards.
  for (let i = 0; i < k; i++) {
    const r = regions[i];
    if (shared < 2 || !r.shared) r.start = apply(byteOffsetOf, r.view, []) as number;
    else {
      const ptr = pointerOf(r.view);
      r.start = ptr === null ? 0 : toNumber(pointerValue(ptr));
    }
  }
}

/**
 * The last step before a native call, after {@link placeRegions}: every region holds exactly its
 * count now, and every output shares no byte with any other region (views of one buffer compared
 * by offset, of two SharedArrayBuffers by address; distinct ArrayBuffers never share memory).
 * Runs no caller code: only plain loops and own fields of the regions, no iterator, method or
 * getter the caller could replace.
 *
 * @example
 * ```ts
 * import { checkRegions, placeRegions, region } from "./views.ts";
 * const a = new Float32Array(8);
 * const regions = [
 *   region("x", a.subarray(0, 4), "Float32Array", 4, false),
 *   region("out", a.subarray(3), "Float32Array", 5, true),
 * ];
 * placeRegions(regions);
 * try {
 *   checkRegions(regions);
 * } catch (e) {
 *   console.log((e as Error).message); // out: ... got an overlap with x
 * }
 * ```
 */
export function checkRegions(regions: Region[]): void {
  const k = regions.length;
  for (let i = 0; i < k; i++) {
    const r = regions[i];
    const length = elementCount(r.view);
    if (length !== r.count) {
      throw new RangeError(
        `${r.role}: expected ${r.count} elements, got ${length} (resized or transferred after it was checked)`,
      );
    }
  }
  for (let i = 0; i < k; i++) {
    const a = regions[i];
    if (!a.output) continue;
    for (let j = 0; j < k; j++) {
      const b = regions[j];
      if (j === i || (b.output && j > i)) continue; // each pair of outputs once
      const comparable = a.buffer === b.buffer || (a.shared && b.shared);
      if (
        comparable && a.start < b.start + regionBytes(b) && b.start < a.start + regionBytes(a)
      ) {
        throw new RangeError(
          `${a.role}: expected memory apart from the inputs and other outputs, got an overlap with ${b.role}`,
        );
      }
    }
  }
}

/**
 * The bytes native code reads or writes for a region: its count times its element size.
 *
 * @example
 * ```ts
 * import { region, regionBytes } from "./views.ts";
 * console.log(regionBytes(region("x", new Float64Array(6), "Float64Array", 6, false))); // 48
 * ```
 */
export function regionBytes(r: Region): number {
  return r.count * (r.name === "Float64Array" ? 8 : 4);
}
