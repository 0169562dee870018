// Typed-array facts as the engine measures them, through %TypedArray%.prototype's own getters:
// a subclass overriding `length`, an object wearing another array's prototype or a Proxy cannot
// make native code read the wrong element size or count by mistake.

/** Float tensors the library computes on. */
export type FloatArray = Float32Array | Float64Array;

/** The element type of a call's float arrays. */
export type FloatDType = "float32" | "float64";

/** The element types native code reads and writes. */
export type ViewName = "Float32Array" | "Float64Array" | "Int32Array";

const TypedArrayPrototype = Object.getPrototypeOf(Int8Array.prototype);
const getter = (key: PropertyKey) =>
  Object.getOwnPropertyDescriptor(TypedArrayPrototype, key)!.get!;
const tagOf = getter(Symbol.toStringTag);
const lengthOf = getter("length");
const bufferOf = getter("buffer");
const byteOffsetOf = getter("byteOffset");

// The engine's name of a typed array's element type, or undefined for anything else.
export function typedArrayName(v: unknown): string | undefined {
  return tagOf.call(v) as string | undefined;
}

// The element count now: 0 once the buffer is transferred or shrunk below the view.
export function elementCount(v: ArrayBufferView): number {
  return lengthOf.call(v) as number;
}

export function bufferOfView(v: ArrayBufferView): ArrayBufferLike {
  return bufferOf.call(v) as ArrayBufferLike;
}

export function byteOffsetOfView(v: ArrayBufferView): number {
  return byteOffsetOf.call(v) as number;
}

export function floatDType(v: unknown): FloatDType | undefined {
  const name = typedArrayName(v);
  return name === "Float32Array" ? "float32" : name === "Float64Array" ? "float64" : undefined;
}

export function floatArrayName(dtype: FloatDType): ViewName {
  return dtype === "float32" ? "Float32Array" : "Float64Array";
}

export function newFloatArray<T extends FloatArray>(dtype: FloatDType, length: number): T {
  return (dtype === "float32" ? new Float32Array(length) : new Float64Array(length)) as T;
}

export function elementBytes(name: ViewName): number {
  return name === "Float64Array" ? 8 : 4;
}

/** A value as an error message shows it: `undefined`, `2.5`, `"cpu"`, `Float32Array(4)`. */
export function describe(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  const name = typedArrayName(v);
  if (name !== undefined) return `${name}(${elementCount(v as ArrayBufferView)})`;
  switch (typeof v) {
    case "number":
    case "boolean":
    case "bigint":
      return typeof v === "bigint" ? `${v}n` : String(v);
    case "string":
      return JSON.stringify(v);
    case "function":
      return "a function";
    case "symbol":
      return v.toString();
  }
  if (Array.isArray(v)) return `Array(${v.length})`;
  try {
    return (v as object).constructor?.name ?? "Object";
  } catch {
    return "an object";
  }
}
