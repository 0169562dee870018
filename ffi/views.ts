/**
 * Facts about typed arrays read through the engine's own getters (those of
 * `%TypedArray%.prototype`), never through the object: a subclass may override `length` or
 * `buffer`, an object may wear another array's prototype, and a Proxy may run code on every
 * look-up. What is read here is what the native code will be handed, and reading it runs no
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
const TypedArrayPrototype = Object.getPrototypeOf(Int8Array.prototype);
function intrinsic(key: PropertyKey): (this: unknown) => unknown {
  return Object.getOwnPropertyDescriptor(TypedArrayPrototype, key)!.get!;
}
const tagOf = intrinsic(Symbol.toStringTag);
const lengthOf = intrinsic("length");
const bufferOf = intrinsic("buffer");
const byteOffsetOf = intrinsic("byteOffset");
const byteLengthOf = intrinsic("byteLength");

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
 * Whether two typed arrays share any byte of memory.
 *
 * @example
 * ```ts
 * import { overlaps } from "./views.ts";
 * const a = new Float32Array(8);
 * console.log(overlaps(a.subarray(0, 4), a.subarray(3)), overlaps(a.subarray(0, 4), a.subarray(4)));
 * // true false
 * ```
 */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (apply(bufferOf, a, []) !== apply(bufferOf, b, [])) return false;
  const aStart = apply(byteOffsetOf, a, []) as number;
  const bStart = apply(byteOffsetOf, b, []) as number;
  return aStart < bStart + (apply(byteLengthOf, b, []) as number) &&
    bStart < aStart + (apply(byteLengthOf, a, []) as number);
}

/**
 * Throws unless `v` is a typed array of element type `name` holding exactly `count` elements
 * now. The last guard before native code reads or writes `count` elements of `v`.
 *
 * @example
 * ```ts
 * import { expectView } from "./views.ts";
 * expectView("labels", new Int32Array(3), "Int32Array", 3); // passes
 * ```
 */
export function expectView(role: string, v: unknown, name: ViewName, count: number): void {
  const got = typedArrayName(v);
  if (got !== name) {
    throw new TypeError(`${role}: expected a ${name}, got ${got ?? "something else"}`);
  }
  const length = elementCount(v as ArrayBufferView);
  if (length !== count) {
    throw new RangeError(
      `${role}: expected ${count} elements, got ${length} (resized or transferred after it was checked)`,
    );
  }
}
