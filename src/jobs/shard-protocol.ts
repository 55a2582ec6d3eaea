import type { AttackProgress } from '../engine/attacks/types.js';
import type { AutoAttackPart } from '../engine/autoattack.js';
import type { ShardRange, ShardSettings } from './shards.js';

/**
 * Messages between the shard pool and its worker processes (Node IPC with 'advanced'
 * serialization, so typed arrays and Maps travel as they are).
 */

export interface ShardTaskMessage {
  type: 'shard';
  /** Unique per dispatch (a retried shard gets a new one). */
  task: number;
  /** The model the shard runs on; `files` is sent only when the worker does not hold it yet. */
  modelKey: string;
  files?: Map<string, Uint8Array>;
  range: ShardRange;
  settings: ShardSettings;
  /** The shard's points as float32 NHWC rows in [0,1] (exactly the parent's values). */
  x: Float32Array;
  shape: [number, number, number, number];
  y: Int32Array;
  /** The audit's first min(n, batchSize) points, for the shard holding point 0 (sanity checks). */
  probe?: { x: Float32Array; shape: [number, number, number, number]; y: Int32Array };
}

export type ParentMessage = ShardTaskMessage | { type: 'cancel'; task: number };

export type WorkerMessage =
  | { type: 'ready'; backend: string; pid: number }
  | { type: 'progress'; task: number; progress: AttackProgress }
  | { type: 'result'; task: number; part: AutoAttackPart }
  | { type: 'error'; task: number; name: string; message: string };
