import { defineConfig } from 'vitest/config';

/**
 * Two projects: everything on the default backend (wasm here, tensorflow where tfjs-node is
 * installed), and the engine suite again on the pure-JavaScript `cpu` backend, so that every engine
 * computation (and the fast gradients in particular) is checked on two backends.
 */
export default defineConfig({
  test: {
    setupFiles: ['test/setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: { name: 'default', include: ['test/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: 'engine-cpu',
          include: ['test/engine/**/*.test.ts'],
          // The native kernels exist on wasm only; that file checks their absence elsewhere itself.
          // The torchvision models would take many minutes on the plain cpu backend; the small
          // PyTorch fixtures (fixtures.test.ts) check the importer there.
          exclude: [
            'test/engine/backend/gradients/native-conv.test.ts',
            'test/engine/model/onnx/torchvision.test.ts',
          ],
          env: { RATIO_BACKEND: 'cpu' },
        },
      },
      {
        extends: true,
        test: {
          // Where the oneDNN addon is built, `default` runs on it; this runs the kernel suites on the
          // wasm-native kernels that serve where it is absent.
          name: 'engine-wasm-native',
          include: [
            'test/engine/backend/gradients/**/*.test.ts',
            'test/engine/backend/backend.test.ts',
            'test/engine/backend/onednn.test.ts',
            'test/engine/backend/batch-norm.test.ts',
          ],
          env: { RATIO_KERNELS: 'wasm-native' },
        },
      },
    ],
  },
});
