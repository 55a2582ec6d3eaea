import { decimal, percent } from './format.js';

/**
 * A model card's metrics as the Models view shows them: the headline numbers (clean and robust
 * accuracy, ECE, AUC, worst-case AUC) under fixed names whatever key the card used, then the rest.
 * Cards differ: training export writes validation figures, `ratio eval` and imports other names.
 */

export type CardMetrics = Record<string, number | string | null>;

export interface MetricRow {
  label: string;
  /** The formatted value, or null where the card has none. */
  value: string | null;
  /** The card's key it came from. */
  key: string | null;
}

interface Headline {
  label: string;
  /** Card keys in order of preference. */
  keys: string[];
}

const HEADLINES: Headline[] = [
  {
    label: 'Clean accuracy',
    keys: ['clean_accuracy', 'cleanAccuracy', 'acc', 'accuracy', 'test_accuracy', 'testAccuracy'],
  },
  { label: 'Validation accuracy', keys: ['validationAccuracy', 'validation_accuracy'] },
  { label: 'ECE', keys: ['ece', 'ECE', 'test_ece', 'validationEce', 'validation_ece'] },
  { label: 'AUC', keys: ['auc', 'AUC', 'ood_auc', 'oodAuc', 'mean_auc'] },
  {
    label: 'Worst-case AUC',
    keys: ['wc_auc', 'worst_case_auc', 'worstCaseAuc', 'wcAuc', 'mean_wc_auc'],
  },
];

/** robust_accuracy_l2_0_5, robustAccuracyL2_0.25, robust_acc_linf_0_031 ... */
const ROBUST_KEY = /^robust_?acc(?:uracy)?(?:_?(l2|linf)_?([0-9][0-9_.]*))?$/i;

/** Headline figures are fractions shown as percentages; other metrics as plain numbers. */
function shown(value: number | string | null, asPercent: boolean): string | null {
  if (value === null) return null;
  if (typeof value === 'string') return value;
  return asPercent && value >= 0 && value <= 1 ? percent(value) : decimal(value);
}

function robustLabel(key: string): string | undefined {
  const match = ROBUST_KEY.exec(key);
  if (!match) return undefined;
  if (!match[1]) return 'Robust accuracy';
  const norm = match[1].toLowerCase() === 'l2' ? 'L2' : 'Linf';
  const eps = match[2].replace(/^(\d+)_/, '$1.').replace(/_/g, '');
  return `Robust accuracy (${norm} ${eps})`;
}

/**
 * The headline rows (each present, with a null value where the card lacks it; robust accuracy once
 * per threat model the card has) and every other metric of the card as `rest`.
 */
export function metricRows(metrics: CardMetrics): { headline: MetricRow[]; rest: MetricRow[] } {
  const used = new Set<string>();
  const headline: MetricRow[] = [];
  const pick = (item: Headline): MetricRow => {
    const key = item.keys.find((k) => k in metrics && metrics[k] !== null);
    if (key === undefined) return { label: item.label, value: null, key: null };
    used.add(key);
    return { label: item.label, value: shown(metrics[key], true), key };
  };
  const [clean, validation, ...quality] = HEADLINES.map(pick);
  // A validation figure stands in for the clean accuracy only where the card has no test figure.
  headline.push(clean.value !== null || validation.value === null ? clean : validation);
  if (clean.value !== null && validation.value !== null) used.delete(validation.key ?? '');
  const robust = Object.keys(metrics)
    .filter((key) => robustLabel(key) !== undefined && metrics[key] !== null)
    .sort();
  if (robust.length === 0) headline.push({ label: 'Robust accuracy', value: null, key: null });
  for (const key of robust) {
    used.add(key);
    headline.push({ label: robustLabel(key)!, value: shown(metrics[key], true), key });
  }
  headline.push(...quality);
  const rest = Object.keys(metrics)
    .filter((key) => !used.has(key))
    .sort()
    .map((key) => ({ label: words(key), value: shown(metrics[key], false), key }));
  return { headline, rest };
}

/** validationEceBeforeTemperature -> "validation ece before temperature"; snake_case likewise. */
export function words(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/_/g, ' ')
    .toLowerCase();
}
