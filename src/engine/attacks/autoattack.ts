import * as tf from '@tensorflow/tfjs';
import { hashName, mixSeed } from '../../util/random.js';
import type { Classifier } from '../model/classifier.js';
import { assertFinite, classAtRank, logitsOf } from '../model/logits.js';
import {
  AUTOATTACK_VERSIONS,
  type AutoAttackVersion,
  type LongRunOptions,
  type Norm,
  throwIfAborted,
} from '../types.js';
import { apgdAttack, apgdTargeted } from './apgd.js';
import {
  DEFAULT_BATCH_SIZE,
  DEFAULT_ITERATIONS,
  DEFAULT_QUERIES,
  DEFAULT_VERSION,
  defaultRestarts,
} from './defaults.js';
import { fabTargeted, fabUntargeted } from './fab.js';
import { minimumClasses } from './losses.js';
import { square } from './square.js';
import type { Attack, AttackProgress } from './types.js';
import { assertAttackBatch, assertPositiveIntegers, assertThreatModel } from './validate.js';
import { sanityWarnings, verifyAdversarial } from './verify.js';

/**
 * AutoAttack (Croce & Hein, ICML 2020) as a composition: it only sequences attacks sharing the
 * `Attack` contract, runs each on the points still robust, re-verifies every adversarial point
 * and keeps the pointwise worst case. Clean errors count as broken and are never attacked.
 */

export { AUTOATTACK_VERSIONS, type AutoAttackVersion };

export interface AutoAttackOptions extends LongRunOptions<AttackProgress> {
  norm: Norm;
  eps: number;
  version?: AutoAttackVersion;
  /** Restarts of the white-box attacks (default 1; 5 for 'plus' as in the reference). */
  restarts?: number;
  /** Points per attack call (default 250). */
  batchSize?: number;
  /** Replaces the version's sequence (e.g. a cheaper one in tests); names must be unique. */
  attacks?: Attack[];
  /** APGD and FAB iterations per run (default 100). */
  iterations?: number;
  /** Square queries per point (default 5000). */
  queries?: number;
  /**
   * Every attack spends its whole budget on every point it runs on, as the reference does (default
   * false). Robust accuracy and each point's broken_by are the same either way; see
   * docs/algorithms.md "Savings" for what else is.
   */
  fullBudget?: boolean;
  /** Return the adversarial batch (clean points where unbroken); the caller disposes it. */
  keepAdversarial?: boolean;
}

export interface AttackSummary {
  name: string;
  /** Robust accuracy after this attack and all before it. */
  robust_accuracy_after: number;
  /** Points this attack broke (verified). */
  broken: number;
  seconds: number;
}

export interface SampleReport {
  /** The point's index in the audited set (global: the same in every shard layout). */
  index: number;
  clean_correct: boolean;
  /** The class the model predicts for the clean point. */
  predicted: number;
  /** 'clean' for clean errors, the attack's name, or null when the point survived every attack. */
  broken_by: string | null;
  perturbation_norm: number | null;
  /** Attack seconds spent on this point (its share of every batch it was attacked in). */
  seconds: number;
}

/** What a whole report and each of its parts say of the run. */
interface RunHeader {
  norm: Norm;
  eps: number;
  version: AutoAttackVersion;
  seed: number;
  backend: string;
  seconds: number;
}

export interface AutoAttackReport extends RunHeader {
  n: number;
  clean_accuracy: number;
  robust_accuracy: number;
  per_attack: AttackSummary[];
  samples: SampleReport[];
  warnings: string[];
  adversarial?: tf.Tensor4D;
}

/** What one part (shard) of an audit knows about an attack of the sequence. */
export interface AttackPartStats {
  name: string;
  /** Why the attack did not run (too few classes), else null. */
  skipped: string | null;
  /** Claimed adversarial points that failed re-verification, and the first one's reason. */
  failed: number;
  first_failure: string | null;
  seconds: number;
}

/**
 * The result of AutoAttack on a part of an audit (a shard: some subset of the points, by global
 * index). Parts merge into the report with `mergeAutoAttackParts`; since every random draw on a
 * point depends only on (seed, global index, attack, restart), the merge of any split equals the
 * report of one run on all points (timings aside).
 */
export interface AutoAttackPart extends RunHeader {
  attacks: AttackPartStats[];
  samples: SampleReport[];
  /** The model sanity checks' warnings, from the part that ran them (null: not run here). */
  sanity_warnings: string[] | null;
}

export interface AutoAttackPartOptions extends AutoAttackOptions {
  /** Global index of every row of x (default 0..n-1); seeds and the report rows use them. */
  indices?: ArrayLike<number>;
  /** Run the model sanity checks on the first `batchSize` rows (default true). */
  sanityChecks?: boolean;
}

