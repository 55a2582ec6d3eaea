import type { AutoAttackPart } from '../../engine/attacks/autoattack.js';
import type { AttackProgress } from '../../engine/attacks/types.js';
import type { Norm } from '../../engine/types.js';
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

/** A part of a worst-case OOD confidence search (`ratio eval`): images [firstIndex, firstIndex + n). */
export interface WorstCaseTaskMessage {
  type: 'worst-case';
  task: number;
  modelKey: string;
  files?: Map<string, Uint8Array>;
  /** The engine's options, less the callbacks and the signal (they stay in the parent). */
  options: {
    eps: number;
    iterations?: number;
    restarts?: number;
    norm?: Norm;
    temperature?: number;
    seed?: number;
    batchSize?: number;
    firstIndex: number;
  };
  x: Float32Array;
  shape: [number, number, number, number];
}

/** What a worst-case part returns: per image its confidences, class and worst-case point. */
export interface WorstCasePart {
  confidence: Float32Array;
  cleanConfidence: Float32Array;
  predicted: Int32Array;
  images: Float32Array;
}

export type ParentMessage =
  | ShardTaskMessage
  | WorstCaseTaskMessage
  | { type: 'cancel'; task: number }
  /** The audit of this model ended: free it (a worker holds no model between audits). */
  | { type: 'release'; modelKey: string }
  /** Report live tfjs tensors and heap (tests and the reliability report). */
  | { type: 'memory'; request: number };

export type WorkerMessage =
  | { type: 'ready'; backend: string; pid: number }
  | { type: 'progress'; task: number; progress: AttackProgress }
  | { type: 'result'; task: number; part: AutoAttackPart }
  | { type: 'worst-case-result'; task: number; part: WorstCasePart }
  | { type: 'worst-case-progress'; task: number; done: number; total: number }
  | { type: 'error'; task: number; name: string; message: string }
  | { type: 'memory'; request: number; tensors: number; heapUsed: number; rss: number };
