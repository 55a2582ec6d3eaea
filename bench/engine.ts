/**
 * Engine benchmark: one of the training architectures (small-cnn, resnet18, wrn), batch 64, 32x32x3 on
 * the selected backend (RATIO_BACKEND forces one). Prints forward, input-gradient and training-step
 * times with the project's gradients, each also in GFLOP/s (convolution and dense multiply-adds x 2 of
 * one image, as the peer counts them; input gradient = 2 forwards, training step = 3), and the input
 * gradient with tfjs's stock gradients and kernels measured in the same run as the baseline (medians
 * over --repeats rounds). Where the oneDNN kernels run, the same three again on the wasm-native kernels
 * (`wasm_native_*`), round-robin in the same rounds.
 *
 *   npm run bench:engine -- --json [--architecture small-cnn|resnet18|wrn] [--width 1] [--depth 16]
 *        [--widen 4] [--batch 64] [--repeats 5] [--profile] [--peer] [--no-baseline]
 *
 * --profile prints the kernels that dominate one training step (wall time per kernel), slowest first.
 * --peer runs PyTorch's same network (../shared/peer/torch_bench.py, Debian's python3-torch) with the
 * same threads and batch after our rounds, and prints our times over its (`over_peer`).
 * --no-baseline skips the stock and wasm-native rounds (slow on residual networks).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/engine/backend/backend.js';
import { useFastConvGradients, useStockConvGradients } from '../src/engine/backend/gradients/register.js';
import type { OnednnAddon } from '../src/engine/backend/onednn/addon.js';
import { installOnednnKernels, uninstallOnednnKernels } from '../src/engine/backend/onednn/kernels.js';
import { buildArchitecture } from '../src/training/architectures.js';
import { Rng } from '../src/util/random.js';
import { convAndDenseFlops } from './flops.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    batch: { type: 'string', default: '64' },
    repeats: { type: 'string', default: '5' },
    profile: { type: 'boolean', default: false },
    peer: { type: 'boolean', default: false },
    architecture: { type: 'string', default: 'small-cnn' },
    width: { type: 'string', default: '1' },
    depth: { type: 'string', default: '16' },
    widen: { type: 'string', default: '4' },
    'no-baseline': { type: 'boolean', default: false },
  },
});
const ARCHITECTURES = ['small-cnn', 'resnet18', 'wrn'] as const;
type Architecture = (typeof ARCHITECTURES)[number];
const architecture = args.architecture as Architecture;
if (!ARCHITECTURES.includes(architecture)) {
  throw new Error(`'--architecture' must be one of ${ARCHITECTURES.join(', ')}, got '${args.architecture}'`);
}
const width = Number(args.width);
const depth = Number(args.depth);
const widen = Number(args.widen);
if (!(width > 0)) throw new Error(`'--width' must be > 0, got ${args.width}`);
const batch = Number(args.batch);
const repeats = Number(args.repeats);
if (!Number.isInteger(batch) || batch < 1)
  throw new Error(`'--batch' must be a positive integer, got ${args.batch}`);
if (!Number.isInteger(repeats) || repeats < 1) {
  throw new Error(`'--repeats' must be a positive integer, got ${args.repeats}`);
}

const backend = await initBackend();
const numClasses = 10;
const model = buildArchitecture(architecture === 'wrn' ? `wrn-${depth}-${widen}` : architecture, {
  numClasses,
  inputShape: [32, 32, 3],
  width,
});

const flopsPerImage = convAndDenseFlops(model);
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

/**
 * Each measurement reads its result back (dataSync) so that lazy backends finish the work, and reads it
 * outside tf.tidy: tidy walks whatever its callback returns element by element looking for tensors,
 * which for the 196,608 values of an input gradient costs ~70 ms of pure JavaScript that no
 * engine user pays (they keep the tensor).
 */
function readAndDispose(result: tf.Tensor): void {
  result.dataSync();
  result.dispose();
}

function forward(): void {
  readAndDispose(tf.tidy(() => model.predict(x, { batchSize: batch }) as tf.Tensor));
}

function inputGradient(): void {
  readAndDispose(tf.tidy(() => tf.grad((input: tf.Tensor) => loss(model.apply(input) as tf.Tensor))(x)));
}

