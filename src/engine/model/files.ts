import * as tf from '@tensorflow/tfjs';
import type { ModelFiles } from '../../data/model-dir.js';
import { type ModelBudget, ModelBudgetError, type ModelBudgetLimits, modelBudget } from './budget.js';
import {
  buildGraphModel,
  buildLayersModel,
  DEFAULT_TRIAL_LIMITS,
  TrialForwardError,
  type TrialLimits,
  trialForward,
} from './build.js';
import { type ModelCard, ModelContractError, TfjsClassifier, type TfjsModel } from './classifier.js';
import { graphModelBudget } from './graph-budget.js';
import {
  loadOnnxClassifier,
  type OnnxClassifier,
  OnnxImportError,
  OnnxLimitError,
  onnxExternalDataFiles,
} from './onnx/index.js';
import { checkGraphTopology, checkLayersTopology, TopologyError } from './topology.js';
// Registers our custom layers with tfjs serialization, so that saved models of ours load back.
import './batch-norm-layer.js';
import './conv2d-layer.js';
import './normalization-layer.js';

/**
 * Loads and saves `ModelFiles` (src/data/model-dir.ts): the engine never touches the file system;
 * model-dir.ts reads and writes these maps from and to a directory, and uploads arrive as one.
 */

/**
 * A model upload or directory that cannot be loaded. `path` is the file at fault (`model.json`,
 * `card.json`, a shard), `field` the JSON field or weight group when there is one; HTTP maps it to 422.
 */
export class ModelFileError extends Error {
  override readonly name: string = 'ModelFileError';
  /** 'over-budget': a valid model over a size or compute limit (parameters, FLOPs, nodes); else 'invalid'. */
  readonly kind: ModelFileErrorKind;
  constructor(
    readonly path: string,
    readonly field: string | undefined,
    message: string,
    options?: ErrorOptions & { kind?: ModelFileErrorKind },
  ) {
    super(`${path}${field ? ` (${field})` : ''}: ${message}`, options);
    this.kind = options?.kind ?? 'invalid';
  }
}

export type ModelFileErrorKind = 'invalid' | 'over-budget';

/**
 * A model over a size limit of the place loading it: its weight bytes (`bytes`), parameters,
 * elements of one tensor, FLOPs per image (ONNX's limits by name). A `ModelFileError`, so callers that
 * handle those handle it; HTTP answers it 413, naming the limit.
 */
export class ModelLimitError extends ModelFileError {
  override readonly name = 'ModelLimitError';
  constructor(
    path: string,
    field: string | undefined,
    /** Which limit: 'bytes', 'parameters', 'tensorElements', 'flops', 'nodes', ... */
    readonly limit: string,
    readonly value: number,
    readonly maximum: number,
    message: string,
    options?: ErrorOptions,
  ) {
    super(path, field, message, { ...options, kind: 'over-budget' });
  }
}

export interface LoadModelOptions {
  /** Largest total of weight bytes accepted, declared or present (default 200 MB). */
  maxWeightBytes?: number;
  /** Largest model.json accepted (default 64 MB; graph models carry their graph in it). */
  maxModelJsonBytes?: number;
  /** Card fields that override card.json (e.g. a name chosen by the uploader). */
  card?: Partial<ModelCard>;
  /** Limits of the static budget of a layers or graph model (parameters, activation, FLOPs per image). */
  budget?: Partial<ModelBudgetLimits>;
  /** Time and memory budget of the trial forward pass of one image; `false` skips it. */
  trial?: TrialLimits | false;
  /**
   * Whether an ONNX model's external data (weights in files beside the .onnx, as PyTorch writes
   * models over 2 GB) may come with it in the files: local model files only, never an upload
   * (default false: a model that names external data is refused).
   */
  externalData?: boolean;
}

/** Budgets of the classifiers this module loaded (layers models), for request cost estimates. */
const budgets = new WeakMap<object, ModelBudget>();

/** The static budget computed when `classifier` was loaded from files (a layers or graph model). */
export function loadedModelBudget(classifier: object): ModelBudget | undefined {
  return budgets.get(classifier);
}

export const DEFAULT_MAX_WEIGHT_BYTES = 200_000_000;
const DEFAULT_MAX_MODEL_JSON_BYTES = 64_000_000;

