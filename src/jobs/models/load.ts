import path from 'node:path';
import { listModelDirs, type ModelFiles, readModelPath } from '../../data/model-dir.js';
import { type Classifier, ModelContractError } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles, ModelFileError } from '../../engine/model/files.js';
import { inspectOnnx, OnnxImportError, type OnnxSummary } from '../../engine/model/onnx/index.js';
import { ModelLoadError } from '../errors.js';

/**
 * Models as the use cases get them: a model directory (the CLI), every model directory under a
 * models folder (the service), or an upload (an HTTP audit). Loading failures keep their types
 * (`ModelDirError`, `ModelFileError`, `ModelContractError`); a failure the loader did not type
 * becomes a `ModelLoadError` naming the input.
 */

/** Loads the model in directory `dir` (TF.js or ONNX), or the ONNX file `dir` names. */
export async function loadModelDir(
  dir: string,
  card: { name?: string } = {},
  /** The directory's files when the caller read them already (readModelPath). */
  read?: ModelFiles,
): Promise<Classifier> {
  const files = read ?? (await readModelPath(dir));
  const name =
    card.name ?? (dir.toLowerCase().endsWith('.onnx') ? path.basename(dir, path.extname(dir)) : undefined);
  return loadClassifierFromFiles(files, { card: name ? { ...card, name } : card });
}

/**
 * Loads each model directory under `root` (by folder name); a model that cannot be loaded is
 * reported through `onSkipped` and left out, never fatal.
 */
export async function loadModelsFolder(
  root: string,
  onLoaded: (name: string) => void,
  onSkipped: (name: string, error: unknown) => void,
  /** Receives each loaded model's files (the service's compute worker threads load them again). */
  filesOut?: Map<string, ModelFiles>,
): Promise<Map<string, Classifier>> {
  const models = new Map<string, Classifier>();
  for (const name of await listModelDirs(root)) {
    try {
      // readModelPath refuses shard paths that leave the folder and caps the total size.
      const files = await readModelPath(path.join(root, name));
      models.set(name, await loadClassifierFromFiles(files, { card: { name } }));
      filesOut?.set(name, files);
      onLoaded(name);
    } catch (error) {
      onSkipped(name, error);
    }
  }
  return models;
}

/** Loads uploaded model files; `field` names the upload for errors. */
export async function loadUploadedModel(
  files: ModelFiles,
  field: string,
  maxWeightBytes: number,
): Promise<Classifier> {
  try {
    return await loadClassifierFromFiles(files, { maxWeightBytes });
  } catch (error) {
    if (error instanceof ModelFileError || error instanceof ModelContractError) throw error;
    throw new ModelLoadError(field, `the model cannot be loaded: ${(error as Error).message}`);
  }
}

/**
 * What `ratio models inspect` prints for an ONNX model (a .onnx file or a directory holding
 * model.onnx): inputs, outputs, ops used, parameter count, warnings; no tensor is made. A file the
 * importer refuses becomes a `ModelFileError` naming it, with the ONNX error as cause.
 */
export async function inspectModel(modelPath: string): Promise<OnnxSummary> {
  const files = await readModelPath(modelPath);
  const bytes = files.get('model.onnx');
  if (!bytes)
    throw new ModelLoadError(
      'model',
      `'${modelPath}' is not an ONNX model (a .onnx file or a directory with model.onnx)`,
    );
  try {
    return inspectOnnx(bytes);
  } catch (error) {
    if (!(error instanceof OnnxImportError)) throw error;
    throw new ModelFileError(modelPath, undefined, `${error.name}: ${error.message}`, { cause: error });
  }
}
