// The ABI's structs (cuda/lsoftmax.h) as one table of their fields: the C name, the type, the
// byte offset, and the key of the value TypeScript writes there. The encoders are built from it,
// and tests/abi_layout_test.ts holds every row against what the library reports (lsm_layout).
// Fields without a key (reserved) stay 0.

/** A field's C type. */
export type FieldType = "int32" | "uint32" | "int64" | "float64";

/** One field of an ABI struct. */
export interface Field<K extends string = string> {
  /** The C field name, as lsm_layout takes it. */
  readonly c: string;
  /** The key of the value the encoder writes; none for reserved fields (always 0). */
  readonly key?: K;
  readonly type: FieldType;
  readonly offset: number;
  /** The element count of an array field. */
  readonly count?: number;
}

/** An ABI struct: its C name, sizeof, and its fields. */
export interface Struct<K extends string = string> {
  readonly name: string;
  readonly bytes: number;
  readonly fields: readonly Field<K>[];
}

/** The bytes of one element of a field type. */
export const FIELD_BYTES: Readonly<Record<FieldType, number>> = {
  int32: 4,
  uint32: 4,
  int64: 8,
  float64: 8,
};

/**
 * Every field of every ABI struct, in declaration order: the struct, the C field, its type
 * (`type[count]` for an array), its offset, and the value's key (none for reserved fields).
 */
const FIELDS = [
  ["lsm_margin", "kind", "int32", 0, "kind"], // lsm_margin_kind
  ["lsm_margin", "m", "int32", 4, "m"],
  ["lsm_margin", "lambda", "float64", 8, "lambda"],
  ["lsm_margin", "scale", "float64", 16, "scale"],
  ["lsm_margin", "m1", "float64", 24, "m1"],
  ["lsm_margin", "m2", "float64", 32, "m2"],
  ["lsm_margin", "m3", "float64", 40, "m3"],
  ["lsm_margin", "flags", "uint32", 48, "flags"],
  ["lsm_margin", "reserved_flags", "uint32", 52],
  ["lsm_margin", "h", "float64", 56, "h"],
  ["lsm_margin", "t_alpha", "float64", 64, "tAlpha"],
  ["lsm_margin", "batch_mean", "float64", 72, "batchMean"],
  ["lsm_margin", "batch_std", "float64", 80, "batchStd"],
  ["lsm_margin", "t", "float64", 88, "t"],
  ["lsm_margin", "lower_norm", "float64", 96, "lowerNorm"],
  ["lsm_margin", "upper_norm", "float64", 104, "upperNorm"],
  ["lsm_margin", "lambda_g", "float64", 112, "lambdaG"],
  ["lsm_margin", "upper_margin", "float64", 120, "upperMargin"],
  ["lsm_margin", "reserved", "float64[2]", 128],
  ["lsm_loss_args", "class_offset", "int64", 0, "classOffset"],
  ["lsm_loss_args", "total_classes", "int64", 8, "totalClasses"],
  ["lsm_loss_args", "grad_scale", "float64", 16, "gradScale"],
  ["lsm_loss_args", "label_smoothing", "float64", 24, "labelSmoothing"],
  ["lsm_loss_args", "weight_sum", "float64", 32, "weightSum"], // 0 without class weights
  ["lsm_loss_args", "class_weights", "int64", 40, "classWeights"], // the address, or 0 (none)
  ["lsm_loss_args", "ignore_index", "int32", 48, "ignoreIndex"],
  ["lsm_loss_args", "flags", "uint32", 52, "flags"], // LOSS_IGNORE with ignoreIndex
  ["lsm_loss_args", "update", "int64", 56, "update"], // an lsm_loss_update's address, or 0 (none)
  ["lsm_loss_args", "state_out", "int64", 64, "stateOut"], // the address of float64[2], or 0
  ["lsm_loss_args", "row_targets", "int64", 72, "rowTargets"], // the address of float64[2n], or 0
  ["lsm_loss_args", "reserved", "int64", 80],
  ["lsm_sgd", "lr", "float64", 0, "lr"],
  ["lsm_sgd", "momentum", "float64", 8, "momentum"],
  ["lsm_sgd", "weight_decay", "float64", 16, "weightDecay"],
  ["lsm_sgd", "nesterov", "int32", 24, "nesterov"], // 0 or 1
  ["lsm_sgd", "first", "int32", 28, "first"], // 1: the first step (v <- g)
  ["lsm_sgd", "nonfinite", "int32", 32, "nonfinite"], // SgdNonFinite: apply, skip or check
  ["lsm_sgd", "reserved", "int32", 36],
  ["lsm_adam", "lr", "float64", 0, "lr"],
  ["lsm_adam", "beta1", "float64", 8, "beta1"],
  ["lsm_adam", "beta2", "float64", 16, "beta2"],
  ["lsm_adam", "eps", "float64", 24, "eps"],
  ["lsm_adam", "weight_decay", "float64", 32, "weightDecay"],
  ["lsm_adam", "grad_scale", "float64", 40, "gradScale"], // clipping's factor, 1 without
  ["lsm_adam", "step", "int64", 48, "step"], // t >= 1
  ["lsm_adam", "decoupled", "int32", 56, "decoupled"], // 0 Adam, 1 AdamW
  ["lsm_adam", "amsgrad", "int32", 60, "amsgrad"],
  ["lsm_adam", "nonfinite", "int32", 64, "nonfinite"], // SgdNonFinite
  ["lsm_adam", "reserved", "int32", 68],
  // The addresses (0: none) of the step's settings, its state arrays and the skip flag.
  ["lsm_loss_update", "sgd", "int64", 0, "sgd"],
  ["lsm_loss_update", "adam", "int64", 8, "adam"],
  ["lsm_loss_update", "velocity", "int64", 16, "velocity"],
  ["lsm_loss_update", "exp_avg", "int64", 24, "expAvg"],
  ["lsm_loss_update", "exp_avg_sq", "int64", 32, "expAvgSq"],
  ["lsm_loss_update", "max_exp_avg_sq", "int64", 40, "maxExpAvgSq"],
  ["lsm_loss_update", "nonfinite", "int64", 48, "nonfinite"],
  ["lsm_loss_update", "reserved", "int64", 56],
] as const;

