/**
 * An SVG of 2-D features, in the manner of Figure 2 of the L-Softmax paper: one dot per sample
 * coloured by its class, and each class weight's direction as a ray from the origin.
 *
 * @example
 * ```ts
 * import { featurePlot } from "./feature_plot.ts";
 * const svg = featurePlot({
 *   title: "two classes",
 *   points: new Float32Array([1, 0, 0, 1]),
 *   labels: new Int32Array([0, 1]),
 *   weights: new Float32Array([1, 0, 0, 1]),
 *   classes: ["a", "b"],
 * });
 * console.log(svg.startsWith("<svg"));
 * ```
 * @module
 */

/** What a feature plot shows. */
export interface FeaturePlot {
  /** The caption above the plot. */
  title: string;
  /** The features, [N, 2] row-major. */
  points: Float32Array;
  /** The class of each feature. */
  labels: Int32Array;
  /**
   * The class weights, [C K, 2] row-major (K = `subcenters`): each row is drawn as a ray along
   * its direction in its class's colour, rows jK to jK + K - 1 being class j's.
   */
  weights: Float32Array;
  /** The C class names, for the legend. */
  classes: string[];
  /** The rows of `weights` per class (sub-center ArcFace's K); 1 by default. */
  subcenters?: number;
}

// Tableau's ten colours (matplotlib's default cycle), one per class.
const COLOURS = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

function escape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** The SVG document of a feature plot (480 × 520 pixels, with its legend on the right). */
export function featurePlot(
  { title, points, labels, weights, classes, subcenters = 1 }: FeaturePlot,
): string {
  const size = 400, pad = 40, cx = pad + size / 2, cy = 40 + size / 2;
  // Scale so that 99% of the points fit: a few far outliers should not shrink the picture.
  const radii = Array.from(labels, (_, i) => Math.hypot(points[2 * i], points[2 * i + 1]))
    .sort((a, b) => a - b);
  const r = radii[Math.floor(0.99 * (radii.length - 1))] || 1;
  const k = size / 2 / r;
  const px = (x: number) => (cx + k * x).toFixed(1), py = (y: number) => (cy - k * y).toFixed(1);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size + 2 * pad + 140}" ` +
    `height="${size + 80}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${cx}" y="24" text-anchor="middle" font-size="15">${escape(title)}</text>`,
    `<rect x="${pad}" y="40" width="${size}" height="${size}" fill="none" stroke="#ccc"/>`,
    `<g fill-opacity="0.55">`,
  ];
  for (let i = 0; i < labels.length; i++) {
    const x = points[2 * i], y = points[2 * i + 1];
    if (Math.abs(x) > r * 1.02 || Math.abs(y) > r * 1.02) continue; // outside the frame
    out.push(`<circle cx="${px(x)}" cy="${py(y)}" r="1.6" fill="${COLOURS[labels[i] % 10]}"/>`);
  }
  out.push(`</g>`);
  for (let j = 0; j < classes.length * subcenters; j++) {
    const wx = weights[2 * j], wy = weights[2 * j + 1], n = Math.hypot(wx, wy) || 1;
    const colour = COLOURS[Math.floor(j / subcenters) % 10];
    out.push(
      `<line x1="${cx}" y1="${cy}" x2="${px((r * wx) / n)}" y2="${py((r * wy) / n)}" ` +
        `stroke="${colour}" stroke-width="2.5"/>`,
      `<line x1="${cx}" y1="${cy}" x2="${px((r * wx) / n)}" y2="${py((r * wy) / n)}" ` +
        `stroke="black" stroke-width="0.6"/>`,
    );
  }
  classes.forEach((name, j) => {
    const y = 60 + 20 * j;
    out.push(
      `<circle cx="${size + pad + 20}" cy="${y - 4}" r="5" fill="${COLOURS[j % 10]}"/>`,
      `<text x="${size + pad + 32}" y="${y}">${escape(name)}</text>`,
    );
  });
  out.push(
    `<text x="${size + pad + 14}" y="${60 + 20 * classes.length + 10}" fill="#555">` +
      `lines: class weights</text>`,
    `</svg>`,
  );
  return out.join("\n") + "\n";
}
