import * as tf from '@tensorflow/tfjs';
import { type GridRow, renderCounterfactualGrid, renderCurveChartSvg } from '../../data/figures.js';
import { type ImageSet, pixelImage, rowsOf, tensorOf } from '../../data/image-set.js';
import { updateModelCard } from '../../data/model-dir.js';
import { apgdAttack, apgdTargeted } from '../../engine/attacks/apgd.js';
import { autoAttack } from '../../engine/attacks/autoattack.js';
import type { Attack } from '../../engine/attacks/types.js';
import { counterfactuals, DEFAULT_COUNTERFACTUAL_RADII } from '../../engine/counterfactuals.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { classAtRank, logitsOf } from '../../engine/model/logits.js';
import {
  calibrate,
  expectedCalibrationError,
  maxProbabilities,
  softmaxRows,
} from '../../engine/ood/calibration.js';
import { confidenceCurves, DEFAULT_CURVE_RADII } from '../../engine/ood/curves.js';
import { OOD_GATE_TPR, oodMetrics } from '../../engine/ood/metrics.js';
import { worstCaseConfidence } from '../../engine/ood/worst-case.js';
import type { EngineProgress } from '../../engine/types.js';
import { InvalidInputError } from '../errors.js';
import type { EvalReport, OodRow } from './report.js';
import { renderReportMarkdown } from './report.js';

/**
 * The evaluation use case (`ratio eval` without the files): given a classifier and images in memory, computes the RATIO
 * table (Acc, R.Acc, ECE, AUC, WC AUC, MMC), the per-OOD-set rows, the counterfactual grid and
 * the confidence curves. The command does the loading and writing.
 */

export type { ImageSet } from '../../data/image-set.js';

const average = (values: number[]) =>
  values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;

export interface PhaseReporter {
  start(phase: string): void;
  update(done: number, total: number): void;
  done(): number;
}

export interface EvalSettings {
  /** Reported in-distribution points (default 1000). */
  n: number;
  /** Held-out points for the temperature, taken from the end of the in-distribution set unless `calibration` is given. */
  calibrationN: number;
  /** OOD images per set (default 1024). */
  oodN: number;
  /** L2 radius of the robust accuracy (default 0.5). */
  eps: number;
  /** L2 radius of the worst-case OOD confidence (default 1.0 for 32x32 data). */
  epsOod: number;
  /** Points attacked by AutoAttack (default: all reported points). */
  robustN: number;
  seed: number;
  batchSize: number;
  /** APGD iterations: AutoAttack, worst-case OOD, counterfactuals, curves. */
  iterations: { autoAttack: number; worstCase: number; counterfactuals: number; curves: number };
  /** Quick mode: AutoAttack is APGD-CE + APGD-T only (no FAB, no Square), for smoke tests. */
  quick: boolean;
  counterfactualRows: number;
  counterfactualRadii: number[];
  /** 'second': the class ranked second by the clean logits; 'true': the label. */
  counterfactualTarget: 'second' | 'true';
  /** Points per set for the curves (in-distribution and the first OOD set). */
  curveN: number;
  curveRadii: number[];
}

export const DEFAULT_EVAL_SETTINGS: EvalSettings = {
  n: 1000,
  calibrationN: 500,
  oodN: 1024,
  eps: 0.5,
  epsOod: 1.0,
  robustN: 1000,
  seed: 0,
  batchSize: 128,
  iterations: { autoAttack: 100, worstCase: 100, counterfactuals: 500, curves: 100 },
  quick: false,
  counterfactualRows: 6,
  counterfactualRadii: [...DEFAULT_COUNTERFACTUAL_RADII],
  counterfactualTarget: 'second',
  curveN: 100,
  curveRadii: [...DEFAULT_CURVE_RADII],
};

export interface EvalInputs {
  model: { name: string; source: string };
  inDistribution: ImageSet;
  /** A separate held-out set for the temperature; else the tail of `inDistribution`. */
  calibration?: ImageSet;
  ood: ImageSet[];
}

