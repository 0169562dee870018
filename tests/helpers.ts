// helpers.ts: seeded random numbers, array builders and error measures for the tests.
// Nothing here depends on the library or on mod.ts.

/** A seeded PRNG (mulberry32): uniform numbers in [0, 1). */
export class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform in [lo, hi). */
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** n uniform numbers in [lo, hi) as a Float64Array. */
export function randomArray(rng: Rng, n: number, lo = -1, hi = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; ++i) a[i] = rng.uniform(lo, hi);
  return a;
}

/** n labels uniform in [0, c). */
export function randomLabels(rng: Rng, n: number, c: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; ++i) a[i] = rng.int(c);
  return a;
}

/** A random problem in float64: x [n, d], w [c, d], labels [n], upstream gradient g [n, c]. */
export interface Problem {
  n: number;
  d: number;
  c: number;
  x: Float64Array;
  w: Float64Array;
  labels: Int32Array;
  g: Float64Array;
}

export function randomProblem(rng: Rng, n: number, d: number, c: number): Problem {
  return {
    n,
    d,
    c,
    x: randomArray(rng, n * d),
    w: randomArray(rng, c * d),
    labels: randomLabels(rng, n, c),
    g: randomArray(rng, n * c),
  };
}

/** The values of a (float64) array rounded to float32. */
export function toF32(a: ArrayLike<number>): Float32Array {
  return Float32Array.from(a);
}

/** The values of any numeric array as a Float64Array (exact). */
export function toF64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a);
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; ++i) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * A per-element floor for relative errors: the largest magnitude in the element's row of a
 * [rows, a.length / rows] matrix (at least `tiny`). Errors of rounding in sums of products
 * scale with the row's magnitude, not with one element's, which may cancel to near 0.
 */
export function rowScale(a: ArrayLike<number>, rows: number, tiny = 1e-300): Float64Array {
  const cols = a.length / rows;
  const s = new Float64Array(a.length);
  for (let r = 0; r < rows; ++r) {
    let m = tiny;
    for (let j = 0; j < cols; ++j) m = Math.max(m, Math.abs(a[r * cols + j]));
    s.fill(m, r * cols, (r + 1) * cols);
  }
  return s;
}

/**
 * max_i |a_i - b_i| / max(|b_i|, floor_i): the relative error of a against the reference b, with
 * a floor (a number, or one per element) so elements near 0 are judged at the data's scale.
 * NaN anywhere (or a non-finite mismatch) gives Infinity.
 */
export function maxRelErr(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  floor: number | ArrayLike<number> = 0,
): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; ++i) {
    const x = a[i], y = b[i];
    if (x === y) continue; // includes equal infinities
    const f = typeof floor === "number" ? floor : floor[i];
    const e = Math.abs(x - y) / Math.max(Math.abs(y), f);
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  return worst;
}

/** Index of the first element where a and b differ bitwise-as-numbers (-1 if none). */
export function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; ++i) {
    if (!Object.is(a[i], b[i])) return i;
  }
  return -1;
}

/** Throws when maxRelErr(a, b, floor) > tol, naming the worst element. */
export function assertClose(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  tol: number,
  what: string,
  floor: number | ArrayLike<number> = 0,
): number {
  const err = maxRelErr(a, b, floor);
  if (!(err <= tol)) {
    let at = -1, worst = -1;
    for (let i = 0; i < a.length; ++i) {
      const f = typeof floor === "number" ? floor : floor[i];
      const e = Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), f);
      if (a[i] !== b[i] && !(e <= worst)) {
        worst = Number.isNaN(e) ? Infinity : e;
        at = i;
      }
    }
    throw new Error(
      `${what}: relative error ${err} > ${tol} (worst at [${at}]: got ${a[at]}, expected ${b[at]})`,
    );
  }
  return err;
}

/** Tracks the worst error seen per key, for a summary line at the end of a test. */
export class Worst {
  #m = new Map<string, number>();
  add(key: string, err: number): void {
    this.#m.set(key, Math.max(this.#m.get(key) ?? 0, err));
  }
  get(key: string): number {
    return this.#m.get(key) ?? 0;
  }
  report(title: string): void {
    const parts = [...this.#m].map(([k, v]) => `${k}: ${v.toExponential(2)}`);
    console.log(`${title}: worst relative error ${parts.join(", ")}`);
  }
}

/** A unit vector of length d orthogonal to the unit vector u (d >= 2), random. */
export function orthogonalUnit(rng: Rng, u: ArrayLike<number>): Float64Array {
  const d = u.length;
  for (;;) {
    const v = randomArray(rng, d);
    let dot = 0;
    for (let i = 0; i < d; ++i) dot += v[i] * u[i];
    for (let i = 0; i < d; ++i) v[i] -= dot * u[i];
    let n = 0;
    for (let i = 0; i < d; ++i) n += v[i] * v[i];
    n = Math.sqrt(n);
    if (n > 1e-3) {
      for (let i = 0; i < d; ++i) v[i] /= n;
      return v;
    }
  }
}

/** Euclidean norm of a[off, off + len). */
export function norm(a: ArrayLike<number>, off = 0, len = a.length): number {
  let s = 0;
  for (let i = 0; i < len; ++i) s += a[off + i] * a[off + i];
  return Math.sqrt(s);
}

/** Whether every element of a[from, to) is finite. */
export function allFinite(a: ArrayLike<number>, from = 0, to = a.length): boolean {
  for (let i = from; i < to; ++i) if (!Number.isFinite(a[i])) return false;
  return true;
}

/** Whether every element of a[from, to) is NaN or infinite. */
export function allNonFinite(a: ArrayLike<number>, from = 0, to = a.length): boolean {
  for (let i = from; i < to; ++i) if (Number.isFinite(a[i])) return false;
  return true;
}

/** Whether `cmd args` runs and exits 0 (false where it cannot be started). */
export async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}
