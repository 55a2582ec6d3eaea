import { lstat, mkdir, readdir, readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomically } from './atomic-file.js';

/**
 * Model directories, owned here: read one into the in-memory file map that `loadModelFromFiles`
 * (src/engine/model/files.ts) checks and loads, write such a map back atomically, list a models
 * folder, update a card. Checks here are only what file access needs (stay inside the directory,
 * size limits); the engine validates the content.
 * Usage: `loadModelFromFiles(await readModelDir('models/ratio-0.25'))`.
 */

/**
 * Model files in memory, keyed by path relative to the model's directory: `model.json`, the weight
 * shards its manifest names, and optionally `card.json`. Uploads arrive as one.
 */
export type ModelFiles = Map<string, Uint8Array>;

/** A model directory that cannot be read or written; `path` is the file at fault. */
export class ModelDirError extends Error {
  override readonly name = 'ModelDirError';
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
  }
}

export interface ReadModelDirOptions {
  /** Largest total bytes read (model.json, card.json and shards; default 264 MB). */
  maxBytes?: number;
}

const DEFAULT_MAX_BYTES = 264_000_000;

/** A manifest path as a key, or undefined when it could leave the directory (the engine says why). */
function safeRelativePath(raw: unknown): string | undefined {
  if (
    typeof raw !== 'string' ||
    raw.length === 0 ||
    /[\\\0%]/.test(raw) ||
    /^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(raw)
  ) {
    return undefined;
  }
  if (raw.startsWith('/') || raw.split('/').includes('..')) return undefined;
  const key = raw
    .split('/')
    .filter((s) => s !== '' && s !== '.')
    .join('/');
  return key.length > 0 ? key : undefined;
}

/** Weight paths named in a model.json, read loosely: the engine reports anything malformed. */
function manifestPaths(modelJson: Uint8Array): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(modelJson));
  } catch {
    return [];
  }
  const manifest = (parsed as { weightsManifest?: unknown } | null)?.weightsManifest;
  if (!Array.isArray(manifest)) return [];
  return manifest.flatMap((group: unknown) => {
    const paths = (group as { paths?: unknown } | null)?.paths;
    return Array.isArray(paths) ? paths : [];
  });
}

/** The real path of a model directory; `ModelDirError` when there is none. */
async function modelRoot(dir: string): Promise<string> {
  try {
    return await realpath(dir);
  } catch {
    throw new ModelDirError(dir, 'model directory does not exist');
  }
}

/**
 * Reads the files of the model directory `dir` (each found at its resolved path), refusing any
 * that is not a regular file and any that takes the total past `maxBytes`, counted from `held`.
 */
function budgetedReader(dir: string, maxBytes: number, held: number) {
  let total = held;
  return async (key: string, resolved: string): Promise<Uint8Array> => {
    const stats = await lstat(resolved);
    if (!stats.isFile()) throw new ModelDirError(path.join(dir, key), 'is not a regular file');
    total += stats.size;
    if (total > maxBytes) {
      throw new ModelDirError(path.join(dir, key), `model files exceed the limit of ${maxBytes} bytes`);
    }
    return new Uint8Array(await readFile(resolved));
  };
}

/**
 * Reads `model.json`, `card.json` (when present) and every weight shard its manifest names from
 * `dir`; a directory with `model.onnx` and no `model.json` gives `model.onnx` and `card.json`. Shard paths that would leave the directory, or resolve (through symlinks) outside it, are
 * not read, so the engine reports them. Throws `ModelDirError` for a missing directory or model.json,
 * a non-regular file, or more than `maxBytes` in total.
 */
export async function readModelDir(dir: string, options: ReadModelDirOptions = {}): Promise<ModelFiles> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  const root = await modelRoot(dir);
  const files: ModelFiles = new Map();
  const readBudgeted = budgetedReader(dir, maxBytes, 0);
  const read = async (key: string, required: boolean): Promise<void> => {
    if (files.has(key)) return;
    const full = path.join(root, key);
    let resolved: string;
    try {
      resolved = await realpath(full);
    } catch {
      if (required) throw new ModelDirError(path.join(dir, key), 'file is missing');
      return;
    }
    if (resolved !== root && !resolved.startsWith(`${root}${path.sep}`)) return;
    files.set(key, await readBudgeted(key, resolved));
  };
  // An ONNX model (PyTorch's export) is one file: model.onnx, beside its card.
  if (!(await exists(path.join(root, 'model.json'))) && (await exists(path.join(root, ONNX_FILE)))) {
    await read(ONNX_FILE, true);
    await read('card.json', false);
    return files;
  }
  await read('model.json', true);
  await read('card.json', false);
  for (const raw of manifestPaths(files.get('model.json')!)) {
    const key = safeRelativePath(raw);
    if (key) await read(key, false);
  }
  return files;
}

/** The ONNX model file of a model directory. */
export const ONNX_FILE = 'model.onnx';