export interface EvalArtifacts {
  report: EvalReport;
  markdown: string;
  counterfactualsPng: Buffer;
  curvesSvg: string;
}

function splitInDistribution(inputs: EvalInputs, settings: EvalSettings) {
  const set = inputs.inDistribution;
  if (!set.labels)
    throw new InvalidInputError(
      'data',
      `'--data' set '${set.name}' has no labels; accuracy needs a labelled set`,
    );
  const total = set.shape[0];
  const warnings: string[] = [];
  if (inputs.calibration) {
    if (!inputs.calibration.labels)
      throw new InvalidInputError(
        'calibration',
        `calibration set '${inputs.calibration.name}' has no labels`,
      );
    const n = Math.min(settings.n, total);
    return { reported: rowsOf(set, 0, n), calibration: inputs.calibration, warnings, heldOutFromData: false };
  }
  const calibrationN = Math.min(settings.calibrationN, Math.floor(total / 2));
  if (calibrationN < 1)
    throw new InvalidInputError(
      'data',
      `'--data' has ${total} points: too few to hold out a calibration split`,
    );
  const available = total - calibrationN;
  const n = Math.min(settings.n, available);
  if (n < settings.n) {
    warnings.push(
      `only ${n} of the requested ${settings.n} points are reported: the last ${calibrationN} of the ` +
        `${total} are held out to fit the temperature (give --calibration-data to use a separate set)`,
    );
  }
  return {
    reported: rowsOf(set, 0, n),
    calibration: rowsOf(set, total - calibrationN, total),
    warnings,
    heldOutFromData: true,
  };
}

function quickAttacks(iterations: number): Attack[] {
  return [apgdAttack('ce', { iterations }), apgdTargeted({ iterations, targetClasses: 3 })];
}

/**
 * Where the two heavy phases run: the engine's functions in process by default, or a worker pool's
 * (`ShardPool.autoAttack` / `.worstCaseConfidence`, same signatures and, by per-point seeding, the
 * same numbers).
 */
export interface EvalRunners {
  autoAttack?: typeof autoAttack;
  worstCaseConfidence?: typeof worstCaseConfidence;
}

/** What every phase reads: the model, the settings, the progress display and its timings. */
interface Phase {
  classifier: Classifier;
  settings: EvalSettings;
  progress: PhaseReporter;
  signal?: AbortSignal;
  onProgress: (p: EngineProgress | { done: number; total: number }) => void;
  /** Seconds per phase, as the report lists them. */
  timings: Record<string, number>;
}

/** Clean logits of the reported points, their accuracy, and the temperature fitted on the held-out ones. */
function cleanPredictions(phase: Phase, reported: ImageSet, calibration: ImageSet) {
  const { classifier, settings, progress } = phase;
  const k = classifier.numClasses;
  const labels = reported.labels!;
  progress.start('clean predictions');
  const logits = logitsOf(classifier, reported, settings.batchSize);
  progress.update(1, 2);
  const calibrationLogits = logitsOf(classifier, calibration, settings.batchSize);
  progress.update(2, 2);
  phase.timings.clean = progress.done();
  const predicted = classAtRank(logits, k);
  const accuracy = predicted.reduce((s, p, i) => s + (p === labels[i] ? 1 : 0), 0) / predicted.length;
  const fit = calibrate(calibrationLogits, calibration.labels!, k);
  const ece = (temperature: number) =>
    expectedCalibrationError({ values: softmaxRows(logits, k, temperature), numClasses: k }, labels);
  return {
    logits,
    accuracy,
    fit,
    ece: ece(fit.temperature),
    eceUncalibrated: ece(1),
    /** Max-confidence of every reported point at the fitted temperature (the OOD metrics' in-scores). */
    inScores: maxProbabilities(logits, k, fit.temperature),
  };
}

