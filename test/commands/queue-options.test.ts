import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { run as audit } from '../../src/commands/audit.js';
import { run as worker } from '../../src/commands/worker.js';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';

/**
 * The queue options of the commands, without a Redis: bad values are usage errors (exit 2) naming
 * the option; a Redis that cannot be reached is an infrastructure error (exit 3).
 */

function capture(): string[] {
  const messages: string[] = [];
  vi.spyOn(console, 'log').mockImplementation(() => {});
  vi.spyOn(console, 'error').mockImplementation((message: unknown) => {
    messages.push(String(message));
  });
  return messages;
}

afterEach(() => {
  vi.restoreAllMocks();
});

const AUDIT = ['--model', MODEL_DIR, '--data', DATA_FILE, '--norm', 'L2', '--eps', '0.5', '--n', '4'];

describe('queue options', () => {
  it('ratio worker: --queue is required and must be redis://; durations are checked', async () => {
    const saved = process.env.RATIO_QUEUE_URL;
    delete process.env.RATIO_QUEUE_URL;
    try {
      let messages = capture();
      expect(await worker([])).toBe(2);
      expect(messages.join('\n')).toMatch(/--queue \(or RATIO_QUEUE_URL\) is required/);
      messages = capture();
      expect(await worker(['--queue', 'http://127.0.0.1:6379'])).toBe(2);
      expect(messages.join('\n')).toMatch(/--queue: .*redis:\/\//);
      messages = capture();
      expect(await worker(['--queue', 'redis://127.0.0.1:6379', '--lock-duration', '10'])).toBe(2);
      expect(messages.join('\n')).toMatch(/--lock-duration .*>= 1000, got '10'/);
      messages = capture();
      expect(await worker(['--queue', 'redis://127.0.0.1:6379', '--store', 'gs://bucket'])).toBe(2);
      expect(messages.join('\n')).toMatch(/--store: unknown store URL scheme/);
    } finally {
      if (saved !== undefined) process.env.RATIO_QUEUE_URL = saved;
    }
  });

  it('ratio audit --queue: a bad URL is exit 2, an unreachable Redis exit 3', async () => {
    let messages = capture();
    expect(await audit([...AUDIT, '--queue', 'localhost:6379'])).toBe(2);
    expect(messages.join('\n')).toMatch(/--queue: /);
    messages = capture();
    expect(await audit([...AUDIT, '--queue', 'redis://127.0.0.1:9', '--store', 's3://bucket-x/p'])).toBe(2);
    expect(messages.join('\n')).toMatch(/--store: .*needs an S3 object client/);
    messages = capture();
    const store = path.join(process.env.TMPDIR ?? '/tmp', `ratio-store-${process.pid}`);
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    expect(await audit([...AUDIT, '--queue', 'redis://127.0.0.1:9', '--store', store])).toBe(3);
    expect(messages.join('\n')).toMatch(
      /infrastructure error: cannot reach the queue at redis:\/\/127\.0\.0\.1:9/,
    );
  });
});
