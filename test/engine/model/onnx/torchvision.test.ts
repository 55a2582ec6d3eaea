import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { type NpyArray, parseNpy } from '../../../../src/data/npy.js';
import { crossEntropyLoss } from '../../../../src/engine/attacks/losses.js';
import { loadOnnxClassifier } from '../../../../src/engine/model/onnx/index.js';

/**
 * torchvision's classifiers (Debian python3-torchvision 0.14) exported to ONNX by
 * scripts/torchvision-onnx.py into a temporary directory (random weights, BatchNorm statistics
 * calibrated on images, 10 classes, batch 4), imported, and checked against PyTorch on the script's
 * batch. The exports are generated here, never committed: the files run to tens of megabytes.
 *
 * The acceptance rule (docs/onnx.md, "torchvision classifiers against PyTorch"). The script also
 * runs the model in float64, whose values are exact to far below float32's resolution; PyTorch's
 * float32 values are one float32 evaluation of the function, ours another (other summation orders,
 * BatchNorm folded into the convolutions by the export). Distances are taken per image: for
 * probabilities the largest |difference|, for the cross-entropy input gradient the relative L2
 * error ||ours - exact|| / ||exact|| (sqrt(2 (1 - cosine)) for small errors), which weighs a patch
 * by its share of the gradient instead of letting its largest entry decide alone.
 *
 * - Rounding: two float32 evaluations of one function carry rounding errors of the same size, so
 *   ours must be no further from float64 than max(floor, K x PyTorch's float32 distance), that
 *   distance taken over the batch (the largest for probabilities, the median for gradients, which
 *   a kink flip in one of PyTorch's images leaves alone), with floors 1e-5 (probabilities) and 1e-3
 *   (gradients, the issue's tolerances) where PyTorch happens to be closer than rounding usually
 *   allows, and K = 4 for the different order and the folding (K only counts where PyTorch's
 *   distance is over floor / K: there ours was at most 3.2 times it, the image allowed below
 *   aside). The gradient's allowance is capped at FLIP, so a configuration whose float32
 *   evaluation is chaotic fails instead of passing anything (efficientnet_b0 at 32 pixels:
 *   PyTorch's float32 gradient is as far from float64 as it is long).
 * - Kinks: where a ReLU input lies within rounding of 0 (or a HardSwish input of +-3), either float32
 *   evaluation may take the other side and change the gradient over that unit's receptive field
 *   (docs/onnx.md, "Input gradients of large networks"); at these sizes one such unit moves a
 *   whole image's gradient by up to several percent, in ours (on the oneDNN kernels, not on the
 *   cpu backend for the same image) as in PyTorch's. Such a flip strikes an image here and there;
 *   a wrong op moves every image's gradient. So at most one image of the batch may miss the
 *   rounding bound, and it must still be within FLIP = 1e-1 (cosine similarity over 0.995). An
 *   image within the bound of PyTorch's float32 gradient does not count as missing it: both float32
 *   evaluations took the same side of every kink, the float64 run the other side of one.
 *
 * Figures per model: docs/benchmarks/onnx.md, "torchvision test".
 */
const PYTHON = '/usr/bin/python3';
const EXPORT_SCRIPT = path.join(import.meta.dirname, '../../../../scripts/torchvision-onnx.py');
const CLASSES = 10;
const BATCH = 4;
const K = 4;
const PROBABILITY_FLOOR = 1e-5;
const GRADIENT_FLOOR = 1e-3;
/** The most a kink flip is allowed to move one image's gradient (relative L2), and the cap on K x. */
const FLIP = 1e-1;

interface Case {
  model: string;
  size: number;
}

/**
 * The default set: every op family of torchvision's classifiers at the smallest size torchvision
 * exports and float32 evaluates stably, and few classes (the weights that remain are the features').
 */
