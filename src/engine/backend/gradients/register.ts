import * as tf from '@tensorflow/tfjs';
import type { OnednnAddon } from '../onednn/addon.js';
import { installOnednnKernels, uninstallOnednnKernels } from '../onednn/kernels.js';
import { type ConvPad, conv2dFilterGradient, conv2dInputGradient } from './conv2d.js';
import { wasmMaxPoolGradConfig } from './max-pool-wasm.js';
import { nativeConv2D, nativeFilterGradient } from './native-conv.js';
import { asTensor, wasmKernelOverrides } from './wasm-kernels.js';

/**
 * Installs the forward-convolution Conv2D gradients. Two routes lead to a convolution gradient in
 * tfjs, and both are covered:
 * - the `Conv2D` gradient (plain `tf.conv2d`, and tf.layers convolutions with a ReLU while taping),
 *   replaced with `tf.registerGradient`; the gradient registry is global, so the last registration
 *   wins and ours must run after `@tensorflow/tfjs` registered its own (it does so on import);
 * - `tf.fused.conv2d` with a linear activation (tf.layers convolutions without activation, e.g.
 *   before BatchNorm) computes its gradient by calling the `Conv2DBackpropInput` and
 *   `Conv2DBackpropFilter` kernels directly, so those kernels are replaced per backend.
 * Both routes compute the filter gradient natively on wasm (native-conv.ts) and as a
 * forward convolution (conv2d.ts) elsewhere.
 */

type Conv2DBackpropInputAttrs = tf.Conv2DBackpropInputAttrs;
type Conv2DBackpropFilterAttrs = tf.Conv2DBackpropFilterAttrs;
type Conv2DAttrs = tf.Conv2DAttrs;

const stockConv2DGradient: tf.GradConfig = tf.getGradient(tf.Conv2D);
const stockMeanGradient: tf.GradConfig = tf.getGradient(tf.Mean);
/** Stock kernels by backend, then kernel name (undefined: the backend had none). */
const stockKernels = new Map<string, Map<string, tf.KernelConfig | undefined>>();
const fastKernelBackends = new Set<string>();
let fastGradientInstalled = false;
/** The oneDNN addon `useStockConvGradients` took off wasm, put back by `useFastConvGradients('wasm')`. */
let suspendedOnednn: OnednnAddon | null = null;

function asTensor4D(info: tf.TensorInfo): tf.Tensor4D {
  return asTensor(info) as tf.Tensor4D;
}

function hasUnitDilations(dilations: number | [number, number] | undefined): boolean {
  if (dilations === undefined) return true;
  return typeof dilations === 'number' ? dilations === 1 : dilations[0] === 1 && dilations[1] === 1;
}

/**
 * The filter gradient: on wasm the native kernel (native-conv.ts), elsewhere and while an
 * outer tape records (second derivatives need differentiable ops) the forward-convolution one.
 */
const filterGradient: typeof conv2dFilterGradient = (...args) =>
  nativeFilterGradient(...args) ?? conv2dFilterGradient(...args);

export const fastConv2DGradConfig: tf.GradConfig = {
  kernelName: tf.Conv2D,
  inputsToSave: ['x', 'filter'],
  gradFunc: (dy, saved, attrs) => {
    const [x, filter] = saved as [tf.Tensor4D, tf.Tensor4D];
    const { dilations, strides, pad, dataFormat, dimRoundingMode } = attrs as unknown as Conv2DAttrs;
    // Channels-first and dilated convolutions keep the stock gradient (which rejects dilation too).
    if (dataFormat === 'NCHW' || !hasUnitDilations(dilations)) {
      return stockConv2DGradient.gradFunc(dy, saved, attrs);
    }
    const upstream = dy as tf.Tensor4D;
    return {
      x: () => conv2dInputGradient(x.shape, upstream, filter, strides, pad as ConvPad, dimRoundingMode),
      filter: () => filterGradient(x, upstream, filter.shape, strides, pad as ConvPad, dimRoundingMode),
    };
  },
};

