// adaptive_specs.ts: the adaptive kinds' options the tests share (the loss's and the head's, with
// and without cross-entropy options, in process and across ranks), small scales so that every
// clip and fallback is reached at a few rows.

import type { AdaptiveSpec } from "./reference_adaptive.ts";

/** One of each adaptive kind. */
export const SPECS: AdaptiveSpec[] = [
  { kind: "subcenter", scale: 8, margin: 0.5, subcenters: 3 },
  { kind: "adaface", scale: 8, margin: 0.4, h: 0.333, tAlpha: 0.3, batchMean: 1.5, batchStd: 0.5 },
  { kind: "curricularface", scale: 8, margin: 0.5, tAlpha: 0.3, t: 0.2 },
  {
    kind: "magface",
    scale: 8,
    lowerMargin: 0.45,
    upperMargin: 0.8,
    lowerNorm: 1,
    upperNorm: 3,
    lambdaG: 2,
  },
];

/** The rows of W per class: sub-center ArcFace's K, else 1. */
export const rowsPerClass = (
  o: AdaptiveSpec,
): number => (o.kind === "subcenter" ? o.subcenters! : 1);
