// The margin family's options: which kind (`kind`), its parameters, and the check that turns them
// into the ABI's lsm_margin. An option of another kind is an error, not ignored.

import type { Margin, MarginKindName } from "../ffi/context.ts";
import { FLAG_EASY_MARGIN } from "../ffi/symbols.ts";
import { checkInteger, checkNumber, describe } from "./checks.ts";

/** The largest supported margin m (`LSM_MAX_MARGIN`). */
export const MAX_MARGIN = 16;

/** The margin kinds: L-Softmax (the default), A-Softmax, CosFace, ArcFace, the combined margin. */
export type MarginKind = MarginKindName;

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
}

/** Every option that selects or parametrises a margin. */
export const MARGIN_KEYS = [
  "kind",
  "margin",
  "lambda",
  "scale",
  "m1",
  "m2",
  "m3",
  "easyMargin",
] as const;

type MarginKey = typeof MARGIN_KEYS[number];

/** Each kind's own parameters, as the options name them. */
export const KIND_PARAMETERS: Readonly<Record<MarginKind, readonly MarginKey[]>> = {
  lsoftmax: ["margin", "lambda"],
  asoftmax: ["margin", "lambda"],
  cosface: ["scale", "margin"],
  arcface: ["scale", "margin", "easyMargin"],
  combined: ["scale", "m1", "m2", "m3"],
};

const KINDS = Object.keys(KIND_PARAMETERS) as MarginKind[];

/** Whether a kind takes λ (and so the layer's λ schedule). */
export function hasLambda(kind: MarginKind): boolean {
  return kind === "lsoftmax" || kind === "asoftmax";
}

export function checkKind(v: unknown): MarginKind {
  if (v === undefined) return "lsoftmax";
  if (typeof v === "string" && (KINDS as string[]).includes(v)) return v as MarginKind;
  throw new RangeError(
    `kind: expected one of ${KINDS.map((k) => `"${k}"`).join(", ")}, got ${describe(v)}`,
  );
}

/** Refuses any of `keys` given that the kind does not take. */
export function checkOwnKeys(
  kind: MarginKind,
  o: Partial<Record<string, unknown>>,
  keys: readonly string[],
): void {
  const own: readonly string[] = KIND_PARAMETERS[kind];
  for (const key of keys) {
    if (key !== "kind" && !own.includes(key) && o[key] !== undefined) {
      throw new TypeError(
        `${key}: not an option of kind "${kind}" (its options: ${own.join(", ")})`,
      );
    }
  }
}

function checkScale(v: unknown): number {
  const s = checkNumber("scale", v, 0);
  if (s === 0) throw new RangeError("scale: expected a finite number > 0, got 0");
  return s;
}

/** The checked margin of a call's options (`kind` absent: L-Softmax). */
export function checkMargin(o: Partial<Record<MarginKey, unknown>>): Margin {
  const kind = checkKind(o.kind);
  checkOwnKeys(kind, o, MARGIN_KEYS);
  const m: Margin = { kind, m: 0, lambda: 0, scale: 0, m1: 0, m2: 0, m3: 0, flags: 0 };
  switch (kind) {
    case "lsoftmax":
    case "asoftmax":
      m.m = checkInteger("margin", o.margin, 1, MAX_MARGIN);
      m.lambda = checkNumber("lambda", o.lambda, 0);
      break;
    case "cosface":
      m.scale = checkScale(o.scale);
      m.m3 = checkNumber("margin", o.margin, 0);
      break;
    case "arcface":
      m.scale = checkScale(o.scale);
      m.m2 = checkNumber("margin", o.margin, 0);
      if (m.m2 >= Math.PI / 2) {
        throw new RangeError(`margin: expected a number in [0, π/2) for ArcFace, got ${m.m2}`);
      }
      if (o.easyMargin !== undefined && typeof o.easyMargin !== "boolean") {
        throw new TypeError(`easyMargin: expected true or false, got ${describe(o.easyMargin)}`);
      }
      m.flags = o.easyMargin ? FLAG_EASY_MARGIN : 0;
      break;
    case "combined":
      m.scale = checkScale(o.scale);
      m.m1 = checkNumber("m1", o.m1, 1);
      m.m2 = checkNumber("m2", o.m2, 0);
      m.m3 = checkNumber("m3", o.m3, 0);
      break;
  }
  return m;
}

/** The options that rebuild a checked margin (the kind's own parameters only). */
export function marginOptions(m: Margin): Record<string, unknown> {
  switch (m.kind) {
    case "lsoftmax":
    case "asoftmax":
      return { kind: m.kind, margin: m.m, lambda: m.lambda };
    case "cosface":
      return { kind: m.kind, scale: m.scale, margin: m.m3 };
    case "arcface":
      return { kind: m.kind, scale: m.scale, margin: m.m2, easyMargin: m.flags !== 0 };
    case "combined":
      return { kind: m.kind, scale: m.scale, m1: m.m1, m2: m.m2, m3: m.m3 };
  }
}
