/**
 * Out-of-distribution detection metrics, pure functions on plain score arrays (score = max_k p_k);
 * the worst-case attack that produces such scores is worst-case.ts. In-distribution
 * scores are the positives: a detector is good when they are higher than the OOD scores.
 */

export interface OodMetrics {
  /** P(in > out) + 0.5 P(in = out) over all (in, out) pairs: area under the ROC curve. */
  auc: number;
  /** Share of OOD scores at or above the threshold that keeps 95% of the in-distribution scores. */
  fpr_at_95_tpr: number;
  /** Mean maximum confidence on the OOD set. */
  mmc: number;
}

function checkScores(scores: ArrayLike<number>, name: string): void {
  if (scores.length === 0) throw new Error(`'${name}' must not be empty`);
  for (let i = 0; i < scores.length; i++) {
    if (Number.isNaN(scores[i])) throw new Error(`'${name}[${i}]' is NaN`);
  }
}

function sortedCopy(scores: ArrayLike<number>): Float64Array {
  return Float64Array.from(scores).sort();
}

/**
 * AUC with ties counted half, by one merge of the two sorted arrays (O((n + m) log(n + m))):
 * for each distinct value v, the in-scores equal to v beat every smaller out-score and tie with
 * the out-scores equal to v.
 */
export function rocAuc(inScores: ArrayLike<number>, outScores: ArrayLike<number>): number {
  checkScores(inScores, 'inScores');
  checkScores(outScores, 'outScores');
  const positives = sortedCopy(inScores);
  const negatives = sortedCopy(outScores);
  let wins = 0;
  let ties = 0;
  let below = 0; // out-scores strictly below the current value
  let i = 0;
  while (i < positives.length) {
    const value = positives[i];
    let sameIn = 0;
    while (i < positives.length && positives[i] === value) {
      sameIn++;
      i++;
    }
    while (below < negatives.length && negatives[below] < value) below++;
    let equal = 0;
    while (below + equal < negatives.length && negatives[below + equal] === value) equal++;
    wins += sameIn * below;
    ties += sameIn * equal;
  }
  return (wins + 0.5 * ties) / (positives.length * negatives.length);
}

/**
 * Share of held-out in-distribution inputs a fitted OOD threshold lets through (the served gate's
 * true-positive rate: training export and `ratio eval --write-calibration` fit thresholds with it).
 */
export const OOD_GATE_TPR = 0.95;

/**
 * The OOD threshold that keeps `tpr` of the in-distribution inputs: the largest t with at least
 * tpr * n of `inScores` >= t (the first ROC point reaching that TPR, as sklearn's roc_curve gives it).
 * An input whose score is below t is called out-of-distribution.
 *
 * @example thresholdAtTpr([0.9, 0.8, 0.7, 0.6], 0.75) // 0.7: three of the four scores are >= 0.7
 */
export function thresholdAtTpr(inScores: ArrayLike<number>, tpr = 0.95): number {
  checkScores(inScores, 'inScores');
  if (!(tpr > 0 && tpr <= 1)) throw new Error(`'tpr' must be in (0, 1], got ${tpr}`);
  const descending = sortedCopy(inScores).reverse();
  // Tolerate float error in tpr * n (0.95 * 20 = 19.000000000000004).
  const needed = Math.max(1, Math.ceil(tpr * descending.length - 1e-9));
  return descending[needed - 1];
}

/**
 * False-positive rate at 95% true-positive rate: the share of OOD scores at or above
 * thresholdAtTpr(inScores, tpr).
 */
export function fprAtTpr(inScores: ArrayLike<number>, outScores: ArrayLike<number>, tpr = 0.95): number {
  checkScores(outScores, 'outScores');
  const threshold = thresholdAtTpr(inScores, tpr);
  let falsePositives = 0;
  for (let j = 0; j < outScores.length; j++) if (outScores[j] >= threshold) falsePositives++;
  return falsePositives / outScores.length;
}

/**
 * AUC, FPR at 95% TPR and mean max-confidence of OOD scores against in-distribution scores.
 *
 * @example oodMetrics([0.9, 0.8], [0.3, 0.8]) // { auc: 0.875, fpr_at_95_tpr: 0.5, mmc: 0.55 }
 */
export function oodMetrics(inScores: ArrayLike<number>, outScores: ArrayLike<number>): OodMetrics {
  let sum = 0;
  for (let j = 0; j < outScores.length; j++) sum += outScores[j];
  return {
    auc: rocAuc(inScores, outScores),
    fpr_at_95_tpr: fprAtTpr(inScores, outScores),
    mmc: sum / outScores.length,
  };
}
