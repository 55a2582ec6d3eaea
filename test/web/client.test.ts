import { describe, expect, it } from 'vitest';
import type { AuditJob } from '../../src/web/client/api.js';
import { problemMessage } from '../../src/web/client/api.js';
import { ProgressTracker, progressText } from '../../src/web/client/audit-progress.js';
import { decimal, duration, percent } from '../../src/web/client/format.js';
import { metricRows, words } from '../../src/web/client/metrics.js';

/** The page's pure parts: card metrics, audit progress sentences, 401 messages, number formats. */

describe('metricRows', () => {
  it('shows the headline figures under fixed names whatever the card calls them, then the rest', () => {
    const { headline, rest } = metricRows({
      clean_accuracy: 0.915,
      robust_accuracy_l2_0_5: 0.7,
      robust_accuracy_l2_0_25: 0.8,
      ece: 0.027,
      auc: 0.95,
      wc_auc: 0.843,
      mmc: 0.31,
      source: 'ratio eval',
    });
    expect(headline).toEqual([
      { label: 'Clean accuracy', value: '91.5%', key: 'clean_accuracy' },
      { label: 'Robust accuracy (L2 0.25)', value: '80.0%', key: 'robust_accuracy_l2_0_25' },
      { label: 'Robust accuracy (L2 0.5)', value: '70.0%', key: 'robust_accuracy_l2_0_5' },
      { label: 'ECE', value: '2.7%', key: 'ece' },
      { label: 'AUC', value: '95.0%', key: 'auc' },
      { label: 'Worst-case AUC', value: '84.3%', key: 'wc_auc' },
    ]);
    expect(rest).toEqual([
      { label: 'mmc', value: '0.31', key: 'mmc' },
      { label: 'source', value: 'ratio eval', key: 'source' },
    ]);
  });

  it('marks what a training card lacks and uses its validation figures, not as test figures', () => {
    const { headline, rest } = metricRows({
      validationAccuracy: 0.399,
      validationEce: 0.0396,
      validationEceBeforeTemperature: 0.1537,
    });
    expect(headline).toEqual([
      { label: 'Validation accuracy', value: '39.9%', key: 'validationAccuracy' },
      { label: 'Robust accuracy', value: null, key: null },
      { label: 'ECE', value: '4.0%', key: 'validationEce' },
      { label: 'AUC', value: null, key: null },
      { label: 'Worst-case AUC', value: null, key: null },
    ]);
    expect(rest).toEqual([
      { label: 'validation ece before temperature', value: '0.154', key: 'validationEceBeforeTemperature' },
    ]);
  });

  it('keeps a validation figure beside a test figure, and reads Linf budgets', () => {
    const { headline, rest } = metricRows({ acc: 0.5, validationAccuracy: 0.6, robust_acc_linf_0_031: 0.2 });
    expect(headline[0]).toEqual({ label: 'Clean accuracy', value: '50.0%', key: 'acc' });
    expect(headline[1]).toEqual({
      label: 'Robust accuracy (Linf 0.031)',
      value: '20.0%',
      key: 'robust_acc_linf_0_031',
    });
    expect(rest.map((r) => r.key)).toEqual(['validationAccuracy']);
    expect(words('oodThresholdTruePositiveRate')).toBe('ood threshold true positive rate');
  });
});

function job(fields: Partial<AuditJob>): AuditJob {
  return {
    id: 'a',
    state: 'running',
    parameters: { model: 'm', norm: 'L2', eps: 0.5, version: 'standard', n: 40, seed: 0 },
    created_at: '2026-01-01T00:00:00.000Z',
    started_at: '2026-01-01T00:00:00.000Z',
    finished_at: null,
    progress: null,
    result: null,
    error: null,
    ...fields,
  };
}

describe('ProgressTracker', () => {
  it('counts points left, elapsed time and the current attack’s estimate from its own rate', () => {
    let now = Date.parse('2026-01-01T00:00:10.000Z');
    const tracker = new ProgressTracker(job({}), () => now);
    expect(progressText(tracker.update(job({})))).toBe(
      'Starting: loading the model and the points (elapsed 0:10).',
    );
    tracker.update(job({ progress: { attack: 'apgd-ce', done: 0, total: 40 } }));
    now += 20_000;
    const line = tracker.update(job({ progress: { attack: 'apgd-ce', done: 10, total: 40 } }));
    // 10 points in 20 s: 30 points left take about 60 s.
    expect(line).toMatchObject({
      attack: 'apgd-ce',
      attackNumber: 1,
      done: 10,
      left: 30,
      elapsedSeconds: 30,
    });
    expect(line.attackEstimateSeconds).toBeCloseTo(60, 9);
    expect(progressText(line)).toBe(
      'Attack 1 (apgd-ce): 10 of 40 points done, 30 left; elapsed 0:30, about 1:00 left in this attack.',
    );
    // A new attack starts its own clock: no estimate until it has done a point.
    now += 5_000;
    const next = tracker.update(job({ progress: { attack: 'apgd-t', done: 0, total: 25 } }));
    expect(next).toMatchObject({ attackNumber: 2, left: 25, attackEstimateSeconds: null });
    expect(progressText(next)).toBe('Attack 2 (apgd-t): 0 of 25 points done, 25 left; elapsed 0:35.');
  });

  it('says a queued audit waits', () => {
    const now = Date.parse('2026-01-01T00:01:05.000Z');
    const tracker = new ProgressTracker(job({ state: 'queued', started_at: null }), () => now);
    expect(progressText(tracker.update(job({ state: 'queued', started_at: null })))).toBe(
      'Queued, waiting for a free slot (elapsed 0:00).',
    );
  });
});

describe('problemMessage', () => {
  it('tells a person what to do about a 401, with and without a key', () => {
    expect(problemMessage(401, { title: 'Unauthorized' }, false)).toBe(
      'This needs an API key (401 Unauthorized). Enter one under "API key" at the top; it stays in this tab only.',
    );
    expect(problemMessage(401, { title: 'Unauthorized' }, true)).toBe(
      'The service refused the API key (401 Unauthorized). Check the key under "API key" at the top.',
    );
    expect(problemMessage(422, { title: 'Invalid parameter', detail: "'eps' must be > 0" }, false)).toBe(
      "Invalid parameter: 'eps' must be > 0",
    );
    expect(problemMessage(502, undefined, false)).toBe('HTTP 502');
  });
});

describe('formats', () => {
  it('formats percentages, numbers and durations', () => {
    expect(percent(0.2062)).toBe('20.6%');
    expect(percent(1, 0)).toBe('100%');
    expect(decimal(0.42787)).toBe('0.428');
    expect(decimal(1)).toBe('1');
    expect(decimal(2e-5)).toBe('2.00e-5');
    expect(duration(59.6)).toBe('1:00');
    expect(duration(3725)).toBe('1:02:05');
  });
});
