// Argument checks. Each error names the argument, what was expected and what came, and leaves the
// library usable: nothing is changed before a check passes.

import { describe } from "../ffi/arrays.ts";

export { describe };

export function checkNumber(name: string, v: unknown, min: number): number {
  if (typeof v !== "number") throw new TypeError(`${name}: expected a number, got ${describe(v)}`);
  if (!Number.isFinite(v) || v < min) {
    throw new RangeError(`${name}: expected a finite number >= ${min}, got ${v}`);
  }
  return v;
}

export function checkInteger(name: string, v: unknown, min: number, max: number): number {
  const expected = `${name}: expected an integer in [${min}, ${max}], got`;
  if (typeof v !== "number") throw new TypeError(`${expected} ${describe(v)}`);
  if (!Number.isInteger(v)) {
    throw new TypeError(`${expected} ${v}${Number.isFinite(v) ? " (not an integer)" : ""}`);
  }
  if (v < min || v > max) throw new RangeError(`${expected} ${v}`);
  return v;
}

// Edit distance, for "did you mean": option names are short, so the quadratic table is nothing.
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

function closest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined, bestDistance = Infinity;
  for (const k of known) {
    const dist = k.toLowerCase() === key.toLowerCase() ? 0 : distance(key, k);
    if (dist < bestDistance) [best, bestDistance] = [k, dist];
  }
  return bestDistance <= Math.max(1, Math.floor(key.length / 3)) ? best : undefined;
}

/** A plain object's own keys and their values, read once. */
export interface OwnOptions {
  keys: string[];
  values: unknown[];
}

/** Whether options are a plain object (its prototype Object.prototype or null): its own keys are all. */
export function isPlain(options: unknown): boolean {
  if (typeof options !== "object" || options === null) return false;
  const proto = Object.getPrototypeOf(options);
  return proto === Object.prototype || proto === null;
}

/**
 * The options object of a call, each known key read once, up front (so a getter runs before any
 * size is measured, never between a check and the native call). A key the call does not know is
 * a TypeError naming it, and the known key it most likely meant: a misspelt `outx` must not
 * leave the caller's buffer silently unfilled. `own`: a plain object's own keys and their values,
 * already read (they are not read again).
 */
export function readOptions<K extends string>(
  what: string,
  options: unknown,
  known: readonly K[],
  own?: OwnOptions,
): Partial<Record<K, unknown>> {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`${what}: expected an object of options, got ${describe(options)}`);
  }
  const o = options as Record<string, unknown>;
  const set = knownSet(known);
  const keys = own?.keys ?? Object.keys(o);
  for (const key of keys) {
    if (set.has(key)) continue;
    const hint = closest(key, known);
    throw new TypeError(
      `${what}: unknown option "${key}"` + (hint ? ` (did you mean "${hint}"?)` : "") +
        `; expected one of ${known.join(", ")}`,
    );
  }
  const read: Partial<Record<K, unknown>> = {};
  // A plain object holds its options itself: only its own keys need reading (the per-call cost
  // of a small call). Any other object may inherit them (getters of a class): all are read.
  if (own !== undefined) {
    for (let i = 0; i < keys.length; i++) read[keys[i] as K] = own.values[i];
  } else {
    for (const key of isPlain(o) ? keys : known) read[key as K] = o[key];
  }
  return read;
}

// The known keys as sets, made once per list (the lists are module constants).
const KNOWN_SETS = new WeakMap<readonly string[], ReadonlySet<string>>();
function knownSet(known: readonly string[]): ReadonlySet<string> {
  let set = KNOWN_SETS.get(known);
  if (set === undefined) KNOWN_SETS.set(known, set = new Set(known));
  return set;
}
