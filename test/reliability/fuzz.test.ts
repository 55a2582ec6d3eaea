import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditQueue } from '../../src/jobs/audit/registry.js';
import type { ServiceApp } from '../../src/routes/context.js';
import {
  type FuzzFixtures,
  fuzzAllRoutes,
  fuzzApp,
  loadFuzzFixtures,
  memorySnapshot,
} from './fuzz-harness.js';

/** A small seeded sample of the reliability fuzz (the full 10,000+ cases: `npm run test:reliability`). */

let fixtures: FuzzFixtures;
let service: { app: ServiceApp; audits: AuditQueue; dispose: () => void };

beforeAll(async () => {
  fixtures = await loadFuzzFixtures();
  service = await fuzzApp(fixtures);
});
afterAll(() => service?.dispose());

describe('fuzzing every route (seeded sample)', () => {
  it('answers 2xx or 4xx problem+json to 300 random and mutated requests; tensors back to start', async () => {
    const before = memorySnapshot();
    const stats = await fuzzAllRoutes(service.app, service.audits, fixtures, { numRuns: 300, seed: 17 });
    const total = Object.values(stats.cases).reduce((a, b) => a + b, 0);
    expect(total).toBe(300);
    // Every route family is reached and some requests succeed.
    expect(Object.keys(stats.cases).filter((route) => !route.endsWith('other'))).toHaveLength(4);
    expect(Object.entries(stats.statuses).some(([s, n]) => s.startsWith('2') && n > 0)).toBe(true);
    expect(Object.keys(stats.statuses).every((s) => Number(s) < 500)).toBe(true);
    const after = memorySnapshot();
    expect(after.tensors).toBe(before.tensors);
    expect(tf.memory().numBytes).toBe(before.bytes);
    expect((await service.app.request('/health/ready')).status).toBe(200);
  });
});
