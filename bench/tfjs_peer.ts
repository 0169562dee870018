/**
 * The benchmark's peer: L-Softmax composed from TensorFlow.js ops on its CPU backend, with
 * TensorFlow.js's autodiff for the gradients: what a Deno user would write without this module.
 * Margin 4 uses the Caffe layer's closed form.
 *
 * @example
 * ```ts
 * import { tfjsLSoftmaxStep } from "./tfjs_peer.ts";
 * const step = await tfjsLSoftmaxStep(
 *   new Float32Array(4), new Float32Array(6), new Int32Array([0, 1]), new Float32Array(6),
 *   { n: 2, d: 2, c: 3, margin: 4, lambda: 0.5 },
 * );
 * step();
 * ```
 * @module
 */

import * as tf from "@tensorflow/tfjs";

/** Sizes and settings of the composed op. */
export interface PeerShape {
  n: number;
  d: number;
  c: number;
  margin: 4;
  lambda: number;
}

/** Returns one forward+backward step of the composed op on fixed inputs. */
export async function tfjsLSoftmaxStep(
  x: Float32Array,
  w: Float32Array,
  labels: Int32Array,
  gradLogits: Float32Array,
  { n, d, c, lambda }: PeerShape,
): Promise<() => void> {
  await tf.setBackend("cpu");
  const X = tf.tensor2d(x, [n, d]);
  const W = tf.tensor2d(w, [c, d]);
  const Y = tf.tensor1d(labels, "int32");
  const G = tf.tensor2d(gradLogits, [n, c]);
  const oneHot = tf.oneHot(Y, c).toFloat();

  const lsoftmax = (xs: tf.Tensor2D, ws: tf.Tensor2D): tf.Tensor2D => {
    const logits = tf.matMul(xs, ws, false, true);
    const wy = tf.gather(ws, Y);
    const dot = tf.sum(tf.mul(xs, wy), 1);
    const nx = tf.norm(xs, "euclidean", 1);
    const nw = tf.norm(wy, "euclidean", 1);
    const cos = tf.clipByValue(tf.div(dot, tf.mul(nx, nw)), -1, 1);
    const c2 = tf.square(cos);
    const s3 = tf.mul(tf.sign(cos), tf.sign(tf.sub(tf.mul(c2, 2), 1)));
    const t4 = tf.add(tf.sub(tf.mul(tf.square(c2), 8), tf.mul(c2, 8)), 1);
    const psi = tf.add(tf.mul(s3, t4), tf.sub(tf.add(tf.mul(tf.sign(cos), 2), s3), 3));
    const target = tf.div(tf.add(tf.mul(dot, lambda), tf.mul(tf.mul(nx, nw), psi)), 1 + lambda);
    return tf.add(logits, tf.mul(oneHot, tf.expandDims(tf.sub(target, dot), 1)));
  };
  const grads = tf.grads((xs: tf.Tensor, ws: tf.Tensor) =>
    tf.sum(tf.mul(lsoftmax(xs as tf.Tensor2D, ws as tf.Tensor2D), G))
  );
  return () => {
    tf.tidy(() => {
      const [gx, gw] = grads([X, W]);
      gx.dataSync();
      gw.dataSync();
    });
  };
}
