import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { autoAttack } from '../../src/engine/attacks/autoattack.js';
import { backendInfo } from '../../src/engine/backend/backend.js';
import { auditFixture, DATA_FILE, MODEL_DIR, QUICK } from '../helpers/cifar-audit.js';
import { withoutTimings } from '../helpers/reports.js';

/**
 * The compiled JavaScript the CLI, the workers and the images run (scripts/build.mjs), built into a
 * private folder so a stale dist/ never counts: the engine finds its files from there (the oneDNN
 * addon where it is built, the wasm kernels), the shard pool starts compiled workers (no tsx) and
 * gives the report the sources give in this process, and the tfjs facade exports every name tfjs does.
 */

const run = promisify(execFile);
const ROOT = path.resolve('.');

/** Runs an ES module in a fresh Node (no tsx, no test setup) and parses what it prints as JSON. */
async function runModule<T>(dir: string, name: string, code: string): Promise<T> {
  const file = path.join(dir, name);
  await writeFile(file, code);
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.RATIO_FROM_SOURCE;
  delete env.NODE_OPTIONS;
  const { stdout } = await run(process.execPath, [file], { cwd: ROOT, env, maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(stdout) as T;
}

describe('the compiled build', { timeout: 600_000 }, () => {
  let out: string;

  beforeAll(async () => {
    // Inside the repository (.tmp/ is ignored), so the compiled code resolves node_modules as dist/ does.
    await mkdir(path.join(ROOT, '.tmp'), { recursive: true });
    out = await mkdtemp(path.join(ROOT, '.tmp', 'dist-'));
    await run(process.execPath, ['scripts/build.mjs', '--out', out], { cwd: ROOT });
  }, 600_000);

  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true });
  });

  it('finds the engine kernels from the compiled tree and starts compiled shard workers', async () => {
    expect(existsSync(path.join(out, 'engine/backend/gradients/native/conv.wasm'))).toBe(true);
    const fixture = await auditFixture(8);
    const single = await autoAttack(fixture.classifier, fixture.x, fixture.y, QUICK);
    fixture.x.dispose();
    fixture.classifier.dispose();
    const url = (file: string) => JSON.stringify(new URL(`file://${path.join(out, file)}`).href);
    const result = await runModule<{
      backend: ReturnType<typeof backendInfo>;
      report: typeof single;
      workerEntry: string;
    }>(
      out,
      'pool-check.mjs',
      `
      const { initBackend } = await import(${url('engine/backend/backend.js')});
      const { loadDataset } = await import(${url('data/load.js')});
      const { readModelDir } = await import(${url('data/model-dir.js')});
      const { loadModelFromFiles } = await import(${url('engine/model/files.js')});
      const { ShardPool } = await import(${url('jobs/sharding/pool.js')});
      const { workerEntry } = await import(${url('util/worker-entry.js')});
      const backend = await initBackend();
      const files = await readModelDir(${JSON.stringify(MODEL_DIR)});
      const classifier = await loadModelFromFiles(files);
      const data = (await loadDataset(${JSON.stringify(DATA_FILE)})).take(8);
      const pool = new ShardPool({ workers: 2 });
      const report = await pool.autoAttack(classifier, data.tensor(), data.labels, { ...${JSON.stringify(QUICK)}, shards: 2 });
      await pool.close();
      const entry = workerEntry(${url('jobs/sharding/pool.js')}, 'worker');
      console.log(JSON.stringify({ backend, report, workerEntry: entry.path + ' ' + entry.execArgv.join(' ') }));
      `,
    );
    // The same backend and kernels as the sources chose in this process (oneDNN where it is built).
    expect(result.backend.name).toBe(backendInfo().name);
    expect(result.backend.kernels).toBe(backendInfo().kernels);
    expect(result.workerEntry).toBe(`${path.join(out, 'jobs/sharding/worker.js')} `);
    expect(withoutTimings(result.report)).toEqual(withoutTimings(single));
  });

  it("starts the service's intake thread from the compiled entry", async () => {
    const url = (file: string) => JSON.stringify(new URL(`file://${path.join(out, file)}`).href);
    const result = await runModule<{ started: number; active: number }>(
      out,
      'intake-check.mjs',
      `
      const { WorkerIntake } = await import(${url('jobs/audit/intake-host.js')});
      const intake = new WorkerIntake();
      const counts = { started: intake.started, active: intake.active };
      await intake.close();
      console.log(JSON.stringify(counts));
      `,
    );
    // One spare thread, started from dist/jobs/audit/intake-worker.js (the sources' .ts is not there).
    expect(result).toEqual({ started: 1, active: 1 });
  });

  it('imports tfjs through a facade that exports every name tfjs exports', async () => {
    const names = await runModule<{ facade: string[]; tfjs: string[] }>(
      out,
      'facade-check.mjs',
      `
      import { createRequire } from 'node:module';
      const facade = await import(${JSON.stringify(new URL(`file://${path.join(out, 'vendor/tensorflow-tfjs.cjs')}`).href)});
      const tfjs = createRequire(${JSON.stringify(`${ROOT}/package.json`)})('@tensorflow/tfjs');
      console.log(JSON.stringify({ facade: Object.keys(facade), tfjs: Object.keys(tfjs) }));
      `,
    );
    expect(names.tfjs.length).toBeGreaterThan(400);
    expect(names.tfjs.filter((name) => !names.facade.includes(name))).toEqual([]);
  });
});