const DEFAULT_CASES: Case[] = [
  { model: 'resnet18', size: 32 },
  { model: 'squeezenet1_1', size: 32 },
  { model: 'googlenet', size: 32 },
  { model: 'densenet121', size: 32 },
  { model: 'mobilenet_v2', size: 32 },
  // HardSwish, HardSigmoid, squeeze-excitation.
  { model: 'mobilenet_v3_small', size: 32 },
  // Channel shuffle: Reshape/Transpose on channel axes, Split.
  { model: 'shufflenet_v2_x1_0', size: 32 },
  // Grouped convolution. regnet_y_400mf at 64: at 32 its last stages are 1x1 maps whose BatchNorm
  // statistics come from a few values, and float32 evaluations differ by 3e-4 in probability.
  { model: 'regnet_y_400mf', size: 64 },
  { model: 'resnext50_32x4d', size: 32 },
  // ReduceMean, SiLU. efficientnet_b0 is ill-posed at 32 and 64 pixels (see above).
  { model: 'mnasnet1_0', size: 32 },
  { model: 'efficientnet_b0', size: 96 },
  // LayerNormalization (channels last), GELU (Erf), stochastic depth off in eval.
  { model: 'convnext_tiny', size: 32 },
  // Shifted windows: Pad, Roll (Slice/Concat), attention masks, MatMul with batch dims, Softmax.
  { model: 'swin_t', size: 32 },
  // Class token (Concat, Gather), MatMul with batch dims, Softmax: vit_b_16 at 32 pixels is 4
  // patches, with all of its 86M parameters (a 346 MB export).
  { model: 'vit_b_16', size: 32 },
  // torchvision's MaxVit class in the script's small configuration: maxvit_t's 7x7 partitions need
  // 224 pixels (`RATIO_TORCHVISION_ALL=1` does not run it).
  { model: 'small_maxvit', size: 32 },
];

/**
 * RATIO_TORCHVISION_ALL=1 adds every model above, alexnet and vgg11_bn at 224 (torch.onnx exports
 * their AdaptiveAvgPool2d to 6x6 / 7x7 only from a multiple of that size, and their fully-connected
 * layers hold 61M and 133M parameters).
 */
const ALL = process.env.RATIO_TORCHVISION_ALL === '1';
const CASES: Case[] = ALL
  ? [
      ...DEFAULT_CASES,
      ...[...DEFAULT_CASES.map((c) => c.model), 'alexnet', 'vgg11_bn']
        .filter((model) => !model.startsWith('small_'))
        .map((model) => ({ model, size: 224 })),
    ]
  : DEFAULT_CASES;

