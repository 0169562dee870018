// The margin kinds, one row each: the C enum value, whether the kind takes λ and normalises x and
// W, and its options: the name a caller gives, the lsm_margin field it fills and its check. A new
// kind is a row here (and its math in the native library); nothing depends on the enum's order.

import { LSM_MARGIN, type MarginStruct } from "../ffi/structs.ts";
import { checkInteger, checkNumber, describe } from "./checks.ts";

/** The largest supported margin m (`LSM_MAX_MARGIN`). */
export const MAX_MARGIN = 16;

/** lsm_margin.flags of ArcFace (`LSM_FLAG_EASY_MARGIN`): the easy margin. */
const FLAG_EASY_MARGIN = 1;

/** The lsm_margin fields an option may fill. */
type MarginField = Exclude<keyof MarginStruct, "kind">;

/** One option of a kind: the field it fills, its check, and the option's value from the field. */
interface KindOption {
  readonly field: MarginField;
  /** The checked field value of what the caller passed (`name` as errors say it). */
  readonly check: (v: unknown, name: string) => number;
  /** The option as the caller gives it, from the field (the identity for numbers). */
  readonly option?: (field: number) => unknown;
}

/** A margin kind: its C code, λ, normalisation, and its options in the order they are checked. */
export interface KindRow {
  /** The lsm_margin_kind value. */
  readonly code: number;
  /** Whether the target logit mixes in λ of the plain logit (and so takes the λ schedule). */
  readonly lambda: boolean;
  /** Whether x and the W rows are normalised (the score of a class is then a cosine). */
  readonly normalised: boolean;
  readonly options: Readonly<Record<string, KindOption>>;
  /** An adaptive kind (served by `loss` only; its state travels through the call). */
  readonly adaptive?: boolean;
  /** A check across the kind's options, after each one's own. */
  readonly across?: (struct: MarginStruct) => void;
}

const integerMargin: KindOption = {
  field: "m",
  check: (v, name) => checkInteger(name, v, 1, MAX_MARGIN),
};
const lambda: KindOption = { field: "lambda", check: (v, name) => checkNumber(name, v, 0) };
const scale: KindOption = {
  field: "scale",
  check: (v, name) => {
    const s = checkNumber(name, v, 0);
    if (s === 0) throw new RangeError(`${name}: expected a finite number > 0, got 0`);
    return s;
  },
};
const atLeast = (field: MarginField, min: number): KindOption => ({
  field,
  check: (v, name) => checkNumber(name, v, min),
});

const finite = (field: MarginField): KindOption => ({
  field,
  check: (v, name) => {
    if (typeof v !== "number") {
      throw new TypeError(`${name}: expected a number, got ${describe(v)}`);
    }
    if (!Number.isFinite(v)) throw new RangeError(`${name}: expected a finite number, got ${v}`);
    return v;
  },
});
const fraction = (field: MarginField): KindOption => ({
  field,
  check: (v, name) => {
    const a = checkNumber(name, v, 0);
    if (a > 1) throw new RangeError(`${name}: expected a number in [0, 1], got ${a}`);
    return a;
  },
});
const positive = (field: MarginField): KindOption => ({
  field,
  check: (v, name) => {
    const a = checkNumber(name, v, 0);
    if (a === 0) throw new RangeError(`${name}: expected a finite number > 0, got 0`);
    return a;
  },
});
/** An angular margin in [0, π/2) (`what` names the kind in the message). */
const angle = (field: MarginField, what: string): KindOption => ({
  field,
  check: (v, name) => {
    const m = checkNumber(name, v, 0);
    if (m >= Math.PI / 2) {
      throw new RangeError(`${name}: expected a number in [0, π/2) for ${what}, got ${m}`);
    }
    return m;
  },
});

/**
 * The margin kinds: L-Softmax (the default), A-Softmax, CosFace, ArcFace, the combined margin, and
 * the adaptive ones: sub-center ArcFace, AdaFace, CurricularFace and MagFace.
 */
export type MarginKind =
  | "lsoftmax"
  | "asoftmax"
  | "cosface"
  | "arcface"
  | "combined"
  | "subcenter"
  | "adaface"
  | "curricularface"
  | "magface";

