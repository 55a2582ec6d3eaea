import { stat } from 'node:fs/promises';
import type { Dataset } from '../../data/dataset.js';
import { inSeededOrder } from '../../data/image-sets.js';
import { datasetFromBytes, loadDataset } from '../../data/load.js';
import type { ModelFiles } from '../../data/model-dir.js';
import {
  type AutoAttackOptions,
  type AutoAttackReport,
  autoAttack,
} from '../../engine/attacks/autoattack.js';
import type { AttackProgress } from '../../engine/attacks/types.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { InvalidInputError } from '../errors.js';
import {
  loadModelDir,
  loadUploadedModel,
  localModelLimits,
  type ModelLimits,
  readLocalModel,
} from '../models/index.js';
import type { ShardedRunOptions } from '../sharding/index.js';
import { type AuditParameters, shardSettingsOf } from './parameters.js';

/**
 * The audit use case, one path for the CLI (`ratio audit`) and the service (`POST /v1/audits`):
 * prepare (load the data set and the model, check that they fit each other and the parameters),
 * then run (AutoAttack on the first n points). The service runs prepared audits through its queue
 * (registry.ts), the CLI runs one directly.
 */

export type { AuditParameters };

export type AuditReport = Omit<AutoAttackReport, 'adversarial'>;

/** An audit ready to run: its parameters, the model and the (first n points of the) data set. */
export interface PreparedAudit {
  parameters: AuditParameters;
  classifier: Classifier;
  /** Dispose the classifier when the audit ends (uploaded models); served models are shared. */
  ownsClassifier: boolean;
  dataset: Dataset;
  /** The model's files, when known (a directory or an upload): they travel to queue workers. */
  modelFiles?: ModelFiles;
}

/** Where the model comes from: a served model, a model directory, or uploaded files. */
export type AuditModelSource =
  | { kind: 'served'; name: string; classifier: Classifier; files?: ModelFiles }
  /** A model on this machine, under `limits` (default: the machine's, `localModelLimits`). */
  | { kind: 'directory'; dir: string; limits?: ModelLimits }
  | { kind: 'upload'; files: ModelFiles; field: string; maxBytes: number };

/** Where the labelled images come from: a file or folder, or uploaded bytes. */
export type AuditDataSource =
  | { kind: 'path'; path: string }
  | { kind: 'bytes'; bytes: Uint8Array; filename: string; labels?: Uint8Array; maxBytes: number };

export interface AuditRequest {
  model: AuditModelSource;
  data: AuditDataSource;
  parameters: Omit<AuditParameters, 'model'>;
}

/** The name an audit reports for its model. */
function modelName(source: AuditModelSource, classifier: Classifier): string {
  if (source.kind === 'served') return source.name;
  if (source.kind === 'upload') return 'upload';
  return classifier.card.name;
}

/**
 * Throws `InvalidInputError('dataset', ...)` unless the images have the model's input shape and
 * every label is a class of the model.
 */
export function checkAuditData(dataset: Dataset, classifier: Classifier): void {
  const expected = classifier.card.inputShape;
  if (dataset.shape.join() !== expected.join()) {
    throw new InvalidInputError(
      'dataset',
      `the data set holds ${dataset.shape.join('x')} images, the model takes ${expected.join('x')}`,
    );
  }
  if (dataset.size === 0) throw new InvalidInputError('dataset', 'the data set holds no images');
  if (dataset.unlabelled) {
    throw new InvalidInputError('dataset', 'the data set has no labels; an audit needs labelled images');
  }
  const k = classifier.numClasses;
  if (k < 2) throw new InvalidInputError('model', `the model has ${k} class; an audit needs at least 2`);
  const outside = dataset.labels.findIndex((label) => label < 0 || label >= k);
  if (outside >= 0) {
    throw new InvalidInputError(
      'dataset',
      `image ${outside} has label ${dataset.labels[outside]}, outside the model's classes 0..${k - 1} (unlabelled images, or another label set?)`,
    );
  }
}

