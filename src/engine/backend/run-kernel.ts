import * as tf from '@tensorflow/tfjs';

/**
 * `tf.engine().runKernel` for the project's own kernels, typed: inputs may be bare TensorInfos (inside
 * another kernel; runKernel reads only their ids) and attributes any record.
 */
export function runKernel<T extends tf.Tensor | tf.Tensor[] = tf.Tensor>(
  kernelName: string,
  inputs: Record<string, tf.TensorInfo | undefined>,
  attrs: object = {},
): T {
  return tf
    .engine()
    .runKernel(kernelName, inputs as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as T;
}
