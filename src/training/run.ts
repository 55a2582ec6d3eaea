import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { Dataset } from '../data/dataset.js';
import { DatasetError } from '../data/errors.js';
import { writeModelDir } from '../data/model-dir.js';
import { backendInfo } from '../engine/backend/backend.js';
import type { ModelCard } from '../engine/model/classifier.js';
import { saveModelToFiles } from '../engine/model/files.js';
import { calibrate } from '../engine/ood/calibration.js';
import { OOD_GATE_TPR } from '../engine/ood/metrics.js';
import { Rng } from '../util/random.js';
import { buildArchitecture } from './architectures.js';
import {
  CheckpointError,
  checkFingerprint,
  encodeCheckpoint,
  readCheckpoint,
  writeFileAtomic,
} from './checkpoint.js';
import { type TrainConfig, usesOutDistribution } from './config.js';
import { loadTrainingData, splitValidation } from './data.js';
import { OBJECTIVE_PARTS } from './objectives.js';
import { accuracyOf, datasetLogits, type StopReason, Trainer, type TrainProgress } from './trainer.js';

/**
 * The file side of training: data loading, the run folder (`<runDir>/<name>/`: config.json,
 * log.jsonl, checkpoint.bin), resume, and the export of `<outDir>/<name>/` at the end.
 */
export interface RunOptions {
  resume?: boolean;
  /** Start over even though a checkpoint exists (it is overwritten at the first checkpoint). */
  fresh?: boolean;
  signal?: AbortSignal;
  onProgress?: (progress: TrainProgress) => void;
  /** Human-readable notes (loading, checkpoints, export). */
  onNote?: (message: string) => void;
  /** Pre-loaded data (tests); otherwise read from `config.data` / `config.outData`. */
  data?: { train: Dataset; out?: Dataset };
}

export interface RunResult {
  stopped: StopReason;
  step: number;
  runFolder: string;
  checkpointFile: string;
  /** Set when training finished and the model was exported. */
  exportFolder?: string;
  card?: ModelCard;
  model: tf.LayersModel;
}

/**
 * Kernels drawn from the run's seed (Glorot uniform, tfjs's default) instead of tfjs's unseeded
 * initialisers, so that two runs of one config start from the same weights.
 */
export function seededInitialisation(model: tf.LayersModel, seed: number): void {
  const rng = new Rng((seed ^ 0x1417) >>> 0);
  for (const weight of model.trainableWeights) {
    const shape = weight.shape as number[];
    if (!/kernel/.test(weight.originalName) || shape.length < 2) continue;
    const receptive = shape.slice(0, -2).reduce((p, d) => p * d, 1);
    const fanIn = receptive * shape[shape.length - 2];
    const fanOut = receptive * shape[shape.length - 1];
    const limit = Math.sqrt(6 / (fanIn + fanOut));
    const values = new Float32Array(tf.util.sizeFromShape(shape));
    for (let i = 0; i < values.length; i++) values[i] = (2 * rng.next() - 1) * limit;
    const tensor = tf.tensor(values, shape);
    weight.write(tensor);
    tensor.dispose();
  }
}

function gitRevision(): string | null {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return null;
  }
}

