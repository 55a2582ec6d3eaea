import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { autoAttack } from '../../../src/engine/attacks/autoattack.js';
import { type Classifier, functionClassifier } from '../../../src/engine/model/classifier.js';
import { type AuditRequest, prepareAudit, runAudit } from '../../../src/jobs/audit/audit.js';
import { InvalidInputError } from '../../../src/jobs/errors.js';
import { Rng } from '../../../src/util/random.js';
import { writeClassFolder } from '../../helpers/image-folder.js';

/** A linear 32x32x3 classifier: logit c = w_c . x, with fixed seeded weights. */
function linearModel(numClasses = 3): Classifier & { disposed: number } {
  const weights = tf.randomNormal([32 * 32 * 3, numClasses], 0, 0.05, 'float32', 3);
  const model = functionClassifier({ inputShape: [32, 32, 3], numClasses }, (x) =>
    tf.tidy(() => tf.matMul(x.reshape([x.shape[0], -1]), weights) as tf.Tensor2D),
  );
  const counted = { ...model, disposed: 0 };
  counted.dispose = () => {
    counted.disposed += 1;
  };
  return counted;
}

/** n CIFAR-10 binary records (label byte + 3072 planar pixels) with the given labels. */
function cifarBytes(labels: number[]): Uint8Array {
  const bytes = new Uint8Array(labels.length * 3073);
  for (const [i, label] of labels.entries()) {
    bytes[i * 3073] = label;
    for (let p = 1; p < 3073; p++) bytes[i * 3073 + p] = (i * 37 + p * 11) % 256;
  }
  return bytes;
}

const parameters = {
  norm: 'L2' as const,
  eps: 0.5,
  version: 'standard' as const,
  n: 4,
  seed: 2,
  iterations: 5,
};

function request(model: Classifier, labels: number[]): AuditRequest {
  return {
    model: { kind: 'served', name: 'linear', classifier: model },
    data: { kind: 'bytes', bytes: cifarBytes(labels), filename: 'test_batch.bin', maxBytes: 1e8 },
    parameters,
  };
}

describe('prepareAudit / runAudit', () => {
  it('runs exactly what AutoAttack gives on the first n points, leaving no tensor behind', async () => {
    const model = linearModel();
    const prepared = await prepareAudit(request(model, [0, 1, 2, 0, 1, 2]));
    expect(prepared.parameters).toEqual({ model: 'linear', ...parameters });
    expect(prepared.dataset.size).toBe(4);
    expect(prepared.ownsClassifier).toBe(false);
    const before = tf.memory().numTensors;
    const report = await runAudit(prepared);
    expect(tf.memory().numTensors).toBe(before);

    const x = prepared.dataset.tensor();
    const direct = await autoAttack(model, x, prepared.dataset.labels, { ...parameters });
    x.dispose();
    const withoutTimes = (r: typeof report) => ({
      ...r,
      seconds: 0,
      per_attack: r.per_attack.map((a) => ({ ...a, seconds: 0 })),
      samples: r.samples.map((s) => ({ ...s, seconds: 0 })),
    });
    expect(withoutTimes(report)).toEqual(withoutTimes(direct));
    expect(report.n).toBe(4);
  });

  it('refuses data that does not fit the model, naming the dataset, and frees no served model', async () => {
    const model = linearModel();
    const refusal = async (labels: number[]) => {
      const error = await prepareAudit(request(model, labels)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidInputError);
      return error as InvalidInputError;
    };
    // Label 5 is no class of a 3-class model; 255 is the CIFAR "unlabelled" byte.
    expect((await refusal([0, 5, 1])).message).toBe(
      "image 1 has label 5, outside the model's classes 0..2 (unlabelled images, or another label set?)",
    );
    expect((await refusal([255, 255])).message).toBe(
      'the data set has no labels; an audit needs labelled images',
    );
    const small = functionClassifier({ inputShape: [8, 8, 3], numClasses: 3 }, (x) =>
      tf.tidy(() => tf.zeros([x.shape[0], 3]) as tf.Tensor2D),
    );
    const mismatch = await prepareAudit(request(small, [0])).catch((e: unknown) => e);
    expect(mismatch).toBeInstanceOf(InvalidInputError);
    expect((mismatch as InvalidInputError).field).toBe('dataset');
    expect((mismatch as InvalidInputError).message).toBe(
      'the data set holds 32x32x3 images, the model takes 8x8x3',
    );
    // Only the points audited are checked: a bad label after the first n is not read.
    expect((await prepareAudit(request(model, [0, 1, 2, 0, 9]))).dataset.size).toBe(4);
    expect(model.disposed).toBe(0);
  });
});

describe('audit data from an image folder', () => {
  it('audits n points of one seeded permutation (every class), not the first class alone', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'ratio-audit-folder-'));
    try {
      // 3 classes x 4 images; pixel value = 10 * class + index, so each point names its source.
      await writeClassFolder(root, { classes: 3, perClass: 4, size: 32 });
      const model = linearModel();
      const folderRequest = (seed: number): AuditRequest => ({
        model: { kind: 'served', name: 'linear', classifier: model },
        data: { kind: 'path', path: root },
        parameters: { ...parameters, n: 6, seed },
      });
      const prepared = await prepareAudit(folderRequest(2));
      const order = new Rng(2).permutation(12).subarray(0, 6);
      expect(Array.from(prepared.dataset.labels)).toEqual(Array.from(order, (j) => Math.floor(j / 4)));
      expect(Array.from({ length: 6 }, (_, i) => prepared.dataset.images[i * 3072])).toEqual(
        Array.from(order, (j) => 10 * Math.floor(j / 4) + (j % 4)),
      );
      expect(new Set(prepared.dataset.labels).size).toBeGreaterThan(1);
      const again = await prepareAudit(folderRequest(2));
      expect(Array.from(again.dataset.images)).toEqual(Array.from(prepared.dataset.images));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
