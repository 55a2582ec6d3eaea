import { createHash } from 'node:crypto';
import { open, readFile, rename } from 'node:fs/promises';
import type { TrainConfig } from './config.js';

/**
 * Training checkpoints: one file holding everything a bit-for-bit resume needs (weights with
 * BatchNorm statistics, optimizer buffers, EMA, RNG state, data position). Layout:
 *
 *   "RATIOCKPT1\n" | u32 LE header length | header JSON | float32 payload
 *
 * The header carries the sha256 of the payload and the run's fingerprint (every setting that
 * shapes the trajectory plus the weight shapes), so a truncated, corrupt or foreign checkpoint is
 * refused with a message saying which, never silently loaded.
 */
const MAGIC = 'RATIOCKPT1\n';

export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
}

/** Settings that do not change the trajectory; they may differ between a run and its resume. */
const NON_TRAJECTORY_FIELDS: ReadonlyArray<keyof TrainConfig> = [
  'name',
  'runDir',
  'outDir',
  'checkpointMinutes',
  'maxSteps',
  'why',
  // Its path may differ between machines; the starting weights enter as their sha256 (Trainer.startFrom).
  'initFrom',
];

export interface TrainingPosition {
  /** Optimisation steps done. */
  step: number;
  /** Current epoch and position in its data order (examples consumed). */
  epoch: number;
  position: number;
  /** Same for the out-distribution stream, which wraps at its own length. */
  outEpoch: number;
  outPosition: number;
  rng: { state: number; spareNormal: number | null };
  /** Training wall time so far, across resumed runs. */
  elapsedSeconds: number;
}

export interface CheckpointContent {
  fingerprint: Record<string, unknown>;
  position: TrainingPosition;
  weights: Float32Array[];
  optimizer: Array<Float32Array | null>;
  ema: Float32Array[] | null;
}

/** What must match for a checkpoint to continue this run. */
export function runFingerprint(config: TrainConfig, weightShapes: number[][]): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    if (!NON_TRAJECTORY_FIELDS.includes(key as keyof TrainConfig)) settings[key] = value;
  }
  return { ...settings, weightShapes };
}

interface HeaderArray {
  group: 'weights' | 'optimizer' | 'ema';
  index: number;
  length: number;
}

interface Header {
  fingerprint: Record<string, unknown>;
  position: TrainingPosition;
  arrays: HeaderArray[];
  payloadBytes: number;
  payloadSha256: string;
  counts: { weights: number; optimizer: number; ema: number | null };
}

export function encodeCheckpoint(content: CheckpointContent): Uint8Array {
  const arrays: HeaderArray[] = [];
  const chunks: Float32Array[] = [];
  const add = (group: HeaderArray['group'], list: ReadonlyArray<Float32Array | null>) => {
    list.forEach((values, index) => {
      if (!values) return;
      arrays.push({ group, index, length: values.length });
      chunks.push(values);
    });
  };
  add('weights', content.weights);
  add('optimizer', content.optimizer);
  if (content.ema) add('ema', content.ema);
  const floats = chunks.reduce((sum, c) => sum + c.length, 0);
  const payload = new Float32Array(floats);
  let offset = 0;
  for (const chunk of chunks) {
    payload.set(chunk, offset);
    offset += chunk.length;
  }
  const payloadBytes = new Uint8Array(payload.buffer);
  const header: Header = {
    fingerprint: content.fingerprint,
    position: content.position,
    arrays,
    payloadBytes: payloadBytes.byteLength,
    payloadSha256: createHash('sha256').update(payloadBytes).digest('hex'),
    counts: {
      weights: content.weights.length,
      optimizer: content.optimizer.length,
      ema: content.ema ? content.ema.length : null,
    },
  };
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const magic = new TextEncoder().encode(MAGIC);
  const out = new Uint8Array(magic.length + 4 + headerBytes.length + payloadBytes.length);
  out.set(magic, 0);
  new DataView(out.buffer).setUint32(magic.length, headerBytes.length, true);
  out.set(headerBytes, magic.length + 4);
  out.set(payloadBytes, magic.length + 4 + headerBytes.length);
  return out;
}