/**
 * The Mean gradient without tfjs's `ones(x.shape)` (built in JavaScript and copied to the backend on
 * every call, a global average pool's whole input each step): dy / n broadcast to x.
 */
export const meanGradConfig: tf.GradConfig = {
  kernelName: tf.Mean,
  inputsToSave: ['x'],
  gradFunc: (dy, saved, attrs) => {
    const [x] = saved;
    const { axis } = attrs as unknown as tf.MeanAttrs;
    const axes = tf.util.parseAxisParam(axis, x.shape);
    const expandedShape = x.shape.map((size, i) => (axes.includes(i) ? 1 : size));
    const reduceSize = axes.reduce((product, a) => product * x.shape[a], 1);
    return {
      // fill runs on the backend; broadcastTo would run tfjs-backend-wasm's Tile, slower than the ones.
      x: () => tf.mul(tf.reshape(dy as tf.Tensor, expandedShape), tf.fill(x.shape, 1 / reduceSize)),
    };
  },
};

function fastBackpropInputKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Conv2DBackpropInput,
    backendName,
    kernelFunc: (args) => {
      const attrs = args.attrs as unknown as Conv2DBackpropInputAttrs;
      const stock = stockKernels.get(backendName)?.get(tf.Conv2DBackpropInput);
      if (attrs.dataFormat === 'NCHW' && stock) return stock.kernelFunc(args);
      return tf.tidy(() =>
        conv2dInputGradient(
          attrs.inputShape,
          asTensor4D(args.inputs.dy!),
          asTensor4D(args.inputs.filter!),
          attrs.strides,
          attrs.pad as ConvPad,
          attrs.dimRoundingMode,
        ),
      );
    },
  };
}

function fastBackpropFilterKernel(backendName: string): tf.KernelConfig {
  return {
    kernelName: tf.Conv2DBackpropFilter,
    backendName,
    kernelFunc: (args) => {
      const attrs = args.attrs as unknown as Conv2DBackpropFilterAttrs;
      const stock = stockKernels.get(backendName)?.get(tf.Conv2DBackpropFilter);
      if (attrs.dataFormat === 'NCHW') {
        if (stock) return stock.kernelFunc(args);
        throw new Error(`Conv2DBackpropFilter on '${backendName}' supports NHWC only, got NCHW`);
      }
      const { x, dy } = args.inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
      return tf.tidy(() =>
        filterGradient(
          asTensor4D(x),
          asTensor4D(dy),
          attrs.filterShape,
          attrs.strides,
          attrs.pad as ConvPad,
          attrs.dimRoundingMode,
        ),
      );
    },
  };
}

/**
 * Conv2D and FusedConv2D on wasm through the native correlation (native-conv.ts), measured 10-15%
 * faster than XNNPACK on smallCnn's layers; NCHW, dilations, activations other than linear/ReLU and
 * PReLU weights keep tfjs-backend-wasm's own kernel.
 */
function nativeForwardConvKernel(kernelName: typeof tf.Conv2D | typeof tf.FusedConv2D): tf.KernelConfig {
  return {
    kernelName,
    backendName: 'wasm',
    kernelFunc: (args) => {
      const stock = stockKernels.get('wasm')?.get(kernelName);
      if (!stock) throw new Error(`tfjs-backend-wasm has no '${kernelName}' kernel to fall back to`);
      const attrs = args.attrs as unknown as tf.FusedConv2DAttrs;
      const { x, filter, bias, preluActivationWeights } = args.inputs as Record<
        string,
        tf.TensorInfo | undefined
      >;
      const activation = attrs.activation ?? 'linear';
      if (
        attrs.dataFormat === 'NCHW' ||
        !hasUnitDilations(attrs.dilations) ||
        (activation !== 'linear' && activation !== 'relu') ||
        preluActivationWeights
      ) {
        return stock.kernelFunc(args);
      }
      // Kernel inputs are usually Tensors already; only the wrappers made here are disposed here (not
      // tf.tidy + tf.keep: a kept result would escape every enclosing tidy of the caller).
      const wrappers: tf.Tensor[] = [];
      const tensorOf = (info: tf.TensorInfo): tf.Tensor => {
        if (info instanceof tf.Tensor) return info;
        const wrapper = asTensor(info);
        wrappers.push(wrapper);
        return wrapper;
      };
      let result: tf.Tensor4D | null;
      try {
        result = nativeConv2D(tensorOf(x!) as tf.Tensor4D, tensorOf(filter!) as tf.Tensor4D, {
          strides: attrs.strides,
          pad: attrs.pad as ConvPad,
          dimRoundingMode: attrs.dimRoundingMode,
          bias: bias ? tensorOf(bias) : undefined,
          activation,
        });
      } finally {
        tf.dispose(wrappers);
      }
      return result ?? stock.kernelFunc(args);
    },
  };
}

