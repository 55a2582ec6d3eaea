import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';

/**
 * Helpers of the BullMQ/Redis tests: a private `redis-server` per test (random loopback port, no
 * persistence, stopped by PID), `ratio worker` processes whose JSON log lines the test reads, and
 * a wait loop. The tests skip (with this reason) where redis-server is not installed; CI installs it.
 */

const REDIS_CANDIDATES = ['/usr/bin/redis-server', '/usr/local/bin/redis-server', '/usr/sbin/redis-server'];
export const REDIS_SERVER = REDIS_CANDIDATES.find((candidate) => existsSync(candidate));
export const NO_REDIS_REASON = 'redis-server is not installed (apt-get install redis-server; .ci/run does)';

export interface RedisServer {
  url: string;
  stop(): Promise<void>;
}

/** Starts redis-server on a random free loopback port (retries when the port is taken). */
export async function startRedis(): Promise<RedisServer> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    const child = spawn(
      REDIS_SERVER!,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const ready = await new Promise<boolean>((resolve) => {
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => {
        if (line.includes('Ready to accept connections')) resolve(true);
      });
      child.once('exit', () => resolve(false));
    });
    if (ready) {
      return {
        url: `redis://127.0.0.1:${port}`,
        stop: () => stopChild(child),
      };
    }
  }
  throw new Error('redis-server did not start on any of 5 random ports');
}

export function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

export interface LogLine {
  msg?: string;
  audit?: string;
  shard?: number;
  job?: string;
  attempt?: number;
  pid?: number;
  [key: string]: unknown;
}

/** A child process whose stdout JSON lines (pino) are collected. */
export interface LoggedProcess {
  child: ChildProcess;
  lines: LogLine[];
  /** Resolves with the first line (already seen or to come) that matches. */
  line(match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

export function logged(child: ChildProcess): LoggedProcess {
  const lines: LogLine[] = [];
  const waiters: { match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let entry: LogLine;
    try {
      entry = JSON.parse(text) as LogLine;
    } catch {
      return;
    }
    lines.push(entry);
    for (const waiter of [...waiters]) {
      if (waiter.match(entry)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(entry);
      }
    }
  });
  return {
    child,
    lines,
    line(match, timeoutMs = 60_000) {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const last = lines.slice(-8).map((line) => JSON.stringify(line));
          reject(new Error(`timed out waiting for a log line; the last lines:\n${last.join('\n')}`));
        }, timeoutMs);
        waiters.push({
          match,
          resolve: (line) => {
            clearTimeout(timer);
            resolve(line);
          },
        });
      });
    },
  };
}

/**
 * Starts `ratio worker` (1 tfjs thread) with short locks so a dead worker's shard comes back fast;
 * 6 s still outlasts the longest synchronous step here (a cold first step: ~3 s measured with three
 * workers on two cores), so a busy worker does not lose its shard.
 */
export function startWorker(
  queue: string,
  store: string,
  options: { lockMs?: number; stalledMs?: number } = {},
): LoggedProcess {
  const child = spawn(
    process.execPath,
    [
      'bin/ratio.js',
      'worker',
      '--queue',
      queue,
      '--store',
      store,
      '--lock-duration',
      String(options.lockMs ?? 6000),
      '--stalled-interval',
      String(options.stalledMs ?? 1000),
    ],
    { env: { ...process.env, RATIO_THREADS: '1', LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  return logged(child);
}

export const REPO = path.resolve('.');
