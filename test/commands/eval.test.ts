import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { run } from '../../src/commands/eval.js';
import { writeModelDir } from '../../src/data/model-dir.js';
import { saveModelToFiles } from '../../src/engine/model/files.js';
import type { EvalReport } from '../../src/jobs/evaluation/report.js';
import { smallCnn } from '../../src/training/architectures.js';
import { DATA_DIR } from '../helpers/data.js';

const cifarTest = path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin');
const hasData = existsSync(cifarTest);

let workDir: string;
let modelDir: string;

beforeAll(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'ratio-eval-'));
  modelDir = path.join(workDir, 'model');
  // A tiny untrained CNN: the point is the plumbing end to end, not the numbers.
  const model = smallCnn({ numClasses: 10, inputShape: [32, 32, 3], width: 0.125 });
  const files = await saveModelToFiles(model, { name: 'tiny-untrained', temperature: 1 });
  model.dispose();
  await writeModelDir(modelDir, files);
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe('ratio eval', () => {
  it.skipIf(!hasData)(
    'writes report.json, report.md, counterfactuals.png and confidence-curves.svg on real data',
    async () => {
      const out = path.join(workDir, 'out');
      // An unlabelled image folder of 40x40 PNGs: resized (shorter side, centre crop) to the model's 32x32.
      const folder = path.join(workDir, 'pictures');
      await mkdir(folder, { recursive: true });
      for (let i = 0; i < 5; i++) {
        const pixels = Buffer.alloc(40 * 40 * 3, 40 * i);
        await sharp(pixels, { raw: { width: 40, height: 40, channels: 3 } })
          .png()
          .toFile(path.join(folder, `${i}.png`));
      }
      const log = vi.spyOn(console, 'log').mockImplementation(() => {});
      const error = vi.spyOn(console, 'error').mockImplementation(() => {});
      const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
      let code: number;
      try {
        code = await run([
          '--model',
          modelDir,
          '--data',
          cifarTest,
          '--ood',
          'svhn',
          '--ood',
          'noise',
          '--ood',
          `pictures=${folder}`,
          '--n',
          '24',
          '--calibration-n',
          '16',
          '--ood-n',
          '12',
          '--robust-n',
          '8',
          '--cf-rows',
          '2',
          '--curve-n',
          '4',
          '--iterations',
          '2',
          '--cf-iterations',
          '2',
          '--quick',
          '--write-calibration',
          '--out',
          out,
        ]);
      } finally {
        log.mockRestore();
        error.mockRestore();
        stderr.mockRestore();
      }
      expect(code).toBe(0);
      const report = JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8')) as EvalReport;
      expect(report.data.reported_n).toBe(24);
      expect(report.data.calibration_n).toBe(16);
      expect(report.robustness.n).toBe(8);
      expect(report.ood.sets.map((s) => [s.name, s.n])).toEqual([
        ['svhn', 12],
        ['uniform noise', 12],
        ['pictures', 5],
      ]);
      expect(report.summary.acc).toBeGreaterThanOrEqual(0);
      expect(report.summary.acc).toBeLessThanOrEqual(1);
      const markdown = await readFile(path.join(out, 'report.md'), 'utf8');
      expect(markdown).toContain('quick mode');
      expect(markdown).toContain('| svhn | 12 |');
      const png = await sharp(path.join(out, 'counterfactuals.png')).metadata();
      expect(png.format).toBe('png');
      // 2 rows of 96 px images (32 x 3) with captions under a header.
      expect(png.height).toBe(22 + 2 * (96 + 30 + 6) + 6);
      const svg = await readFile(path.join(out, 'confidence-curves.svg'), 'utf8');
      expect(svg).toContain('<polyline');
      const card = JSON.parse(await readFile(path.join(modelDir, 'card.json'), 'utf8')) as {
        temperature: number;
        oodThreshold: number;
        calibration: { source: string; n: number; oodThresholdTruePositiveRate: number };
      };
      expect(card.temperature).toBeCloseTo(report.summary.temperature, 12);
      // A max-softmax over 10 classes lies in [0.1, 1].
      expect(report.summary.ood_threshold).toBeGreaterThanOrEqual(0.1);
      expect(report.summary.ood_threshold).toBeLessThanOrEqual(1);
      expect(card.oodThreshold).toBe(report.summary.ood_threshold);
      expect(card.calibration).toMatchObject({ n: 16, oodThresholdTruePositiveRate: 0.95 });
      expect(card.calibration.source).toContain('last 16 of');
      expect(markdown).toContain(`in-distribution is ${report.summary.ood_threshold.toFixed(3)}`);
    },
  );

  it('exits 2 with a message on bad input, without crashing', async () => {
    const error = vi.spyOn(console, 'error').mockImplementation(() => {});
    try {
      expect(await run(['--data', cifarTest])).toBe(2);
      expect(error.mock.calls[0][0]).toContain('--model is required');
      expect(await run(['--model', modelDir, '--data', cifarTest, '--eps', '-1'])).toBe(2);
      expect(await run(['--model', modelDir, '--data', cifarTest, '--ood', 'imagenet'])).toBe(2);
      expect(String(error.mock.calls.at(-1)?.[0])).toContain("--ood 'imagenet' is not a built-in set");
      expect(await run(['--model', path.join(workDir, 'missing'), '--data', cifarTest])).toBe(2);
      const notCifar = path.join(workDir, 'odd.bin');
      await writeFile(notCifar, new Uint8Array(100));
      expect(await run(['--model', modelDir, '--data', notCifar])).toBe(2);
      expect(String(error.mock.calls.at(-1)?.[0])).toContain('cannot tell the format');
      if (hasData) {
        // SVHN has no labels: accuracy cannot be measured on it.
        const svhn = path.join(DATA_DIR, 'svhn/train_first1000.bin');
        expect(await run(['--model', modelDir, '--data', svhn, '--ood', 'noise', '--quick'])).toBe(2);
        expect(String(error.mock.calls.at(-1)?.[0])).toContain('has no labels');
      }
    } finally {
      error.mockRestore();
    }
  });
});
