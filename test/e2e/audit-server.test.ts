import { type ChildProcess, spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';
import { withoutTimings } from '../helpers/reports.js';
import { startServiceProcess } from '../helpers/service.js';

/**
 * `ratio audit --server URL` against a real `ratio serve` (a child process on a random loopback
 * port, stopped by PID): the same report as a local `ratio audit` of the same model, points and seed
 * (timings aside), the same gate, and exit codes 1 (under the threshold), 2 (the service refused the
 * input or the key) and 3 (connection refused, the service killed mid-audit, a 5xx, a lost stream).
 */

const API_KEY = 'audit-server-test-key';
let workDir = '';
let modelsDir = '';
const children: ChildProcess[] = [];
const stubs: Server[] = [];

beforeAll(async () => {
  workDir = await mkdtemp(path.join(tmpdir(), 'ratio-audit-server-'));
  modelsDir = path.join(workDir, 'models');
  await cp(MODEL_DIR, path.join(modelsDir, 'ratio-cifar10'), { recursive: true });
});

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const stub of stubs) stub.close();
  await rm(workDir, { recursive: true, force: true });
});

/** `ratio serve` with an API key (no --dev) on a free loopback port, one audit worker process. */
async function startService(stateDir: string): Promise<{ child: ChildProcess; url: string }> {
  const service = await startServiceProcess({
    dev: false,
    args: ['--models', modelsDir, '--workers', '1'],
    env: { RATIO_API_KEYS: API_KEY, RATIO_STATE_DIR: stateDir },
  });
  children.push(service.child);
  return service;
}

