import type * as tf from '@tensorflow/tfjs';

/**
 * Multiply-adds x 2 of one image through the convolutions and dense layers of a layers model: what
 * ../shared/peer/torch_bench.py's flops_per_image counts, so GFLOP/s compare across both.
 */
export function convAndDenseFlops(network: tf.LayersModel): number {
  let flops = 0;
  for (const layer of network.layers) {
    const className = layer.getClassName();
    if (className !== 'Conv2D' && className !== 'Dense') continue;
    const output = layer.outputShape as number[];
    const input = (layer.input as tf.SymbolicTensor).shape;
    const inChannels = Number(input[input.length - 1]);
    if (className === 'Conv2D') {
      const [kh, kw] = (layer.getConfig().kernelSize as number[]) ?? [1, 1];
      flops += 2 * output[1] * output[2] * output[3] * kh * kw * inChannels;
    } else {
      flops += 2 * inChannels * output[output.length - 1];
    }
  }
  return flops;
}