/** Bytes per stored element: the quantized type when quantized, else the dtype. */
const BYTES_PER_ELEMENT: Record<string, number> = {
  float32: 4,
  int32: 4,
  bool: 1,
  complex64: 8,
  uint8: 1,
  uint16: 2,
  float16: 2,
};

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseJson(files: ModelFiles, path: string, maxBytes: number): unknown {
  const bytes = files.get(path);
  if (!bytes) throw new ModelFileError(path, undefined, 'file is missing');
  if (bytes.byteLength > maxBytes) {
    throw new ModelFileError(
      path,
      undefined,
      `file is ${bytes.byteLength} bytes, over the limit of ${maxBytes}`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFileError(path, undefined, 'file is not UTF-8 text');
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ModelFileError(path, undefined, `file is not valid JSON: ${(error as Error).message}`);
  }
}

/**
 * The in-directory key of a manifest weight path, or an error when the path could leave the model's
 * directory: `..` segments, absolute paths, drive letters, URLs, backslashes, percent-encoded escapes.
 */
export function weightPathKey(raw: unknown, field: string): string {
  const refuse = (why: string) =>
    new ModelFileError('model.json', field, `weight path ${JSON.stringify(raw)} ${why}`);
  if (typeof raw !== 'string' || raw.length === 0) throw refuse('must be a non-empty string');
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    throw refuse('is not valid percent-encoding');
  }
  for (const candidate of [raw, decoded]) {
    if (/[\\\0]/.test(candidate)) throw refuse('contains a backslash or NUL');
    if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(candidate) || candidate.startsWith('//')) {
      throw refuse('is a URL or drive path; weights must be files beside model.json');
    }
    if (candidate.startsWith('/')) throw refuse('is absolute; weights must be files beside model.json');
    if (candidate.split('/').some((segment) => segment === '..')) throw refuse('leaves the model directory');
  }
  const key = raw
    .split('/')
    .filter((segment) => segment !== '' && segment !== '.')
    .join('/');
  if (key.length === 0) throw refuse('names no file');
  return key;
}

function elementCount(shape: unknown, field: string): number {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new ModelFileError('model.json', field, `'shape' must be an array of non-negative integers`);
  }
  return shape.reduce((a: number, b: number) => a * b, 1);
}

/** Bytes one manifest weight entry occupies in its group's concatenated shards. */
function declaredBytes(entry: unknown, field: string): number {
  if (!isObject(entry) || typeof entry.name !== 'string') {
    throw new ModelFileError('model.json', field, `each weight needs a string 'name', 'shape' and 'dtype'`);
  }
  const count = elementCount(entry.shape, field);
  const quantization = entry.quantization;
  const storedType = isObject(quantization) ? quantization.dtype : entry.dtype;
  const size = typeof storedType === 'string' ? BYTES_PER_ELEMENT[storedType] : undefined;
  if (size === undefined) {
    throw new ModelFileError(
      'model.json',
      field,
      `unsupported weight dtype ${JSON.stringify(storedType)} (want float32, int32, bool, or uint8/uint16/float16 quantization)`,
    );
  }
  return count * size;
}

interface CheckedManifest {
  manifest: tf.io.WeightsManifestConfig;
  /** Shard keys in load order: groups in manifest order, shards in path order. */
  shardKeys: string[];
}