/** Parts that cannot form one report (different settings, overlapping points). */
export class AutoAttackMergeError extends Error {
  override readonly name = 'AutoAttackMergeError';
}

interface PlannedAttack {
  attack: Attack;
  /** Fewest classes the attack is defined for. */
  minimumClasses: number;
  restarts: number;
}

/**
 * The attack sequence of a version, as the reference: standard = APGD-CE, APGD-T, FAB-T, Square;
 * plus = APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T (5 restarts for the untargeted white-box ones).
 */
function plannedAttacks(
  version: AutoAttackVersion,
  restarts: number,
  explicitRestarts: number | undefined,
  iterations: number,
  queries: number,
): PlannedAttack[] {
  const ce = { attack: apgdAttack('ce', { iterations }), minimumClasses: 2, restarts };
  const targeted = {
    attack: apgdTargeted({ iterations }),
    minimumClasses: minimumClasses('dlr-targeted'),
    restarts,
  };
  const fabT = { attack: fabTargeted({ iterations }), minimumClasses: 2, restarts };
  // Square is black-box and draws its own restarts inside its query budget.
  const squareAttack = { attack: square({ queries }), minimumClasses: 2, restarts: 1 };
  if (version === 'standard') return [ce, targeted, fabT, squareAttack];
  if (version === 'plus') {
    const dlr = {
      attack: apgdAttack('dlr', { iterations }),
      minimumClasses: minimumClasses('dlr'),
      restarts,
    };
    const fab = { attack: fabUntargeted({ iterations }), minimumClasses: 2, restarts };
    // As the reference: the 5 restarts go to the untargeted attacks, the targeted ones keep one per target.
    const once = explicitRestarts ?? 1;
    return [ce, dlr, fab, squareAttack, { ...targeted, restarts: once }, { ...fabT, restarts: once }];
  }
  // Expectation over transformation: 20 draws per gradient for randomised models.
  return [
    { attack: apgdAttack('ce', { iterations, eotIterations: 20 }), minimumClasses: 2, restarts },
    {
      attack: apgdAttack('dlr', { iterations, eotIterations: 20 }),
      minimumClasses: minimumClasses('dlr'),
      restarts,
    },
  ];
}

function validate(classifier: Classifier, x: tf.Tensor4D, y: Int32Array, options: AutoAttackOptions): void {
  assertAttackBatch(classifier, x, y);
  assertThreatModel(options);
  const version = options.version ?? DEFAULT_VERSION;
  if (!AUTOATTACK_VERSIONS.includes(version)) {
    throw new Error(`'version' must be one of ${AUTOATTACK_VERSIONS.join(', ')}, got ${String(version)}`);
  }
  assertPositiveIntegers([
    ['batchSize', options.batchSize],
    ['restarts', options.restarts],
    ['iterations', options.iterations],
    ['queries', options.queries],
  ]);
}

/**
 * Robust accuracy of `classifier` on (x, y) within the `norm` ball of radius `eps`, by AutoAttack.
 * Deterministic for a seed on one backend; rejects with an AbortError when `signal` fires.
 * Equal to `mergeAutoAttackParts` over `autoAttackPart` calls on any split of the points.
 *
 * @example
 * const report = await autoAttack(model, x, y, { norm: 'L2', eps: 0.5, seed: 0 });
 * console.log(report.robust_accuracy, report.per_attack);
 */
export async function autoAttack(
  classifier: Classifier,
  x: tf.Tensor4D,
  y: Int32Array,
  options: AutoAttackOptions,
): Promise<AutoAttackReport> {
  const adversarialRows = options.keepAdversarial ? (x.dataSync() as Float32Array).slice() : undefined;
  const part = await runPart(classifier, x, y, options, adversarialRows);
  const report = mergeAutoAttackParts([part]);
  return adversarialRows ? { ...report, adversarial: tf.tensor4d(adversarialRows, x.shape) } : report;
}

/**
 * AutoAttack on a part of an audit: the rows of x are the points `indices` (global) of the audited
 * set. Returns per-point rows and per-attack bookkeeping for `mergeAutoAttackParts`.
 */
export async function autoAttackPart(
  classifier: Classifier,
  x: tf.Tensor4D,
  y: Int32Array,
  options: AutoAttackPartOptions,
): Promise<AutoAttackPart> {
  return runPart(classifier, x, y, options, undefined);
}

function validateIndices(indices: ArrayLike<number> | undefined, n: number): void {
  if (indices === undefined) return;
  if (indices.length !== n) throw new Error(`'indices' must have ${n} entries, got ${indices.length}`);
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const index = indices[i];
    if (!(Number.isInteger(index) && index >= 0 && index < 2 ** 32) || seen.has(index)) {
      throw new Error(`'indices' must be distinct integers in [0, 2^32), got ${index} at ${i}`);
    }
    seen.add(index);
  }
}

