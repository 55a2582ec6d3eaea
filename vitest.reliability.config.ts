import { defineConfig } from 'vitest/config';

/**
 * `npm run test:reliability`: the long reliability suite (fuzz over every route with 10,000+ cases,
 * invalid uploads, load against the real server) that writes docs/reliability.md. Not part of
 * `npm test`, which runs a small seeded sample of the same fuzz (test/reliability/fuzz.test.ts).
 */
export default defineConfig({
  test: {
    name: 'reliability',
    include: ['test/reliability/**/*.reliability.ts'],
    setupFiles: ['test/setup.ts'],
    testTimeout: 30 * 60_000,
    hookTimeout: 5 * 60_000,
    pool: 'forks',
    // Forced GC between phases tells a leak from garbage.
    execArgv: ['--expose-gc'],
    fileParallelism: false,
  },
});