/** Validates paths, sizes and limits of `weightsManifest` against the files present. */
function checkManifest(manifest: unknown, files: ModelFiles, maxWeightBytes: number): CheckedManifest {
  if (!Array.isArray(manifest)) {
    throw new ModelFileError(
      'model.json',
      'weightsManifest',
      `'weightsManifest' must be an array of weight groups`,
    );
  }
  const groups: Array<{ keys: string[]; declared: number; field: string }> = [];
  let totalDeclared = 0;
  manifest.forEach((group: unknown, g) => {
    const field = `weightsManifest[${g}]`;
    if (!isObject(group) || !Array.isArray(group.paths) || !Array.isArray(group.weights)) {
      throw new ModelFileError('model.json', field, `a weight group needs 'paths' and 'weights' arrays`);
    }
    const keys = group.paths.map((p: unknown, i) => weightPathKey(p, `${field}.paths[${i}]`));
    const declared = group.weights.reduce(
      (sum: number, w: unknown, i) => sum + declaredBytes(w, `${field}.weights[${i}]`),
      0,
    );
    totalDeclared += declared;
    groups.push({ keys, declared, field });
  });
  // Before looking at any shard: a manifest that declares absurd sizes is refused outright.
  if (totalDeclared > maxWeightBytes) {
    throw new ModelLimitError(
      'model.json',
      'weightsManifest',
      'bytes',
      totalDeclared,
      maxWeightBytes,
      `declares ${totalDeclared} weight bytes, over the limit of ${maxWeightBytes}`,
    );
  }
  let totalPresent = 0;
  for (const { keys, declared, field } of groups) {
    let present = 0;
    for (const key of keys) {
      const shard = files.get(key);
      if (!shard) throw new ModelFileError(key, field, 'weight shard named in model.json is missing');
      present += shard.byteLength;
    }
    totalPresent += present;
    if (totalPresent > maxWeightBytes) {
      throw new ModelLimitError(
        keys[0],
        field,
        'bytes',
        totalPresent,
        maxWeightBytes,
        `shards hold over ${maxWeightBytes} bytes, the limit`,
      );
    }
    if (present !== declared) {
      throw new ModelFileError(
        keys.join(', '),
        field,
        `the manifest declares ${declared} weight bytes but the shards hold ${present} (truncated or mismatched shard)`,
      );
    }
  }
  return {
    manifest: manifest as tf.io.WeightsManifestConfig,
    shardKeys: groups.flatMap((g) => g.keys),
  };
}

/** Concatenates shards in manifest order, as tfjs's own weight loader does. */
function concatenateShards(files: ModelFiles, keys: string[]): ArrayBuffer {
  const total = keys.reduce((sum, key) => sum + (files.get(key)?.byteLength ?? 0), 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const key of keys) {
    const shard = files.get(key)!;
    out.set(shard, offset);
    offset += shard.byteLength;
  }
  return out.buffer;
}

/** Int32 weights up to this many elements can be read before loading (shape vectors, paddings). */
const MAX_READ_INT32_ELEMENTS = 64;

/**
 * Reads small unquantized int32 weights straight from the shards of a checked manifest (the shapes,
 * paddings and axes a graph model's nodes take as constants), without concatenating anything.
 */
function int32WeightReader(
  manifest: tf.io.WeightsManifestConfig,
  files: ModelFiles,
  shardKeys: string[],
): (name: string) => number[] | undefined {
  const offsets = new Map<string, { offset: number; count: number }>();
  let offset = 0;
  for (const [g, group] of manifest.entries()) {
    for (const [i, weight] of group.weights.entries()) {
      const count = weight.shape.reduce((a, b) => a * b, 1);
      if (weight.dtype === 'int32' && !weight.quantization && count <= MAX_READ_INT32_ELEMENTS)
        offsets.set(weight.name, { offset, count });
      offset += declaredBytes(weight, `weightsManifest[${g}].weights[${i}]`);
    }
  }
  const shards = shardKeys.map((key) => files.get(key)!);
  return (name) => {
    const at = offsets.get(name);
    if (!at) return undefined;
    const bytes = new Uint8Array(at.count * 4);
    let shardStart = 0;
    for (const shard of shards) {
      // Copy the part of [at.offset, at.offset + bytes.length) this shard holds.
      const from = Math.max(at.offset, shardStart);
      const to = Math.min(at.offset + bytes.length, shardStart + shard.byteLength);
      if (from < to) bytes.set(shard.subarray(from - shardStart, to - shardStart), from - at.offset);
      shardStart += shard.byteLength;
    }
    return Array.from(new Int32Array(bytes.buffer));
  };
}

/** Weight name -> declared shape, over all groups of a checked manifest. */
function declaredShapes(manifest: tf.io.WeightsManifestConfig): Map<string, number[]> {
  return new Map(
    manifest.flatMap((group) => group.weights.map((w): [string, number[]] => [w.name, w.shape])),
  );
}

function isPositiveInteger(d: unknown): boolean {
  return Number.isInteger(d) && (d as number) > 0;
}

