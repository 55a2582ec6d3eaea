import * as tf from '@tensorflow/tfjs';
import { useFastConvGradients, useStockConvGradients } from '../../../src/engine/gradients/register.js';

/**
 * Runs `run` on the cpu backend with tfjs's own gradients and kernels (the reference the fast ones
 * are checked against), then restores the backend under test and its fast gradients.
 */
export async function onCpuWithStockGradients<T>(run: () => T): Promise<T> {
  const original = tf.getBackend();
  useStockConvGradients();
  await tf.setBackend('cpu');
  try {
    return run();
  } finally {
    await tf.setBackend(original);
    useFastConvGradients(original);
  }
}
