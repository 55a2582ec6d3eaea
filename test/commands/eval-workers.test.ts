import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { run } from '../../src/commands/eval.js';
import type { EvalReport } from '../../src/jobs/evaluation/report.js';
import { ShardPool } from '../../src/jobs/sharding/pool.js';
import { quiet } from '../helpers/console.js';
import { CIFAR_TEST_FILE } from '../helpers/data.js';
import { tinyModelWorkDir } from '../helpers/model-dir.js';
import { withoutWallClock } from '../helpers/reports.js';

/**
 * `ratio eval --workers 2` runs AutoAttack and the worst-case OOD search on the shard pool and
 * reports exactly the numbers of the single-process run (`--workers 1`), timings aside.
 */

const work = tinyModelWorkDir('ratio-eval-workers-');

async function evaluate(workers: number): Promise<EvalReport> {
  const out = path.join(work.root, `out-${workers}`);
  const output = quiet();
  try {
    const code = await run([
      ...['--model', work.model, '--data', CIFAR_TEST_FILE, '--ood', 'noise', '--ood', 'svhn'],
      ...['--n', '64', '--calibration-n', '32', '--ood-n', '64', '--robust-n', '64'],
      ...['--eps', '0.1', '--eps-ood', '0.5', '--iterations', '3', '--cf-iterations', '2'],
      ...['--cf-rows', '1', '--curve-n', '4', '--seed', '3', '--workers', String(workers), '--out', out],
    ]);
    expect(code).toBe(0);
  } finally {
    output.restore();
  }
  return JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8')) as EvalReport;
}

describe('ratio eval --workers', () => {
  it.skipIf(!existsSync(CIFAR_TEST_FILE))(
    'gives exactly the single-process numbers with 2 workers',
    { timeout: 400_000 },
    async () => {
      const attack = vi.spyOn(ShardPool.prototype, 'autoAttack');
      const worstCase = vi.spyOn(ShardPool.prototype, 'worstCaseConfidence');
      const single = await evaluate(1);
      expect(attack).not.toHaveBeenCalled();
      expect(worstCase).not.toHaveBeenCalled();
      const pooled = await evaluate(2);
      // Both phases went through the pool: AutoAttack once, the worst-case search once per OOD set.
      expect(attack).toHaveBeenCalledTimes(1);
      expect(worstCase).toHaveBeenCalledTimes(2);
      attack.mockRestore();
      worstCase.mockRestore();

      expect(withoutWallClock(pooled)).toEqual(withoutWallClock(single));
      // The searches found something: equality covers the random starts, not only the clean scores.
      expect(pooled.ood.sets.map((s) => s.n)).toEqual([64, 64]);
      expect(pooled.ood.sets.some((s) => (s.wc_mmc ?? 0) > (s.mmc ?? 0))).toBe(true);
      expect(pooled.robustness.n).toBe(64);
    },
  );

  it('refuses a bad worker count (exit 2)', async () => {
    const error = vi.spyOn(console, 'error').mockImplementation(() => {});
    try {
      expect(await run(['--model', work.model, '--data', CIFAR_TEST_FILE, '--workers', '0'])).toBe(2);
      expect(String(error.mock.calls.at(-1)?.[0])).toContain('--workers (or RATIO_WORKERS)');
    } finally {
      error.mockRestore();
    }
  });
});