export async function runTraining(config: TrainConfig, options: RunOptions = {}): Promise<RunResult> {
  const note = options.onNote ?? (() => {});
  const runFolder = path.join(config.runDir, config.name);
  const checkpointFile = path.join(runFolder, 'checkpoint.bin');
  const logFile = path.join(runFolder, 'log.jsonl');
  await mkdir(runFolder, { recursive: true });
  if (!options.resume && !options.fresh && existsSync(checkpointFile)) {
    // Hours of training must not be lost to a forgotten --resume.
    throw new CheckpointError(
      `a checkpoint exists at '${checkpointFile}': pass --resume to continue it or --fresh to start over`,
    );
  }

  note(`loading data '${config.data}'`);
  const loadedTrain =
    options.data?.train ?? (await loadTrainingData(config.data, { limit: config.limit, seed: config.seed }));
  const out =
    options.data?.out ??
    (usesOutDistribution(config.objective) && config.outData
      ? await loadTrainingData(config.outData, { limit: config.outLimit, seed: config.seed })
      : undefined);
  if (loadedTrain.unlabelled)
    throw new DatasetError('bad-argument', `the training data '${config.data}' has no labels`);
  const { train, validation } = splitValidation(loadedTrain, config.validationSize, config.seed);
  // A loop, not Math.max(...labels): spreading 50,000 arguments can overflow the stack.
  let numClasses = loadedTrain.classNames.length;
  for (const label of loadedTrain.labels) numClasses = Math.max(numClasses, label + 1);
  const classNames = loadedTrain.classNames.length
    ? [...loadedTrain.classNames]
    : Array.from({ length: numClasses }, (_, k) => `class_${k}`);

  const model = buildArchitecture(config.architecture, {
    numClasses,
    inputShape: train.shape,
    width: config.width,
    name: config.name.replace(/[^A-Za-z0-9_]/g, '_'),
  });
  seededInitialisation(model, config.seed);
  const trainer = new Trainer(model, config, { train, validation, out });
  const resuming = options.resume === true && existsSync(checkpointFile);
  if (config.initFrom && !resuming) {
    const source = await readCheckpoint(config.initFrom);
    trainer.startFrom(source);
    note(
      `starting from the ${source.ema ? 'EMA ' : ''}weights of ${config.initFrom} (its step ${source.position.step})`,
    );
  }
  // Synchronous appends: one short line per step costs microseconds, and asynchronous ones fell behind
  // (each needs several event-loop turns, and a compute-bound loop grants one per step).
  const log = (record: Record<string, unknown>) => appendFileSync(logFile, `${JSON.stringify(record)}\n`);

  if (resuming) {
    const content = await readCheckpoint(checkpointFile);
    const expected = trainer.fingerprint();
    // The source of `initFrom` may have moved or been overwritten since this run started from it (a
    // continuation under the same name does that): the checkpoint's record of it stands.
    if (config.initFrom) expected.initFrom = content.fingerprint.initFrom;
    checkFingerprint(content.fingerprint, expected, checkpointFile);
    trainer.restore(content);
    note(`resumed from ${checkpointFile} at step ${content.position.step} (epoch ${content.position.epoch})`);
  } else if (options.resume) {
    note(`no checkpoint at ${checkpointFile}: starting from scratch`);
  }
  await writeFile(path.join(runFolder, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  log({
    type: 'start',
    resumedAtStep: trainer.position.step,
    config,
    trainSize: train.size,
    validationSize: validation?.size ?? 0,
    outSize: out?.size ?? 0,
    backend: backendInfo().name,
    time: new Date().toISOString(),
  });

  const stopped = await trainer.run({
    signal: options.signal,
    onProgress: options.onProgress,
    onLog: log,
    saveCheckpoint: async (content) => {
      await writeFileAtomic(checkpointFile, encodeCheckpoint(content));
      log({ type: 'checkpoint', step: content.position.step, time: new Date().toISOString() });
    },
  });
  const result: RunResult = { stopped, step: trainer.position.step, runFolder, checkpointFile, model };
  if (stopped !== 'finished') {
    trainer.dispose();
    note(`stopped (${stopped}) at step ${trainer.position.step}; checkpoint ${checkpointFile}`);
    return result;
  }

  trainer.useFinalWeights();
  const calibration = validation ?? train;
  // Temperature and the serving threshold (95% of the held-out images pass the OOD gate).
  const fit = calibrate(datasetLogits(model, calibration, config.batchSize), calibration.labels, numClasses);
  const validationAccuracy = validation ? accuracyOf(model, validation, config.batchSize) : null;
  const card: ModelCard = {
    name: config.name,
    classNames,
    inputShape: train.shape,
    temperature: fit.temperature,
    oodThreshold: fit.oodThreshold,
    objective: config.objective,
    // Only the budgets the objective trained with: a card must not suggest robustness it never had.
    epsIn: OBJECTIVE_PARTS[config.objective].attackIn ? config.epsIn : undefined,
    epsOut: OBJECTIVE_PARTS[config.objective].attackOut ? config.epsOut : undefined,
    metrics: {
      validationAccuracy,
      validationEce: fit.ece,
      validationEceBeforeTemperature: fit.eceBefore,
      oodThresholdTruePositiveRate: OOD_GATE_TPR,
    },
    architecture: config.architecture,
    width: config.width,
    // Likewise the out-distribution settings only for objectives that train on one (oe, acet, ratio).
    lambda: usesOutDistribution(config.objective) ? config.lambda : undefined,
    data: config.data,
    outData: usesOutDistribution(config.objective) ? (config.outData ?? null) : null,
    trainImages: train.size,
    validationImages: validation?.size ?? 0,
    epochs: config.epochs,
    steps: trainer.position.step,
    wallSeconds: Math.round(trainer.position.elapsedSeconds),
    backend: backendInfo().name,
    gitRevision: gitRevision(),
    why: config.why ?? null,
    training: { ...config, why: undefined },
  };
  const files = await saveModelToFiles(model, card);
  const exportFolder = path.join(config.outDir, config.name);
  // Shards first, model.json last, each renamed into place: a reader never sees half a model.
  await writeModelDir(exportFolder, files);
  log({
    type: 'export',
    folder: exportFolder,
    temperature: fit.temperature,
    validationAccuracy,
    time: new Date().toISOString(),
  });
  trainer.dispose();
  note(
    `exported ${exportFolder} (validation accuracy ${validationAccuracy ?? 'n/a'}, temperature ${fit.temperature.toFixed(3)})`,
  );
  return { ...result, exportFolder, card };
}
