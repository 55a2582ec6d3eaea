/**
 * Training configuration: one JSON object (configs/*.json), every field also a CLI flag.
 * Defaults follow the RATIO reference setup (docs/algorithms.md, "RATIO training") scaled to small budgets.
 */

export const OBJECTIVES = ['plain', 'oe', 'at', 'acet', 'ratio'] as const;
export type Objective = (typeof OBJECTIVES)[number];

export const INNER_ATTACKS = ['pgd', 'apgd'] as const;
export type InnerAttack = (typeof INNER_ATTACKS)[number];

export const SCHEDULES = ['cosine', 'step', 'constant'] as const;
export type Schedule = (typeof SCHEDULES)[number];

export interface TrainConfig {
  /** Model name: the export goes to `<outDir>/<name>/`. */
  name: string;
  objective: Objective;
  architecture: string;
  /** Channel multiplier of the architecture. */
  width: number;
  /** In-distribution training data: CIFAR binary file(s), an image folder, or an IDX images file. */
  data: string;
  /** Out-distribution data (oe, acet, ratio): CIFAR-binary file(s), comma separated, or a folder of them. */
  outData?: string;
  /** Use at most this many in-distribution training images (0 = all). */
  limit: number;
  /** Use at most this many out-distribution images (0 = all). */
  outLimit: number;
  /** Held-out validation images taken from the training set (temperature fit, monitoring). */
  validationSize: number;
  epochs: number;
  batchSize: number;
  lr: number;
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
  schedule: Schedule;
  warmupEpochs: number;
  /** Step schedule: epochs (fractions allowed) where the rate is multiplied by `stepGamma`. */
  stepMilestones: number[];
  stepGamma: number;
  /** Weight EMA decay (0 = no EMA); the EMA weights are the ones evaluated and exported. */
  ema: number;
  augment: boolean;
  cutout: number;
  epsIn: number;
  epsOut: number;
  lambda: number;
  stepsIn: number;
  stepsOut: number;
  /** Inner-attack L2 step length, absolute (reference: 0.1 for eps 0.5). */
  stepSizeIn: number;
  stepSizeOut: number;
  innerAttack: InnerAttack;
  seed: number;
  /** Where runs (log, checkpoint) live: `<runDir>/<name>/`. */
  runDir: string;
  /** Where the trained model is exported: `<outDir>/<name>/`. */
  outDir: string;
  /**
   * A checkpoint (another run's `checkpoint.bin`) whose weights start this run instead of the seeded
   * initialisation: its EMA weights where it kept an average, else its weights. Optimiser state,
   * schedule and data order start fresh, so a finished run can continue under a new schedule
   * (a warm restart) where its own schedule has decayed to zero.
   */
  initFrom?: string;
  /** Minutes between time-based checkpoints (also one at every epoch end). */
  checkpointMinutes: number;
  /** Stop after this many optimisation steps in this process (0 = no limit); for tests and budgets. */
  maxSteps: number;
  /** Why these settings were chosen (budget reasoning); copied into the model card. */
  why?: string;
}

export const DEFAULT_CONFIG: TrainConfig = {
  name: 'model',
  objective: 'plain',
  architecture: 'small-cnn',
  width: 1,
  data: 'cifar10/train',
  outData: undefined,
  limit: 0,
  outLimit: 0,
  validationSize: 1000,
  epochs: 30,
  batchSize: 128,
  lr: 0.1,
  momentum: 0.9,
  nesterov: true,
  weightDecay: 5e-4,
  schedule: 'cosine',
  warmupEpochs: 1,
  stepMilestones: [],
  stepGamma: 0.1,
  ema: 0.999,
  augment: true,
  cutout: 16,
  epsIn: 0.25,
  epsOut: 1,
  lambda: 1,
  stepsIn: 10,
  stepsOut: 20,
  stepSizeIn: 0.1,
  stepSizeOut: 0.1,
  innerAttack: 'pgd',
  seed: 0,
  runDir: 'runs',
  outDir: 'models',
  checkpointMinutes: 10,
  maxSteps: 0,
  initFrom: undefined,
  why: undefined,
};

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type FieldKind = 'string' | 'number' | 'integer' | 'boolean' | 'numbers' | readonly string[];