function trainStep(): void {
  const value = optimizer.minimize(() => loss(model.apply(x, { training: true }) as tf.Tensor), true);
  value?.dataSync();
  value?.dispose();
}

function log(message: string): void {
  if (!args.json) console.error(message);
}

function useFastGradientsAgain(): void {
  if (backend.fastGradients) useFastConvGradients(backend.name);
}

/**
 * The measurements, run round-robin (one of each per round) so that a change in machine load hits
 * them all alike: the targets are ratios to the forward time. The first round warms up (XNNPACK
 * operators, wasm memory) and is not counted.
 */
/** The oneDNN addon while its kernels are taken off for the wasm-native measurements. */
let onednnOff: OnednnAddon | null = null;
function wasmNativeKernels(): void {
  onednnOff = uninstallOnednnKernels();
}
function onednnKernelsAgain(): void {
  if (onednnOff) installOnednnKernels(onednnOff);
  onednnOff = null;
}
const baselines = !args['no-baseline'];
const wasmNative =
  baselines && backend.kernels === 'onednn' ? ['forward_ms', 'input_grad_ms', 'train_step_ms'] : [];
const measurements: Array<{ key: string; run: () => void; before?: () => void; after?: () => void }> = [
  { key: 'forward_ms', run: forward },
  { key: 'input_grad_ms', run: inputGradient },
  { key: 'train_step_ms', run: trainStep },
  ...wasmNative.map((key, i) => ({
    key: `wasm_native_${key}`,
    run: [forward, inputGradient, trainStep][i],
    before: wasmNativeKernels,
    after: onednnKernelsAgain,
  })),
  ...(baselines
    ? [
        {
          key: 'stock_input_grad_ms',
          run: inputGradient,
          before: useStockConvGradients,
          after: useFastGradientsAgain,
        },
      ]
    : []),
];
const times = new Map<string, number[]>(measurements.map((m) => [m.key, []]));
log(
  `backend ${backend.name}, kernels ${backend.kernels} (threads ${backend.threads}, simd ${backend.simd}), batch ${batch}`,
);
for (let round = 0; round <= repeats; round++) {
  for (const measurement of measurements) {
    measurement.before?.();
    const start = performance.now();
    measurement.run();
    const elapsed = performance.now() - start;
    measurement.after?.();
    if (round > 0) times.get(measurement.key)!.push(elapsed);
  }
  log(`round ${round}${round === 0 ? ' (warm-up)' : ''} done`);
}

function median(key: string): number {
  const sorted = [...times.get(key)!].sort((a, b) => a - b);
  return Math.round(sorted[Math.floor(sorted.length / 2)] * 10) / 10;
}

const forwardMs = median('forward_ms');
const inputGradMs = median('input_grad_ms');
const trainStepMs = median('train_step_ms');
const stockInputGradMs = baselines ? median('stock_input_grad_ms') : Number.NaN;

/**
 * Wall time per kernel over one training step: every kernel of the backend wrapped with a timer.
 * (tf.profile on wasm reads every kernel's output back to time it, which for the large activations
 * costs more than the kernels.) Kernels called from inside another count in both.
 */
function kernelTimes(run: () => void): { total: number; byKernel: Map<string, number> } {
  const originals = tf.getKernelsForBackend(backend.name);
  const byKernel = new Map<string, number>();
  for (const config of originals) {
    tf.unregisterKernel(config.kernelName, config.backendName);
    tf.registerKernel({
      ...config,
      kernelFunc: (kernelArgs) => {
        const start = performance.now();
        try {
          return config.kernelFunc(kernelArgs);
        } finally {
          const ms = performance.now() - start;
          byKernel.set(config.kernelName, (byKernel.get(config.kernelName) ?? 0) + ms);
        }
      },
    });
  }
  const start = performance.now();
  try {
    run();
  } finally {
    for (const config of originals) {
      tf.unregisterKernel(config.kernelName, config.backendName);
      tf.registerKernel(config);
    }
  }
  return { total: performance.now() - start, byKernel };
}

function printProfile(title: string): void {
  trainStep(); // warm
  const { total, byKernel } = kernelTimes(trainStep);
  const top = [...byKernel.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15);
  console.error(
    `${title}: one training step ${total.toFixed(1)} ms; wall time per kernel (ms), nested counted twice:`,
  );
  for (const [name, ms] of top) console.error(`  ${name.padEnd(32)} ${ms.toFixed(1)}`);
}

