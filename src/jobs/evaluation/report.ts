import type { AttackSummary } from '../../engine/attacks/autoattack.js';

/** The shape of `report.json` written by `ratio eval`; `report.md` renders the same data. */

export interface OodRow {
  name: string;
  source: string;
  n: number;
  /** AUC of in-distribution (positive) against clean OOD max-confidences, ties counted half. */
  auc: number;
  fpr_at_95_tpr: number;
  /** Mean max-confidence on the clean OOD images. */
  mmc: number;
  /** AUC against the worst-case OOD confidences (an upper bound on the true worst case). */
  wc_auc: number;
  /** Mean worst-case max-confidence. */
  wc_mmc: number;
}

export interface EvalReport {
  model: { name: string; source: string };
  backend: string;
  seed: number;
  quick: boolean;
  data: {
    name: string;
    source: string;
    reported_n: number;
    calibration_n: number;
    calibration_source: string;
  };
  /** Table 1 of the RATIO paper: OOD columns averaged over the OOD sets (null when there are none). */
  summary: {
    acc: number;
    robust_acc: number;
    ece: number;
    ece_uncalibrated: number;
    temperature: number;
    /**
     * Max-confidence (at `temperature`) that keeps 95% of the calibration split in-distribution:
     * the threshold a served model's OOD verdict should use (`--write-calibration` puts it in the card).
     */
    ood_threshold: number;
    auc: number | null;
    wc_auc: number | null;
    mmc: number | null;
    fpr_at_95_tpr: number | null;
  };
  robustness: {
    norm: 'L2';
    eps: number;
    version: string;
    n: number;
    clean_accuracy: number;
    per_attack: AttackSummary[];
    seconds: number;
  };
  ood: { eps: number; iterations: number; sets: OodRow[] };
  counterfactuals: {
    radii: number[];
    iterations: number;
    /** p_target / p_original: index 0 is the clean image, then one per radius. */
    rows: {
      index: number;
      label: number;
      original_class: number;
      target: number;
      p_target: number[];
      p_original: number[];
    }[];
  };
  curves: {
    ood_set: string;
    n_in: number;
    n_out: number;
    iterations: number;
    radii: number[];
    in_true_class_confidence: number[];
    out_max_confidence: number[];
  } | null;
  warnings: string[];
  timings: Record<string, number>;
  seconds: number;
}

const percent = (value: number | null) => (value === null ? 'n/a' : (100 * value).toFixed(1));

function table(header: string[], rows: string[][]): string {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
  ].join('\n');
}

/** report.md: the paper-style row first, then the details. */
export function renderReportMarkdown(report: EvalReport): string {
  const { summary } = report;
  const lines: string[] = [
    `# Evaluation of ${report.model.name}`,
    '',
    `Model \`${report.model.source}\`, data \`${report.data.source}\` (${report.data.reported_n} points), ` +
      `backend ${report.backend}, seed ${report.seed}${report.quick ? ', **quick mode (reduced attacks; not comparable to the paper)**' : ''}.`,
    '',
    table(
      ['Acc', `R.Acc (L2 ${report.robustness.eps})`, 'ECE', 'AUC', `WC AUC (L2 ${report.ood.eps})`, 'MMC'],
      [
        [
          percent(summary.acc),
          percent(summary.robust_acc),
          percent(summary.ece),
          percent(summary.auc),
          percent(summary.wc_auc),
          percent(summary.mmc),
        ],
      ],
    ),
    '',
    'All numbers in percent. OOD columns are means over the OOD sets below. ' +
      `ECE after temperature scaling with T = ${summary.temperature.toFixed(3)} fitted on ` +
      `${report.data.calibration_n} held-out points (${report.data.calibration_source}); ECE at T = 1: ` +
      `${percent(summary.ece_uncalibrated)}. Max-confidences use the same T; the OOD threshold that keeps ` +
      `95% of those held-out points in-distribution is ${summary.ood_threshold.toFixed(3)}. WC AUC is an upper bound ` +
      '(the worst case found by APGD is a lower bound on the true one).',
    '',
    '## Out-of-distribution sets',
    '',
    table(
      ['set', 'n', 'AUC', 'FPR@95%TPR', 'MMC', 'WC AUC', 'WC MMC', 'source'],
      report.ood.sets.map((row) => [
        row.name,
        String(row.n),
        percent(row.auc),
        percent(row.fpr_at_95_tpr),
        percent(row.mmc),
        percent(row.wc_auc),
        percent(row.wc_mmc),
        `\`${row.source}\``,
      ]),
    ),
    '',
    `## Robust accuracy (AutoAttack ${report.robustness.version}, L2, eps ${report.robustness.eps}, ${report.robustness.n} points)`,
    '',
    table(
      ['after attack', 'robust accuracy', 'broken', 'seconds'],
      [
        ['clean', percent(report.robustness.clean_accuracy), '', ''],
        ...report.robustness.per_attack.map((a) => [
          a.name,
          percent(a.robust_accuracy_after),
          String(a.broken),
          a.seconds.toFixed(1),
        ]),
      ],
    ),
    '',
    '## Visual counterfactuals',
    '',
    `![counterfactuals](counterfactuals.png)`,
    '',
    `Rows: the first ${report.counterfactuals.rows.length} reported images; columns: L2 radii ` +
      `${report.counterfactuals.radii.join(', ')} (APGD, ${report.counterfactuals.iterations} iterations, best iterate). ` +
      'Captions: p_t = probability of the target class, p_o = probability of the originally predicted class.',
  ];
  if (report.curves) {
    lines.push(
      '',
      '## Confidence within an L2 ball',
      '',
      '![confidence curves](confidence-curves.svg)',
      '',
      table(
        ['radius', ...report.curves.radii.map(String)],
        [
          ['lowest true-class p (in)', ...report.curves.in_true_class_confidence.map((v) => v.toFixed(3))],
          [
            `highest max p (${report.curves.ood_set})`,
            ...report.curves.out_max_confidence.map((v) => v.toFixed(3)),
          ],
        ],
      ),
    );
  }
  if (report.warnings.length > 0) {
    lines.push('', '## Warnings', '', ...report.warnings.map((w) => `- ${w}`));
  }
  lines.push(
    '',
    `Wall time ${report.seconds.toFixed(1)} s: ${Object.entries(report.timings)
      .map(([phase, s]) => `${phase} ${s.toFixed(1)} s`)
      .join(', ')}.`,
    '',
  );
  return lines.join('\n');
}
