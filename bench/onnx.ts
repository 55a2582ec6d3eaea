/**
 * ONNX import benchmarks, in one run each, medians over rounds that alternate between the two sides
 * so machine noise hits both alike; JSON on stdout.
 *
 * Against PyTorch (bench/onnx-torch.ts): an ONNX model imported by us against PyTorch running the
 * model it was exported from, same batch, same threads; forward and cross-entropy input-gradient
 * times, ours / PyTorch, and how far apart the logits and gradients are.
 *
 *   npm run bench:onnx -- --torchvision resnet50 [--size 224] [--batch 8] [--repeats 7] [--seed 0]
 *   npm run bench:onnx -- --torchvision resnet50 --model FILE.onnx   (scripts/torchvision-onnx.py's export)
 *   npm run bench:onnx -- --model FILE.onnx --torchscript FILE.pt   (the file sets the size)
 *
 * Without those options: the PyTorch-exported twin of smallCnn (width 0.5, test/fixtures/onnx/
 * small-cnn, made by scripts/onnx-fixtures.py) imported from ONNX, against the native tf.layers
 * smallCnn holding the same weights, on the selected backend.
 *
 *   npm run bench:onnx -- [--batch 64] [--repeats 7]
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { type BackendInfo, initBackend } from '../src/engine/backend/backend.js';
import { type Classifier, TfjsClassifier } from '../src/engine/model/classifier.js';
import { loadOnnxClassifier } from '../src/engine/model/onnx/index.js';
import { decodeModel, decodeTensor } from '../src/engine/model/onnx/proto.js';
import { ModelDirError, ModelFileError, ModelLimitError } from '../src/jobs/models/index.js';
import { smallCnn } from '../src/training/architectures.js';
import { Rng } from '../src/util/random.js';
import {
  BenchOptionError,
  median,
  type OnnxBenchOptions,
  parseOnnxBenchArgs,
  type SmallCnnOptions,
  timeRatio,
} from './onnx-options.js';
import { benchAgainstTorch, TorchPeerError } from './onnx-torch.js';

function benchSmallCnn({ batch, repeats }: SmallCnnOptions, backend: BackendInfo): object {
  const bytes = new Uint8Array(
    readFileSync(new URL('../test/fixtures/onnx/small-cnn/model.onnx', import.meta.url)),
  );
  const imported = loadOnnxClassifier(bytes);

  /** smallCnn x0.5 with the ONNX file's weights (OIHW -> HWIO, [out, in] -> [in, out]). */
  function nativeTwin(): TfjsClassifier {
    const model = smallCnn({ numClasses: 10, inputShape: [32, 32, 3], width: 0.5 });
    const onnx = decodeModel(bytes, 1e9, 1e5);
    const weight = (name: string) => {
      const t = decodeTensor(onnx.initializers.get(name)!, name);
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
    return new TfjsClassifier(model);
  }
  const native = nativeTwin();

  const rng = new Rng(1);
  const x = tf.tensor4d(
    Float32Array.from({ length: batch * 32 * 32 * 3 }, () => rng.next()),
    [batch, 32, 32, 3],
  );
  const labels = tf.oneHot(
    tf.tensor1d(
      Array.from({ length: batch }, () => rng.int(10)),
      'int32',
    ),
    10,
  );

  function forward(classifier: Classifier): number {
    const start = performance.now();
    const logits = classifier.logits(x);
    logits.dataSync();
    logits.dispose();
    return performance.now() - start;
  }

  function inputGradient(classifier: Classifier): number {
    const start = performance.now();
    const grad = tf.grad((input: tf.Tensor) =>
      tf.losses.softmaxCrossEntropy(labels, classifier.logits(input as tf.Tensor4D)),
    )(x);
    grad.dataSync();
    grad.dispose();
    return performance.now() - start;
  }

  const times = {
    onnxForward: [] as number[],
    nativeForward: [] as number[],
    onnxGradient: [] as number[],
    nativeGradient: [] as number[],
  };
  // Warm-up: kernels compiled, weights uploaded.
  for (const c of [imported, native]) {
    forward(c);
    inputGradient(c);
  }
  for (let round = 0; round < repeats; round++) {
    times.onnxForward.push(forward(imported));
    times.nativeForward.push(forward(native));
    times.nativeGradient.push(inputGradient(native));
    times.onnxGradient.push(inputGradient(imported));
  }
  const ms = (v: number) => Math.round(v * 10) / 10;
  const result = {
    bench: 'onnx-import',
    model: 'smallCnn x0.5 (PyTorch export, opset 17) vs native tf.layers smallCnn x0.5, same weights',
    backend: backend.name,
    nativeKernels: backend.nativeKernels,
    batch,
    repeats,
    forwardMs: { onnx: ms(median(times.onnxForward)), native: ms(median(times.nativeForward)) },
    inputGradientMs: { onnx: ms(median(times.onnxGradient)), native: ms(median(times.nativeGradient)) },
    ratio: {
      forward: timeRatio(median(times.onnxForward), median(times.nativeForward)),
      inputGradient: timeRatio(median(times.onnxGradient), median(times.nativeGradient)),
    },
    runtimeSteps: imported.summary.runtimeSteps,
  };
  tf.dispose([x, labels]);
  imported.dispose();
  native.dispose();
  return result;
}

let options: OnnxBenchOptions;
try {
  options = parseOnnxBenchArgs(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof BenchOptionError)) throw error;
  console.error(`bench:onnx: ${error.message}`);
  process.exit(2);
}
const backend = await initBackend();
try {
  const result =
    options.mode === 'torch' ? await benchAgainstTorch(options, backend) : benchSmallCnn(options, backend);
  console.log(JSON.stringify(result, null, 2));
} catch (error) {
  // What the user can fix (PyTorch missing, a model the importer refuses): the message, no stack.
  const expected = [TorchPeerError, ModelFileError, ModelLimitError, ModelDirError];
  if (!expected.some((type) => error instanceof type)) throw error;
  console.error(`bench:onnx: ${(error as Error).message}`);
  process.exitCode = 2;
}