/** The margin kinds, by the name `kind` takes. */
export const KINDS: Readonly<Record<MarginKind, KindRow>> = {
  lsoftmax: {
    code: 0,
    lambda: true,
    normalised: false,
    options: { margin: integerMargin, lambda },
  },
  asoftmax: {
    code: 1,
    lambda: true,
    normalised: false,
    options: { margin: integerMargin, lambda },
  },
  cosface: {
    code: 2,
    lambda: false,
    normalised: true,
    options: { scale, margin: atLeast("m3", 0) },
  },
  arcface: {
    code: 3,
    lambda: false,
    normalised: true,
    options: {
      scale,
      margin: {
        field: "m2",
        check: (v, name) => {
          const m = checkNumber(name, v, 0);
          if (m >= Math.PI / 2) {
            throw new RangeError(`${name}: expected a number in [0, π/2) for ArcFace, got ${m}`);
          }
          return m;
        },
      },
      easyMargin: {
        field: "flags",
        check: (v, name) => {
          if (v !== undefined && typeof v !== "boolean") {
            throw new TypeError(`${name}: expected true or false, got ${describe(v)}`);
          }
          return v ? FLAG_EASY_MARGIN : 0;
        },
        option: (flags) => (flags & FLAG_EASY_MARGIN) !== 0,
      },
    },
  },
  combined: {
    code: 4,
    lambda: false,
    normalised: true,
    options: { scale, m1: atLeast("m1", 1), m2: atLeast("m2", 0), m3: atLeast("m3", 0) },
  },
  subcenter: {
    code: 5,
    lambda: false,
    normalised: true,
    adaptive: true,
    options: {
      scale,
      margin: angle("m2", "sub-center ArcFace"),
      subcenters: { field: "m", check: (v, name) => checkInteger(name, v, 1, 65536) },
    },
  },
  adaface: {
    code: 6,
    lambda: false,
    normalised: true,
    adaptive: true,
    options: {
      scale,
      margin: atLeast("m2", 0),
      h: atLeast("h", 0),
      tAlpha: fraction("tAlpha"),
      batchMean: finite("batchMean"),
      batchStd: atLeast("batchStd", 0),
    },
  },
  curricularface: {
    code: 7,
    lambda: false,
    normalised: true,
    adaptive: true,
    options: {
      scale,
      margin: angle("m2", "CurricularFace"),
      tAlpha: fraction("tAlpha"),
      t: finite("t"),
    },
  },
  magface: {
    code: 8,
    lambda: false,
    normalised: true,
    adaptive: true,
    options: {
      scale,
      lowerMargin: angle("m2", "MagFace"),
      upperMargin: angle("upperMargin", "MagFace"),
      lowerNorm: positive("lowerNorm"),
      upperNorm: positive("upperNorm"),
      lambdaG: atLeast("lambdaG", 0),
    },
    across: (s) => {
      if (!(s.upperNorm > s.lowerNorm)) {
        throw new RangeError(
          `upperNorm: expected a number > lowerNorm (${s.lowerNorm}), got ${s.upperNorm}`,
        );
      }
    },
  },
};

/**
 * The margin: its kind and the kind's parameters (docs/math.md has each kind's formula). An option
 * of another kind is an error.
 *
 * - `"lsoftmax"` (the default): `margin` (integer m, 1 to `MAX_MARGIN`) and `lambda` (λ >= 0).
 * - `"asoftmax"` (SphereFace): `margin` and `lambda` as L-Softmax; W rows normalised.
 * - `"cosface"`: `scale` (s > 0) and `margin` (m >= 0): target logit s (cos θ − m).
 * - `"arcface"`: `scale`, `margin` (0 <= m < π/2) and `easyMargin` (false by default): target
 *   logit s cos(θ + m), with ArcFace's fallback where θ + m would pass π.
 * - `"combined"`: `scale`, `m1` (>= 1), `m2` (>= 0), `m3` (>= 0): target s (cos(m1 θ + m2) − m3).
 * - `"subcenter"` (sub-center ArcFace): `scale`, `margin` (ArcFace's) and `subcenters` (K >= 1):
 *   W holds C·K rows, class j's at j·K … j·K+K−1; a class's cosine is its best sub-center's.
 * - `"adaface"`: `scale`, `margin` (m >= 0), `h` (>= 0), `tAlpha` (in [0, 1]) and the state before
 *   the step, `batchMean` and `batchStd` (20 and 100 at the first step); `loss` returns the
 *   updated ones.
 * - `"curricularface"`: `scale`, `margin` (ArcFace's), `tAlpha` and the state `t` (0 at first).
 * - `"magface"`: `scale`, `lowerMargin`, `upperMargin` (in [0, π/2)), `lowerNorm` and
 *   `upperNorm` (0 < l_a < u_a) and `lambdaG` (>= 0).
 * The adaptive kinds are served by `loss` (docs/math.md); every option is required.
 */
