import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { apgdAttack } from '../../../../src/engine/attacks/apgd.js';
import { type AutoAttackReport, autoAttack } from '../../../../src/engine/attacks/autoattack.js';
import { square } from '../../../../src/engine/attacks/square.js';
import { TfjsClassifier } from '../../../../src/engine/model/classifier.js';
import { loadOnnxClassifier } from '../../../../src/engine/model/onnx/index.js';
import { decodeModel, decodeTensor } from '../../../../src/engine/model/onnx/proto.js';
import { smallCnn } from '../../../../src/training/architectures.js';
import { Rng } from '../../../../src/util/random.js';

/**
 * The PyTorch twin of architectures.ts smallCnn (width 0.5), imported from ONNX, against the native
 * tf.layers build holding the same weights: the same logits, and the same AutoAttack report.
 */
const bytes = new Uint8Array(
  readFileSync(path.join(import.meta.dirname, '../../../fixtures/onnx/small-cnn/model.onnx')),
);

/** The native smallCnn with the ONNX file's weights (OIHW -> HWIO, [out, in] -> [in, out]). */
function nativeTwin(): tf.LayersModel {
  const model = smallCnn({ numClasses: 10, inputShape: [32, 32, 3], width: 0.5 });
  const onnx = decodeModel(bytes, 1e9, 1e5);
  const weight = (name: string) => {
    const proto = onnx.initializers.get(name);
    if (!proto) throw new Error(`no initializer '${name}'`);
    const t = decodeTensor(proto, name);
    return tf.tensor(t.values as Float32Array, t.shape);
  };
  tf.tidy(() => {
    for (const layer of ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']) {
      model
        .getLayer(layer)
        .setWeights([tf.transpose(weight(`${layer}.weight`), [2, 3, 1, 0]), weight(`${layer}.bias`)]);
    }
    model.getLayer('logits').setWeights([tf.transpose(weight('fc.weight')), weight('fc.bias')]);
  });
  return model;
}

function comparable(report: AutoAttackReport) {
  // Everything but wall-clock times.
  const { seconds: _seconds, per_attack, samples, adversarial: _adversarial, ...rest } = report;
  return {
    ...rest,
    per_attack: per_attack.map(({ seconds: _s, ...attack }) => attack),
    samples: samples.map(({ seconds: _s, ...sample }) => sample),
  };
}

describe('ONNX import against the native TF.js network', () => {
  it('gives the same logits and the same AutoAttack report as smallCnn with the same weights', async () => {
    const before = tf.memory().numTensors;
    const imported = loadOnnxClassifier(bytes);
    const native = new TfjsClassifier(nativeTwin());
    const rng = new Rng(3);
    const n = 4;
    const x = tf.tensor4d(
      Float32Array.from({ length: n * 32 * 32 * 3 }, () => rng.next()),
      [n, 32, 32, 3],
    );
    const importedLogits = tf.tidy(() => imported.logits(x).dataSync());
    const nativeLogits = tf.tidy(() => native.logits(x).dataSync());
    const difference = Math.max(...Array.from(importedLogits, (v, i) => Math.abs(v - nativeLogits[i])));
    expect(difference).toBeLessThan(1e-5);
    // Labels: the model's own prediction for most points (so attacks have work), a wrong one for one.
    const predicted = tf.tidy(() => Array.from(native.logits(x).argMax(1).dataSync()));
    const y = Int32Array.from(predicted, (c, i) => (i === 0 ? (c + 1) % 10 : c));
    // APGD-CE (gradients through the import) and Square (queries only), kept short for the cpu backend.
    const options = {
      norm: 'L2' as const,
      eps: 0.25,
      seed: 1,
      batchSize: 4,
      attacks: [apgdAttack('ce', { iterations: 6 }), square({ queries: 20 })],
    };
    const importedReport = await autoAttack(imported, x, y, options);
    const nativeReport = await autoAttack(native, x, y, options);
    expect(comparable(importedReport)).toEqual(comparable(nativeReport));
    expect(importedReport.clean_accuracy).toBeCloseTo(3 / 4, 10);
    x.dispose();
    imported.dispose();
    native.dispose();
    expect(tf.memory().numTensors).toBe(before);
  }, 240_000);
});