/** Why the cases cannot run here, or undefined when Debian's torch and torchvision import. */
function torchvisionMissing(): string | undefined {
  const run = spawnSync(PYTHON, ['-c', 'import torch, torchvision'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  const install = 'apt-get install python3-torch python3-torchvision; .ci/run does';
  if (run.error) return `${PYTHON} does not run (${install}): ${run.error.message}`;
  if (run.status !== 0) {
    const why = run.stderr.trim().split('\n').at(-1) ?? `exit status ${run.status}`;
    return `torch and torchvision do not import in ${PYTHON} (${install}): ${why}`;
  }
  return undefined;
}

const missing = torchvisionMissing();
const execFileAsync = promisify(execFile);

function npy(dir: string, file: string): NpyArray {
  return parseNpy(new Uint8Array(readFileSync(path.join(dir, file))), file);
}

/** Per image: the largest |a - b|, and ||a - b|| / ||b||. */
function distances(a: ArrayLike<number>, b: ArrayLike<number>, items: number) {
  expect(a.length).toBe(b.length);
  const per = b.length / items;
  return Array.from({ length: items }, (_, item) => {
    let max = 0;
    let squared = 0;
    let norm = 0;
    for (let i = item * per; i < (item + 1) * per; i++) {
      const d = a[i] - b[i];
      max = Math.max(max, Math.abs(d));
      squared += d * d;
      norm += b[i] * b[i];
    }
    return { max, relativeL2: Math.sqrt(squared / norm) };
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length / 2;
  return Number.isInteger(middle) ? (sorted[middle - 1] + sorted[middle]) / 2 : sorted[Math.floor(middle)];
}

const short = (values: number[]) => values.map((v) => v.toExponential(1)).join(', ');

/** The import's probabilities and input gradient (NCHW, as PyTorch's) on the script's batch. */
function runImport(dir: string): { probabilities: Float32Array; gradient: Float32Array } {
  const before = tf.memory().numTensors;
  // The CLI's limits on local files (docs/onnx.md, "Limits by place"): vit_b_16 is 346 MB.
  const classifier = loadOnnxClassifier(new Uint8Array(readFileSync(path.join(dir, 'model.onnx'))), {
    limits: { maxBytes: 4e9, maxParameters: 2e9, maxTensorElements: 2 ** 31 - 1, maxFlopsPerImage: 1e15 },
  });
  try {
    const input = npy(dir, 'input.npy');
    const labels = npy(dir, 'labels.npy');
    return tf.tidy(() => {
      const x = tf
        .tensor4d(input.data as Float32Array, input.shape as [number, number, number, number])
        .transpose([0, 2, 3, 1]) as tf.Tensor4D;
      const y = tf.tensor1d(Int32Array.from(labels.data), 'int32');
      const probabilities = tf.softmax(classifier.logits(x)).dataSync() as Float32Array;
      const gradient = tf
        .grad((image: tf.Tensor) => crossEntropyLoss(classifier.logits(image as tf.Tensor4D), y).sum())(x)
        .transpose([0, 3, 1, 2])
        .dataSync() as Float32Array;
      return { probabilities, gradient };
    });
  } finally {
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  }
}

describe('torchvision classifiers exported to ONNX, against PyTorch', () => {
  for (const { model, size } of CASES) {
    it(`${model} at ${size}x${size}`, async (context) => {
      if (missing) context.skip(missing);
      const dir = mkdtempSync(path.join(tmpdir(), `ratio-torchvision-${model}-`));
      try {
        const args = [EXPORT_SCRIPT, '--model', model, '--out', dir, '--size', String(size)];
        args.push('--classes', String(CLASSES), '--batch', String(BATCH), '--threads', '1');
        // -B: no __pycache__ left in the working tree.
        await execFileAsync(PYTHON, ['-B', ...args], { maxBuffer: 1 << 24 });
        const started = process.cpuUsage();
        const ours = runImport(dir);
        const used = process.cpuUsage(started);

        const p32 = npy(dir, 'probabilities.npy').data;
        const p64 = npy(dir, 'probabilities_float64.npy').data;
        const g32 = npy(dir, 'input_grad.npy').data;
        const g64 = npy(dir, 'input_grad_float64.npy').data;
        const probabilities = {
          oursVsPytorch: distances(ours.probabilities, p32, BATCH).map((d) => d.max),
          oursVsFloat64: distances(ours.probabilities, p64, BATCH).map((d) => d.max),
          pytorchVsFloat64: distances(p32, p64, BATCH).map((d) => d.max),
        };
        const gradient = {
          oursVsFloat64: distances(ours.gradient, g64, BATCH).map((d) => d.relativeL2),
          pytorchVsFloat64: distances(g32, g64, BATCH).map((d) => d.relativeL2),
          oursVsPytorch: distances(ours.gradient, g32, BATCH).map((d) => d.relativeL2),
        };
        console.info(
          `${model} ${size}px (import ${((used.user + used.system) / 1e6).toFixed(1)} s CPU): ` +
            `probabilities max |d| ours-PyTorch ${short(probabilities.oursVsPytorch)}, ` +
            `ours-float64 ${short(probabilities.oursVsFloat64)}, PyTorch-float64 ${short(probabilities.pytorchVsFloat64)}; ` +
            `gradient relative L2 ours-float64 ${short(gradient.oursVsFloat64)}, ` +
            `PyTorch-float64 ${short(gradient.pytorchVsFloat64)}, ours-PyTorch ${short(gradient.oursVsPytorch)}`,
        );

        // The model's rounding level as PyTorch's float32 evaluation shows it: the largest
        // probability distance (the forward pass is continuous in rounding), the median gradient
        // distance (a kink flip in PyTorch's evaluation of one image does not loosen the bound).
        const probabilityBound = Math.max(PROBABILITY_FLOOR, K * Math.max(...probabilities.pytorchVsFloat64));
        const gradientBound = Math.max(GRADIENT_FLOOR, Math.min(K * median(gradient.pytorchVsFloat64), FLIP));
        for (let i = 0; i < BATCH; i++) {
          expect(probabilities.oursVsFloat64[i], `${model} image ${i}: probabilities`).toBeLessThanOrEqual(
            probabilityBound,
          );
          expect(gradient.oursVsFloat64[i], `${model} image ${i}: input gradient`).toBeLessThanOrEqual(FLIP);
        }
        // An image where ours is within the bound of PyTorch's float32 gradient took the same side
        // of every kink as PyTorch's evaluation did: the float64 run took the other side of one.
        const offRounding = gradient.oursVsFloat64.flatMap((d, i) =>
          d > gradientBound && gradient.oursVsPytorch[i] > gradientBound ? [i] : [],
        );
        expect(
          offRounding.length,
          `${model}: images off the rounding bound ${gradientBound.toExponential(1)}: ${offRounding}`,
        ).toBeLessThanOrEqual(1);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 900_000);
  }
});