async function runPart(
  classifier: Classifier,
  x: tf.Tensor4D,
  y: Int32Array,
  options: AutoAttackPartOptions,
  adversarialRows: Float32Array | undefined,
): Promise<AutoAttackPart> {
  validate(classifier, x, y, options);
  const n = x.shape[0];
  validateIndices(options.indices, n);
  const started = performance.now();
  const version = options.version ?? DEFAULT_VERSION;
  const seed = options.seed ?? 0;
  const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
  const restarts = options.restarts ?? defaultRestarts(version);
  const k = classifier.numClasses;
  const rowSize = x.size / Math.max(n, 1);
  const globalIndex = (i: number) => (options.indices ? options.indices[i] : i);

  const cleanLogits = logitsOf(classifier, x, batchSize);
  assertFinite(cleanLogits, 'the clean forward pass', k, globalIndex);
  const predicted = classAtRank(cleanLogits, classifier.numClasses);
  const robust = Uint8Array.from(predicted, (p, i) => (p === y[i] ? 1 : 0));
  const cleanCorrect = robust.slice();
  const brokenBy: (string | null)[] = Array.from(robust, (r) => (r ? null : 'clean'));
  const perturbationNorm: (number | null)[] = new Array(n).fill(null);
  const pointSeconds = new Float64Array(n);

  let sanity: string[] | null = null;
  if (options.sanityChecks ?? true) {
    const probe = Math.min(n, batchSize);
    sanity = [];
    if (probe > 0) {
      const sample = x.slice([0, 0, 0, 0], [probe, -1, -1, -1]);
      try {
        sanity.push(...sanityWarnings(classifier, sample, y.subarray(0, probe)));
      } finally {
        sample.dispose();
      }
    }
  }

  const planned: PlannedAttack[] = options.attacks
    ? options.attacks.map((attack) => ({ attack, minimumClasses: 2, restarts }))
    : plannedAttacks(
        version,
        restarts,
        options.restarts,
        options.iterations ?? DEFAULT_ITERATIONS,
        options.queries ?? DEFAULT_QUERIES,
      );
  const attacks: AttackPartStats[] = [];

  for (const { attack, minimumClasses: needed, restarts: attackRestarts } of planned) {
    const attackStarted = performance.now();
    const stats: AttackPartStats = {
      name: attack.name,
      skipped: null,
      failed: 0,
      first_failure: null,
      seconds: 0,
    };
    if (k < needed) {
      stats.skipped = `${attack.name} skipped: it needs at least ${needed} classes, the model has ${k}`;
    } else {
      const attackSeed = hashName(attack.name);
      const todo: number[] = [];
      for (let i = 0; i < n; i++) if (robust[i]) todo.push(i);
      let processed = 0;
      for (let start = 0; start < todo.length; start += batchSize) {
        throwIfAborted(options.signal);
        const batchStarted = performance.now();
        const batch = todo.slice(start, start + batchSize);
        const indices = tf.tensor1d(batch, 'int32');
        const xBatch = tf.gather(x, indices) as tf.Tensor4D;
        indices.dispose();
        const yBatch = Int32Array.from(batch, (i) => y[i]);
        try {
          const result = await attack.perturb(classifier, xBatch, yBatch, {
            norm: options.norm,
            eps: options.eps,
            restarts: attackRestarts,
            seed,
            fullBudget: options.fullBudget,
            sampleSeeds: Uint32Array.from(batch, (i) => mixSeed(seed, attackSeed, globalIndex(i))),
            signal: options.signal,
            onProgress: (p) =>
              options.onProgress?.({
                attack: attack.name,
                done: processed + Math.floor((batch.length * p.done) / Math.max(p.total, 1)),
                total: todo.length,
              }),
          });
          try {
            const check = verifyAdversarial(
              classifier,
              xBatch,
              result.adversarial,
              yBatch,
              result.success,
              options,
            );
            stats.failed += check.failures.length;
            stats.first_failure ??= check.failures[0]?.reason ?? null;
            const rows = adversarialRows ? result.adversarial.dataSync() : undefined;
            batch.forEach((i, j) => {
              if (!check.valid[j]) return;
              robust[i] = 0;
              brokenBy[i] = attack.name;
              perturbationNorm[i] = check.norms[j];
              if (rows && adversarialRows) {
                adversarialRows.set(rows.subarray(j * rowSize, (j + 1) * rowSize), i * rowSize);
              }
            });
          } finally {
            result.adversarial.dispose();
          }
        } finally {
          xBatch.dispose();
        }
        const share = (performance.now() - batchStarted) / 1000 / batch.length;
        for (const i of batch) pointSeconds[i] += share;
        processed += batch.length;
        options.onProgress?.({ attack: attack.name, done: processed, total: todo.length });
      }
    }
    stats.seconds = (performance.now() - attackStarted) / 1000;
    attacks.push(stats);
  }

  return {
    norm: options.norm,
    eps: options.eps,
    version,
    seed,
    backend: tf.getBackend(),
    seconds: (performance.now() - started) / 1000,
    attacks,
    samples: Array.from({ length: n }, (_, i) => ({
      index: globalIndex(i),
      clean_correct: cleanCorrect[i] === 1,
      predicted: predicted[i],
      broken_by: brokenBy[i],
      perturbation_norm: perturbationNorm[i],
      seconds: pointSeconds[i],
    })),
    sanity_warnings: sanity,
  };
}

