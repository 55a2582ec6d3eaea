import { describe, expect, it } from 'vitest';
import { QueueFullError } from '../../../src/jobs/errors.js';
import { ComputeSemaphore } from '../../../src/jobs/serving/semaphore.js';

describe('ComputeSemaphore', () => {
  it('runs at most maxRunning tasks, queues maxWaiting, refuses the rest, and hands slots over in order', async () => {
    const semaphore = new ComputeSemaphore({ maxRunning: 2, maxWaiting: 1, retryAfterSeconds: 7 });
    const order: string[] = [];
    const gates = new Map<string, () => void>();
    const task = (name: string) =>
      semaphore.run(async () => {
        order.push(`start ${name}`);
        await new Promise<void>((resolve) => gates.set(name, resolve));
        order.push(`end ${name}`);
        return name;
      });
    const a = task('a');
    const b = task('b');
    const c = task('c');
    await Promise.resolve();
    expect(semaphore.depth).toEqual({ running: 2, waiting: 1 });
    const refused = await task('d').catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(QueueFullError);
    expect((refused as QueueFullError).retryAfter).toBe(7);
    gates.get('a')!();
    await a;
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(order).toEqual(['start a', 'start b', 'end a', 'start c']);
    expect(semaphore.depth).toEqual({ running: 2, waiting: 0 });
    gates.get('b')!();
    gates.get('c')!();
    expect(await Promise.all([b, c])).toEqual(['b', 'c']);
    expect(semaphore.depth).toEqual({ running: 0, waiting: 0 });
  });

  it('gives up the place in line when the wait is aborted, with the signal reason', async () => {
    const semaphore = new ComputeSemaphore({ maxRunning: 1, maxWaiting: 2 });
    const release = await semaphore.acquire();
    const controller = new AbortController();
    const waiting = semaphore.run(() => 'never', controller.signal);
    const next = semaphore.run(() => 'next');
    expect(semaphore.depth).toEqual({ running: 1, waiting: 2 });
    controller.abort(new DOMException('too slow', 'TimeoutError'));
    const error = await waiting.catch((e: unknown) => e);
    expect((error as DOMException).name).toBe('TimeoutError');
    expect(semaphore.depth).toEqual({ running: 1, waiting: 1 });
    release();
    expect(await next).toBe('next');
    expect(semaphore.depth).toEqual({ running: 0, waiting: 0 });
    await expect(semaphore.acquire(AbortSignal.abort())).rejects.toThrow();
    expect(semaphore.depth).toEqual({ running: 0, waiting: 0 });
  });

  it('releases the slot when a task throws', async () => {
    const semaphore = new ComputeSemaphore({ maxRunning: 1, maxWaiting: 0 });
    await expect(semaphore.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await semaphore.run(() => 42)).toBe(42);
  });

  it('names the bad option', () => {
    expect(() => new ComputeSemaphore({ maxRunning: 0, maxWaiting: 1 })).toThrow("'maxRunning'");
    expect(() => new ComputeSemaphore({ maxRunning: 1, maxWaiting: -1 })).toThrow("'maxWaiting'");
  });
});