async function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid!, signal);
  await exited;
}

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `ratio audit ...` as its own process; `onStderr` sees its progress lines as they come. */
function ratioAudit(
  args: string[],
  env: Record<string, string> = {},
  onStderr?: (text: string, child: ChildProcess) => void,
): Promise<CliRun> {
  const child = spawn(process.execPath, ['bin/ratio.js', 'audit', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    onStderr?.(chunk.toString(), child);
  });
  return new Promise((resolve) => {
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** 16 real CIFAR-10 points, the shipped model, a quick budget in which the attacks break points. */
const AUDIT = [
  '--model',
  MODEL_DIR,
  '--data',
  DATA_FILE,
  '--norm',
  'L2',
  '--eps',
  '1',
  '--n',
  '16',
  '--seed',
  '1',
  '--iterations',
  '1',
  '--queries',
  '60',
];

type ReportDocument = Parameters<typeof withoutTimings>[0] & Record<string, unknown>;

/** The AutoAttack report inside a `--report` document, without timings or the run's own details. */
function reportOf(document: ReportDocument) {
  const { n, norm, eps, version, seed, backend, clean_accuracy, robust_accuracy, warnings } = document;
  return withoutTimings({
    n,
    norm,
    eps,
    version,
    seed,
    backend,
    clean_accuracy,
    robust_accuracy,
    warnings,
    per_attack: document.per_attack,
    samples: document.samples,
    seconds: document.seconds,
  });
}

/** A stand-in service that answers every request with `handler` (5xx, a stream that breaks). */
async function stubService(handler: Parameters<typeof createServer>[1]): Promise<string> {
  const server = createServer(handler);
  stubs.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('ratio audit --server', { timeout: 600_000 }, () => {
  it('prints, writes and gates on the report of a local run (exit 0 / 1), outputs included', async () => {
    const { child, url } = await startService(path.join(workDir, 'state'));
    try {
      const localPath = path.join(workDir, 'local.json');
      const local = await ratioAudit([...AUDIT, '--workers', '1', '--report', localPath]);
      expect(local.code).toBe(0);

      const remotePath = path.join(workDir, 'remote.json');
      const junit = path.join(workDir, 'remote.xml');
      const markdown = path.join(workDir, 'remote.md');
      const passed = await ratioAudit(
        [
          ...AUDIT,
          '--server',
          url,
          '--report',
          remotePath,
          '--min-robust-accuracy',
          '0',
          '--junit',
          junit,
          '--markdown',
          markdown,
        ],
        { RATIO_API_KEY: API_KEY },
      );
      expect(passed.stderr).toContain('apgd-ce: done');
      expect(passed.stdout).toContain('after apgd-ce');
      expect(passed.code).toBe(0);

      const localDocument = JSON.parse(await readFile(localPath, 'utf8')) as ReportDocument;
      const remoteDocument = JSON.parse(await readFile(remotePath, 'utf8')) as ReportDocument;
      expect(reportOf(remoteDocument)).toEqual(reportOf(localDocument));
      expect(remoteDocument.samples).toHaveLength(16);
      // The attacks broke points in this budget, so the equality covers random starts and targets.
      expect(remoteDocument.robust_accuracy).toBeLessThan(remoteDocument.clean_accuracy as number);
      expect(remoteDocument.server).toBe(url);
      // The same printed summary, line by line, apart from the seconds.
      const timeless = (text: string) => text.replace(/[\d.]+ s\)/g, 's)');
      expect(timeless(passed.stdout)).toBe(timeless(local.stdout));
      expect(await readFile(junit, 'utf8')).toContain('<testsuite name="ratio-cifar10"');
      expect(await readFile(markdown, 'utf8')).toContain('### Robustness audit: ratio-cifar10');

      // Above the measured robust accuracy: the gate fails with exit 1, as a local run does.
      const threshold = String((remoteDocument.robust_accuracy as number) + 0.01);
      const failed = await ratioAudit([
        ...AUDIT,
        '--server',
        url,
        '--api-key',
        API_KEY,
        '--min-robust-accuracy',
        threshold,
      ]);
      expect(failed.stderr).toContain('is below the threshold');
      expect(failed.code).toBe(1);
    } finally {
      await stop(child);
    }
  });

  it('exits 2 on a refused input or key, printing the problem title, detail and field', async () => {
    const { child, url } = await startService(path.join(workDir, 'state-refused'));
    try {
      const linf = AUDIT.map((arg) => (arg === 'L2' ? 'Linf' : arg === '1' ? '2' : arg));
      const refused = await ratioAudit([...linf, '--server', url, '--api-key', API_KEY]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('422 Invalid parameter');
      expect(refused.stderr).toContain("field 'eps'");

      const badKey = await ratioAudit([...AUDIT, '--server', url, '--api-key', 'not-the-key']);
      expect(badKey.code).toBe(2);
      expect(badKey.stderr).toContain('401');
    } finally {
      await stop(child);
    }
  });

  it('cancels on Ctrl-C (130); exits 3 when the service dies mid-audit or is not there', async () => {
    const { child, url } = await startService(path.join(workDir, 'state-killed'));
    const long = AUDIT.map((arg, i) => (AUDIT[i - 1] === '--iterations' ? '100' : arg));
    // Ctrl-C of the CLI mid-audit: exit 130, and the audit is cancelled on the service too.
    let interrupted = false;
    const interruptedRun = await ratioAudit(
      [...long, '--server', url, '--api-key', API_KEY],
      {},
      (text, cli) => {
        if (!interrupted && text.includes('apgd-ce')) {
          interrupted = true;
          cli.kill('SIGINT');
        }
      },
    );
    expect(interruptedRun.code).toBe(130);
    const id = /audit ([0-9a-f-]{36}) on/.exec(interruptedRun.stderr)?.[1];
    expect(id).toBeDefined();
    // The service stops the shards at their next check: wait for the final state.
    let state = 'running';
    for (let i = 0; i < 150 && (state === 'running' || state === 'queued'); i++) {
      const response = await fetch(`${url}/v1/audits/${id}`, {
        headers: { authorization: `Bearer ${API_KEY}` },
      });
      state = ((await response.json()) as { state: string }).state;
      if (state === 'running') await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(state).toBe('cancelled');

    // A long audit (full iterations) on the real service, killed -9 once progress is shown.
    let killed = false;
    const lost = await ratioAudit([...long, '--server', url, '--api-key', API_KEY], {}, (text) => {
      if (!killed && text.includes('apgd-ce')) {
        killed = true;
        child.kill('SIGKILL');
      }
    });
    expect(killed).toBe(true);
    expect(lost.code).toBe(3);
    expect(lost.stderr).toContain("lost the audit's event stream");

    // Nothing listens there any more: connection refused.
    const refused = await ratioAudit([...AUDIT, '--server', url, '--api-key', API_KEY]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('ECONNREFUSED');
  });

  it('exits 3 on a 5xx answer and on an event stream that keeps breaking', async () => {
    const failing = await stubService((_request, response) => {
      response.writeHead(503, { 'content-type': 'application/problem+json' });
      response.end(JSON.stringify({ title: 'Overloaded', detail: 'try later', status: 503 }));
    });
    const unavailable = await ratioAudit([...AUDIT, '--server', failing]);
    expect(unavailable.code).toBe(3);
    expect(unavailable.stderr).toContain('503 Overloaded');

    const job = { id: 'a1', state: 'running', progress: { attack: 'apgd-ce', done: 0, total: 16 } };
    let streams = 0;
    const breaking = await stubService((request, response) => {
      if (request.method === 'POST') {
        request.resume();
        request.on('end', () => {
          response.writeHead(202, { 'content-type': 'application/json', location: '/v1/audits/a1' });
          response.end(JSON.stringify(job));
        });
      } else if (request.url === '/v1/audits/a1/events') {
        streams += 1;
        response.writeHead(200, { 'content-type': 'text/event-stream' });
        // One event, then the connection drops before the result.
        response.end(`event: state\ndata: ${JSON.stringify(job)}\nid: 0\n\n`);
      } else {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify(job));
      }
    });
    const broken = await ratioAudit([...AUDIT, '--server', breaking]);
    expect(broken.code).toBe(3);
    expect(broken.stderr).toContain("lost the audit's event stream");
    // It listened again before giving up.
    expect(streams).toBe(4);
  });
});
