import { totalmem } from 'node:os';
import type { LoadModelOptions } from '../../engine/model/files.js';

/**
 * How large a model may be, by place. The service keeps fixed limits: an upload or a served model
 * costs the operator's machine, whoever sent it (RATIO_MAX_MODEL_* set them). The CLI on one's own
 * files allows what the machine's memory allows (`--max-model-bytes` or the same variables set it).
 */
export interface ModelLimits {
  /** Largest model in bytes: its weights (shards), or the .onnx file and its external data together. */
  maxBytes: number;
  /** Most parameters (weight elements). */
  maxParameters: number;
  /** Most elements of one activation of one image (or of one constant). */
  maxActivationElements: number;
  /** Most FLOPs of one forward pass of one image (a multiply-add counts 2). */
  maxFlopsPerImage: number;
}

/** The service's limits (uploads and served models) unless the environment sets others. */
export const SERVICE_MODEL_LIMITS: Readonly<ModelLimits> = {
  maxBytes: 200_000_000,
  maxParameters: 50_000_000,
  maxActivationElements: 1 << 24,
  maxFlopsPerImage: 20e9,
};

/** The environment variable that sets each limit, in the service and the CLI alike. */
export const MODEL_LIMIT_VARIABLES = {
  RATIO_MAX_MODEL_BYTES: 'maxBytes',
  RATIO_MAX_MODEL_PARAMETERS: 'maxParameters',
  RATIO_MAX_MODEL_ELEMENTS: 'maxActivationElements',
  RATIO_MAX_MODEL_FLOPS: 'maxFlopsPerImage',
} as const satisfies Record<string, keyof ModelLimits>;

/** The variable that sets the limit a `ModelLimitError` names ('bytes', 'parameters', ...). */
export function limitVariable(limit: string): string | undefined {
  const key = (
    {
      bytes: 'maxBytes',
      parameters: 'maxParameters',
      tensorElements: 'maxActivationElements',
      flops: 'maxFlopsPerImage',
    } as Record<string, keyof ModelLimits>
  )[limit];
  return Object.entries(MODEL_LIMIT_VARIABLES).find(([, k]) => k === key)?.[0];
}

/**
 * A limit as given by a user (`4e9`, `500000000`): a positive decimal number, optionally with an
 * exponent; no hex, no sign, no Infinity. A RangeError naming `name` otherwise.
 */
export function parseModelLimit(raw: string, name: string): number {
  const text = raw.trim();
  const value = /^\d+(\.\d+)?(e\d+)?$/i.test(text) ? Number(text) : Number.NaN;
  if (!Number.isFinite(value) || value < 1) {
    throw new RangeError(`${name} must be a positive decimal number such as 4e9, got '${raw}'`);
  }
  return Math.floor(value);
}

/** The limits the environment sets (unset or empty variables: none). */
function limitsFromEnv(env: NodeJS.ProcessEnv): Partial<ModelLimits> {
  const limits: Partial<ModelLimits> = {};
  for (const [name, key] of Object.entries(MODEL_LIMIT_VARIABLES)) {
    const raw = env[name];
    if (raw !== undefined && raw.trim() !== '') limits[key] = parseModelLimit(raw, name);
  }
  return limits;
}

/** The service's limits, with those the environment sets. */
export function serviceModelLimits(env: NodeJS.ProcessEnv = process.env): ModelLimits {
  return { ...SERVICE_MODEL_LIMITS, ...limitsFromEnv(env) };
}

/**
 * Limits for one's own model files on this machine. Loading holds a model about three times (the
 * file, its decoded weights, the tensors), so by default a model may take a third of the memory; the
 * parameters follow from the bytes (float16 weights at 2 bytes each), and activations and FLOPs are
 * the user's own time. `maxBytes` (the CLI's `--max-model-bytes`) comes first, then the environment.
 */
export function localModelLimits(
  options: { maxBytes?: number; env?: NodeJS.ProcessEnv; memoryBytes?: number } = {},
): ModelLimits {
  const fromEnv = limitsFromEnv(options.env ?? process.env);
  const maxBytes =
    options.maxBytes ?? fromEnv.maxBytes ?? Math.floor((options.memoryBytes ?? totalmem()) / 3);
  return {
    maxBytes,
    maxParameters: fromEnv.maxParameters ?? Math.floor(maxBytes / 2),
    maxActivationElements: fromEnv.maxActivationElements ?? 2 ** 31 - 1,
    maxFlopsPerImage: fromEnv.maxFlopsPerImage ?? 1e15,
  };
}

/**
 * The loader's options for a model under `limits`. External data (ONNX weights beside the .onnx) is
 * read for local files only: an upload is its own bytes, never a path on this machine.
 */
export function loadOptions(limits: ModelLimits, place: 'local' | 'upload'): LoadModelOptions {
  return {
    maxWeightBytes: limits.maxBytes,
    budget: {
      maxParameters: limits.maxParameters,
      maxActivationElements: limits.maxActivationElements,
      maxFlopsPerImage: limits.maxFlopsPerImage,
    },
    externalData: place === 'local',
  };
}

/**
 * Limits for files that were loaded and checked already under their place's limits (the parent of a
 * shard worker, the service's main thread before its compute threads, an audit stored at intake):
 * loading the same files again cannot cross them, and a machine's own limit must not refuse what a
 * larger flag or variable accepted.
 */
export const CHECKED_MODEL_LIMITS: Readonly<ModelLimits> = {
  maxBytes: Number.MAX_SAFE_INTEGER,
  maxParameters: Number.MAX_SAFE_INTEGER,
  maxActivationElements: Number.MAX_SAFE_INTEGER,
  maxFlopsPerImage: Number.MAX_SAFE_INTEGER,
};

/** Bytes allowed for model.json and card.json beside the weights when reading a model directory. */
export const MODEL_JSON_ALLOWANCE = 64_000_000;