/** A checkpoint as read back, with the digest that identifies its payload. */
export interface DecodedCheckpoint extends CheckpointContent {
  payloadSha256: string;
}

/** Parses and verifies a checkpoint; `source` names it in errors. */
export function decodeCheckpoint(bytes: Uint8Array, source = 'the checkpoint'): DecodedCheckpoint {
  const magic = new TextEncoder().encode(MAGIC);
  if (bytes.length < magic.length + 4 || !magic.every((b, i) => bytes[i] === b)) {
    throw new CheckpointError(`'${source}' is not a ratio training checkpoint (bad magic bytes)`);
  }
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(magic.length, true);
  const payloadStart = magic.length + 4 + headerLength;
  if (payloadStart > bytes.length) {
    throw new CheckpointError(`'${source}' is truncated: its header runs past the end of the file`);
  }
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(magic.length + 4, payloadStart))) as Header;
  } catch {
    throw new CheckpointError(`'${source}' is corrupt: its header is not valid JSON`);
  }
  const payload = bytes.slice(payloadStart);
  if (payload.length !== header.payloadBytes) {
    throw new CheckpointError(
      `'${source}' is truncated or padded: payload of ${payload.length} bytes, header says ${header.payloadBytes}`,
    );
  }
  const digest = createHash('sha256').update(payload).digest('hex');
  if (digest !== header.payloadSha256) {
    throw new CheckpointError(`'${source}' is corrupt: the payload's sha256 does not match its header`);
  }
  const floats = new Float32Array(payload.buffer, payload.byteOffset, payload.byteLength / 4);
  const weights: Float32Array[] = new Array(header.counts.weights);
  const optimizer: Array<Float32Array | null> = new Array(header.counts.optimizer).fill(null);
  const ema: Float32Array[] | null = header.counts.ema === null ? null : new Array(header.counts.ema);
  let offset = 0;
  for (const entry of header.arrays) {
    const values = floats.slice(offset, offset + entry.length);
    offset += entry.length;
    if (entry.group === 'weights') weights[entry.index] = values;
    else if (entry.group === 'optimizer') optimizer[entry.index] = values;
    else if (ema) ema[entry.index] = values;
  }
  return {
    fingerprint: header.fingerprint,
    position: header.position,
    weights,
    optimizer,
    ema,
    payloadSha256: header.payloadSha256,
  };
}

/** Refuses a checkpoint written by a different run, naming the settings that differ. */
export function checkFingerprint(
  saved: Record<string, unknown>,
  current: Record<string, unknown>,
  source = 'the checkpoint',
): void {
  const keys = new Set([...Object.keys(saved), ...Object.keys(current)]);
  const differences: string[] = [];
  for (const key of keys) {
    const a = JSON.stringify(saved[key]);
    const b = JSON.stringify(current[key]);
    if (a !== b) {
      differences.push(
        key === 'weightShapes' ? 'model weight shapes' : `${key}: checkpoint ${a}, this run ${b}`,
      );
    }
  }
  if (differences.length > 0) {
    throw new CheckpointError(
      `'${source}' belongs to a different run and cannot be resumed (${differences.join('; ')})`,
    );
  }
}

/** Writes `bytes` to `file` atomically: a temporary file beside it, fsync, then rename. */
export async function writeFileAtomic(file: string, bytes: Uint8Array): Promise<void> {
  const temporary = `${file}.tmp-${process.pid}`;
  const handle = await open(temporary, 'w');
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, file);
}

export async function readCheckpoint(file: string): Promise<DecodedCheckpoint> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(file));
  } catch (error) {
    throw new CheckpointError(`cannot read checkpoint '${file}': ${(error as Error).message}`);
  }
  return decodeCheckpoint(bytes, file);
}
