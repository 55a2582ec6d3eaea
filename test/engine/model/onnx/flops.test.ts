import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { forwardFlops } from '../../../../src/engine/model/cost.js';
import { loadOnnxFromFiles, ModelFileError } from '../../../../src/engine/model/files.js';
import { inspectOnnx, loadOnnxClassifier, OnnxLimitError } from '../../../../src/engine/model/onnx/index.js';
import { buildModel, floatTensor, withHead } from './onnx-builder.js';

/** x [n, 3, 4, 4] -> Conv 4x3x3x3 (pads 1) -> GlobalAveragePool -> Flatten -> Gemm 4 -> 2. */
function convModel(): Uint8Array {
  const spec = withHead(
    [
      {
        op: 'Conv',
        name: 'conv',
        inputs: ['x', 'w'],
        outputs: ['c'],
        attributes: { kernel_shape: [3, 3], pads: [1, 1, 1, 1] },
      },
    ],
    'c',
    4,
  );
  spec.initializers.push(
    floatTensor(
      'w',
      [4, 3, 3, 3],
      Array.from({ length: 108 }, (_, i) => (i % 5) - 2),
    ),
  );
  return buildModel(spec);
}

describe('ONNX FLOPs before allocation', () => {
  it('counts a multiply-add as 2, a pooled element as 1, and is what request costs use', () => {
    // conv: 4 x 4 x 4 outputs x 27 multiply-adds; average pool reads 64 elements; Gemm: 2 x 2 x 4.
    const expected = 2 * 64 * 27 + 64 + 2 * 2 * 4;
    expect(inspectOnnx(convModel()).flopsPerImage).toBe(expected);
    const classifier = loadOnnxClassifier(convModel());
    expect(forwardFlops(classifier)).toBe(expected);
    classifier.dispose();
  });

  it('refuses over maxFlopsPerImage naming the node where the total crosses it, before any tensor', () => {
    const before = tf.memory().numTensors;
    let caught: unknown;
    try {
      loadOnnxClassifier(convModel(), { limits: { maxFlopsPerImage: 3500 } });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(OnnxLimitError);
    // 3,456 for the conv, 3,520 with the pool.
    expect(caught).toMatchObject({ limit: 'flops', value: 3520, maximum: 3500 });
    expect((caught as Error).message).toMatch(
      /^node '.*': one image up to here: 3520 flops, over the limit of 3500$/,
    );
    expect(tf.memory().numTensors).toBe(before);
  });

  it('an upload over the TF.js budget is a ModelFileError naming the file and node', () => {
    const files = new Map([['model.onnx', convModel()]]);
    let caught: unknown;
    try {
      loadOnnxFromFiles(files, { budget: { maxFlopsPerImage: 1000 } });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ModelFileError);
    expect((caught as ModelFileError).path).toBe('model.onnx');
    expect((caught as ModelFileError).field).toBe('node conv');
    expect((caught as Error).message).toMatch(
      /OnnxLimitError: node 'conv': one image up to here: 3456 flops/,
    );
  });

  it('the PyTorch MaxPoolNet fixture: its convolutions and linear layers by hand, plus pools and activations', () => {
    const bytes = new Uint8Array(
      readFileSync(path.join(import.meta.dirname, '../../../fixtures/onnx/maxpool-view/model.onnx')),
    );
    // conv1 32x32x16 x (3x5x5), conv2 16x16x32 x (16x3x3), fc1 512 -> 32, fc2 32 -> 10; 2 per multiply-add.
    const products = 2 * (32 * 32 * 16 * 75 + 16 * 16 * 32 * 144 + 512 * 32 + 32 * 10);
    // Pools: 16x16x16 x 2x2, 8x8x32 x 3x3, 4x4x32 x 2x2; ReLUs at most 4 per element of their outputs.
    const pools = 16 * 16 * 16 * 4 + 8 * 8 * 32 * 9 + 4 * 4 * 32 * 4;
    const activations = 4 * (32 * 32 * 16 + 16 * 16 * 32 + 32);
    const flops = inspectOnnx(bytes).flopsPerImage;
    expect(flops).toBeGreaterThanOrEqual(products + pools);
    expect(flops).toBeLessThanOrEqual(products + pools + activations);
  });
});
