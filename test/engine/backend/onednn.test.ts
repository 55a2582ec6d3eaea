import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { backendInfo } from '../../../src/engine/backend/backend.js';
import { fastConv2DGradConfig } from '../../../src/engine/backend/gradients/register.js';
import { loadAddon, parseKernelsChoice, parseThreads } from '../../../src/engine/backend/onednn/addon.js';
import {
  installOnednnKernels,
  ONEDNN_KERNEL_NAMES,
  onednnKernelsInstalled,
  uninstallOnednnKernels,
} from '../../../src/engine/backend/onednn/kernels.js';
import { Rng } from '../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './gradients/cpu-reference.js';

/**
 * The oneDNN kernels (src/engine/backend/onednn) against tfjs's cpu backend with its own kernels and gradients
 * (<= 1e-4 relative): forward, input and filter gradients over strides, paddings (same, valid,
 * explicit, asymmetric), dilations, depthwise, channel counts that fill no vector, batch 1; matrix
 * products with transposes, batch broadcasting, bias and activations; heap bounds checked natively.
 * Project `default` runs them with the addon; project `engine-wasm-native` (RATIO_KERNELS=wasm-native)
 * checks that the addon stays off there.
 */

const info = backendInfo();
const onOnednn = info.kernels === 'onednn';
const rng = new Rng(2026_12_01);
const TOLERANCE = 1e-4;

type Shape = number[];
type Compute = (inputs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

function values(result: tf.Tensor | tf.Tensor[]): Float32Array[] {
  return (Array.isArray(result) ? result : [result]).map((t) => t.dataSync() as Float32Array);
}

/** `compute` on random inputs of `shapes`, here and on the cpu reference: the largest relative error. */
async function errorAgainstCpu(shapes: Shape[], compute: Compute): Promise<number> {
  const data = shapes.map((shape) => rng.normals(shape.reduce((a, b) => a * b, 1)));
  const run = () => tf.tidy(() => values(compute(data.map((d, i) => tf.tensor(d, shapes[i])))));
  const actual = run();
  const expected = await onCpuWithStockGradients(run);
  expect(actual.length).toBe(expected.length);
  return Math.max(...actual.map((a, i) => relativeError(a, expected[i])));
}

type Pad = 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]];
const explicit = (top: number, bottom: number, left: number, right: number): Pad => [
  [0, 0],
  [top, bottom],
  [left, right],
  [0, 0],
];

interface ConvCase {
  x: Shape;
  filter: Shape;
  strides: number | [number, number];
  pad: Pad;
  dilations?: number;
}

const convCases: ConvCase[] = [
  { x: [2, 9, 9, 5], filter: [3, 3, 5, 7], strides: 1, pad: 'same' },
  { x: [1, 8, 8, 1], filter: [3, 3, 1, 17], strides: 2, pad: 'same' },
  { x: [2, 10, 11, 3], filter: [5, 5, 3, 4], strides: 3, pad: 'valid' },
  { x: [2, 11, 9, 17], filter: [2, 4, 17, 3], strides: [1, 2], pad: 'same' },
  { x: [1, 7, 8, 4], filter: [3, 2, 4, 5], strides: 2, pad: explicit(2, 0, 0, 3) },
  { x: [2, 6, 6, 16], filter: [3, 3, 16, 32], strides: 1, pad: explicit(1, 1, 1, 1) },
  { x: [3, 6, 7, 3], filter: [1, 1, 3, 16], strides: 2, pad: 'valid' },
  // libdnnl 2.6's 1x1 weight-gradient kernel wrote out of bounds here (a segfault: ResNet shortcuts).
  { x: [2, 56, 56, 8], filter: [1, 1, 8, 8], strides: 2, pad: 'valid' },
  { x: [1, 4, 4, 2], filter: [4, 4, 2, 3], strides: 1, pad: 'valid' },
];
const dilatedCases: ConvCase[] = [
  { x: [2, 11, 10, 3], filter: [3, 3, 3, 5], strides: 1, pad: 'same', dilations: 2 },
  { x: [1, 12, 12, 4], filter: [2, 3, 4, 6], strides: 1, pad: 'valid', dilations: 3 },
];
const label = (c: ConvCase) =>
  `x [${c.x}], filter [${c.filter}], strides ${c.strides}, pad ${JSON.stringify(c.pad)}, dilations ${c.dilations ?? 1}`;