function findKernel(kernelName: string, backendName: string): tf.KernelConfig | undefined {
  return tf.getKernelsForBackend(backendName).find((config) => config.kernelName === kernelName);
}

function replaceKernel(config: tf.KernelConfig): void {
  let saved = stockKernels.get(config.backendName);
  if (!saved) {
    saved = new Map();
    stockKernels.set(config.backendName, saved);
  }
  if (!saved.has(config.kernelName)) {
    saved.set(config.kernelName, findKernel(config.kernelName, config.backendName));
  }
  // registerKernel warns when it overwrites; unregistering first keeps the log quiet.
  if (findKernel(config.kernelName, config.backendName)) {
    tf.unregisterKernel(config.kernelName, config.backendName);
  }
  tf.registerKernel(config);
}

/**
 * Installs the fast Conv2D and Mean gradients (global) and the fast backprop kernels on `backendName`
 * (on wasm also a correct and faster MaxPoolGrad, see max-pool-wasm.ts, and the Identity, Cast and
 * Sum kernels of wasm-kernels.ts).
 * Idempotent; `useStockConvGradients` undoes it (the benchmark compares both in one run), the oneDNN
 * kernels included (../onednn/kernels.ts), which this call puts back on wasm.
 */
export function useFastConvGradients(backendName: string): void {
  if (!fastGradientInstalled) {
    tf.registerGradient(fastConv2DGradConfig);
    tf.registerGradient(meanGradConfig);
    fastGradientInstalled = true;
  }
  if (!fastKernelBackends.has(backendName)) {
    replaceKernel(fastBackpropInputKernel(backendName));
    replaceKernel(fastBackpropFilterKernel(backendName));
    if (backendName === 'wasm') {
      replaceKernel(wasmMaxPoolGradConfig);
      replaceKernel(nativeForwardConvKernel(tf.Conv2D));
      replaceKernel(nativeForwardConvKernel(tf.FusedConv2D));
      const stockKernel = (kernelName: string) => stockKernels.get('wasm')?.get(kernelName);
      for (const config of wasmKernelOverrides(stockKernel)) replaceKernel(config);
    }
    fastKernelBackends.add(backendName);
  }
  // The oneDNN kernels sit on top of the ones above (their fallbacks), so they go back on last.
  if (backendName === 'wasm' && suspendedOnednn) {
    installOnednnKernels(suspendedOnednn);
    suspendedOnednn = null;
  }
}

/** Restores tfjs's own Conv2D gradient and every replaced kernel (for comparisons and tests). */
export function useStockConvGradients(): void {
  suspendedOnednn ??= uninstallOnednnKernels();
  if (fastGradientInstalled) {
    tf.registerGradient(stockConv2DGradient);
    tf.registerGradient(stockMeanGradient);
    fastGradientInstalled = false;
  }
  for (const backendName of fastKernelBackends) {
    for (const [kernelName, stock] of stockKernels.get(backendName) ?? []) {
      tf.unregisterKernel(kernelName, backendName);
      if (stock) tf.registerKernel(stock);
    }
  }
  fastKernelBackends.clear();
}