/** The type of every field: drives JSON validation and CLI flag parsing alike. */
export const CONFIG_FIELDS: Record<keyof TrainConfig, FieldKind> = {
  name: 'string',
  objective: OBJECTIVES,
  architecture: 'string',
  width: 'number',
  data: 'string',
  outData: 'string',
  limit: 'integer',
  outLimit: 'integer',
  validationSize: 'integer',
  epochs: 'integer',
  batchSize: 'integer',
  lr: 'number',
  momentum: 'number',
  nesterov: 'boolean',
  weightDecay: 'number',
  schedule: SCHEDULES,
  warmupEpochs: 'number',
  stepMilestones: 'numbers',
  stepGamma: 'number',
  ema: 'number',
  augment: 'boolean',
  cutout: 'integer',
  epsIn: 'number',
  epsOut: 'number',
  lambda: 'number',
  stepsIn: 'integer',
  stepsOut: 'integer',
  stepSizeIn: 'number',
  stepSizeOut: 'number',
  innerAttack: INNER_ATTACKS,
  seed: 'integer',
  runDir: 'string',
  outDir: 'string',
  checkpointMinutes: 'number',
  maxSteps: 'integer',
  initFrom: 'string',
  why: 'string',
};

function isField(key: string): key is keyof TrainConfig {
  return Object.hasOwn(CONFIG_FIELDS, key);
}

/** Converts one value (from JSON, or a flag's string) to the field's type, or throws naming the field. */
function coerce(key: keyof TrainConfig, raw: unknown): unknown {
  const kind = CONFIG_FIELDS[key];
  const bad = (what: string) =>
    new ConfigError(`'${key}' must be ${what}, got ${JSON.stringify(raw) ?? String(raw)}`);
  if (Array.isArray(kind)) {
    if (typeof raw !== 'string' || !kind.includes(raw)) throw bad(`one of ${kind.join(', ')}`);
    return raw;
  }
  switch (kind) {
    case 'string':
      if (typeof raw !== 'string' || raw === '') throw bad('a non-empty string');
      return raw;
    case 'boolean':
      if (raw === 'true' || raw === true) return true;
      if (raw === 'false' || raw === false) return false;
      throw bad('true or false');
    case 'numbers': {
      const list =
        typeof raw === 'string'
          ? raw
              .split(',')
              .filter((s) => s !== '')
              .map(Number)
          : raw;
      if (!Array.isArray(list) || list.some((v) => typeof v !== 'number' || !Number.isFinite(v))) {
        throw bad('a list of numbers');
      }
      return list;
    }
    default: {
      const value = typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : raw;
      if (typeof value !== 'number' || !Number.isFinite(value)) throw bad('a finite number');
      if (kind === 'integer' && !Number.isInteger(value)) throw bad('an integer');
      return value;
    }
  }
}

/** Checks ranges that types cannot express. */
function checkRanges(config: TrainConfig): void {
  const positive: Array<keyof TrainConfig> = ['epochs', 'batchSize', 'lr'];
  for (const key of positive) {
    if (!((config[key] as number) > 0)) throw new ConfigError(`'${key}' must be > 0, got ${config[key]}`);
  }
  const nonNegative: Array<keyof TrainConfig> = [
    'width',
    'limit',
    'outLimit',
    'validationSize',
    'weightDecay',
    'warmupEpochs',
    'cutout',
    'epsIn',
    'epsOut',
    'lambda',
    'stepsIn',
    'stepsOut',
    'stepSizeIn',
    'stepSizeOut',
    'checkpointMinutes',
    'maxSteps',
  ];
  for (const key of nonNegative) {
    if ((config[key] as number) < 0) throw new ConfigError(`'${key}' must be >= 0, got ${config[key]}`);
  }
  for (const key of ['momentum', 'ema'] as const) {
    if (config[key] < 0 || config[key] >= 1)
      throw new ConfigError(`'${key}' must be in [0, 1), got ${config[key]}`);
  }
  if (!/^[A-Za-z0-9._-]+$/.test(config.name)) {
    throw new ConfigError(`'name' may hold only letters, digits, '.', '_' and '-', got '${config.name}'`);
  }
  if (usesOutDistribution(config.objective) && !config.outData) {
    throw new ConfigError(`'outData' is required for objective '${config.objective}'`);
  }
}

export function usesOutDistribution(objective: Objective): boolean {
  return objective === 'oe' || objective === 'acet' || objective === 'ratio';
}

/**
 * Merges layers of partial settings (defaults < config file < flags) into a checked config.
 * Unknown keys are refused so a typo in a config file cannot silently fall back to a default.
 */
export function resolveConfig(...layers: Array<Record<string, unknown>>): TrainConfig {
  const merged: Record<string, unknown> = { ...DEFAULT_CONFIG };
  for (const layer of layers) {
    for (const [key, raw] of Object.entries(layer)) {
      if (key === '$comment') continue;
      if (!isField(key)) {
        throw new ConfigError(`unknown setting '${key}' (known: ${Object.keys(CONFIG_FIELDS).join(', ')})`);
      }
      if (raw === undefined) continue;
      merged[key] = coerce(key, raw);
    }
  }
  const config = merged as unknown as TrainConfig;
  checkRanges(config);
  return config;
}

/** `stepSizeIn` -> `step-size-in`, the CLI flag of a field. */
export function flagName(key: keyof TrainConfig): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}
