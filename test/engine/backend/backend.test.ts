import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { BACKEND_NAMES, backendInfo, initBackend } from '../../../src/engine/backend/backend.js';
import { fastConv2DGradConfig } from '../../../src/engine/backend/gradients/register.js';
import { parseThreads } from '../../../src/engine/backend/onednn/addon.js';
import { onednnKernelsInstalled } from '../../../src/engine/backend/onednn/kernels.js';

async function importable(specifier: string): Promise<boolean> {
  try {
    await import(specifier);
    return true;
  } catch {
    return false;
  }
}

/** A fresh copy of backend.ts, with no backend selected yet (tfjs itself stays shared). */
async function freshBackendModule(): Promise<typeof import('../../../src/engine/backend/backend.js')> {
  vi.resetModules();
  return import('../../../src/engine/backend/backend.js');
}

describe('initBackend', () => {
  it('selects the forced backend, else tensorflow when importable, else wasm', async () => {
    const info = await initBackend();
    const forced = process.env.RATIO_BACKEND;
    const tensorflowAvailable =
      (await importable('@tensorflow/tfjs-node-gpu')) || (await importable('@tensorflow/tfjs-node'));
    const expected = forced || (tensorflowAvailable ? 'tensorflow' : 'wasm');
    expect(info.name).toBe(expected);
    expect(tf.getBackend()).toBe(info.name);
    expect(BACKEND_NAMES).toContain(info.name);
  });

  it('reports threads, simd and the tfjs version', async () => {
    const info = await initBackend();
    expect(info.version).toBe(tf.version.tfjs);
    expect(Number.isInteger(info.threads) && info.threads >= 1).toBe(true);
    if (info.name === 'wasm') {
      // Node 20 validates the SIMD probe; threads stay 1 (docs/engine.md, "Threads in wasm").
      expect(info.simd).toBe(true);
      const wasm = await import('@tensorflow/tfjs-backend-wasm');
      // The oneDNN kernels run on RATIO_THREADS (default every core) OpenMP threads.
      expect(info.threads).toBe(info.kernels === 'onednn' ? parseThreads() : wasm.getThreadsCount());
    }
    if (info.name === 'cpu') expect(info).toMatchObject({ threads: 1, simd: false });
  });

  it('selects once: later calls return the first choice, whatever they ask for', async () => {
    const first = await initBackend();
    const other = first.name === 'cpu' ? 'wasm' : 'cpu';
    expect(await initBackend(other)).toBe(first);
    expect(backendInfo()).toBe(first);
    expect(tf.getBackend()).toBe(first.name);
  });

  it('installs the fast Conv2D gradients on wasm and cpu', async () => {
    const info = await initBackend();
    if (info.name === 'tensorflow') return expect(info.fastGradients).toBe(false);
    expect(info.fastGradients).toBe(true);
    // The oneDNN kernels install their own Conv2D gradient over it (test/engine/backend/onednn.test.ts).
    if (info.kernels !== 'onednn') expect(tf.getGradient(tf.Conv2D)).toBe(fastConv2DGradConfig);
    // The filter-gradient kernel that stock wasm lacks now exists on the selected backend.
    const kernels = tf.getKernelsForBackend(info.name).map((kernel) => kernel.kernelName);
    expect(kernels).toContain(tf.Conv2DBackpropFilter);
    expect(kernels).toContain(tf.Conv2DBackpropInput);
    // The native kernels are reported where they run: on wasm, and nowhere else.
    expect(info.nativeKernels).toBe(info.name === 'wasm');
    expect(info.kernels).toBe(
      info.name !== 'wasm' ? 'stock' : onednnKernelsInstalled() ? 'onednn' : 'wasm-native',
    );
  });

  it('rejects an unknown RATIO_BACKEND, naming the variable and the choices', async () => {
    const fresh = await freshBackendModule();
    await expect(fresh.initBackend('gpu')).rejects.toThrow(
      "'RATIO_BACKEND' must be one of tensorflow, wasm, cpu; got 'gpu'",
    );
    expect(() => fresh.backendInfo()).toThrow('initBackend() has not been called');
  });

  it('fails clearly when the forced backend is not available', async () => {
    if ((await importable('@tensorflow/tfjs-node-gpu')) || (await importable('@tensorflow/tfjs-node')))
      return;
    const fresh = await freshBackendModule();
    await expect(fresh.initBackend('tensorflow')).rejects.toThrow(
      /RATIO_BACKEND=tensorflow is not available: .*@tensorflow\/tfjs-node-gpu.*@tensorflow\/tfjs-node/,
    );
    // The process keeps its backend.
    expect(tf.getBackend()).toBe(backendInfo().name);
  });
});
