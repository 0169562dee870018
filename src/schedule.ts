// The λ (beta) schedule of the Caffe layer: λ(t) = max(base·(1 + gamma·t)^(-power), lambdaMin).

import { checkNumber, describe } from "./checks.ts";

/** The λ schedule λ(t) = max(base·(1 + gamma·t)^(-power), lambdaMin). */
export interface LambdaSchedule {
  /**
   * λ at step 0 (1000 in the example of the TensorFlow L-Softmax op this module reimplements).
   */
  base: number;
  /** How fast λ decays (0.000025). */
  gamma: number;
  /** The decay's exponent (35). */
  power: number;
  /** The floor λ never goes below (0). */
  lambdaMin: number;
}

/** The schedule's options, as the layer and the head take them. */
export const SCHEDULE_KEYS = ["base", "gamma", "power", "lambdaMin"] as const;

export function checkSchedule(s: unknown): LambdaSchedule {
  if (typeof s !== "object" || s === null) {
    throw new TypeError(
      `schedule: expected { base, gamma, power, lambdaMin }, got ${describe(s)}`,
    );
  }
  const o = s as Record<string, unknown>;
  return {
    base: checkNumber("base", o.base, 0),
    gamma: checkNumber("gamma", o.gamma, 0),
    power: checkNumber("power", o.power, 0),
    lambdaMin: checkNumber("lambdaMin", o.lambdaMin, 0),
  };
}

export function lambdaOf(step: number, s: LambdaSchedule): number {
  return Math.max(s.base * Math.pow(1 + s.gamma * step, -s.power), s.lambdaMin);
}