/** AutoAttack (L2, standard) on the first robustN reported points; quick mode runs APGD only, in process. */
async function robustAccuracy(phase: Phase, reported: ImageSet, runners: EvalRunners) {
  const { classifier, settings, progress } = phase;
  progress.start(`autoattack L2 eps=${settings.eps}`);
  const robustSet = rowsOf(reported, 0, Math.min(settings.robustN, reported.shape[0]));
  const robustX = tensorOf(robustSet);
  try {
    // Quick mode's custom attack list cannot travel to workers: it runs in process.
    const runAutoAttack = settings.quick ? autoAttack : (runners.autoAttack ?? autoAttack);
    return await runAutoAttack(classifier, robustX, robustSet.labels!, {
      norm: 'L2',
      eps: settings.eps,
      version: 'standard',
      seed: settings.seed,
      batchSize: settings.batchSize,
      iterations: settings.iterations.autoAttack,
      ...(settings.quick ? { attacks: quickAttacks(settings.iterations.autoAttack) } : {}),
      signal: phase.signal,
      onProgress: phase.onProgress,
    });
  } finally {
    robustX.dispose();
    phase.timings.autoattack = progress.done();
  }
}

/** One OOD set's row: clean AUC, FPR and MMC, and the same for the worst case in the epsOod ball. */
async function oodRow(
  phase: Phase,
  oodSet: ImageSet,
  inScores: Float32Array,
  temperature: number,
  runners: EvalRunners,
): Promise<OodRow> {
  const { classifier, settings, progress } = phase;
  const set = rowsOf(oodSet, 0, Math.min(settings.oodN, oodSet.shape[0]));
  const k = classifier.numClasses;
  const outScores = maxProbabilities(logitsOf(classifier, set, settings.batchSize), k, temperature);
  const clean = oodMetrics(inScores, outScores);
  progress.start(`worst-case OOD ${set.name} eps=${settings.epsOod}`);
  const x = tensorOf(set);
  let worst: Awaited<ReturnType<typeof worstCaseConfidence>>;
  try {
    worst = await (runners.worstCaseConfidence ?? worstCaseConfidence)(classifier, x, {
      eps: settings.epsOod,
      iterations: settings.iterations.worstCase,
      temperature,
      seed: settings.seed,
      batchSize: settings.batchSize,
      signal: phase.signal,
      onProgress: phase.onProgress,
    });
  } finally {
    x.dispose();
  }
  worst.images.dispose();
  phase.timings[`worst-case ${set.name}`] = progress.done();
  const worstMetrics = oodMetrics(inScores, worst.confidence);
  return {
    name: set.name,
    source: set.source,
    n: set.shape[0],
    auc: clean.auc,
    fpr_at_95_tpr: clean.fpr_at_95_tpr,
    mmc: clean.mmc,
    wc_auc: worstMetrics.auc,
    wc_mmc: worstMetrics.mmc,
  };
}

/**
 * Visual counterfactuals of the first reported points toward the second-ranked class (or the label),
 * at every radius: the PNG grid and the report's rows.
 */
