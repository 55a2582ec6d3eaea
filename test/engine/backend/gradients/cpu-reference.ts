import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import {
  useFastConvGradients,
  useStockConvGradients,
} from '../../../../src/engine/backend/gradients/register.js';

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

/** ||actual - expected|| / ||expected|| (L2 over all values), after checking the lengths agree. */
export function relativeError(actual: Float32Array, expected: Float32Array): number {
  expect(actual.length).toBe(expected.length);
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < expected.length; i++) {
    diff += (actual[i] - expected[i]) ** 2;
    norm += expected[i] ** 2;
  }
  return Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
}
