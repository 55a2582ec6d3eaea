import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { run as audit } from '../../src/commands/audit.js';
import { run as models } from '../../src/commands/models.js';
import { loadOnnxClassifier } from '../../src/engine/model/onnx/index.js';
import { DATA_DIR } from '../helpers/data.js';

const cifar = path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin');
const onnxFile = path.resolve('test/fixtures/onnx/maxpool-view/model.onnx');

function capture() {
  const out: string[] = [];
  const spies = [
    vi.spyOn(console, 'log').mockImplementation((m: unknown) => void out.push(String(m))),
    vi.spyOn(console, 'error').mockImplementation((m: unknown) => void out.push(String(m))),
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true),
  ];
  return {
    text: () => out.join('\n'),
    restore: () => {
      for (const spy of spies) spy.mockRestore();
    },
  };
}

describe('ratio audit / models inspect with a PyTorch ONNX export', () => {
  it('audits model.onnx in one command, with the predictions of the import', async () => {
    const work = await mkdtemp(path.join(tmpdir(), 'ratio-onnx-audit-'));
    // The first 8 CIFAR records labelled one class past the import's own predictions: every point
    // is a clean error of exactly this model (attacks through the import: native-equivalence.test.ts).
    const bytes = new Uint8Array(readFileSync(cifar)).slice(0, 8 * 3073);
    const pixels = new Float32Array(8 * 3072);
    for (let i = 0; i < 8; i++) {
      for (let p = 0; p < 1024; p++) {
        for (let c = 0; c < 3; c++) pixels[i * 3072 + p * 3 + c] = bytes[i * 3073 + 1 + c * 1024 + p] / 255;
      }
    }
    const classifier = loadOnnxClassifier(new Uint8Array(readFileSync(onnxFile)));
    const predicted = tf.tidy(() =>
      Array.from(
        classifier
          .logits(tf.tensor4d(pixels, [8, 32, 32, 3]))
          .argMax(1)
          .dataSync(),
      ),
    );
    classifier.dispose();
    predicted.forEach((c, i) => {
      bytes[i * 3073] = (c + 1) % 10;
    });
    const dataPath = path.join(work, 'relabelled.bin');
    await writeFile(dataPath, bytes);
    const reportPath = path.join(work, 'report.json');
    const output = capture();
    let code: number;
    try {
      code = await audit([
        '--model',
        onnxFile,
        '--data',
        dataPath,
        '--norm',
        'L2',
        '--eps',
        '0.02',
        '--report',
        reportPath,
      ]);
    } finally {
      output.restore();
    }
    expect(code).toBe(0);
    const report = JSON.parse(await readFile(reportPath, 'utf8')) as {
      n: number;
      clean_accuracy: number;
      robust_accuracy: number;
    };
    expect(report.n).toBe(8);
    expect(report.clean_accuracy).toBe(0);
    expect(report.robust_accuracy).toBe(0);
    await rm(work, { recursive: true, force: true });
  }, 180_000);

  it('prints inputs, outputs, ops and parameters; exit 2 naming --model for a refused file', async () => {
    let output = capture();
    let code: number;
    try {
      code = await models(['inspect', onnxFile]);
    } finally {
      output.restore();
    }
    expect(code).toBe(0);
    expect(output.text()).toContain('input:       input [n, 3, 32, 32] float32, NCHW');
    expect(output.text()).toContain('parameters:  22602');
    expect(output.text()).toMatch(/ops used:.*Conv x2.*MaxPool x3/);
    output = capture();
    try {
      code = await audit([
        '--model',
        cifar.replace(/\.bin$/, '.onnx'),
        '--data',
        cifar,
        '--norm',
        'L2',
        '--eps',
        '0.1',
      ]);
    } finally {
      output.restore();
    }
    expect(code).toBe(2);
    expect(output.text()).toContain('--model');
  });
});