/** An image folder or a zip of one: both list their images class by class. */
async function isListedByClass(target: string): Promise<boolean> {
  if (/\.zip$/i.test(target)) return true;
  return (await stat(target).catch(() => undefined))?.isDirectory() ?? false;
}

async function loadAuditData(source: AuditDataSource, n: number, seed: number): Promise<Dataset> {
  if (source.kind === 'path') {
    const dataset = await loadDataset(source.path);
    // A folder (or zipped folder) lists its images class by class: its first n would be the first
    // classes alone, so its n points are a seeded random sample, as `ratio eval` takes them.
    return (await isListedByClass(source.path)) ? inSeededOrder(dataset, seed, n) : dataset.take(n);
  }
  const dataset = await datasetFromBytes(source.bytes, {
    filename: source.filename,
    labels: source.labels,
    maxBytes: source.maxBytes,
    // Only the first n images are audited: the rest of an image folder is never decoded.
    limit: n,
  });
  return dataset.take(n);
}

async function loadAuditModel(
  source: AuditModelSource,
): Promise<{ classifier: Classifier; owned: boolean; files?: ModelFiles }> {
  if (source.kind === 'served') return { classifier: source.classifier, owned: false, files: source.files };
  if (source.kind === 'directory') {
    const limits = source.limits ?? localModelLimits();
    const files = await readLocalModel(source.dir, limits);
    return { classifier: await loadModelDir(source.dir, {}, files, limits), owned: true, files };
  }
  const classifier = await loadUploadedModel(source.files, source.field, source.maxBytes);
  return { classifier, owned: true, files: source.files };
}

/**
 * Loads the data set (its first n points) and the model, and checks them against each other. Errors
 * keep their types: `DatasetError` (the data), `ModelDirError` / `ModelFileError` /
 * `ModelContractError` / `ModelLoadError` (the model), `InvalidInputError` (they do not fit).
 */
export async function prepareAudit(request: AuditRequest): Promise<PreparedAudit> {
  const dataset = await loadAuditData(request.data, request.parameters.n, request.parameters.seed ?? 0);
  const { classifier, owned, files } = await loadAuditModel(request.model);
  try {
    checkAuditData(dataset, classifier);
  } catch (error) {
    if (owned) classifier.dispose();
    throw error;
  }
  return {
    parameters: { model: modelName(request.model, classifier), ...request.parameters },
    classifier,
    ownsClassifier: owned,
    dataset,
    ...(files ? { modelFiles: files } : {}),
  };
}

/** What runs an audit's attacks: the engine's AutoAttack, a shard pool, the queue, or a test double. */
export type AttackRunner = (
  classifier: Classifier,
  x: Parameters<typeof autoAttack>[1],
  y: Int32Array,
  options: AutoAttackOptions & ShardedRunOptions,
) => Promise<AutoAttackReport>;

export interface RunAuditOptions {
  signal?: AbortSignal;
  onProgress?: (progress: AttackProgress) => void;
  /** Runs the attacks: the engine's AutoAttack unless given a pool, the queue, or a test double. */
  run?: AttackRunner;
}

/** Runs AutoAttack on the first n points of a prepared audit; leaves no tensor behind. */
export async function runAudit(audit: PreparedAudit, options: RunAuditOptions = {}): Promise<AuditReport> {
  const { parameters, classifier } = audit;
  const data = audit.dataset.take(parameters.n);
  const x = data.tensor();
  try {
    const report = await (options.run ?? autoAttack)(classifier, x, data.labels, {
      ...shardSettingsOf(parameters),
      signal: options.signal,
      onProgress: options.onProgress,
      ...(audit.modelFiles ? { modelFiles: audit.modelFiles } : {}),
    });
    const { adversarial, ...rest } = report;
    adversarial?.dispose();
    return rest;
  } finally {
    x.dispose();
  }
}
