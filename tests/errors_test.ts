// errors_test.ts: every bad input to forward/backward is rejected with the right error class
// (TypeError for wrong types, RangeError for out-of-range values, Error for an unavailable
// backend) and a message naming the argument, what was expected and what came; after each, a
// valid call still works.

import assert from "node:assert/strict";
import { backward, forward, MAX_MARGIN } from "../mod.ts";
import { cudaAvailable, info } from "./check.ts";
import { assertClose, randomProblem, Rng, rowScale } from "./helpers.ts";
import { referenceBackward, referenceForward } from "./reference.ts";

const rng = new Rng(401);
// N = 3, D = 2, C = 4.
const P = randomProblem(rng, 3, 2, 4);
const OK = { margin: 3, lambda: 0.5, backend: "cpu" as const };

/** A valid call after an error: both ops, checked against the reference. */
function validCallWorks(): void {
  const { logits } = forward(P.x, P.w, P.labels, OK);
  const ref = referenceForward(P.x, P.w, P.labels, OK);
  assertClose(logits, ref, 1e-12, "valid forward after an error", rowScale(ref, 3));
  const { gradX } = backward(P.x, P.w, P.labels, P.g, OK);
  const rb = referenceBackward(P.x, P.w, P.labels, P.g, OK);
  assertClose(gradX, rb.gradX, 1e-12, "valid backward after an error", rowScale(rb.gradX, 3));
}

type ErrorClass = typeof TypeError | typeof RangeError | typeof Error;

interface Case {
  what: string;
  call: () => unknown;
  cls: ErrorClass;
  /** Substrings the message must contain: the argument's name, and the value that came. */
  mentions: string[];
}

function expectError(c: Case): void {
  let thrown: unknown;
  try {
    c.call();
  } catch (e) {
    thrown = e;
  }
  assert.ok(thrown !== undefined, `${c.what}: expected ${c.cls.name}, nothing was thrown`);
  assert.ok(thrown instanceof Error, `${c.what}: threw a non-Error ${String(thrown)}`);
  const e = thrown as Error;
  if (c.cls === Error) {
    assert.ok(e instanceof Error, `${c.what}: expected an Error, got ${e.name}`);
  } else {
    assert.ok(e instanceof c.cls, `${c.what}: expected ${c.cls.name}, got ${e.name}: ${e.message}`);
  }
  for (const m of c.mentions) {
    assert.ok(e.message.includes(m), `${c.what}: message "${e.message}" does not mention "${m}"`);
  }
  validCallWorks();
}

const fwd = (x: unknown, w: unknown, labels: unknown, o: unknown) => () =>
  forward(x as Float64Array, w as Float64Array, labels as Int32Array, o as typeof OK);
const bwd = (x: unknown, w: unknown, labels: unknown, g: unknown, o: unknown) => () =>
  backward(
    x as Float64Array,
    w as Float64Array,
    labels as Int32Array,
    g as Float64Array,
    o as typeof OK,
  );

/** Both ops with the same bad x, w, labels or options. */
function bothOps(
  what: string,
  x: unknown,
  w: unknown,
  labels: unknown,
  o: unknown,
  cls: ErrorClass,
  mentions: string[],
): Case[] {
  return [
    { what: `forward: ${what}`, call: fwd(x, w, labels, o), cls, mentions },
    { what: `backward: ${what}`, call: bwd(x, w, labels, P.g, o), cls, mentions },
  ];
}

