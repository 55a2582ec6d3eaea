import path from 'node:path';
import { listModelDirs, type ModelFiles, readModelDir } from '../data/model-dir.js';
import { type Classifier, ModelContractError, type TfjsClassifier } from '../engine/classifier.js';
import { loadModelFromFiles, ModelFileError } from '../engine/model-files.js';
import { ModelLoadError } from './errors.js';

/**
 * Models as the use cases get them: a model directory (the CLI), every model directory under a
 * models folder (the service), or an upload (an HTTP audit). Loading failures keep their types
 * (`ModelDirError`, `ModelFileError`, `ModelContractError`); a failure the loader did not type
 * becomes a `ModelLoadError` naming the input.
 */

/** Loads the model in directory `dir`. */
export async function loadModelDir(dir: string, card: { name?: string } = {}): Promise<TfjsClassifier> {
  const files = await readModelDir(dir);
  return loadModelFromFiles(files, { card });
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
      // readModelDir refuses shard paths that leave the folder and caps the total size.
      const files = await readModelDir(path.join(root, name));
      models.set(name, await loadModelFromFiles(files, { card: { name } }));
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
): Promise<TfjsClassifier> {
  try {
    return await loadModelFromFiles(files, { maxWeightBytes });
  } catch (error) {
    if (error instanceof ModelFileError || error instanceof ModelContractError) throw error;
    throw new ModelLoadError(field, `the model cannot be loaded: ${(error as Error).message}`);
  }
}
