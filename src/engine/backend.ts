import * as tf from '@tensorflow/tfjs';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

export interface BackendInfo {
  name: BackendName;
  threads: number;
  /** tfjs version in use. */
  version: string;
}

let selected: BackendInfo | undefined;

/**
 * Selects the compute backend once per process: `tensorflow` (tfjs-node-gpu / tfjs-node when importable)
 * > `wasm` > `cpu`, or the one forced by `RATIO_BACKEND`. Later calls return the first choice.
 * TODO(issue 2): threads, fast Conv2D gradients, tensorflow backend.
 */
export async function initBackend(
  preferred: string | undefined = process.env.RATIO_BACKEND,
): Promise<BackendInfo> {
  if (selected) return selected;
  const name: BackendName = preferred === 'cpu' ? 'cpu' : 'wasm';
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`backend '${name}' failed to initialise`);
  await tf.ready();
  selected = { name, threads: 1, version: tf.version.tfjs };
  return selected;
}

/** The backend chosen by `initBackend`; throws if it has not run. */
export function backendInfo(): BackendInfo {
  if (!selected) throw new Error('initBackend() has not been called');
  return selected;
}
