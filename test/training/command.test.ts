import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { progressLine, run } from '../../src/commands/train.js';

let folder: string;
beforeAll(async () => {
  folder = await mkdtemp(path.join(tmpdir(), 'ratio-train-cli-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

interface LogRecord {
  type: string;
  step?: number;
  resumedAtStep?: number;
}

async function readLog(file: string): Promise<LogRecord[]> {
  if (!existsSync(file)) return [];
  const text = await readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as LogRecord);
}

/** Runs `ratio train` in a child process; `onLine` sees the log file grow and may signal the child. */
function trainProcess(args: string[], whileRunning?: (child: ReturnType<typeof spawn>) => void) {
  return new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ['bin/ratio.js', 'train', ...args], {
      env: { ...process.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    whileRunning?.(child);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

describe('ratio train', () => {
  it('refuses bad settings with exit code 2 and a message naming the setting', async () => {
    const errors: string[] = [];
    const original = console.error;
    console.error = (message: string) => errors.push(message);
    try {
      expect(await run(['--epochs', '0'])).toBe(2);
      expect(await run(['--objective', 'magic'])).toBe(2);
      const bad = path.join(folder, 'bad.json');
      await writeFile(bad, '{"epochs": 2, "lernrate": 1}');
      expect(await run(['--config', bad])).toBe(2);
    } finally {
      console.error = original;
    }
    expect(errors[0]).toMatch(/'epochs' must be > 0/);
    expect(errors[1]).toMatch(/'objective' must be one of/);
    expect(errors[2]).toMatch(/unknown setting 'lernrate'/);
  });

  it('exits 2 on data that is not there, by the error type (not its wording)', async () => {
    const errors: string[] = [];
    const original = console.error;
    console.error = (message: string) => errors.push(message);
    try {
      const code = await run([
        '--name',
        'missing-data',
        '--objective',
        'plain',
        '--data',
        path.join(folder, 'no', 'such', 'set.bin'),
        '--run-dir',
        path.join(folder, 'runs-missing'),
        '--out-dir',
        path.join(folder, 'out-missing'),
      ]);
      expect(code).toBe(2);
    } finally {
      console.error = original;
    }
    expect(errors.at(-1)).toMatch(/ratio train: data '.*set\.bin' not found/);
  });

  it('formats a progress line with epoch, step, images/s, loss terms and ETA', () => {
    const line = progressLine({
      epoch: 0,
      epochs: 4,
      step: 10,
      totalSteps: 40,
      stepsPerEpoch: 10,
      lr: 0.05,
      loss: 1.5,
      ceIn: 2,
      ceOut: 1,
      imagesPerSecond: 25.5,
      etaSeconds: 3725,
    });
    expect(line).toBe(
      'epoch 1/4 step 10/40 [#####...............] 25.5 img/s loss 1.500 ce_in 2.000 ce_out 1.000 lr 5.00e-2 eta 1h02m',
    );
  });

  it('SIGTERM mid-epoch writes a checkpoint and exits 0; --resume continues from it', async () => {
    const runDir = path.join(folder, 'runs');
    const config = path.join(folder, 'tiny.json');
    await writeFile(
      config,
      JSON.stringify({
        name: 'tiny-ratio',
        objective: 'ratio',
        width: 0.125,
        data: 'cifar10/test_batch_first1000.bin',
        outData: 'svhn/train_first1000.bin',
        limit: 840,
        outLimit: 100,
        validationSize: 40,
        batchSize: 16,
        epochs: 2,
        stepsIn: 1,
        stepsOut: 1,
        runDir,
        outDir: path.join(folder, 'models'),
      }),
    );
    const logFile = path.join(runDir, 'tiny-ratio', 'log.jsonl');
    const first = await trainProcess(['--config', config, '--quiet'], (child) => {
      const poll = setInterval(async () => {
        const records = await readLog(logFile);
        if (records.some((r) => r.type === 'step' && (r.step ?? 0) >= 2)) {
          clearInterval(poll);
          child.kill('SIGTERM');
        }
      }, 100);
      child.on('close', () => clearInterval(poll));
    });
    expect(first.stderr).toMatch(/SIGTERM, writing a checkpoint/);
    expect(first.code).toBe(0);
    const afterStop = await readLog(logFile);
    const stoppedAt = afterStop.filter((r) => r.type === 'checkpoint').at(-1)?.step ?? 0;
    expect(stoppedAt).toBeGreaterThanOrEqual(2);
    // 800 training images / 16 = 50 steps per epoch: the signal was honoured mid-epoch.
    expect(stoppedAt).toBeLessThan(50);
    expect(afterStop.some((r) => r.type === 'epoch')).toBe(false);
    expect(existsSync(path.join(runDir, 'tiny-ratio', 'checkpoint.bin'))).toBe(true);

    // Resume with a step budget: the second process continues at the checkpointed step and stops after 3.
    const second = await trainProcess(['--config', config, '--resume', '--max-steps', '3', '--quiet']);
    expect(second.stderr).not.toMatch(/ratio train: .*(must|refused|different)/);
    expect(second.code).toBe(0);
    const records = await readLog(logFile);
    const starts = records.filter((r) => r.type === 'start').map((r) => r.resumedAtStep);
    expect(starts).toEqual([0, stoppedAt]);
    expect(records.filter((r) => r.type === 'checkpoint').at(-1)?.step).toBe(stoppedAt + 3);
  }, 60_000);
});
