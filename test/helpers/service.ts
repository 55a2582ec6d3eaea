import { type ChildProcess, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createInterface, type Interface } from 'node:readline';

/**
 * The real service (`ratio serve`) as a child process on a free loopback port, for the end-to-end
 * and reliability tests that kill, restart or load it.
 */

export interface ServiceProcess {
  child: ChildProcess;
  url: string;
  /** The child's stdout, line by line (pino's JSON log lines). */
  lines: Interface;
}

export interface ServiceProcessOptions {
  /** Arguments after `ratio serve` (always with --port 0 and --host 127.0.0.1). */
  args?: string[];
  /** `--dev` (no API keys needed; default true). */
  dev?: boolean;
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** Node flags before the script (e.g. --expose-gc, --require a test probe). */
  nodeArgs?: string[];
  /** The child's stderr: shown in the test output (default) or dropped. */
  stderr?: 'inherit' | 'ignore';
  /** How long it may take to listen (default 120 s). */
  startTimeoutMs?: number;
}

/** Starts `ratio serve`; resolves with its URL once it logs that it listens. */
export async function startServiceProcess(options: ServiceProcessOptions = {}): Promise<ServiceProcess> {
  const child = spawn(
    process.execPath,
    [
      ...(options.nodeArgs ?? []),
      'bin/ratio.js',
      'serve',
      ...(options.dev === false ? [] : ['--dev']),
      '--port',
      '0',
      '--host',
      '127.0.0.1',
      ...(options.args ?? []),
    ],
    {
      env: { ...process.env, LOG_LEVEL: 'info', ...options.env },
      stdio: ['ignore', 'pipe', options.stderr ?? 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout! });
  const timeoutMs = options.startTimeoutMs ?? 120_000;
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the service did not listen in ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the service exited (${code}) before listening`));
      });
      lines.on('line', (line) => {
        const entry = parseLogLine(line);
        if (entry?.msg === 'listening' && typeof entry.url === 'string') {
          clearTimeout(timer);
          resolve(entry.url);
        }
      });
    });
    return { child, url, lines };
  } catch (error) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    throw error;
  }
}

/** A JSON log line as an object, or undefined for anything else. */
export function parseLogLine(line: string): Record<string, unknown> | undefined {
  try {
    const entry: unknown = JSON.parse(line);
    return typeof entry === 'object' && entry !== null ? (entry as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Sends `signal` (SIGTERM: a clean shutdown; SIGKILL: kill -9) and waits for the exit. */
export async function stopServiceProcess(
  service: ServiceProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<void> {
  const { child } = service;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/** Polls `probe` every 200 ms until it gives a value; throws after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 150_000,
): Promise<T> {
  const started = Date.now();
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Resident set size of a process, MB (Linux /proc). */
export async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}
