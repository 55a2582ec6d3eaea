import type { OodResponse, PredictResponse } from './api.js';
import { decimal, percent } from './format.js';

/** The verdicts of the Look-at-an-image view as sentences, with the threshold they were judged by. */

export function predictionSentence(answer: PredictResponse): string {
  const p = answer.predictions[0];
  const confidence = percent(p.max_confidence);
  const threshold = percent(answer.threshold);
  return p.in_distribution
    ? `In distribution: max confidence ${confidence} ≥ threshold ${threshold}.`
    : `Out of distribution: max confidence ${confidence} < threshold ${threshold}.`;
}

export function worstCaseSentence(answer: OodResponse): string {
  const r = answer.results[0];
  const t = percent(answer.threshold);
  const eps = decimal(answer.eps);
  if (r.verdict === 'in_distribution') {
    return `In distribution: clean confidence ${percent(r.clean_confidence)} ≥ threshold ${t}.`;
  }
  if (r.verdict === 'out_of_distribution') {
    return `Out of distribution, robustly: even the worst case within L2 ${eps} reaches only ${percent(r.worst_case_confidence)} < threshold ${t}.`;
  }
  return `Out of distribution, but not robustly: a change within L2 ${eps} lifts the confidence to ${percent(r.worst_case_confidence)} ≥ threshold ${t}.`;
}
