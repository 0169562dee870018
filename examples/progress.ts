/**
 * A progress bar on stderr: step, loss, accuracy, rate and ETA, redrawn in place on a terminal,
 * else a plain line every tenth of the way (logs and CI).
 *
 * @example
 * ```ts
 * import { Progress } from "./progress.ts";
 * const bar = new Progress("demo", 100, "samples");
 * for (let step = 1; step <= 100; step++) bar.update(step, { loss: 1 / step, accuracy: 0.5 }, 32);
 * bar.done();
 * ```
 * @module
 */

const encoder = new TextEncoder();

/** Formats seconds as m:ss. */
export function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--:--";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** A progress bar for `total` steps of a task named `label`. */
export class Progress {
  readonly #tty = Deno.stderr.isTerminal();
  readonly #start = performance.now();
  #items = 0;
  #nextLine = 0;

  constructor(readonly label: string, readonly total: number, readonly unit = "samples") {}

  /** Records step `step` (1-based) that processed `items` more units, with its metrics. */
  update(step: number, metrics: { loss: number; accuracy: number }, items: number): void {
    this.#items += items;
    const elapsed = (performance.now() - this.#start) / 1000;
    const rate = this.#items / Math.max(elapsed, 1e-9);
    const eta = (elapsed / step) * (this.total - step);
    const width = 24, filled = Math.round((width * step) / this.total);
    const bar = "#".repeat(filled) + "-".repeat(width - filled);
    const text = `${this.label} [${bar}] ${step}/${this.total}  loss ${metrics.loss.toFixed(4)}  ` +
      `acc ${(100 * metrics.accuracy).toFixed(1)}%  ${rate.toFixed(0)} ${this.unit}/s  ` +
      `${clock(elapsed)} elapsed, ETA ${clock(eta)}`;
    if (this.#tty) Deno.stderr.writeSync(encoder.encode(`\r\x1b[2K${text}`));
    else if (step >= this.#nextLine || step === this.total) {
      Deno.stderr.writeSync(encoder.encode(text + "\n"));
      this.#nextLine = step + Math.max(1, Math.floor(this.total / 10));
    }
  }

  /** Ends the bar's line on a terminal. */
  done(): void {
    if (this.#tty) Deno.stderr.writeSync(encoder.encode("\n"));
  }
}