function conv(c: ConvCase, x: tf.Tensor, filter: tf.Tensor): tf.Tensor4D {
  return tf.conv2d(x as tf.Tensor4D, filter as tf.Tensor4D, c.strides, c.pad, 'NHWC', c.dilations ?? 1);
}

function outputShape(c: ConvCase, depthwise = false): Shape {
  const conv = tf.backend_util.computeConv2DInfo(
    c.x as [number, number, number, number],
    c.filter as [number, number, number, number],
    c.strides,
    c.dilations ?? 1,
    c.pad,
    undefined,
    depthwise,
  );
  return [conv.batchSize, conv.outHeight, conv.outWidth, conv.outChannels];
}

/** The filter with (d - 1) zeros between taps: an undilated convolution with it is the dilated one. */
function spreadFilter(filter: tf.Tensor, d: number): tf.Tensor4D {
  const [kh, kw, ci, co] = filter.shape;
  const spread = tf.pad(tf.reshape(filter, [kh, 1, kw, 1, ci, co]), [
    [0, 0],
    [0, d - 1],
    [0, 0],
    [0, d - 1],
    [0, 0],
    [0, 0],
  ]);
  return tf.slice(tf.reshape(spread, [kh * d, kw * d, ci, co]) as tf.Tensor4D, 0, [
    (kh - 1) * d + 1,
    (kw - 1) * d + 1,
    ci,
    co,
  ]);
}

