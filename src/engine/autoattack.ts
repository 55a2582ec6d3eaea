import * as tf from '@tensorflow/tfjs';
import { apgdAttack, apgdTargeted } from './attacks/apgd.js';
import { fabTargeted, fabUntargeted } from './attacks/fab.js';
import { minimumClasses } from './attacks/losses.js';
import { square } from './attacks/square.js';
import type { Attack, AttackProgress } from './attacks/types.js';
import { assertAttackBatch, assertPositiveIntegers, assertThreatModel } from './attacks/validate.js';
import { sanityWarnings, verifyAdversarial } from './attacks/verify.js';
import type { Classifier } from './classifier.js';
import { classAtRank, logitsOf } from './logits.js';
import {
  AUTOATTACK_VERSIONS,
  type AutoAttackVersion,
  type LongRunOptions,
  type Norm,
  throwIfAborted,
} from './types.js';

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
  index: number;
  clean_correct: boolean;
  /** 'clean' for clean errors, the attack's name, or null when the point survived every attack. */
  broken_by: string | null;
  perturbation_norm: number | null;
}

export interface AutoAttackReport {
  n: number;
  norm: Norm;
  eps: number;
  version: AutoAttackVersion;
  seed: number;
  backend: string;
  seconds: number;
  clean_accuracy: number;
  robust_accuracy: number;
  per_attack: AttackSummary[];
  samples: SampleReport[];
  warnings: string[];
  adversarial?: tf.Tensor4D;
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
  const version = options.version ?? 'standard';
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
  validate(classifier, x, y, options);
  const started = performance.now();
  const version = options.version ?? 'standard';
  const seed = options.seed ?? 0;
  const batchSize = options.batchSize ?? 250;
  const restarts = options.restarts ?? (version === 'plus' ? 5 : 1);
  const n = x.shape[0];
  const k = classifier.numClasses;
  const rowSize = x.size / Math.max(n, 1);
  const warnings: string[] = [];

  const predicted = classAtRank(logitsOf(classifier, x, batchSize), classifier.numClasses);
  const robust = Uint8Array.from(predicted, (p, i) => (p === y[i] ? 1 : 0));
  const cleanCorrect = robust.slice();
  const brokenBy: (string | null)[] = Array.from(robust, (r) => (r ? null : 'clean'));
  const perturbationNorm: (number | null)[] = new Array(n).fill(null);
  const adversarialRows = options.keepAdversarial ? (x.dataSync() as Float32Array).slice() : undefined;

  const probe = Math.min(n, batchSize);
  if (probe > 0) {
    const sample = x.slice([0, 0, 0, 0], [probe, -1, -1, -1]);
    try {
      warnings.push(...sanityWarnings(classifier, sample, y.subarray(0, probe)));
    } finally {
      sample.dispose();
    }
  }

  const planned: PlannedAttack[] = options.attacks
    ? options.attacks.map((attack) => ({ attack, minimumClasses: 2, restarts }))
    : plannedAttacks(version, restarts, options.restarts, options.iterations ?? 100, options.queries ?? 5000);
  const perAttack: AttackSummary[] = [];

  for (const { attack, minimumClasses: needed, restarts: attackRestarts } of planned) {
    const attackStarted = performance.now();
    let broken = 0;
    if (k < needed) {
      warnings.push(`${attack.name} skipped: it needs at least ${needed} classes, the model has ${k}`);
    } else {
      const todo: number[] = [];
      for (let i = 0; i < n; i++) if (robust[i]) todo.push(i);
      let processed = 0;
      let failed = 0;
      let firstFailure: string | undefined;
      for (let start = 0; start < todo.length; start += batchSize) {
        throwIfAborted(options.signal);
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
            seed: (seed + start) >>> 0,
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
            failed += check.failures.length;
            firstFailure ??= check.failures[0]?.reason;
            const rows = adversarialRows ? result.adversarial.dataSync() : undefined;
            batch.forEach((i, j) => {
              if (!check.valid[j]) return;
              robust[i] = 0;
              broken++;
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
        processed += batch.length;
        options.onProgress?.({ attack: attack.name, done: processed, total: todo.length });
      }
      if (failed > 0) {
        warnings.push(
          `${attack.name}: ${failed} claimed adversarial points failed verification ` +
            `(first: ${firstFailure}); they count as robust`,
        );
      }
    }
    // Square is black-box: when it succeeds where the gradient attacks failed, gradients are suspect.
    if (attack.name === 'square' && broken > 0 && perAttack.length > 0) {
      warnings.push(
        `square (black-box) broke ${broken} points the white-box attacks missed: gradients may be masked`,
      );
    }
    perAttack.push({
      name: attack.name,
      robust_accuracy_after: n > 0 ? robust.reduce((a, b) => a + b, 0) / n : 0,
      broken,
      seconds: (performance.now() - attackStarted) / 1000,
    });
  }

  const count = (values: Uint8Array) => values.reduce((a, b) => a + b, 0);
  return {
    n,
    norm: options.norm,
    eps: options.eps,
    version,
    seed,
    backend: tf.getBackend(),
    seconds: (performance.now() - started) / 1000,
    clean_accuracy: n > 0 ? count(cleanCorrect) / n : 0,
    robust_accuracy: n > 0 ? count(robust) / n : 0,
    per_attack: perAttack,
    samples: Array.from({ length: n }, (_, i) => ({
      index: i,
      clean_correct: cleanCorrect[i] === 1,
      broken_by: brokenBy[i],
      perturbation_norm: perturbationNorm[i],
    })),
    warnings,
    ...(adversarialRows ? { adversarial: tf.tensor4d(adversarialRows, x.shape) } : {}),
  };
}
