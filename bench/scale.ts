/**
 * Audit throughput (points/s) of `ratio audit`'s runners on the shipped ratio-cifar10 and real
 * CIFAR-10 test points: the single process (the baseline, measured in the same run), then the
 * shard pool with 1, 2 and 4 worker processes. Every runner must return the single-process report
 * (timings aside); the bench fails otherwise. Worker start-up is included (a fresh pool per run).
 * BullMQ/Redis workers are not measured here (not built yet).
 *
 *   npm run bench:scale -- [--json] [--n 64] [--iterations 100] [--queries 5000] [--workers 1,2,4]
 */
import { isDeepStrictEqual } from 'node:util';
import { loadDataset } from '../src/data/load.js';
import { readModelDir } from '../src/data/model-dir.js';
import { type AutoAttackReport, autoAttack } from '../src/engine/autoattack.js';
import { initBackend } from '../src/engine/backend.js';
import { loadModelFromFiles } from '../src/engine/model-files.js';
import { ShardPool } from '../src/jobs/shard-pool.js';

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

const json = process.argv.includes('--json');
const n = Number(option('n', '64'));
const iterations = Number(option('iterations', '100'));
const queries = Number(option('queries', '5000'));
const workerCounts = option('workers', '1,2,4').split(',').map(Number);
const dataFile = `${process.env.RATIO_DATA_DIR ?? '../shared/data'}/cifar10/test_batch_first1000.bin`;

const backend = await initBackend();
const classifier = await loadModelFromFiles(await readModelDir('models/ratio-cifar10'));
const data = (await loadDataset(dataFile)).take(n);
const x = data.tensor();
const settings = { norm: 'L2' as const, eps: 0.5, seed: 0, iterations, queries };

const strip = (r: AutoAttackReport) => ({
  ...r,
  seconds: 0,
  per_attack: r.per_attack.map((a) => ({ ...a, seconds: 0 })),
  samples: r.samples.map((s) => ({ ...s, seconds: 0 })),
});

const rows: {
  runner: string;
  workers: number;
  seconds: number;
  points_per_second: number;
  identical: boolean;
}[] = [];
let started = performance.now();
const baseline = await autoAttack(classifier, x, data.labels, settings);
let seconds = (performance.now() - started) / 1000;
rows.push({ runner: 'single process', workers: 0, seconds, points_per_second: n / seconds, identical: true });
if (!json) console.error(`single process: ${seconds.toFixed(1)} s`);

for (const workers of workerCounts) {
  started = performance.now();
  const pool = new ShardPool({ workers });
  const report = await pool.autoAttack(classifier, x, data.labels, settings);
  await pool.close();
  seconds = (performance.now() - started) / 1000;
  const identical = isDeepStrictEqual(strip(report), strip(baseline));
  rows.push({ runner: 'local pool', workers, seconds, points_per_second: n / seconds, identical });
  if (!json) console.error(`pool of ${workers}: ${seconds.toFixed(1)} s, identical ${identical}`);
}
x.dispose();
classifier.dispose();

const result = {
  bench: 'scale',
  model: 'ratio-cifar10',
  n,
  threat: 'L2 eps 0.5, standard',
  iterations,
  queries,
  backend: backend.name,
  cores: (await import('node:os')).availableParallelism(),
  robust_accuracy: baseline.robust_accuracy,
  rows: rows.map((r) => ({
    ...r,
    seconds: Number(r.seconds.toFixed(2)),
    points_per_second: Number(r.points_per_second.toFixed(3)),
    speedup: Number((rows[0].seconds / r.seconds).toFixed(2)),
  })),
};
if (json) console.log(JSON.stringify(result, null, 2));
else console.table(result.rows);
process.exitCode = rows.every((r) => r.identical) ? 0 : 1;
