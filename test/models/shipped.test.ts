import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { rowsOf } from '../../src/data/image-set.js';
import { loadImageSet } from '../../src/data/image-sets.js';
import { readModelDir } from '../../src/data/model-dir.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { classAtRank, logitsOf } from '../../src/engine/model/logits.js';
import { maxProbabilities } from '../../src/engine/ood/calibration.js';
import { OOD_GATE_TPR } from '../../src/engine/ood/metrics.js';
import { DATA_DIR } from '../helpers/data.js';

/**
 * The models the service ships (models/<name>/) against the figures their cards and evaluation reports
 * claim, on the same CIFAR-10 test images: the table in docs/training.md must be reproducible from the files.
 */

const modelsDir = path.resolve('models');

interface Report {
  seed: number;
  summary: { acc: number; temperature: number };
  data: { source: string; reported_n: number; calibration_n: number };
}

/** The report's --data, read from this checkout's data directory (RATIO_DATA_DIR or ../shared/data). */
function dataPath(source: string): string {
  const shared = source.match(/(?:^|\/)shared\/data\/(.+)$/);
  return shared ? path.join(DATA_DIR, shared[1]) : path.resolve(source);
}

const shipped = (await readdir(modelsDir, { withFileTypes: true }))
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();

describe('shipped models', () => {
  it('are the four docs/training.md describes, at least', () => {
    expect(shipped).toEqual(
      expect.arrayContaining(['at-cifar10', 'oe-cifar10', 'plain-cifar10', 'ratio-cifar10']),
    );
  });

  it.each(shipped)(
    '%s: reproduces its report accuracy, and its OOD gate passes 95 percent of held-out images',
    async (name) => {
      const folder = path.join(modelsDir, name);
      const classifier = await loadModelFromFiles(await readModelDir(folder));
      try {
        const report = JSON.parse(await readFile(path.join(folder, 'eval', 'report.json'), 'utf8')) as Report;
        const { card } = classifier;
        expect(card.classNames).toHaveLength(10);
        expect(card.temperature).toBeCloseTo(report.summary.temperature, 12);
        expect(card.oodThreshold).toBeGreaterThan(0.1);
        expect(card.oodThreshold).toBeLessThan(1);

        const { reported_n: reported, calibration_n: heldOut } = report.data;
        // The points eval took: the first records of a file, one seeded permutation of a folder.
        const images = await loadImageSet(
          dataPath(report.data.source),
          'cifar10',
          reported + heldOut,
          [32, 32, 3],
          report.seed,
        );
        const logits = logitsOf(classifier, images, 250);
        const k = classifier.numClasses;
        // Accuracy on the reported images, as in the report (2 images of slack for float ties).
        const predicted = classAtRank(logits.subarray(0, reported * k), k);
        const correct = predicted.filter((p, i) => p === images.labels![i]).length;
        expect(Math.abs(correct / reported - report.summary.acc)).toBeLessThanOrEqual(2 / reported);
        // The gate: at least 95% of the held-out images (where the threshold was fitted) pass it.
        const heldOutSet = rowsOf(images, reported, reported + heldOut);
        const scores = maxProbabilities(logitsOf(classifier, heldOutSet, 250), k, card.temperature);
        const passing = scores.filter((s) => s >= card.oodThreshold!).length / heldOut;
        expect(passing).toBeGreaterThanOrEqual(OOD_GATE_TPR - 2 / heldOut);
        expect(passing).toBeLessThan(1);
      } finally {
        classifier.dispose();
      }
    },
  );
});