/** Type-checks the card.json fields the engine relies on; everything else passes through. */
function parseCard(files: ModelFiles): Partial<ModelCard> {
  if (!files.has('card.json')) return {};
  const card = parseJson(files, 'card.json', 1_000_000);
  const fail = (field: string, message: string) => new ModelFileError('card.json', field, message);
  if (!isObject(card)) throw fail('', 'card.json must be a JSON object');
  if (card.name !== undefined && typeof card.name !== 'string') throw fail('name', `'name' must be a string`);
  if (
    card.classNames !== undefined &&
    !(Array.isArray(card.classNames) && card.classNames.every((c) => typeof c === 'string'))
  ) {
    throw fail('classNames', `'classNames' must be an array of strings`);
  }
  if (
    card.inputShape !== undefined &&
    !(
      Array.isArray(card.inputShape) &&
      card.inputShape.length === 3 &&
      card.inputShape.every(isPositiveInteger)
    )
  ) {
    throw fail('inputShape', `'inputShape' must be [height, width, channels] of positive integers`);
  }
  if (
    card.temperature !== undefined &&
    !(typeof card.temperature === 'number' && Number.isFinite(card.temperature) && card.temperature > 0)
  ) {
    throw fail('temperature', `'temperature' must be a finite number > 0`);
  }
  return card as Partial<ModelCard>;
}

function detectFormat(modelJson: JsonObject): 'layers-model' | 'graph-model' {
  const { format, modelTopology } = modelJson;
  if (format === 'layers-model' || format === 'graph-model') return format;
  if (format !== undefined) {
    throw new ModelFileError(
      'model.json',
      'format',
      `'format' must be 'layers-model' or 'graph-model', got ${JSON.stringify(format)}`,
    );
  }
  // Files written before tfjs recorded `format`: a graph topology is a GraphDef with nodes.
  return isObject(modelTopology) && Array.isArray(modelTopology.node) ? 'graph-model' : 'layers-model';
}

/**
 * Loads a classifier from in-memory model files (an upload, or a directory read by the data layer).
 * Every check runs before tfjs sees the files: JSON shape, weight paths that stay in the directory,
 * declared bytes against shard sizes, size limits; then the model must have one NHWC input and a
 * rank-2 output, and card.json's classNames must match the output width.
 * Rejects with `ModelFileError` naming the file and field at fault.
 */