async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reads a model given as a directory (see `readModelDir`) or as a single `.onnx` file, which
 * becomes `model.onnx` of the file map (with no card: its name comes from the file).
 */
export async function readModelPath(
  modelPath: string,
  options: ReadModelDirOptions = {},
): Promise<ModelFiles> {
  if (!modelPath.toLowerCase().endsWith('.onnx')) return readModelDir(modelPath, options);
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  let stats: Awaited<ReturnType<typeof lstat>>;
  try {
    stats = await lstat(await realpath(modelPath));
  } catch {
    throw new ModelDirError(modelPath, 'model file does not exist');
  }
  if (!stats.isFile()) throw new ModelDirError(modelPath, 'is not a regular file');
  if (stats.size > maxBytes)
    throw new ModelDirError(modelPath, `model file exceeds the limit of ${maxBytes} bytes`);
  return new Map([[ONNX_FILE, new Uint8Array(await readFile(modelPath))]]);
}

/**
 * Adds to `files` the side files `keys` (paths relative to the model's directory: `modelPath` itself,
 * or the directory of a `.onnx` file), e.g. the external data an ONNX model names. A path that
 * leaves the directory (through `..`, an absolute path or a symlink), a missing or irregular file, or
 * more than `maxBytes` in all (`files` included) is a `ModelDirError`.
 */
export async function readModelSideFiles(
  modelPath: string,
  files: ModelFiles,
  keys: readonly string[],
  maxBytes: number,
): Promise<ModelFiles> {
  const dir = modelPath.toLowerCase().endsWith('.onnx') ? path.dirname(modelPath) : modelPath;
  const root = await modelRoot(dir);
  const held = [...files.values()].reduce((sum, bytes) => sum + bytes.byteLength, 0);
  const readBudgeted = budgetedReader(dir, maxBytes, held);
  const out: ModelFiles = new Map(files);
  for (const raw of keys) {
    const key = safeRelativePath(raw);
    if (key === undefined || key !== raw) {
      throw new ModelDirError(path.join(dir, String(raw)), 'leaves the model directory');
    }
    if (out.has(key)) throw new ModelDirError(path.join(dir, key), 'is a file the model holds already');
    let resolved: string;
    try {
      resolved = await realpath(path.join(root, key));
    } catch {
      throw new ModelDirError(path.join(dir, key), 'file is missing');
    }
    if (!resolved.startsWith(`${root}${path.sep}`)) {
      throw new ModelDirError(path.join(dir, key), 'leaves the model directory');
    }
    out.set(key, await readBudgeted(key, resolved));
  }
  return out;
}

/**
 * Writes model files into `dir` (created if needed): a TF.js model (model.json and its shards) or an
 * ONNX model (model.onnx). Each file goes to a temporary name first and is renamed into place,
 * model.json (or model.onnx) last, so a reader never sees a model whose other files are not all
 * written yet.
 */
export async function writeModelDir(dir: string, files: ModelFiles): Promise<void> {
  const keys = [...files.keys()];
  for (const key of keys) {
    if (safeRelativePath(key) !== key)
      throw new ModelDirError(key, 'file name must be a plain relative path');
  }
  const main = files.has('model.json') ? 'model.json' : files.has(ONNX_FILE) ? ONNX_FILE : undefined;
  if (!main)
    throw new ModelDirError(path.join(dir, 'model.json'), 'nothing to write: no model.json or model.onnx');
  const ordered = [...keys.filter((k) => k !== main), main];
  await mkdir(dir, { recursive: true });
  for (const key of ordered) {
    const target = path.join(dir, key);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFileAtomically(target, files.get(key)!);
  }
}

/**
 * Sets the given fields of `dir/card.json` (created when absent), keeping every other field as it
 * was; the card is replaced atomically. Returns the card as written.
 */
export async function updateModelCard(
  dir: string,
  fields: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const file = path.join(dir, 'card.json');
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch {
    raw = '{}';
  }
  let card: unknown;
  try {
    card = JSON.parse(raw);
  } catch {
    throw new ModelDirError(file, 'is not valid JSON');
  }
  if (typeof card !== 'object' || card === null || Array.isArray(card)) {
    throw new ModelDirError(file, 'must hold a JSON object');
  }
  const updated = { ...(card as Record<string, unknown>), ...fields };
  await writeFileAtomically(file, `${JSON.stringify(updated, null, 2)}\n`);
  return updated;
}

/** Names of the subdirectories of `root` that hold a model.json or a model.onnx (the models directory). */
export async function listModelDirs(root: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(root);
  } catch {
    return [];
  }
  const names: string[] = [];
  for (const name of entries.sort()) {
    try {
      if ((await lstat(path.join(root, name, 'model.json'))).isFile()) names.push(name);
    } catch {
      // not a TF.js model directory; maybe an ONNX one
      if (await exists(path.join(root, name, ONNX_FILE))) names.push(name);
    }
  }
  return names;
}