/**
 * The report of an audit from its parts (any split of its points, in any order): a pure function
 * of the parts' rows. Throws `AutoAttackMergeError` when parts disagree on the settings or the
 * attack sequence, or share a point. `seconds` is the parts' total unless given (wall time).
 */
export function mergeAutoAttackParts(
  parts: readonly AutoAttackPart[],
  options: { seconds?: number } = {},
): AutoAttackReport {
  if (parts.length === 0) throw new AutoAttackMergeError('no parts to merge');
  const [first] = parts;
  const names = first.attacks.map((a) => a.name).join();
  for (const part of parts) {
    for (const key of ['norm', 'eps', 'version', 'seed', 'backend'] as const) {
      if (part[key] !== first[key]) {
        throw new AutoAttackMergeError(
          `parts disagree on ${key}: ${String(first[key])} vs ${String(part[key])}`,
        );
      }
    }
    if (part.attacks.map((a) => a.name).join() !== names) {
      throw new AutoAttackMergeError(
        `parts disagree on the attack sequence: ${names} vs ${part.attacks.map((a) => a.name).join()}`,
      );
    }
  }
  // Parts in the order of their first point, so "first failure" and the sanity checks are those of
  // the run on all points.
  const lowest = (part: AutoAttackPart) => part.samples.reduce((m, s) => Math.min(m, s.index), Infinity);
  const ordered = [...parts].sort((a, b) => lowest(a) - lowest(b));
  const samples = ordered.flatMap((part) => part.samples).sort((a, b) => a.index - b.index);
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].index === samples[i - 1].index) {
      throw new AutoAttackMergeError(`point ${samples[i].index} is in more than one part`);
    }
  }
  const n = samples.length;
  const order = new Map(first.attacks.map((a, position) => [a.name, position]));
  const warnings: string[] = [
    ...(ordered.find((part) => part.sanity_warnings !== null)?.sanity_warnings ?? []),
  ];
  const perAttack: AttackSummary[] = first.attacks.map((attack, position) => {
    const stats = ordered.map((part) => part.attacks[position]);
    const broken = samples.filter((s) => s.broken_by === attack.name).length;
    const survivors = samples.filter((s) => {
      if (s.broken_by === 'clean') return false;
      if (s.broken_by === null) return true;
      return (order.get(s.broken_by) ?? -1) > position;
    }).length;
    if (attack.skipped !== null) warnings.push(attack.skipped);
    const failed = stats.reduce((sum, s) => sum + s.failed, 0);
    if (failed > 0) {
      const firstFailure = stats.find((s) => s.first_failure !== null)?.first_failure;
      warnings.push(
        `${attack.name}: ${failed} claimed adversarial points failed verification ` +
          `(first: ${firstFailure}); they count as robust`,
      );
    }
    // Square is black-box: when it succeeds where the gradient attacks failed, gradients are suspect.
    if (attack.name === 'square' && broken > 0 && position > 0) {
      warnings.push(
        `square (black-box) broke ${broken} points the white-box attacks missed: gradients may be masked`,
      );
    }
    return {
      name: attack.name,
      robust_accuracy_after: n > 0 ? survivors / n : 0,
      broken,
      seconds: stats.reduce((sum, s) => sum + s.seconds, 0),
    };
  });
  const cleanCorrect = samples.filter((s) => s.clean_correct).length;
  const robust = samples.filter((s) => s.broken_by === null).length;
  return {
    n,
    norm: first.norm,
    eps: first.eps,
    version: first.version,
    seed: first.seed,
    backend: first.backend,
    seconds: options.seconds ?? parts.reduce((sum, part) => sum + part.seconds, 0),
    clean_accuracy: n > 0 ? cleanCorrect / n : 0,
    robust_accuracy: n > 0 ? robust / n : 0,
    per_attack: perAttack,
    samples,
    warnings,
  };
}