if (args.profile) {
  printProfile(`kernels ${backend.kernels}`);
  if (wasmNative.length > 0) {
    wasmNativeKernels();
    printProfile('kernels wasm-native');
    onednnKernelsAgain();
  }
}

interface PeerTimes {
  peer: string;
  threads: number;
  flops_per_image: number;
  forward_ms: number;
  input_grad_ms: number;
  train_step_ms: number;
}

const peerWaitPolicy = process.env.OMP_WAIT_POLICY ?? 'PASSIVE';

/** PyTorch's same network on the same threads, batch and OpenMP wait policy, or why it could not run. */
function runPeer(): PeerTimes | { unavailable: string } {
  const script = new URL('../../shared/peer/torch_bench.py', import.meta.url).pathname;
  if (!existsSync(script)) return { unavailable: `${script} not found` };
  const run = spawnSync(
    '/usr/bin/python3',
    [
      script,
      ...['--threads', String(backend.threads), '--batch', String(batch)],
      ...['--architecture', architecture, '--width', String(width)],
      ...['--depth', String(depth), '--widen', String(widen)],
    ],
    // The wait policy ours runs with (onednn/addon.ts): spinning OpenMP threads slow PyTorch as much
    // as us on a busy machine, so both wait alike.
    { encoding: 'utf8', timeout: 600_000, env: { ...process.env, OMP_WAIT_POLICY: peerWaitPolicy } },
  );
  const line = run.stdout?.trim().split('\n').at(-1);
  if (run.status !== 0 || !line)
    return { unavailable: (run.stderr || String(run.error)).trim().split('\n').at(-1) ?? '' };
  return JSON.parse(line) as PeerTimes;
}

const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
/** GFLOP/s of `flops` per image over a batch in `ms`. */
const gflops = (flops: number, ms: number) => Math.round((batch * flops) / ms / 1e5) / 10;
let peerResult: Record<string, unknown> = {};
if (args.peer) {
  log('running the PyTorch peer');
  const peer = runPeer();
  peerResult =
    'unavailable' in peer
      ? { peer }
      : {
          peer: {
            ...peer,
            omp_wait_policy: peerWaitPolicy,
            forward_gflops: gflops(peer.flops_per_image, peer.forward_ms),
            input_grad_gflops: gflops(2 * peer.flops_per_image, peer.input_grad_ms),
            train_step_gflops: gflops(3 * peer.flops_per_image, peer.train_step_ms),
          },
          over_peer: {
            forward: ratio(forwardMs, peer.forward_ms),
            input_grad: ratio(inputGradMs, peer.input_grad_ms),
            train_step: ratio(trainStepMs, peer.train_step_ms),
          },
        };
}
const wasmNativeResult: Record<string, number> = {};
for (const key of wasmNative) wasmNativeResult[`wasm_native_${key}`] = median(`wasm_native_${key}`);

const result = {
  backend: backend.name,
  kernels: backend.kernels,
  threads: backend.threads,
  simd: backend.simd,
  architecture,
  width: architecture === 'wrn' ? undefined : width,
  depth: architecture === 'wrn' ? depth : undefined,
  widen: architecture === 'wrn' ? widen : undefined,
  batch,
  flops_per_image: flopsPerImage,
  forward_ms: forwardMs,
  input_grad_ms: inputGradMs,
  train_step_ms: trainStepMs,
  forward_gflops: gflops(flopsPerImage, forwardMs),
  input_grad_gflops: gflops(2 * flopsPerImage, inputGradMs),
  train_step_gflops: gflops(3 * flopsPerImage, trainStepMs),
  input_grad_over_forward: Math.round((inputGradMs / forwardMs) * 100) / 100,
  train_step_over_forward: Math.round((trainStepMs / forwardMs) * 100) / 100,
  ...(baselines
    ? {
        stock_input_grad_ms: stockInputGradMs,
        stock_over_fast_input_grad: Math.round((stockInputGradMs / inputGradMs) * 100) / 100,
      }
    : {}),
  ...wasmNativeResult,
  ...peerResult,
};
console.log(args.json ? JSON.stringify(result) : JSON.stringify(result, null, 2));
tf.dispose([x, labels]);
model.dispose();
