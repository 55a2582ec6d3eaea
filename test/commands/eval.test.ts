import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { describe, expect, it, vi } from 'vitest';
import { run } from '../../src/commands/eval.js';
import type { EvalReport } from '../../src/jobs/evaluation/report.js';
import { quiet } from '../helpers/console.js';
import { CIFAR_TEST_FILE, DATA_DIR } from '../helpers/data.js';
import { tinyModelWorkDir } from '../helpers/model-dir.js';

const hasData = existsSync(CIFAR_TEST_FILE);

const work = tinyModelWorkDir('ratio-eval-');

describe('ratio eval', () => {
  it.skipIf(!hasData)(
    'writes report.json, report.md, counterfactuals.png and confidence-curves.svg on real data',
    async () => {
      const out = path.join(work.root, 'out');
      // An unlabelled image folder of 40x40 PNGs: resized (shorter side, centre crop) to the model's 32x32.
      const folder = path.join(work.root, 'pictures');
      await mkdir(folder, { recursive: true });
      for (let i = 0; i < 5; i++) {
        const pixels = Buffer.alloc(40 * 40 * 3, 40 * i);
        await sharp(pixels, { raw: { width: 40, height: 40, channels: 3 } })
          .png()
          .toFile(path.join(folder, `${i}.png`));
      }
      const output = quiet();
      let code: number;
      try {
        code = await run([
          '--model',
          work.model,
          '--data',
          CIFAR_TEST_FILE,
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
        output.restore();
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
      const card = JSON.parse(await readFile(path.join(work.model, 'card.json'), 'utf8')) as {
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
      expect(await run(['--data', CIFAR_TEST_FILE])).toBe(2);
      expect(error.mock.calls[0][0]).toContain('--model is required');
      expect(await run(['--model', work.model, '--data', CIFAR_TEST_FILE, '--eps', '-1'])).toBe(2);
      expect(await run(['--model', work.model, '--data', CIFAR_TEST_FILE, '--ood', 'imagenet'])).toBe(2);
      expect(String(error.mock.calls.at(-1)?.[0])).toContain("--ood 'imagenet' is not a built-in set");
      expect(await run(['--model', path.join(work.root, 'missing'), '--data', CIFAR_TEST_FILE])).toBe(2);
      const notCifar = path.join(work.root, 'odd.bin');
      await writeFile(notCifar, new Uint8Array(100));
      expect(await run(['--model', work.model, '--data', notCifar])).toBe(2);
      expect(String(error.mock.calls.at(-1)?.[0])).toContain('cannot tell the format');
      if (hasData) {
        // SVHN has no labels: accuracy cannot be measured on it.
        const svhn = path.join(DATA_DIR, 'svhn/train_first1000.bin');
        expect(await run(['--model', work.model, '--data', svhn, '--ood', 'noise', '--quick'])).toBe(2);
        expect(String(error.mock.calls.at(-1)?.[0])).toContain('has no labels');
      }
    } finally {
      error.mockRestore();
    }
  });
});
