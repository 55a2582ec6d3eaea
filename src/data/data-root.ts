import { existsSync } from 'node:fs';
import path from 'node:path';
import { DatasetError } from './errors.js';

/**
 * The one data root: `RATIO_DATA_DIR`, else `../shared/data` (see that folder's README.md). Training
 * configs, `ratio eval`'s built-in OOD sets and the tests all resolve names against it.
 */
export function dataRoot(): string {
  return process.env.RATIO_DATA_DIR ?? path.resolve('../shared/data');
}

/** A path as given if it exists, else relative to the data root (so configs can say `cifar10/train`). */
export function resolveDataPath(spec: string): string {
  if (existsSync(spec)) return path.resolve(spec);
  const underRoot = path.join(dataRoot(), spec);
  if (existsSync(underRoot)) return underRoot;
  throw new DatasetError('not-found', `data '${spec}' not found (neither as a path nor under ${dataRoot()})`);
}