export async function loadModelFromFiles(
  files: ModelFiles,
  options: LoadModelOptions = {},
): Promise<TfjsClassifier> {
  const maxWeightBytes = options.maxWeightBytes ?? DEFAULT_MAX_WEIGHT_BYTES;
  const modelJson = parseJson(files, 'model.json', options.maxModelJsonBytes ?? DEFAULT_MAX_MODEL_JSON_BYTES);
  if (!isObject(modelJson))
    throw new ModelFileError('model.json', undefined, 'model.json must be a JSON object');
  if (!isObject(modelJson.modelTopology)) {
    throw new ModelFileError('model.json', 'modelTopology', `'modelTopology' is missing or not an object`);
  }
  if (modelJson.weightsManifest === undefined) {
    throw new ModelFileError('model.json', 'weightsManifest', `'weightsManifest' is missing`);
  }
  const format = detectFormat(modelJson);
  const { manifest, shardKeys } = checkManifest(modelJson.weightsManifest, files, maxWeightBytes);
  const card = { ...parseCard(files), ...options.card };
  let budget: ModelBudget | undefined;
  try {
    if (format === 'graph-model') {
      checkGraphTopology(modelJson.modelTopology);
      // Every node sized from the graph, the manifest and its shaping constants before tfjs runs it.
      budget = graphModelBudget(
        modelJson.modelTopology,
        {
          weightShapes: declaredShapes(manifest),
          intWeight: int32WeightReader(manifest, files, shardKeys),
          inputShape: card.inputShape,
        },
        options.budget,
      );
    } else {
      checkLayersTopology(modelJson.modelTopology, declaredShapes(manifest));
      // Every layer sized from its config and the manifest before tfjs allocates anything.
      budget = modelBudget(modelJson.modelTopology, declaredShapes(manifest), options.budget);
    }
  } catch (error) {
    if (error instanceof ModelBudgetError) {
      throw new ModelFileError('model.json', error.field, error.message, {
        cause: error,
        kind: 'over-budget',
      });
    }
    if (error instanceof TopologyError) throw new ModelFileError('model.json', error.field, error.message);
    throw error;
  }

  const artifacts = await tf.io.getModelArtifactsForJSON(
    { ...(modelJson as unknown as tf.io.ModelJSON), format, weightsManifest: manifest },
    async (weightsManifest) => [
      weightsManifest.flatMap((group) => group.weights),
      concatenateShards(files, shardKeys),
    ],
  );
  let model: TfjsModel;
  try {
    // Both builders free what they made when they throw.
    model =
      format === 'graph-model'
        ? buildGraphModel(artifacts)
        : await buildLayersModel({
            modelTopology: modelJson.modelTopology,
            weightSpecs: artifacts.weightSpecs ?? [],
            weightData: tf.io.CompositeArrayBuffer.join(artifacts.weightData ?? new ArrayBuffer(0)),
          });
  } catch (error) {
    throw new ModelFileError(
      'model.json',
      'modelTopology',
      `tfjs cannot build the model: ${(error as Error).message}`,
    );
  }
  let classifier: TfjsClassifier;
  try {
    classifier = new TfjsClassifier(model, card);
  } catch (error) {
    model.dispose();
    if (error instanceof ModelContractError) {
      const inCard = error.field.startsWith('card.');
      throw new ModelFileError(
        inCard ? 'card.json' : 'model.json',
        inCard ? error.field.slice('card.'.length) : `modelTopology (${error.field})`,
        error.message,
      );
    }
    throw new ModelFileError(
      'model.json',
      'modelTopology',
      `the model does not run: ${(error as Error).message}`,
    );
  }
  if (options.trial !== false) {
    try {
      await trialForward(classifier, options.trial ?? DEFAULT_TRIAL_LIMITS);
    } catch (error) {
      classifier.dispose();
      if (error instanceof TrialForwardError)
        throw new ModelFileError('model.json', 'modelTopology', error.message);
      throw error;
    }
  }
  if (budget) budgets.set(classifier, budget);
  return classifier;
}

const isOnnxFile = (key: string) => key.toLowerCase().endsWith('.onnx');

/**
 * Loads whichever model the files hold: an ONNX model (a `.onnx` file, see `loadOnnxFromFiles`) or
 * a TF.js model (`loadModelFromFiles`). Rejects with `ModelFileError` naming the file at fault.
 */
export async function loadClassifierFromFiles(
  files: ModelFiles,
  options: LoadModelOptions = {},
): Promise<TfjsClassifier | OnnxClassifier> {
  if ([...files.keys()].some(isOnnxFile)) return loadOnnxFromFiles(files, options);
  return loadModelFromFiles(files, options);
}

/**
 * An ONNX model (PyTorch's export): one `.onnx` file, named anything (`model.onnx` in a model
 * directory), plus an optional card.json and, where `options.externalData` allows it (local files),
 * the external data files the model names. Import errors become `ModelFileError`s naming the file,
 * the node when there is one, and keep the typed ONNX error as `cause`; a size over a limit is a
 * `ModelLimitError`.
 */
