/**
 * Training benchmark: images/s of one optimisation step of every objective (inner attacks included)
 * for one or more architectures in the same run on the selected backend, with the plain step under
 * tfjs's stock Conv2D gradients measured in the same run as the baseline (where the backend has stock
 * kernels for it). The in-distribution batch counts as the step's images, as in the trainer's progress
 * line. FLOP throughput = img/s x FLOPs of one image's forward pass (convolutions and dense layers); with
 * several architectures each one's throughput is also given relative to the first's.
 *
 *   npm run bench:training -- --json [--architecture small-cnn,resnet18] [--width 1,0.25] [--batch 64]
 *        [--steps 2] [--steps-in 10] [--steps-out 20] [--objectives plain,oe,at,acet,ratio]
 *        [--no-baseline]
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { ArrayDataset } from '../src/data/dataset.js';
import { initBackend } from '../src/engine/backend/backend.js';
import { useFastConvGradients, useStockConvGradients } from '../src/engine/backend/gradients/register.js';
import { buildArchitecture } from '../src/training/architectures.js';
import { OBJECTIVES, type Objective, resolveConfig } from '../src/training/config.js';
import { Trainer } from '../src/training/trainer.js';
import { Rng } from '../src/util/random.js';
import { convAndDenseFlops } from './flops.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    architecture: { type: 'string', default: 'small-cnn' },
    width: { type: 'string', default: '1' },
    batch: { type: 'string', default: '64' },
    steps: { type: 'string', default: '2' },
    'steps-in': { type: 'string', default: '10' },
    'steps-out': { type: 'string', default: '20' },
    objectives: { type: 'string', default: OBJECTIVES.join(',') },
    'no-baseline': { type: 'boolean', default: false },
  },
});
const batch = Number(args.batch);
const steps = Number(args.steps);
const architectures = (args.architecture ?? '').split(',');
const widths = (args.width ?? '').split(',').map(Number);
if (widths.length !== architectures.length || widths.some((w) => !(w > 0))) {
  throw new Error(`'--width' must give one width > 0 per architecture, got '${args.width}'`);
}
for (const [name, value] of [
  ['--batch', batch],
  ['--steps', steps],
  ['--steps-in', Number(args['steps-in'])],
  ['--steps-out', Number(args['steps-out'])],
] as const) {
  if (!Number.isInteger(value) || value < 0)
    throw new Error(`'${name}' must be an integer >= 0, got ${value}`);
}
const objectives = (args.objectives ?? '').split(',') as Objective[];
for (const objective of objectives) {
  if (!OBJECTIVES.includes(objective)) throw new Error(`'--objectives' holds unknown '${objective}'`);
}

const backend = await initBackend();
const rng = new Rng(1);
const randomImages = (n: number) => Uint8Array.from({ length: n * 32 * 32 * 3 }, () => rng.int(256));
const train = new ArrayDataset({
  images: randomImages(batch),
  shape: [32, 32, 3],
  labels: Int32Array.from({ length: batch }, () => rng.int(10)),
  classNames: Array.from({ length: 10 }, (_, k) => `c${k}`),
});
const out = new ArrayDataset({ images: randomImages(batch), shape: [32, 32, 3] });

function modelOf(architecture: string, width: number): tf.LayersModel {
  return buildArchitecture(architecture, { numClasses: 10, inputShape: [32, 32, 3], width });
}

/** Seconds per step of `objective` (one warm-up step first, not timed). */
async function secondsPerStep(objective: Objective, architecture: string, width: number): Promise<number> {
  const config = resolveConfig({
    objective,
    outData: 'random',
    architecture,
    width,
    batchSize: batch,
    stepsIn: Number(args['steps-in']),
    stepsOut: Number(args['steps-out']),
    epsIn: 0.25,
    epsOut: 1,
    stepSizeIn: 0.1,
    stepSizeOut: 0.1,
    augment: false,
  });
  const model = modelOf(architecture, width);
  const trainer = new Trainer(model, config, { train, out });
  const x = train.tensor();
  const xOut = out.tensor();
  let seconds = 0;
  for (let i = 0; i <= steps; i++) {
    const started = performance.now();
    await trainer.step(x, train.labels, xOut, 0.01);
    if (i > 0) seconds += (performance.now() - started) / 1000;
  }
  tf.dispose([x, xOut]);
  trainer.dispose();
  model.dispose();
  return seconds / Math.max(steps, 1);
}

