import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
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

/**
 * The service's state directory (durable audits, the local blob store): `RATIO_STATE_DIR`, else
 * `$XDG_STATE_HOME/ratio-audit`, else `~/.local/state/ratio-audit`.
 */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.RATIO_STATE_DIR) return path.resolve(env.RATIO_STATE_DIR);
  const base = env.XDG_STATE_HOME ?? path.join(homedir(), '.local', 'state');
  return path.join(base, 'ratio-audit');
}