Deno.test("errors: wrong types are TypeErrors naming the argument", () => {
  const cases: Case[] = [
    ...bothOps("x a plain array", Array.from(P.x), P.w, P.labels, OK, TypeError, ["x"]),
    ...bothOps("x null", null, P.w, P.labels, OK, TypeError, ["x"]),
    ...bothOps("x an Int32Array", new Int32Array(6), P.w, P.labels, OK, TypeError, ["x"]),
    ...bothOps("w a plain array", P.x, Array.from(P.w), P.labels, OK, TypeError, ["w"]),
    ...bothOps("w float32, x float64", P.x, Float32Array.from(P.w), P.labels, OK, TypeError, [
      "w",
    ]),
    ...bothOps(
      "x float32, w float64",
      Float32Array.from(P.x),
      P.w,
      P.labels,
      OK,
      TypeError,
      ["w"],
    ),
    ...bothOps("labels a Float64Array", P.x, P.w, Float64Array.from(P.labels), OK, TypeError, [
      "labels",
    ]),
    ...bothOps("labels a plain array", P.x, P.w, Array.from(P.labels), OK, TypeError, ["labels"]),
    ...bothOps("labels a Uint32Array", P.x, P.w, Uint32Array.from(P.labels), OK, TypeError, [
      "labels",
    ]),
    ...bothOps("margin 2.5", P.x, P.w, P.labels, { ...OK, margin: 2.5 }, TypeError, [
      "margin",
      "2.5",
    ]),
    ...bothOps("margin a string", P.x, P.w, P.labels, { ...OK, margin: "4" }, TypeError, [
      "margin",
    ]),
    ...bothOps("margin missing", P.x, P.w, P.labels, { lambda: 0 }, TypeError, ["margin"]),
    ...bothOps("margin NaN", P.x, P.w, P.labels, { ...OK, margin: NaN }, TypeError, ["margin"]),
    ...bothOps("lambda a string", P.x, P.w, P.labels, { ...OK, lambda: "1" }, TypeError, [
      "lambda",
    ]),
    ...bothOps("lambda missing", P.x, P.w, P.labels, { margin: 2 }, TypeError, ["lambda"]),
    ...bothOps("features 1.5", P.x, P.w, P.labels, { ...OK, features: 1.5 }, TypeError, [
      "features",
    ]),
    ...bothOps("options missing", P.x, P.w, P.labels, undefined, TypeError, ["options"]),
    {
      what: "backward: gradLogits float32 with float64 x",
      call: bwd(P.x, P.w, P.labels, Float32Array.from(P.g), OK),
      cls: TypeError,
      mentions: ["gradLogits"],
    },
    {
      what: "backward: gradLogits a plain array",
      call: bwd(P.x, P.w, P.labels, Array.from(P.g), OK),
      cls: TypeError,
      mentions: ["gradLogits"],
    },
    {
      what: "backward: gradLogits missing",
      call: bwd(P.x, P.w, P.labels, undefined, OK),
      cls: TypeError,
      mentions: ["gradLogits"],
    },
  ];
  for (const c of cases) expectError(c);
});

Deno.test("errors: out-of-range values are RangeErrors naming the argument and the value", () => {
  const labelsAt = (i: number, v: number) => {
    const l = P.labels.slice();
    l[i] = v;
    return l;
  };
  const cases: Case[] = [
    ...bothOps("label = C", P.x, P.w, labelsAt(2, 4), OK, RangeError, ["labels[2]", "4"]),
    ...bothOps("label -1", P.x, P.w, labelsAt(0, -1), OK, RangeError, ["labels[0]", "-1"]),
    ...bothOps("label 2^31-1", P.x, P.w, labelsAt(1, 2 ** 31 - 1), OK, RangeError, [
      "labels[1]",
      "2147483647",
    ]),
    ...bothOps("labels empty", new Float64Array(0), P.w, new Int32Array(0), OK, RangeError, [
      "labels",
    ]),
    ...bothOps("x length 7, N 3", new Float64Array(7), P.w, P.labels, OK, RangeError, ["x", "7"]),
    ...bothOps("x empty", new Float64Array(0), P.w, P.labels, OK, RangeError, ["x"]),
    ...bothOps("w length 5, D 2", P.x, new Float64Array(5), P.labels, OK, RangeError, ["w", "5"]),
    ...bothOps("w empty", P.x, new Float64Array(0), P.labels, OK, RangeError, ["w"]),
    ...bothOps("features 3 (x has 3 * 2)", P.x, P.w, P.labels, { ...OK, features: 3 }, RangeError, [
      "x",
    ]),
    ...bothOps("features 0", P.x, P.w, P.labels, { ...OK, features: 0 }, RangeError, [
      "features",
    ]),
    ...bothOps("margin 0", P.x, P.w, P.labels, { ...OK, margin: 0 }, RangeError, ["margin", "0"]),
    ...bothOps("margin -2", P.x, P.w, P.labels, { ...OK, margin: -2 }, RangeError, [
      "margin",
      "-2",
    ]),
    ...bothOps("margin 17", P.x, P.w, P.labels, { ...OK, margin: MAX_MARGIN + 1 }, RangeError, [
      "margin",
      "17",
    ]),
    ...bothOps("lambda -1", P.x, P.w, P.labels, { ...OK, lambda: -1 }, RangeError, [
      "lambda",
      "-1",
    ]),
    ...bothOps("lambda -1e-300", P.x, P.w, P.labels, { ...OK, lambda: -1e-300 }, RangeError, [
      "lambda",
    ]),
    ...bothOps("lambda NaN", P.x, P.w, P.labels, { ...OK, lambda: NaN }, RangeError, [
      "lambda",
      "NaN",
    ]),
    ...bothOps("lambda Infinity", P.x, P.w, P.labels, { ...OK, lambda: Infinity }, RangeError, [
      "lambda",
      "Infinity",
    ]),
    ...bothOps("lambda -Infinity", P.x, P.w, P.labels, { ...OK, lambda: -Infinity }, RangeError, [
      "lambda",
    ]),
    ...bothOps("backend tpu", P.x, P.w, P.labels, { ...OK, backend: "tpu" }, RangeError, [
      "backend",
      "tpu",
    ]),
    ...bothOps("backend cuda:x", P.x, P.w, P.labels, { ...OK, backend: "cuda:x" }, RangeError, [
      "backend",
    ]),
    ...bothOps("backend CPU", P.x, P.w, P.labels, { ...OK, backend: "CPU" }, RangeError, [
      "backend",
    ]),
    {
      what: "backward: gradLogits of N*C - 1 elements",
      call: bwd(P.x, P.w, P.labels, new Float64Array(11), OK),
      cls: RangeError,
      mentions: ["gradLogits", "12", "11"],
    },
    {
      what: "backward: gradLogits of N*C + 1 elements",
      call: bwd(P.x, P.w, P.labels, new Float64Array(13), OK),
      cls: RangeError,
      mentions: ["gradLogits", "13"],
    },
  ];
  for (const c of cases) expectError(c);
});

