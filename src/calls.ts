// A native call as a value, and the two ways a sequence of them runs: on the JavaScript thread,
// or off it (each call on a thread of Deno's pool, awaited before the next). A sequence is a
// generator of calls, so that it is written once for both.

import type { Call, NativeContext, Tensor } from "../ffi/context.ts";
import type { OpSpec } from "../ffi/ops.ts";

/**
 * One op call on a context: host arrays (`host`, checked against `call`) or context memory.
 */
export interface NativeCall {
  ctx: NativeContext;
  op: OpSpec;
  call: Call;
  tensors: readonly Tensor[];
  host?: true;
}

/** Runs a sequence of calls on the JavaScript thread; returns what the sequence returns. */
export function runCalls<R>(calls: Generator<NativeCall, R, void>): R {
  let r = calls.next();
  while (!r.done) {
    const { ctx, op, call, tensors, host } = r.value;
    if (host) ctx.run(op, call, tensors as (ArrayBufferView | null)[]);
    else ctx.call(op, call, tensors);
    r = calls.next();
  }
  return r.value;
}

/** Runs a sequence of context-memory calls off the JavaScript thread, one after another. */
export async function runCallsAsync<R>(calls: Generator<NativeCall, R, void>): Promise<R> {
  let r = calls.next();
  while (!r.done) {
    const { ctx, op, call, tensors, host } = r.value;
    if (host) throw new Error(`${op.device}: host arrays run on the JavaScript thread only`);
    await ctx.callAsync(op, call, tensors);
    r = calls.next();
  }
  return r.value;
}

/** Asynchronous jobs run one after another, in the order they were queued. */
export class CallQueue {
  #tail: Promise<unknown> = Promise.resolve();
  /** Jobs queued and not finished. */
  pending = 0;

  /** Runs `job` once every job queued before it has finished; then `done`, whatever the outcome. */
  push<T>(job: () => Promise<T>, done: () => void): Promise<T> {
    this.pending++;
    const run = this.#tail.then(job).finally(() => {
      this.pending--;
      done();
    });
    this.#tail = run.catch(() => {});
    return run;
  }

  /** Resolves once every job queued so far has finished. */
  async drained(): Promise<void> {
    while (this.pending > 0) await this.#tail;
  }
}