export interface MarginOptions {
  /** The margin kind; "lsoftmax" when absent. */
  kind?: MarginKind;
  /**
   * L-Softmax and A-Softmax: the integer margin m, 1 to `MAX_MARGIN` (1 is the plain
   * linear layer). CosFace: the cosine margin m >= 0. ArcFace: the angular margin in [0, π/2).
   */
  margin?: number;
  /** L-Softmax and A-Softmax: λ >= 0, how much of the plain logit is mixed in. */
  lambda?: number;
  /** CosFace, ArcFace, combined: the logit scale s > 0 (typically 30 to 64). */
  scale?: number;
  /** ArcFace: the easy margin (cos(θ + m) only where cos θ > 0, else cos θ). */
  easyMargin?: boolean;
  /** The combined margin's multiplicative angular margin m1 >= 1 (SphereFace-like). */
  m1?: number;
  /** The combined margin's additive angular margin m2 >= 0 (ArcFace-like). */
  m2?: number;
  /** The combined margin's additive cosine margin m3 >= 0 (CosFace-like). */
  m3?: number;
  /** Sub-center ArcFace: the sub-centers per class K (integer >= 1; 3 in the authors' training). */
  subcenters?: number;
  /** AdaFace: the margin's sensitivity to the feature norm h >= 0 (0.333). */
  h?: number;
  /** AdaFace, CurricularFace: the weight of this batch in the moving averages, in [0, 1] (0.01). */
  tAlpha?: number;
  /** AdaFace: the moving mean of the clipped feature norms before the step (20 at first). */
  batchMean?: number;
  /** AdaFace: the moving standard deviation of the norms before the step (100 at first). */
  batchStd?: number;
  /** CurricularFace: the moving mean of the target cosines before the step (0 at first). */
  t?: number;
  /** MagFace: the margin l_m at the lower norm, in [0, π/2) (0.45). */
  lowerMargin?: number;
  /** MagFace: the margin u_m at the upper norm, in [0, π/2) (0.8). */
  upperMargin?: number;
  /** MagFace: the lower norm l_a > 0 (10). */
  lowerNorm?: number;
  /** MagFace: the upper norm u_a > l_a (110). */
  upperNorm?: number;
  /** MagFace: the regulariser's weight λ_g >= 0 (35). */
  lambdaG?: number;
}

const NAMES = Object.keys(KINDS) as MarginKind[];

/** Every option that selects or parametrises a margin. */
export const MARGIN_KEYS: readonly string[] = [
  "kind",
  ...new Set(NAMES.flatMap((k) => Object.keys(KINDS[k].options))),
];

// Each row as a call reads it: its options as a list, and the margin options it does not take.
const PARSED = Object.fromEntries(NAMES.map((k) => {
  const own = Object.keys(KINDS[k].options);
  const foreign = MARGIN_KEYS.filter((key) => key !== "kind" && !own.includes(key));
  return [k, {
    code: KINDS[k].code,
    own,
    foreign: new Set(foreign) as ReadonlySet<string>,
    options: Object.entries(KINDS[k].options),
  }];
})) as Record<
  MarginKind,
  { code: number; own: string[]; foreign: ReadonlySet<string>; options: [string, KindOption][] }
>;

// lsm_margin with every field 0, from its table: what a kind does not fill.
const UNUSED = Object.fromEntries(
  LSM_MARGIN.fields.flatMap((f) => (f.key === undefined ? [] : [[f.key, 0]])),
) as MarginStruct;

/** A checked margin: its kind and the lsm_margin it fills (fields the kind does not use are 0). */
export interface Margin {
  readonly kind: MarginKind;
  readonly struct: MarginStruct;
}

function checkKind(v: unknown): MarginKind {
  if (v === undefined) return "lsoftmax";
  if (typeof v === "string" && Object.hasOwn(KINDS, v)) return v as MarginKind;
  throw new RangeError(
    `kind: expected one of ${NAMES.map((k) => `"${k}"`).join(", ")}, got ${describe(v)}`,
  );
}

/** Whether a kind takes λ (and so the λ schedule of the layer and the head). */
export function hasLambda(kind: MarginKind): boolean {
  return KINDS[kind].lambda;
}

/**
 * The checked margin of a call's options (`kind` absent: L-Softmax). A margin option of another
 * kind is an error, not ignored. `without` leaves options out (the layer's and the head's λ,
 * which they set per step: 0 here).
 */
export function checkMargin(o: Partial<Record<string, unknown>>, without: string[] = []): Margin {
  const kind = checkKind(o.kind);
  const { code, own, foreign, options } = PARSED[kind];
  // The keys given, not every foreign one: a keyed read per key is a small call's larger cost.
  for (const key of Object.keys(o)) {
    if (foreign.has(key) && o[key] !== undefined && !without.includes(key)) {
      throw new TypeError(
        `${key}: not an option of kind "${kind}" (its options: ${own.join(", ")})`,
      );
    }
  }
  const struct: Record<keyof MarginStruct, number> = { ...UNUSED, kind: code };
  for (const [name, option] of options) {
    if (!without.includes(name)) struct[option.field] = option.check(o[name], name);
  }
  KINDS[kind].across?.(struct);
  return { kind, struct };
}

/** Whether a kind is adaptive (sub-center ArcFace, AdaFace, CurricularFace, MagFace). */
export function isAdaptive(kind: MarginKind): boolean {
  return KINDS[kind].adaptive === true;
}

/** The rows of W per class: the sub-centers K of sub-center ArcFace, else 1. */
export function subcentersOf(m: Margin): number {
  return m.kind === "subcenter" ? m.struct.m : 1;
}

/** The margin at another λ. */
export function withLambda(m: Margin, lambda: number): Margin {
  return { kind: m.kind, struct: { ...m.struct, lambda } };
}

/** The options that rebuild a checked margin (the kind and its own parameters only). */
export function marginOptions(m: Margin): Record<string, unknown> {
  const out: Record<string, unknown> = { kind: m.kind };
  for (
    const [name, option] of Object.entries(KINDS[m.kind].options as Record<string, KindOption>)
  ) {
    const v = m.struct[option.field];
    out[name] = option.option ? option.option(v) : v;
  }
  return out;
}
