import path from 'node:path';
import {
  listModelDirs,
  type ModelFiles,
  ONNX_FILE,
  readModelPath,
  readModelSideFiles,
} from '../../data/model-dir.js';
import { type Classifier, ModelContractError } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles, ModelFileError, ModelLimitError } from '../../engine/model/files.js';
import {
  inspectOnnx,
  OnnxImportError,
  OnnxLimitError,
  type OnnxSummary,
  onnxExternalDataFiles,
} from '../../engine/model/onnx/index.js';
import { ModelLoadError } from '../errors.js';
import {
  loadOptions,
  localModelLimits,
  MODEL_JSON_ALLOWANCE,
  type ModelLimits,
  serviceModelLimits,
} from './limits.js';

/**
 * Models as the use cases get them: a model directory (the CLI), every model directory under a
 * models folder (the service), or an upload (an HTTP audit). Loading failures keep their types
 * (`ModelDirError`, `ModelFileError`, `ModelContractError`); a failure the loader did not type
 * becomes a `ModelLoadError` naming the input.
 */

/**
 * Reads a model given by path (a directory, or a `.onnx` file) with the files it needs: for an ONNX
 * model whose weights are external data, the files beside it that hold them (confined to its
 * directory). Throws `ModelDirError` for files it cannot read or over `limits.maxBytes`.
 */
export async function readLocalModel(
  modelPath: string,
  limits: ModelLimits = localModelLimits(),
): Promise<ModelFiles> {
  const maxBytes = limits.maxBytes + MODEL_JSON_ALLOWANCE;
  const files = await readModelPath(modelPath, { maxBytes });
  const onnx = files.get(ONNX_FILE);
  if (!onnx) return files;
  let external: string[];
  try {
    external = onnxExternalDataFiles(onnx, { maxBytes: limits.maxBytes });
  } catch (error) {
    // The loader reports an unreadable file with its node and cause.
    if (error instanceof OnnxImportError) return files;
    throw error;
  }
  return external.length > 0 ? readModelSideFiles(modelPath, files, external, maxBytes) : files;
}

/**
 * Loads the model in directory `dir` (TF.js or ONNX), or the ONNX file `dir` names, under `limits`
 * (default: the machine's, `localModelLimits`); an ONNX model's external data is read.
 */
export async function loadModelDir(
  dir: string,
  card: { name?: string } = {},
  /** The directory's files when the caller read them already (readLocalModel). */
  read?: ModelFiles,
  limits: ModelLimits = localModelLimits(),
): Promise<Classifier> {
  const files = read ?? (await readLocalModel(dir, limits));
  const name =
    card.name ?? (dir.toLowerCase().endsWith('.onnx') ? path.basename(dir, path.extname(dir)) : undefined);
  return loadClassifierFromFiles(files, {
    ...loadOptions(limits, 'local'),
    card: name ? { ...card, name } : card,
  });
}

/**
 * Loads each model directory under `root` (by folder name) under the service's limits (the
 * operator's own files: external data is read); a model that cannot be loaded is reported through
 * `onSkipped` and left out, never fatal.
 */
export async function loadModelsFolder(
  root: string,
  onLoaded: (name: string) => void,
  onSkipped: (name: string, error: unknown) => void,
  /** Receives each loaded model's files (the service's compute worker threads load them again). */
  filesOut?: Map<string, ModelFiles>,
  limits: ModelLimits = serviceModelLimits(),
): Promise<Map<string, Classifier>> {
  const models = new Map<string, Classifier>();
  for (const name of await listModelDirs(root)) {
    try {
      // readLocalModel refuses paths that leave the folder and caps the total size.
      const files = await readLocalModel(path.join(root, name), limits);
      models.set(
        name,
        await loadClassifierFromFiles(files, { ...loadOptions(limits, 'local'), card: { name } }),
      );
      filesOut?.set(name, files);
      onLoaded(name);
    } catch (error) {
      onSkipped(name, error);
    }
  }
  return models;
}

/**
 * Loads uploaded model files under the service's limits, `maxWeightBytes` capping the bytes further;
 * an ONNX model's external data is refused (`OnnxExternalDataError` as the cause of a
 * `ModelFileError`). `field` names the upload for errors.
 */
export async function loadUploadedModel(
  files: ModelFiles,
  field: string,
  maxWeightBytes: number,
  limits: ModelLimits = serviceModelLimits(),
): Promise<Classifier> {
  try {
    const capped = { ...limits, maxBytes: Math.min(limits.maxBytes, maxWeightBytes) };
    return await loadClassifierFromFiles(files, loadOptions(capped, 'upload'));
  } catch (error) {
    if (error instanceof ModelFileError || error instanceof ModelContractError) throw error;
    throw new ModelLoadError(field, `the model cannot be loaded: ${(error as Error).message}`);
  }
}

/**
 * What `ratio models inspect` prints for an ONNX model (a .onnx file or a directory holding
 * model.onnx, with its external data): inputs, outputs, ops used, parameter count, warnings; no
 * tensor is made. A file the importer refuses becomes a `ModelFileError` naming it (a
 * `ModelLimitError` for a size over `limits`), with the ONNX error as cause.
 */
export async function inspectModel(
  modelPath: string,
  limits: ModelLimits = localModelLimits(),
): Promise<OnnxSummary> {
  const files = await readLocalModel(modelPath, limits);
  const bytes = files.get(ONNX_FILE);
  if (!bytes)
    throw new ModelLoadError(
      'model',
      `'${modelPath}' is not an ONNX model (a .onnx file or a directory with model.onnx)`,
    );
  const externalData = new Map([...files].filter(([key]) => key !== ONNX_FILE && key !== 'card.json'));
  try {
    return inspectOnnx(
      bytes,
      {
        maxBytes: limits.maxBytes,
        maxParameters: limits.maxParameters,
        maxTensorElements: limits.maxActivationElements,
        maxFlopsPerImage: limits.maxFlopsPerImage,
      },
      externalData,
    );
  } catch (error) {
    if (!(error instanceof OnnxImportError)) throw error;
    const message = `${error.name}: ${error.message}`;
    if (error instanceof OnnxLimitError) {
      throw new ModelLimitError(modelPath, undefined, error.limit, error.value, error.maximum, message, {
        cause: error,
      });
    }
    throw new ModelFileError(modelPath, undefined, message, { cause: error });
  }
}