/** sizeof of each ABI struct. */
const SIZES = {
  lsm_margin: 144,
  lsm_loss_args: 88,
  lsm_sgd: 40,
  lsm_adam: 72,
  lsm_loss_update: 64,
} as const;

type StructName = keyof typeof SIZES;

function struct<S extends StructName>(name: S): Struct<KeyOf<S>> {
  const fields = FIELDS.filter((f) => f[0] === name).map((f) => {
    const [, type, count] = /^(\w+)(?:\[(\d+)\])?$/.exec(f[2])!;
    const field: Field<KeyOf<S>> = {
      c: f[1],
      type: type as FieldType,
      offset: f[3],
      ...(count === undefined ? {} : { count: Number(count) }),
      ...(f.length === 5 ? { key: f[4] as KeyOf<S> } : {}),
    };
    return field;
  });
  return { name, bytes: SIZES[name], fields };
}

/** The value keys of a struct's fields. */
type KeyOf<S extends StructName> = Extract<
  typeof FIELDS[number],
  readonly [S, string, string, number, string]
>[4];

/** struct lsm_margin: the kind and its parameters (fields a kind does not use are 0). */
export const LSM_MARGIN: Struct<KeyOf<"lsm_margin">> = struct("lsm_margin");
/**
 * struct lsm_loss_args: the shard's first class, all classes, the gradient's scale and the
 * cross-entropy options.
 */
export const LSM_LOSS_ARGS: Struct<KeyOf<"lsm_loss_args">> = struct("lsm_loss_args");
/** struct lsm_sgd: one SGD step's settings. */
export const LSM_SGD: Struct<KeyOf<"lsm_sgd">> = struct("lsm_sgd");
/** struct lsm_adam: one Adam or AdamW step's settings. */
export const LSM_ADAM: Struct<KeyOf<"lsm_adam">> = struct("lsm_adam");

/** struct lsm_loss_update: the optimizer step a fused loss call applies (addresses, 0: none). */
export const LSM_LOSS_UPDATE: Struct<KeyOf<"lsm_loss_update">> = struct("lsm_loss_update");

/** Every ABI struct the bindings encode. */
export const STRUCTS: readonly Struct[] = [
  LSM_MARGIN,
  LSM_LOSS_ARGS,
  LSM_SGD,
  LSM_ADAM,
  LSM_LOSS_UPDATE,
];

/** The values of a struct, by the keys its table gives them. */
export type StructValues<K extends string> = { readonly [Key in K]: number };

/** The values of lsm_margin: `kind` is the lsm_margin_kind code. */
export type MarginStruct = StructValues<KeyOf<"lsm_margin">>;
/**
 * The values of lsm_loss_args: the cross-entropy options may be left out (0: none); classWeights
 * is the address of the weights (host memory on a CPU context, context memory otherwise).
 */
