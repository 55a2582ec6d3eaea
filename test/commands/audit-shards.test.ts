import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { run } from '../../src/commands/audit.js';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';
import { quiet } from '../helpers/console.js';
import { engineReport, withoutTimings } from '../helpers/reports.js';

/** `ratio audit --shard i/N` on 3 "machines" + `ratio audit merge` == one `ratio audit` run. */

let workDir = '';
beforeAll(async () => {
  workDir = await mkdtemp(path.join(tmpdir(), 'ratio-shards-'));
});
afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

const base = [
  ...['--model', MODEL_DIR, '--data', DATA_FILE, '--norm', 'L2', '--eps', '1', '--n', '16', '--seed', '1'],
  ...['--iterations', '1', '--queries', '60'],
];

const readJson = async (file: string) => JSON.parse(await readFile(file, 'utf8'));

describe('ratio audit --shard / merge', { timeout: 180_000 }, () => {
  it('3 shard runs merged give the single run report; the gate and exit codes hold', async () => {
    const output = quiet();
    try {
      const single = path.join(workDir, 'single.json');
      expect(await run([...base, '--workers', '1', '--report', single])).toBe(0);
      const shardFiles = [0, 1, 2].map((i) => path.join(workDir, `shard-${i}.json`));
      expect(await run([...base, '--shard', '0/3', '--report', shardFiles[0]])).toBe(0);
      expect(await run([...base, '--shard', '2/3', '--report', shardFiles[2]])).toBe(0);
      // The k8s Indexed Job form: the index comes from JOB_COMPLETION_INDEX.
      vi.stubEnv('JOB_COMPLETION_INDEX', '1');
      expect(await run([...base, '--shards', '3', '--report', shardFiles[1]])).toBe(0);
      vi.unstubAllEnvs();
      const shard1 = await readJson(shardFiles[1]);
      expect([shard1.kind, shard1.shard, shard1.start, shard1.end]).toEqual(['ratio-audit-shard', 1, 5, 10]);

      const merged = path.join(workDir, 'merged.json');
      expect(await run(['merge', ...shardFiles.reverse(), '--report', merged])).toBe(0);
      const expected = await readJson(single);
      const actual = await readJson(merged);
      expect(withoutTimings(engineReport(actual))).toEqual(withoutTimings(engineReport(expected)));
      expect([actual.audit.length, actual.shards]).toEqual([16, 3]);
      expect(actual.robust_accuracy).toBe(expected.robust_accuracy);
      const junit = path.join(workDir, 'audit.xml');
      const markdown = path.join(workDir, 'audit.md');
      const gate = ['--min-robust-accuracy', '0.99', '--junit', junit, '--markdown', markdown];
      expect(await run(['merge', ...shardFiles, ...gate])).toBe(1);
      const xml = await readFile(junit, 'utf8');
      expect(xml).toMatch(/<testsuite name="audit [0-9a-f]{16}" tests="5" failures="1"/);
      expect(xml).toMatch(/<failure message="robust accuracy [0-9.]+ is below 0.99"\/>/);
      expect((xml.match(/<testcase /g) ?? []).length).toBe(5);
      const md = await readFile(markdown, 'utf8');
      expect(md).toContain(`| robust accuracy | ${(expected.robust_accuracy * 100).toFixed(2)}% |`);
      expect(md).toContain('| gate | **FAIL** (< 99.00%) |');
      expect(md.match(/^\| (apgd-ce|apgd-t|fab-t|square) \|/gm)?.length).toBe(4);
      expect(await run(['merge', ...shardFiles, '--min-robust-accuracy', '0', '--junit', junit])).toBe(0);
      expect(await readFile(junit, 'utf8')).not.toContain('<failure');

      // Bad input: a missing shard, a duplicate, a foreign file, unreadable JSON: exit 2.
      expect(await run(['merge', shardFiles[0], shardFiles[1]])).toBe(2);
      expect(output.errors()).toMatch(/missing shard results/);
      expect(await run(['merge', ...shardFiles, shardFiles[0]])).toBe(2);
      expect(output.errors()).toMatch(/appears twice/);
      const foreign = path.join(workDir, 'foreign.json');
      await writeFile(foreign, JSON.stringify({ ...shard1, shard: 'one' }));
      expect(await run(['merge', foreign])).toBe(2);
      expect(output.errors()).toMatch(/foreign.json: 'shard'/);
      await writeFile(foreign, '{not json');
      expect(await run(['merge', foreign])).toBe(2);
      expect(await run(['merge'])).toBe(2);
    } finally {
      vi.unstubAllEnvs();
      output.restore();
    }
  });

  it('exits 2 on bad shard and worker options, naming them', async () => {
    const output = quiet();
    try {
      expect(await run([...base, '--shard', '3/3', '--report', path.join(workDir, 'x.json')])).toBe(2);
      expect(output.errors()).toMatch(/--shard: a shard is 'i\/N'/);
      expect(await run([...base, '--shard', '0/3'])).toBe(2);
      expect(output.errors()).toMatch(/--shard needs --report/);
      expect(await run([...base, '--shards', '3', '--report', 'x.json'])).toBe(2);
      expect(output.errors()).toMatch(/JOB_COMPLETION_INDEX/);
      expect(await run([...base, '--workers', '0'])).toBe(2);
      expect(output.errors()).toMatch(/--workers/);
    } finally {
      output.restore();
    }
  });
});