async function counterfactualFigures(
  phase: Phase,
  reported: ImageSet,
  logits: Float32Array,
  classNames: readonly string[],
  temperature: number,
): Promise<{ png: Buffer; report: EvalReport['counterfactuals'] }> {
  const { classifier, settings, progress } = phase;
  const k = classifier.numClasses;
  progress.start('counterfactuals');
  const cfSet = rowsOf(reported, 0, Math.min(settings.counterfactualRows, reported.shape[0]));
  const cfLogits = logits.subarray(0, cfSet.shape[0] * k);
  const targets =
    settings.counterfactualTarget === 'true' ? Int32Array.from(cfSet.labels!) : classAtRank(cfLogits, k, 2);
  const cfX = tensorOf(cfSet);
  let cf: Awaited<ReturnType<typeof counterfactuals>>;
  try {
    cf = await counterfactuals(classifier, cfX, targets, {
      radii: settings.counterfactualRadii,
      iterations: settings.iterations.counterfactuals,
      temperature,
      seed: settings.seed,
      signal: phase.signal,
      onProgress: phase.onProgress,
    });
  } finally {
    cfX.dispose();
  }
  phase.timings.counterfactuals = progress.done();
  try {
    const className = (c: number) => classNames[c] ?? String(c);
    const [, h, w, c] = cfSet.shape;
    const gridRows: GridRow[] = Array.from({ length: cfSet.shape[0] }, (_, i) => ({
      label: [
        `${className(cfSet.labels![i])}: ${className(cf.originalClass[i])}`,
        `-> ${className(targets[i])}`,
      ],
      original: pixelImage(cfSet, i),
      cells: cf.radii.map((radius) => ({
        image: {
          data: radius.images.dataSync().slice(i * h * w * c, (i + 1) * h * w * c) as Float32Array,
          height: h,
          width: w,
          channels: c as 1 | 3,
        },
        caption: [`p_t ${radius.p_target[i].toFixed(2)}`, `p_o ${radius.p_original[i].toFixed(2)}`],
      })),
    }));
    const png = await renderCounterfactualGrid(gridRows, {
      columnTitles: cf.radii.map((r) => `eps ${r.eps}`),
    });
    const report = {
      radii: cf.radii.map((r) => r.eps),
      iterations: settings.iterations.counterfactuals,
      rows: Array.from({ length: cfSet.shape[0] }, (_, i) => ({
        index: i,
        label: cfSet.labels![i],
        original_class: cf.originalClass[i],
        target: targets[i],
        p_target: [cf.clean.p_target[i], ...cf.radii.map((r) => r.p_target[i])],
        p_original: [cf.clean.p_original[i], ...cf.radii.map((r) => r.p_original[i])],
      })),
    };
    return { png, report };
  } finally {
    tf.dispose(cf.radii.map((r) => r.images));
  }
}

/**
 * Mean confidence within growing L2 balls: the lowest true-class probability of reported points and
 * the highest max probability of the first OOD set's points, as the report's numbers and an SVG chart.
 */
async function confidenceCurveFigures(
  phase: Phase,
  reported: ImageSet,
  oodSet: ImageSet,
  modelName: string,
  temperature: number,
): Promise<{ curves: NonNullable<EvalReport['curves']>; svg: string }> {
  const { classifier, settings, progress } = phase;
  progress.start('confidence curves');
  const curveIn = rowsOf(reported, 0, Math.min(settings.curveN, reported.shape[0]));
  const curveOut = rowsOf(oodSet, 0, Math.min(settings.curveN, oodSet.shape[0]));
  const xIn = tensorOf(curveIn);
  const xOut = tensorOf(curveOut);
  try {
    const result = await confidenceCurves(classifier, { x: xIn, y: curveIn.labels! }, xOut, {
      radii: settings.curveRadii,
      iterations: settings.iterations.curves,
      temperature,
      seed: settings.seed,
      batchSize: settings.batchSize,
      signal: phase.signal,
      onProgress: phase.onProgress,
    });
    const curves = {
      ood_set: curveOut.name,
      n_in: curveIn.shape[0],
      n_out: curveOut.shape[0],
      iterations: settings.iterations.curves,
      radii: result.radii,
      in_true_class_confidence: result.inTrueClassConfidence,
      out_max_confidence: result.outMaxConfidence,
    };
    const svg = renderCurveChartSvg({
      title: `${modelName}: confidence within an L2 ball`,
      xLabel: 'L2 radius',
      yLabel: 'mean confidence',
      x: result.radii,
      series: [
        {
          name: `in-distribution ${reported.name}: lowest true-class p in the ball`,
          values: result.inTrueClassConfidence,
        },
        {
          name: `out-distribution ${curveOut.name}: highest max p in the ball`,
          values: result.outMaxConfidence,
        },
      ],
    });
    return { curves, svg };
  } finally {
    tf.dispose([xIn, xOut]);
    phase.timings.curves = progress.done();
  }
}