export type LossArgs =
  & StructValues<"classOffset" | "totalClasses" | "gradScale">
  & Partial<StructValues<KeyOf<"lsm_loss_args">>>;

/** lsm_loss_args.flags: rows labelled ignoreIndex are left out (LSM_LOSS_IGNORE). */
export const LOSS_IGNORE = 1;
/** The values of lsm_sgd. */
export type SgdStruct = StructValues<KeyOf<"lsm_sgd">>;
/** The values of lsm_adam. */
export type AdamStruct = StructValues<KeyOf<"lsm_adam">>;
/** The values of lsm_loss_update: addresses; those left out are 0 (none). */
export type LossUpdateStruct = Partial<StructValues<KeyOf<"lsm_loss_update">>>;

/**
 * An encoder of a struct: its values into `into` (a value left out is written 0) (a buffer of the
 * struct's size at an 8-byte aligned offset, by default one the encoder keeps and reuses). A
 * synchronous call may use the kept buffer, since the native side copies the struct before it
 * returns; a call still running when the next is encoded (off the JavaScript thread) needs a
 * buffer of its own.
 */
export function encoder<K extends string>(
  struct: Struct<K>,
): (values: StructValues<K>, into?: Uint8Array) => Uint8Array {
  const kept = new Uint8Array(struct.bytes);
  const keptViews = views(kept);
  const write = writer(struct);
  return (values, into = kept) => {
    if (into.byteLength !== struct.bytes) {
      throw new RangeError(
        `${struct.name}: expected a buffer of ${struct.bytes} bytes, got ${into.byteLength}`,
      );
    }
    write(values, into === kept ? keptViews : views(into));
    return into;
  };
}

// A struct's bytes as each field type's elements, in the host's byte order (the library's).
type Views = {
  int32: Int32Array;
  uint32: Uint32Array;
  int64: BigInt64Array;
  float64: Float64Array;
} & Record<FieldType, unknown>;

function views(b: Uint8Array): Views {
  if (b.byteOffset % 8 !== 0) {
    throw new RangeError(`struct buffer: expected an 8-byte aligned offset, got ${b.byteOffset}`);
  }
  const { buffer, byteOffset, byteLength } = b;
  return {
    int32: new Int32Array(buffer, byteOffset, byteLength / 4),
    uint32: new Uint32Array(buffer, byteOffset, byteLength / 4),
    int64: new BigInt64Array(buffer, byteOffset, byteLength / 8),
    float64: new Float64Array(buffer, byteOffset, byteLength / 8),
  };
}

// The writer of a struct's fields, generated from its table: one named read of `values` per field
// (a keyed read per field would be megamorphic, the larger part of a small call's cost).
function writer<K extends string>(
  struct: Struct<K>,
): (values: StructValues<K>, into: Views) => void {
  const lines = struct.fields.filter((f) => f.key !== undefined).map((f) => {
    if (!/^[A-Za-z]\w*$/.test(f.key!)) throw new Error(`${struct.name}: bad key ${f.key}`);
    const index = f.offset / FIELD_BYTES[f.type];
    if (!Number.isInteger(index)) throw new Error(`${struct.name}.${f.c}: a misaligned offset`);
    const value = `(v.${f.key} ?? 0)`;
    return `o.${f.type}[${index}] = ${f.type === "int64" ? `BigInt(${value})` : value};`;
  });
  return new Function("v", "o", lines.join("\n")) as (v: StructValues<K>, o: Views) => void;
}

/** lsm_margin's encoder. */
export const encodeMargin: (v: MarginStruct, into?: Uint8Array) => Uint8Array = encoder(LSM_MARGIN);
/** lsm_loss_args's encoder (options left out are written 0). */
export const encodeLossArgs: (v: LossArgs, into?: Uint8Array) => Uint8Array = encoder(
  LSM_LOSS_ARGS,
) as (v: LossArgs, into?: Uint8Array) => Uint8Array;
/** lsm_sgd's encoder. */
export const encodeSgd: (v: SgdStruct, into?: Uint8Array) => Uint8Array = encoder(LSM_SGD);
/** lsm_adam's encoder. */
export const encodeAdam: (v: AdamStruct, into?: Uint8Array) => Uint8Array = encoder(LSM_ADAM);
/** lsm_loss_update's encoder (addresses left out are written 0). */
export const encodeLossUpdate: (v: LossUpdateStruct, into?: Uint8Array) => Uint8Array = encoder(
  LSM_LOSS_UPDATE,
) as (v: LossUpdateStruct, into?: Uint8Array) => Uint8Array;
