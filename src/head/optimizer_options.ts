// The optimizer's options read and checked by name, with their defaults: SGD, Adam and AdamW.

import { describe } from "../../ffi/arrays.ts";
import { checkNumber, readOptions } from "../checks.ts";
import type { AdamSettings, OptimizerSettings, SgdSettings } from "./options.ts";
const SGD_KEYS = ["type", "lr", "momentum", "weightDecay", "nesterov", "clipNorm"] as const;
const ADAM_KEYS = ["type", "lr", "betas", "eps", "weightDecay", "amsgrad", "clipNorm"] as const;

function checkClip(v: unknown): { clipNorm?: number } {
  if (v === undefined) return {};
  const clipNorm = checkNumber("optimizer.clipNorm", v, 0);
  if (clipNorm === 0) {
    throw new RangeError("optimizer.clipNorm: expected a number > 0 (or none: no clipping), got 0");
  }
  return { clipNorm };
}

function checkBeta(name: string, v: unknown): number {
  const b = checkNumber(name, v, 0);
  if (b >= 1) throw new RangeError(`${name}: expected a number in [0, 1), got ${b}`);
  return b;
}

function checkAdam(type: "adam" | "adamw", v: object): AdamSettings {
  const o = readOptions("optimizer", v, ADAM_KEYS);
  const betas = o.betas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2) {
    throw new TypeError(`optimizer.betas: expected [beta1, beta2], got ${describe(betas)}`);
  }
  const amsgrad = o.amsgrad ?? false;
  if (typeof amsgrad !== "boolean") {
    throw new TypeError(`optimizer.amsgrad: expected true or false, got ${describe(amsgrad)}`);
  }
  return {
    type,
    lr: checkNumber("optimizer.lr", o.lr ?? 1e-3, 0),
    betas: [checkBeta("optimizer.betas[0]", betas[0]), checkBeta("optimizer.betas[1]", betas[1])],
    eps: checkNumber("optimizer.eps", o.eps ?? 1e-8, 0),
    weightDecay: checkNumber(
      "optimizer.weightDecay",
      o.weightDecay ?? (type === "adamw" ? 0.01 : 0),
      0,
    ),
    amsgrad,
    ...checkClip(o.clipNorm),
  };
}

/** The optimizer's options with their defaults, each checked by name. */
export function checkOptimizer(v: unknown): OptimizerSettings {
  const type = typeof v === "object" && v !== null ? (v as { type?: unknown }).type : undefined;
  if (type === "adam" || type === "adamw") return checkAdam(type, v as object);
  if (type !== undefined && type !== "sgd") {
    throw new RangeError(
      `optimizer.type: expected "sgd", "adam" or "adamw", got ${describe(type)}`,
    );
  }
  return checkSgd(v);
}

function checkSgd(v: unknown): SgdSettings {
  const o = readOptions("optimizer", v ?? { lr: 0.01 }, SGD_KEYS);
  const sgd = {
    type: "sgd" as const,
    lr: checkNumber("optimizer.lr", o.lr, 0),
    momentum: checkNumber("optimizer.momentum", o.momentum ?? 0, 0),
    weightDecay: checkNumber("optimizer.weightDecay", o.weightDecay ?? 0, 0),
    nesterov: o.nesterov ?? false,
  };
  if (typeof sgd.nesterov !== "boolean") {
    throw new TypeError(
      `optimizer.nesterov: expected true or false, got ${describe(sgd.nesterov)}`,
    );
  }
  if (sgd.nesterov && sgd.momentum === 0) {
    throw new RangeError("optimizer.nesterov: expected momentum > 0 with Nesterov momentum, got 0");
  }
  return { ...sgd, ...checkClip(o.clipNorm) } as SgdSettings;
}
