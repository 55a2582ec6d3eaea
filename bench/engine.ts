/**
 * Engine benchmark: smallCnn, batch 64, 32x32x3 on the selected backend (RATIO_BACKEND forces one).
 * Prints forward, input-gradient and training-step times with the project's Conv2D gradients, and the
 * input gradient with tfjs's stock gradients measured in the same run as the baseline.
 *
 *   npm run bench:engine -- --json [--batch 64] [--repeats 5] [--profile]
 *
 * --profile prints the kernels that dominate one training step (tf.profile), slowest first.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/engine/backend.js';
import { useFastConvGradients, useStockConvGradients } from '../src/engine/gradients/register.js';
import { smallCnn } from '../src/training/architectures.js';
import { Rng } from '../src/util/random.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    batch: { type: 'string', default: '64' },
    repeats: { type: 'string', default: '5' },
    profile: { type: 'boolean', default: false },
  },
});
const batch = Number(args.batch);
const repeats = Number(args.repeats);
if (!Number.isInteger(batch) || batch < 1)
  throw new Error(`'--batch' must be a positive integer, got ${args.batch}`);
if (!Number.isInteger(repeats) || repeats < 1) {
  throw new Error(`'--repeats' must be a positive integer, got ${args.repeats}`);
}

const backend = await initBackend();
const numClasses = 10;
const model = smallCnn({ numClasses, inputShape: [32, 32, 3] });
const rng = new Rng(1);
const pixels = new Float32Array(batch * 32 * 32 * 3);
for (let i = 0; i < pixels.length; i++) pixels[i] = rng.next();
const x = tf.tensor4d(pixels, [batch, 32, 32, 3]);
const labels = tf.oneHot(
  tf.tensor1d(
    Array.from({ length: batch }, () => rng.int(numClasses)),
    'int32',
  ),
  numClasses,
);
const optimizer = tf.train.sgd(0.01);

function loss(logits: tf.Tensor): tf.Scalar {
  return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar;
}

function forward(): void {
  tf.tidy(() => (model.predict(x, { batchSize: batch }) as tf.Tensor).dataSync());
}

function inputGradient(): void {
  tf.tidy(() =>
    tf
      .grad((input: tf.Tensor) => loss(model.apply(input) as tf.Tensor))(x)
      .dataSync(),
  );
}

function trainStep(): void {
  const value = optimizer.minimize(() => loss(model.apply(x, { training: true }) as tf.Tensor), true);
  value?.dataSync();
  value?.dispose();
}

/** Median wall time of `repeats` runs after one warm-up run (which builds XNNPACK operators). */
function medianMs(run: () => void): number {
  run();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    run();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return Math.round(times[Math.floor(times.length / 2)] * 10) / 10;
}

function log(message: string): void {
  if (!args.json) console.error(message);
}

log(`backend ${backend.name} (threads ${backend.threads}, simd ${backend.simd}), batch ${batch}`);
const forwardMs = medianMs(forward);
log(`forward ${forwardMs} ms`);
const inputGradMs = medianMs(inputGradient);
log(`input gradient ${inputGradMs} ms`);
const trainStepMs = medianMs(trainStep);
log(`train step ${trainStepMs} ms`);

useStockConvGradients();
const stockInputGradMs = medianMs(inputGradient);
log(`input gradient, stock tfjs gradients ${stockInputGradMs} ms`);
if (backend.fastGradients) useFastConvGradients(backend.name);

if (args.profile) {
  const profile = await tf.profile(() => trainStep());
  const byKernel = new Map<string, number>();
  for (const kernel of profile.kernels) {
    // wasm and cpu report a number; only WebGL can report an error object or a promise.
    const ms = typeof kernel.kernelTimeMs === 'number' ? kernel.kernelTimeMs : 0;
    byKernel.set(kernel.name, (byKernel.get(kernel.name) ?? 0) + ms);
  }
  const top = [...byKernel.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15);
  console.error('kernel time in one training step (ms), nested kernels counted in their callers too:');
  for (const [name, ms] of top) console.error(`  ${name.padEnd(24)} ${ms.toFixed(1)}`);
}

const result = {
  backend: backend.name,
  threads: backend.threads,
  simd: backend.simd,
  batch,
  forward_ms: forwardMs,
  input_grad_ms: inputGradMs,
  train_step_ms: trainStepMs,
  stock_input_grad_ms: stockInputGradMs,
  input_grad_over_forward: Math.round((inputGradMs / forwardMs) * 100) / 100,
  train_step_over_forward: Math.round((trainStepMs / forwardMs) * 100) / 100,
  stock_over_fast_input_grad: Math.round((stockInputGradMs / inputGradMs) * 100) / 100,
};
console.log(args.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
tf.dispose([x, labels]);
model.dispose();