export function loadOnnxFromFiles(files: ModelFiles, options: LoadModelOptions): OnnxClassifier {
  const onnxKeys = [...files.keys()].filter(isOnnxFile);
  const extra = [...files.keys()].filter((key) => !isOnnxFile(key) && key !== 'card.json');
  if (onnxKeys.length !== 1 || (extra.length > 0 && !options.externalData)) {
    throw new ModelFileError(
      onnxKeys.join(', '),
      undefined,
      `an ONNX model is one .onnx file and optionally card.json; got ${[...files.keys()].join(', ')}`,
    );
  }
  const [key] = onnxKeys;
  const card = { ...parseCard(files), ...options.card };
  const limits = {
    maxBytes: options.maxWeightBytes ?? DEFAULT_MAX_WEIGHT_BYTES,
    // The same budget as a TF.js model's, where the caller set one.
    ...(options.budget?.maxParameters !== undefined && { maxParameters: options.budget.maxParameters }),
    ...(options.budget?.maxActivationElements !== undefined && {
      maxTensorElements: options.budget.maxActivationElements,
    }),
    ...(options.budget?.maxFlopsPerImage !== undefined && {
      maxFlopsPerImage: options.budget.maxFlopsPerImage,
    }),
  };
  try {
    const bytes = files.get(key)!;
    let externalData: Map<string, Uint8Array> | undefined;
    if (options.externalData) {
      externalData = new Map();
      for (const location of onnxExternalDataFiles(bytes, limits)) {
        const file = files.get(location);
        if (file) externalData.set(location, file);
      }
      const unused = extra.filter((name) => !externalData!.has(name));
      if (unused.length > 0) {
        throw new ModelFileError(
          key,
          undefined,
          `${unused.join(', ')}: neither card.json nor external data the model names`,
        );
      }
    }
    return loadOnnxClassifier(bytes, { card, limits, externalData });
  } catch (error) {
    if (!(error instanceof OnnxImportError)) throw error;
    const node = 'node' in error && typeof error.node === 'string' ? `node ${error.node}` : undefined;
    const message = `${error.name}: ${error.message}`;
    if (error instanceof OnnxLimitError) {
      throw new ModelLimitError(key, node, error.limit, error.value, error.maximum, message, {
        cause: error,
      });
    }
    throw new ModelFileError(key, node, message, { cause: error, kind: 'invalid' });
  }
}

export interface SaveModelOptions {
  /** Largest weight shard written (default 4 MiB, the tfjs converter's). */
  shardBytes?: number;
}

/**
 * Serialises a classifier (or a LayersModel plus card fields) to model files: `model.json` in the
 * tfjs format, weight shards `group1-shardKofN.bin`, and `card.json` with the completed card.
 * The model is checked against the classifier contract first, so what is saved loads back.
 */
export async function saveModelToFiles(
  source: TfjsClassifier | TfjsModel,
  card: Partial<ModelCard> = {},
  options: SaveModelOptions = {},
): Promise<ModelFiles> {
  const shardBytes = options.shardBytes ?? 4 * 1024 * 1024;
  if (!(Number.isInteger(shardBytes) && shardBytes > 0)) {
    throw new Error(`'shardBytes' must be a positive integer, got ${shardBytes}`);
  }
  // Wrapping validates the model and completes the card; the wrapper is not disposed (no ownership).
  const model = source instanceof TfjsClassifier ? source.model : source;
  const classifier = new TfjsClassifier(
    model,
    source instanceof TfjsClassifier ? { ...source.card, ...card } : card,
  );
  const fullCard = classifier.card;
  let saved: tf.io.ModelArtifacts | undefined;
  await classifier.model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      saved = artifacts;
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
    }),
  );
  if (!saved) throw new Error('tfjs returned no model artifacts');
  const weights = new Uint8Array(
    saved.weightData === undefined ? new ArrayBuffer(0) : tf.io.CompositeArrayBuffer.join(saved.weightData),
  );
  const shardCount = Math.max(1, Math.ceil(weights.byteLength / shardBytes));
  const files: ModelFiles = new Map();
  const paths: string[] = [];
  for (let i = 0; i < shardCount; i += 1) {
    const path = `group1-shard${i + 1}of${shardCount}.bin`;
    paths.push(path);
    files.set(path, weights.slice(i * shardBytes, Math.min(weights.byteLength, (i + 1) * shardBytes)));
  }
  const modelJson: tf.io.ModelJSON = {
    format: saved.format ?? classifier.format,
    generatedBy: saved.generatedBy ?? `TensorFlow.js tfjs-layers v${tf.version_layers}`,
    convertedBy: saved.convertedBy ?? null,
    modelTopology: saved.modelTopology as JsonObject,
    weightsManifest: [{ paths, weights: saved.weightSpecs ?? [] }],
    ...(saved.signature ? { signature: saved.signature } : {}),
    ...(saved.userDefinedMetadata ? { userDefinedMetadata: saved.userDefinedMetadata } : {}),
    ...(saved.modelInitializer ? { modelInitializer: saved.modelInitializer } : {}),
  };
  const encoder = new TextEncoder();
  files.set('model.json', encoder.encode(JSON.stringify(modelJson)));
  files.set('card.json', encoder.encode(`${JSON.stringify(fullCard, null, 2)}\n`));
  return files;
}