interface ObjectiveResult {
  secondsPerStep: number;
  imagesPerSecond: number;
  /** img/s x FLOPs of one image's forward pass, in GFLOP/s. */
  flopThroughput: number;
  relativeToPlain?: number;
  /** This architecture's FLOP throughput over the first architecture's, same objective. */
  flopThroughputVsFirst?: number;
}

const runs: Array<{
  architecture: string;
  width: number;
  flopsPerImage: number;
  objectives: Record<string, ObjectiveResult>;
}> = [];
for (const [index, architecture] of architectures.entries()) {
  const width = widths[index];
  const probe = modelOf(architecture, width);
  const flopsPerImage = convAndDenseFlops(probe);
  probe.dispose();
  const results: Record<string, ObjectiveResult> = {};
  for (const objective of objectives) {
    const seconds = await secondsPerStep(objective, architecture, width);
    const imagesPerSecond = batch / seconds;
    results[objective] = {
      secondsPerStep: seconds,
      imagesPerSecond,
      flopThroughput: Math.round((imagesPerSecond * flopsPerImage) / 1e7) / 100,
    };
    if (!args.json) {
      console.error(
        `${architecture} x${width} ${objective}: ${seconds.toFixed(2)} s/step, ${imagesPerSecond.toFixed(1)} img/s`,
      );
    }
  }
  const plain = results.plain;
  if (plain)
    for (const r of Object.values(results)) r.relativeToPlain = r.secondsPerStep / plain.secondsPerStep;
  const first = runs[0];
  if (first) {
    for (const [objective, r] of Object.entries(results)) {
      const reference = first.objectives[objective];
      if (reference)
        r.flopThroughputVsFirst = Math.round((r.flopThroughput / reference.flopThroughput) * 100) / 100;
    }
  }
  runs.push({ architecture, width, flopsPerImage, objectives: results });
}

/**
 * Baselines in the same run for the first architecture: the plain step with tfjs's stock Conv2D
 * gradients (absent on wasm, whose stock kernels lack Conv2DBackpropFilter), and the plain step on the
 * pure-JS `cpu` backend.
 */
const baseline: Record<string, { secondsPerStep: number; imagesPerSecond: number } | string> = {};
if (!args['no-baseline']) {
  const [architecture, width] = [architectures[0], widths[0]];
  if (backend.fastGradients) {
    useStockConvGradients();
    try {
      const seconds = await secondsPerStep('plain', architecture, width);
      baseline.plainStockGradients = { secondsPerStep: seconds, imagesPerSecond: batch / seconds };
    } catch (error) {
      baseline.plainStockGradients = `unavailable: ${(error as Error).message.split('\n')[0]}`;
    } finally {
      useFastConvGradients(backend.name);
    }
  }
  if (backend.name !== 'cpu') {
    await tf.setBackend('cpu');
    useFastConvGradients('cpu');
    const seconds = await secondsPerStep('plain', architecture, width);
    baseline.plainCpuBackend = { secondsPerStep: seconds, imagesPerSecond: batch / seconds };
    await tf.setBackend(backend.name);
  }
}

const report = {
  bench: 'training',
  backend: backend.name,
  kernels: backend.kernels,
  threads: backend.threads,
  simd: backend.simd,
  batch,
  innerSteps: { in: Number(args['steps-in']), out: Number(args['steps-out']) },
  timedSteps: steps,
  runs,
  baseline,
};
console.log(args.json ? JSON.stringify(report) : JSON.stringify(report, null, 2));
