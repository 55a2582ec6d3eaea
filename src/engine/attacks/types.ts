import type * as tf from '@tensorflow/tfjs';
import type { Classifier } from '../model/classifier.js';
import type { LongRunOptions, Norm } from '../types.js';

export interface AttackProgress {
  attack: string;
  done: number;
  total: number;
}

export interface AttackOptions extends LongRunOptions<AttackProgress> {
  norm: Norm;
  eps: number;
  /** Number of random restarts (white-box attacks); the RATIO paper evaluated with 5. */
  restarts?: number;
  /**
   * One seed per example for all of its random draws (AutoAttack passes mixSeed(seed, attack,
   * global index)), so an example's result does not depend on its batch; default mixSeed(seed, i).
   */
  sampleSeeds?: Uint32Array;
  /**
   * Spend the attack's whole budget on every point it runs on, as the reference implementation does
   * (default false: a point leaves a run at its first success, which changes neither `success` nor
   * the adversarial point the attack returns for it; see docs/algorithms.md "Savings").
   */
  fullBudget?: boolean;
}

/**
 * Result of `Attack.perturb` on a batch. The caller owns (and disposes) `adversarial`.
 * For every example, `adversarial` holds the first point found that meets the attack's success
 * criterion (misclassified, within eps, inside [0,1]); where none was found, the attack's best point
 * (highest loss, or the clean input for minimum-norm attacks).
 */
export interface PerturbResult {
  adversarial: tf.Tensor4D;
  /** 1 where `adversarial` is misclassified within the budget. */
  success: Uint8Array;
}

/** Every attack shares this contract (as in fra31/auto-attack); compositions only sequence them. */
export interface Attack {
  readonly name: string;
  perturb(...args: AttackArgs<AttackOptions>): Promise<PerturbResult>;
}

/** An attack's arguments: the model, a batch of inputs [n, h, w, c] in [0, 1], labels, options. */
export type AttackArgs<Options> = [classifier: Classifier, x: tf.Tensor4D, y: Int32Array, options: Options];