Deno.test("errors: N*C, N*D or C*D past 2^31 - 1 elements is a RangeError", () => {
  // N*C: N = 65536 samples of D = 1, C = 32769 classes: small inputs, 2^31 + 2^16 logits.
  const n = 65536, c = 32769;
  const x = new Float32Array(n).fill(1), w = new Float32Array(c).fill(1);
  const labels = new Int32Array(n);
  expectError({
    what: "forward N*C = 2^31 + 2^16",
    call: () => forward(x, w, labels, { margin: 2, lambda: 0, backend: "cpu" }),
    cls: RangeError,
    mentions: ["2147483647"],
  });
  expectError({
    what: "backward N*C = 2^31 + 2^16",
    call: () => backward(x, w, labels, new Float32Array(4), { margin: 2, lambda: 0 }),
    cls: RangeError,
    mentions: ["2147483647"],
  });
  // N*D and C*D: real 8 GiB arrays (sizes are measured by the engine, so nothing smaller can
  // claim them). Their pages stay untouched, and so cost no memory, because the checks must
  // reject them from the sizes alone, before any element is read.
  const huge = new Float32Array(2 ** 31);
  expectError({
    what: "forward N*D = 2^31",
    call: () =>
      // N = 2, D = 2^30, C = 1
      forward(huge, huge.subarray(0, 2 ** 30), new Int32Array(2), {
        margin: 2,
        lambda: 0,
        backend: "cpu",
      }),
    cls: RangeError,
    mentions: ["N*D", "2147483647", "2147483648"],
  });
  expectError({
    what: "forward C*D = 2^31",
    call: () =>
      // N = 1, D = 2, C = 2^30
      forward(new Float32Array(2), huge, new Int32Array(1), {
        margin: 2,
        lambda: 0,
        backend: "cpu",
      }),
    cls: RangeError,
    mentions: ["C*D", "2147483647", "2147483648"],
  });
});

Deno.test("errors: an unavailable backend is an Error naming the backend", () => {
  // "cuda:99" names a device that exists nowhere; "cuda" is unavailable where there is no GPU.
  const bad = ["cuda:99", ...(cudaAvailable ? [] : ["cuda", "cuda:0", "cuda:1"])];
  for (const backend of bad) {
    for (
      const c of bothOps(`backend ${backend}`, P.x, P.w, P.labels, { ...OK, backend }, Error, [
        "backend",
        backend,
      ])
    ) {
      expectError(c);
    }
  }
  if (!cudaAvailable) assert.equal(typeof info.cuda.reason, "string");
});
