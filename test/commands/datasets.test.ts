import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { run } from '../../src/commands/datasets.js';
import { DATA_DIR } from '../helpers/data.js';

describe('ratio datasets', () => {
  afterEach(() => vi.restoreAllMocks());

  it('info prints size, shape and class counts of a real file', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    expect(await run(['info', path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin')])).toBe(0);
    const report = JSON.parse(String(log.mock.calls[0][0]));
    expect(report.size).toBe(1000);
    expect(report.shape).toEqual([32, 32, 3]);
    expect(report.classes[0]).toEqual({ label: 0, name: 'airplane', count: 103 });
  });

  it('exits 2 with a message naming the problem on bad input', async () => {
    const error = vi.spyOn(console, 'error').mockImplementation(() => {});
    vi.spyOn(console, 'log').mockImplementation(() => {});
    expect(await run(['fetch', 'imagenet', '--dir', '/tmp/x'])).toBe(2);
    expect(String(error.mock.calls[0][0])).toMatch(
      /must be one of cifar10, cifar100, svhn, mnist, fashion-mnist/,
    );
    expect(await run(['info', '/no/such/file.bin'])).toBe(2);
    expect(String(error.mock.calls[1][0])).toMatch(/cannot read '\/no\/such\/file.bin'/);
  });
});