/**
 * Runs every phase and renders the artifacts: clean predictions and calibration, robust accuracy,
 * clean and worst-case OOD detection per set, counterfactuals, and confidence curves against the
 * first OOD set.
 */
export async function evaluateModel(
  classifier: Classifier,
  inputs: EvalInputs,
  settings: EvalSettings,
  progress: PhaseReporter,
  signal?: AbortSignal,
  runners: EvalRunners = {},
): Promise<EvalArtifacts> {
  const started = performance.now();
  const { reported, calibration, warnings, heldOutFromData } = splitInDistribution(inputs, settings);
  const phase: Phase = {
    classifier,
    settings,
    progress,
    signal,
    onProgress: (p) => progress.update(p.done, p.total),
    timings: {},
  };

  const clean = cleanPredictions(phase, reported, calibration);
  const temperature = clean.fit.temperature;
  const robust = await robustAccuracy(phase, reported, runners);
  warnings.push(...robust.warnings.map((w) => `autoattack: ${w}`));
  const oodRows: OodRow[] = [];
  for (const oodSet of inputs.ood)
    oodRows.push(await oodRow(phase, oodSet, clean.inScores, temperature, runners));
  const counterfactualsOut = await counterfactualFigures(
    phase,
    reported,
    clean.logits,
    inputs.inDistribution.classNames ?? classifier.card.classNames,
    temperature,
  );
  const curves =
    inputs.ood.length > 0
      ? await confidenceCurveFigures(phase, reported, inputs.ood[0], inputs.model.name, temperature)
      : undefined;

  const report: EvalReport = {
    model: inputs.model,
    backend: tf.getBackend(),
    seed: settings.seed,
    quick: settings.quick,
    data: {
      name: reported.name,
      source: reported.source,
      reported_n: reported.shape[0],
      calibration_n: calibration.shape[0],
      calibration_source: heldOutFromData
        ? `last ${calibration.shape[0]} of ${reported.source}`
        : calibration.source,
    },
    summary: {
      acc: clean.accuracy,
      robust_acc: robust.robust_accuracy,
      ece: clean.ece,
      ece_uncalibrated: clean.eceUncalibrated,
      temperature,
      ood_threshold: clean.fit.oodThreshold,
      auc: average(oodRows.map((r) => r.auc)),
      wc_auc: average(oodRows.map((r) => r.wc_auc)),
      mmc: average(oodRows.map((r) => r.mmc)),
      fpr_at_95_tpr: average(oodRows.map((r) => r.fpr_at_95_tpr)),
    },
    robustness: {
      norm: 'L2',
      eps: settings.eps,
      version: settings.quick ? 'quick (apgd-ce, apgd-t)' : robust.version,
      n: robust.n,
      clean_accuracy: robust.clean_accuracy,
      per_attack: robust.per_attack,
      seconds: robust.seconds,
    },
    ood: { eps: settings.epsOod, iterations: settings.iterations.worstCase, sets: oodRows },
    counterfactuals: counterfactualsOut.report,
    curves: curves?.curves ?? null,
    warnings,
    timings: phase.timings,
    seconds: (performance.now() - started) / 1000,
  };
  return {
    report,
    markdown: renderReportMarkdown(report),
    counterfactualsPng: counterfactualsOut.png,
    curvesSvg: curves?.svg ?? '',
  };
}

/**
 * Sets `temperature`, `oodThreshold` and where they were fitted (`calibration`) in the model
 * directory's card.json, keeping every other field as it was.
 */
export async function writeCalibration(modelDir: string, report: EvalReport): Promise<void> {
  await updateModelCard(modelDir, {
    temperature: report.summary.temperature,
    oodThreshold: report.summary.ood_threshold,
    calibration: {
      source: report.data.calibration_source,
      n: report.data.calibration_n,
      oodThresholdTruePositiveRate: OOD_GATE_TPR,
    },
  });
}
