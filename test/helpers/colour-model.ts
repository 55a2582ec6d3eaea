import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { type Classifier, functionClassifier } from '../../src/engine/model/classifier.js';
import { InProcessCompute, type ModelCompute } from '../../src/jobs/serving/compute.js';

/** Shape of the test model's input: small so APGD runs in milliseconds. */
export const SHAPE: [number, number, number] = [8, 8, 3];
export const CLASS_NAMES = ['red', 'green', 'blue'];

/**
 * A linear model on channel means: logit_k = 6 * (mean of channel k) - 3 * (mean of all channels).
 * A pure red image scores red highest; gradients are exact, so attacks behave predictably.
 */
export function colourModel(card: { oodThreshold?: number; temperature?: number } = {}): Classifier {
  return functionClassifier(
    { name: 'colour', inputShape: SHAPE, numClasses: 3, classNames: CLASS_NAMES, epsOut: 0.5, ...card },
    (x) =>
      tf.tidy(() => {
        const perChannel = tf.mean(x, [1, 2]) as tf.Tensor2D;
        const overall = tf.mean(perChannel, 1, true);
        return tf.sub(tf.mul(perChannel, 6), tf.mul(overall, 3)) as tf.Tensor2D;
      }),
  );
}

/** A PNG of a uniform colour (RGB bytes) of the given size. */
export async function solidPng(
  rgb: [number, number, number],
  width = SHAPE[1],
  height = SHAPE[0],
): Promise<Uint8Array<ArrayBuffer>> {
  const buffer = await sharp({
    create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } },
  })
    .png()
    .toBuffer();
  return new Uint8Array(buffer);
}

export function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

/** Softmax of logits / temperature, in float64, for checking answers independently of tfjs. */
export function softmax(logits: number[], temperature = 1): number[] {
  const scaled = logits.map((l) => l / temperature);
  const top = Math.max(...scaled);
  const exp = scaled.map((l) => Math.exp(l - top));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp.map((e) => e / sum);
}

/** The colour model's logits for a uniform image of `rgb` bytes. */
export function colourLogits(rgb: [number, number, number]): number[] {
  const means = rgb.map((v) => v / 255);
  const overall = (means[0] + means[1] + means[2]) / 3;
  return means.map((m) => 6 * m - 3 * overall);
}

/**
 * The in-process compute of `models` whose forward passes wait until the test opens the gate, so
 * tests can fill the batch queue deterministically.
 */
export function gatedCompute(models: ReadonlyMap<string, Classifier>) {
  const inner = new InProcessCompute(models);
  const gates: Array<() => void> = [];
  const passes: number[] = [];
  const compute: ModelCompute = {
    probabilities: async (model, images, count, temperatures) => {
      passes.push(count);
      await new Promise<void>((resolve) => gates.push(resolve));
      return inner.probabilities(model, images, count, temperatures);
    },
    logits: (...args) => inner.logits(...args),
    worstCase: (...args) => inner.worstCase(...args),
    counterfactuals: (...args) => inner.counterfactuals(...args),
    close: async () => {},
  };
  /** Opens every gate now and from now on. */
  const open = () => {
    compute.probabilities = (model, images, count, temperatures) => {
      passes.push(count);
      return inner.probabilities(model, images, count, temperatures);
    };
    for (const gate of gates.splice(0)) gate();
  };
  return { compute, passes, open };
}