describe.runIf(onOnednn)('oneDNN kernels on wasm', () => {
  it('are reported with their threads (RATIO_THREADS, else every core) and registered', () => {
    const { addon } = loadAddon();
    expect(addon).not.toBeNull();
    expect(info.threads).toBe(parseThreads());
    expect(addon?.threads()).toBe(info.threads);
    expect(addon?.version()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(onednnKernelsInstalled()).toBe(true);
    expect(tf.getGradient(tf.Conv2D)).not.toBe(fastConv2DGradConfig);
  });

  it.each(convCases.map((c) => [label(c), c] as const))('Conv2D forward and gradients: %s', async (_, c) => {
    const weights = rng.normals(outputShape(c).reduce((a, b) => a * b, 1));
    const forwardError = await errorAgainstCpu([c.x, c.filter], ([x, filter]) => conv(c, x, filter));
    expect(forwardError).toBeLessThanOrEqual(TOLERANCE);
    const gradientError = await errorAgainstCpu([c.x, c.filter], ([x, filter]) =>
      tf.grads((a: tf.Tensor, b: tf.Tensor) =>
        tf.sum(tf.mul(conv(c, a, b), tf.tensor(weights, outputShape(c)))),
      )([x, filter]),
    );
    expect(gradientError).toBeLessThanOrEqual(TOLERANCE);
  });

  it.each(dilatedCases.map((c) => [label(c), c] as const))(
    'dilated Conv2D forward and gradients (tfjs has none: against the zero-spread filter): %s',
    async (_, c) => {
      const d = c.dilations ?? 1;
      const weightShape = outputShape(c);
      const weights = rng.normals(weightShape.reduce((a, b) => a * b, 1));
      const data = [c.x, c.filter].map((shape) => rng.normals(shape.reduce((a, b) => a * b, 1)));
      const loss = (x: tf.Tensor, filter: tf.Tensor, y: (x: tf.Tensor, f: tf.Tensor) => tf.Tensor) =>
        tf.sum(tf.mul(y(x, filter), tf.tensor(weights, weightShape)));
      const actual = tf.tidy(() => {
        const [x, filter] = [tf.tensor(data[0], c.x), tf.tensor(data[1], c.filter)];
        return values([
          conv(c, x, filter),
          ...tf.grads((a: tf.Tensor, b: tf.Tensor) => loss(a, b, (p, q) => conv(c, p, q)))([x, filter]),
        ]);
      });
      const expected = await onCpuWithStockGradients(() =>
        tf.tidy(() => {
          const [x, filter] = [tf.tensor(data[0], c.x), tf.tensor(data[1], c.filter)];
          const undilated = (p: tf.Tensor, q: tf.Tensor) =>
            tf.conv2d(p as tf.Tensor4D, spreadFilter(q, d), c.strides, c.pad);
          return values([
            undilated(x, filter),
            ...tf.grads((a: tf.Tensor, b: tf.Tensor) => loss(a, b, undilated))([x, filter]),
          ]);
        }),
      );
      for (let i = 0; i < 3; i++)
        expect(relativeError(actual[i], expected[i]), `output ${i}`).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it.each(['linear', 'relu', 'relu6', 'leakyrelu', 'elu', 'sigmoid', 'prelu'] as const)(
    'FusedConv2D with a bias and %s matches conv + bias + activation',
    async (activation) => {
      const c = convCases[1];
      const shapes = [c.x, c.filter, [c.filter[3]], [c.filter[3]]];
      const error = await errorAgainstCpu(shapes, ([x, filter, bias, alpha]) =>
        tf.fused.conv2d({
          x: x as tf.Tensor4D,
          filter: filter as tf.Tensor4D,
          strides: c.strides,
          pad: c.pad,
          bias,
          activation,
          preluActivationWeights: activation === 'prelu' ? alpha : undefined,
          leakyreluAlpha: 0.1,
        }),
      );
      expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  const depthwiseCases: ConvCase[] = [
    { x: [2, 9, 9, 5], filter: [3, 3, 5, 1], strides: 1, pad: 'same' },
    { x: [1, 8, 7, 3], filter: [3, 3, 3, 2], strides: 2, pad: 'valid' },
    { x: [2, 7, 8, 17], filter: [2, 3, 17, 1], strides: 1, pad: explicit(1, 0, 2, 1) },
  ];
  it.each(depthwiseCases.map((c) => [label(c), c] as const))(
    'depthwise forward and gradients: %s',
    async (_, c) => {
      const shape = outputShape(c, true);
      const weights = rng.normals(shape.reduce((a, b) => a * b, 1));
      const depthwise = (x: tf.Tensor, f: tf.Tensor) =>
        tf.depthwiseConv2d(x as tf.Tensor4D, f as tf.Tensor4D, c.strides, c.pad);
      const error = await errorAgainstCpu([c.x, c.filter], ([x, filter]) => [
        depthwise(x, filter),
        ...tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(tf.mul(depthwise(a, b), tf.tensor(weights, shape))),
        )([x, filter]),
      ]);
      expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('dilated depthwise forward matches the zero-spread filter', async () => {
    const c: ConvCase = { x: [2, 10, 9, 3], filter: [3, 3, 3, 2], strides: 1, pad: 'same', dilations: 2 };
    const data = [c.x, c.filter].map((shape) => rng.normals(shape.reduce((a, b) => a * b, 1)));
    const actual = tf.tidy(() =>
      values(
        tf.depthwiseConv2d(
          tf.tensor4d(data[0], c.x as never),
          tf.tensor4d(data[1], c.filter as never),
          1,
          'same',
          'NHWC',
          2,
        ),
      ),
    );
    const expected = await onCpuWithStockGradients(() =>
      tf.tidy(() =>
        values(
          tf.depthwiseConv2d(
            tf.tensor4d(data[0], c.x as never),
            spreadFilter(tf.tensor(data[1], c.filter), 2),
            1,
            'same',
          ),
        ),
      ),
    );
    expect(relativeError(actual[0], expected[0])).toBeLessThanOrEqual(TOLERANCE);
  });

  it.each([
    { a: [7, 5], b: [5, 3], transposeA: false, transposeB: false },
    { a: [5, 7], b: [3, 5], transposeA: true, transposeB: true },
    { a: [4, 7, 5], b: [4, 5, 17], transposeA: false, transposeB: false },
    { a: [2, 3, 5, 7], b: [2, 3, 17, 5], transposeA: true, transposeB: true },
  ])('matMul a [$a] b [$b] transposes $transposeA/$transposeB, and its gradients', async (c) => {
    const error = await errorAgainstCpu([c.a, c.b], ([a, b]) => {
      const product = (p: tf.Tensor, q: tf.Tensor) => tf.matMul(p, q, c.transposeA, c.transposeB);
      return [
        product(a, b),
        ...tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.square(product(p, q))))([a, b]),
      ];
    });
    expect(error).toBeLessThanOrEqual(TOLERANCE);
  });

  // tfjs's BatchMatMul gradient does not sum over broadcast batches (an error on every backend): forward only.
  it.each([
    { a: [4, 7, 5], b: [5, 3], transposeA: false, transposeB: false },
    { a: [1, 7, 5], b: [6, 3, 5], transposeA: false, transposeB: true },
    { a: [3, 1, 5, 7], b: [3, 1, 5, 2], transposeA: true, transposeB: false },
  ])('matMul with a broadcast batch: a [$a] b [$b]', async (c) => {
    const error = await errorAgainstCpu([c.a, c.b], ([a, b]) => tf.matMul(a, b, c.transposeA, c.transposeB));
    expect(error).toBeLessThanOrEqual(TOLERANCE);
  });

  it.each(['linear', 'relu', 'elu', 'sigmoid'] as const)(
    'fused matMul with a bias and %s',
    async (activation) => {
      const error = await errorAgainstCpu([[6, 9], [9, 13], [13]], ([a, b, bias]) =>
        tf.fused.matMul({ a, b, bias, activation }),
      );
      expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('a dense layer trains as on cpu (fused matMul gradient through the BatchMatMul kernel)', async () => {
    const error = await errorAgainstCpu([[5, 8], [8, 3], [3]], ([x, w, b]) =>
      tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) =>
        tf.sum(tf.square(tf.fused.matMul({ a: p, b: q, bias: r, activation: 'relu' }))),
      )([x, w, b]),
    );
    expect(error).toBeLessThanOrEqual(TOLERANCE);
  });

  it('leaves numTensors and a bystander tensor on the heap as they were', () => {
    const bystander = tf.tensor1d(rng.normals(4096));
    const before = Array.from(bystander.dataSync());
    const x = tf.randomNormal([3, 10, 10, 6]) as tf.Tensor4D;
    const filter = tf.randomNormal([3, 3, 6, 9]) as tf.Tensor4D;
    const step = () =>
      tf.tidy(() => {
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(tf.relu(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 2, 'same'))),
        )([x, filter]);
        return [dx.sum(), dw.sum(), tf.matMul(tf.reshape(x, [30, 60]), tf.ones([60, 4])).sum()];
      });
    tf.dispose(step());
    const memory = tf.memory();
    for (let i = 0; i < 3; i++) tf.dispose(step());
    expect(tf.memory().numTensors).toBe(memory.numTensors);
    expect(tf.memory().numBytes).toBe(memory.numBytes);
    expect(Array.from(bystander.dataSync())).toEqual(before);
    tf.dispose([bystander, x, filter]);
  });

  it('rejects a dy of the wrong shape with a clear error', () => {
    const dy = tf.zeros([1, 4, 4, 5]);
    const filter = tf.zeros([3, 3, 2, 4]);
    expect(() =>
      tf.engine().runKernel(tf.Conv2DBackpropInput, { dy, filter }, {
        inputShape: [1, 4, 4, 2],
        strides: 1,
        pad: 'same',
        dataFormat: 'NHWC',
      } as never),
    ).toThrow("Conv2DBackpropInput: 'dy' must have the convolution's output shape [1,4,4,4], got [1,4,4,5]");
    tf.dispose([dy, filter]);
  });

  it('native code checks every offset and size against the heap: a JavaScript error, never a crash', () => {
    const { addon } = loadAddon();
    if (!addon) throw new Error('the addon did not load');
    // x [1, 4, 4, 2] * filter [3, 3, 2, 4], same: 32 + 72 + 64 floats.
    const geometry = [1, 4, 4, 2, 4, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    const heap = new ArrayBuffer(4 * (32 + 72 + 64));
    const [x, w, y] = [0, 4 * 32, 4 * (32 + 72)];
    addon.convForward(heap, geometry, x, w, -1, y, 0, 0);
    const call =
      (args: Partial<{ x: number; w: number; y: number; bias: number; geometry: number[] }>) => () =>
        addon.convForward(
          heap,
          args.geometry ?? geometry,
          args.x ?? x,
          args.w ?? w,
          args.bias ?? -1,
          args.y ?? y,
          0,
          0,
        );
    expect(call({ y: y + 4 })).toThrow(
      /'dst' \(64 float32 at byte 420\) does not lie inside the wasm heap \(672 bytes\)/,
    );
    expect(call({ x: 1e12 })).toThrow(RangeError);
    expect(call({ w: 2 })).toThrow("offset of 'weights' must be a non-negative multiple of 4");
    expect(call({ x: -4 })).toThrow(RangeError);
    expect(call({ bias: heap.byteLength })).toThrow(/'bias'/);
    expect(call({ x: 0.5 })).toThrow(/'src' must be an integer/);
    // Sizes that do not follow from the geometry, or would overflow.
    expect(call({ geometry: [1, 4, 4, 2, 5, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1] })).toThrow(
      'output size does not match input, filter, strides, dilations and pads',
    );
    const huge = 2 ** 30;
    expect(
      call({ geometry: [huge, huge, huge, huge, huge, huge, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1] }),
    ).toThrow('tensor size overflows');
    expect(call({ geometry: [1, 4, 4] })).toThrow("'geometry' must have 18 entries");
    expect(() => addon.convForward(new Float32Array(4) as never, geometry, x, w, -1, y, 0, 0)).toThrow(
      TypeError,
    );
    expect(() => addon.matMul(heap, [1, 1, 8, 8, 8, 0, 0], 0, 0, -1, 4 * 160, 0, 0)).toThrow(/'c'/);
    expect(() => addon.convBackwardWeights(heap, geometry, x, y, heap.byteLength - 4)).toThrow(
      /'diffWeights'/,
    );
    // On the real heap: one float past its end.
    const wasmHeap = (tf.backend() as unknown as { wasm: { asm: { memory: WebAssembly.Memory } } }).wasm.asm
      .memory.buffer;
    expect(() => addon.convBackwardData(wasmHeap, geometry, 0, 0, wasmHeap.byteLength - 4)).toThrow(
      /'diffSrc'/,
    );
  });

  it('can be taken off and put back: the previous kernels return and are the fallbacks', () => {
    const ours = ONEDNN_KERNEL_NAMES.map((name) => tf.getKernel(name, 'wasm'));
    const addon = uninstallOnednnKernels();
    expect(addon).not.toBeNull();
    expect(tf.getGradient(tf.Conv2D)).toBe(fastConv2DGradConfig);
    const previous = ONEDNN_KERNEL_NAMES.map((name) => tf.getKernel(name, 'wasm'));
    for (const [i, kernel] of previous.entries()) expect(kernel).not.toBe(ours[i]);
    if (addon) installOnednnKernels(addon);
    expect(onednnKernelsInstalled()).toBe(true);
  });
});

describe('RATIO_KERNELS and RATIO_THREADS', () => {
  it('are parsed strictly, naming the variable', () => {
    expect(parseKernelsChoice(undefined)).toBeUndefined();
    expect(parseKernelsChoice(' ONEDNN ')).toBe('onednn');
    expect(parseKernelsChoice('wasm-native')).toBe('wasm-native');
    expect(() => parseKernelsChoice('mkl')).toThrow(
      "'RATIO_KERNELS' must be one of onednn, wasm-native; got 'mkl'",
    );
    expect(parseThreads('')).toBe(availableParallelism());
    expect(parseThreads('3')).toBe(3);
    for (const bad of ['0', '-1', '1.5', 'two']) {
      expect(() => parseThreads(bad)).toThrow(
        `'RATIO_THREADS' must be an integer from 1 to 4096; got '${bad}'`,
      );
    }
  });

  it('an addon that is not built is reported as such, not thrown', () => {
    const loaded = loadAddon(new URL('file:///nonexistent/ratio_onednn.node'));
    expect(loaded.addon).toBeNull();
    expect(loaded).toMatchObject({ reason: expect.stringContaining('is not built') });
  });

  it('RATIO_KERNELS=wasm-native keeps the addon off', () => {
    if (process.env.RATIO_KERNELS !== 'wasm-native') return;
    expect(info.kernels).toBe(info.name === 'wasm' ? 'wasm-native' : 'stock');
    expect(onednnKernelsInstalled()).toBe(false);
  });

  it('an unknown RATIO_KERNELS is rejected before any backend starts', async () => {
    vi.resetModules();
    vi.stubEnv('RATIO_KERNELS', 'mkl');
    try {
      const fresh = await import('../../../src/engine/backend/backend.js');
      await expect(fresh.initBackend()).rejects.toThrow("'RATIO_KERNELS' must be one of onednn, wasm-native");
    } finally {
      vi.unstubAllEnvs();
    }
  });
});
