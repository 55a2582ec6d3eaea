import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/commands/audit.js';
import { saveModelToFiles } from '../../src/engine/model/files.js';
import { quiet } from '../helpers/console.js';
import { DATA_DIR } from '../helpers/data.js';

const cifar = path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin');

let workDir = '';
let modelDir = '';

beforeAll(async () => {
  workDir = await mkdtemp(path.join(tmpdir(), 'ratio-audit-'));
  modelDir = path.join(workDir, 'model');
  // A linear softmax-free model (logits) on CIFAR-sized input: cheap enough for full AutoAttack budgets.
  const input = tf.input({ shape: [32, 32, 3] });
  const flat = tf.layers.flatten().apply(input) as tf.SymbolicTensor;
  const logits = tf.layers
    .dense({ units: 10, kernelInitializer: tf.initializers.glorotNormal({ seed: 1 }) })
    .apply(flat) as tf.SymbolicTensor;
  const model = tf.model({ inputs: input, outputs: logits, name: 'linear' });
  const files = await saveModelToFiles(model, { name: 'linear' });
  model.dispose();
  const { mkdir } = await import('node:fs/promises');
  await mkdir(modelDir);
  for (const [name, bytes] of files) await writeFile(path.join(modelDir, name), bytes);
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe('ratio audit', () => {
  it('writes the report and gates on the robust accuracy (exit 0 / 1)', async () => {
    expect(existsSync(cifar)).toBe(true);
    const reportPath = path.join(workDir, 'report.json');
    const base = ['--model', modelDir, '--data', cifar, '--norm', 'L2', '--eps', '0.05', '--n', '12'];
    const output = quiet();
    let passed: number;
    let failed: number;
    try {
      passed = await run([...base, '--report', reportPath, '--min-robust-accuracy', '0']);
      failed = await run([...base, '--min-robust-accuracy', '1']);
    } finally {
      output.restore();
    }
    expect(passed).toBe(0);
    const report = JSON.parse(await readFile(reportPath, 'utf8'));
    expect(report.n).toBe(12);
    expect(report.samples).toHaveLength(12);
    expect(report.per_attack.map((a: { name: string }) => a.name)).toEqual([
      'apgd-ce',
      'apgd-t',
      'fab-t',
      'square',
    ]);
    expect(report.robust_accuracy).toBeLessThanOrEqual(report.clean_accuracy);
    expect(report.backend).toBe(tf.getBackend());
    // 12 points are too few to pay for a worker process: the default runs them in this one.
    expect(report.workers).toBe(1);
    // An untrained model is wrong on most points, so robust accuracy 1 cannot be met.
    expect(report.robust_accuracy).toBeLessThan(1);
    expect(failed).toBe(1);
  });

  it('exits 2 on bad input, naming the option', async () => {
    const output = quiet();
    const codes: number[] = [];
    try {
      codes.push(await run(['--model', modelDir, '--data', cifar, '--norm', 'L3', '--eps', '0.5']));
      codes.push(await run(['--model', modelDir, '--data', cifar, '--norm', 'L2', '--eps', '0']));
      codes.push(await run(['--model', workDir, '--data', cifar, '--norm', 'L2', '--eps', '0.5']));
      codes.push(
        await run([
          '--model',
          modelDir,
          '--data',
          path.join(DATA_DIR, 'cifar10/batches.meta.txt'),
          '--norm',
          'L2',
          '--eps',
          '0.5',
        ]),
      );
      codes.push(
        await run(['--model', modelDir, '--data', cifar, '--norm', 'L2', '--eps', '0.5', '--bogus']),
      );
    } finally {
      output.restore();
    }
    expect(codes).toEqual([2, 2, 2, 2, 2]);
    const errors = output.errors();
    expect(errors).toMatch(/--norm must be L2 or Linf/);
    expect(errors).toMatch(/--eps must be a number > 0/);
    expect(errors).toMatch(/--model: .*model\.json: file is missing/);
    expect(errors).toMatch(/--data: /);
  });
});
