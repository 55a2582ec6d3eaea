import type {
  CounterfactualRequest,
  CounterfactualRows,
  WorstCaseRequest,
  WorstCaseRows,
} from './compute.js';

/** Messages between the compute host (src/jobs/serving/compute-host.ts) and its worker thread. */

export interface WorkerInit {
  /** Model files by name (model.json, shards, card.json), as `loadModelFromFiles` takes them. */
  models: Array<{ name: string; files: Map<string, Uint8Array> }>;
}

interface Addressed {
  id: number;
  model: string;
  images: Float32Array;
  count: number;
}

export type WorkerRequest =
  | (Addressed & { op: 'probabilities'; temperatures: Float32Array })
  | (Addressed & { op: 'logits' })
  | (Addressed & { op: 'worstCase'; request: WorstCaseRequest })
  | (Addressed & { op: 'counterfactuals'; request: CounterfactualRequest });

/** A request before the host gives it its id. */
export type UnaddressedRequest = WorkerRequest extends infer R
  ? R extends WorkerRequest
    ? Omit<R, 'id'>
    : never
  : never;

export interface RemoteError {
  name: string;
  message: string;
  field?: string;
}

export type WorkerReply =
  | { ok: true; id: number; ready: { backend: string; models: string[] } }
  | { ok: true; id: number; probabilities: Float32Array; computeMs: number }
  | { ok: true; id: number; logits: Float32Array }
  | { ok: true; id: number; worstCase: WorstCaseRows }
  | { ok: true; id: number; counterfactuals: CounterfactualRows }
  | { ok: false; id: number; error: RemoteError };

/** The field of a successful reply that carries a request's answer. */
export type Answer = WorkerRequest['op'];

/** What the reply to an `Answer` request holds under that name. */
export type AnswerOf<K extends Answer> = Extract<WorkerReply, Record<K, unknown>>[K];
