/**
 * `npm run bench:autoattack -- --peer`: a whole audit, ours against the reference AutoAttack
 * (fra31/auto-attack, PyTorch; ../shared/peer/README.md) on the same model, the same first n real
 * CIFAR-10 test points and the same threat model, in one run. Ours runs as `ratio audit --workers N`
 * does (the shard pool, a fresh one per run, start-up included), first with the savings (a point
 * leaves an attack run at its first success), then with `fullBudget` (every attack's whole budget on
 * every point it runs on, as the reference), so the savings' effect is measured in the same run and
 * their reports compared (robust accuracy and broken_by per point must be identical, else exit 1).
 * The reference gets the same cores (torch threads = cores) and OpenMP wait policy as our kernels.
 * Wall time and CPU time (this process and its reaped children) per run; on a shared machine the
 * CPU time is the steadier figure.
 *
 *   npm run bench:autoattack -- --peer [--n 100] [--model models/ratio-cifar10] [--data FILE]
 *     [--norm L2] [--eps 0.5] [--workers N] [--no-full-budget] [--no-ours] [--no-peer]
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { loadDataset } from '../src/data/load.js';
import { readModelDir } from '../src/data/model-dir.js';
import type { AutoAttackReport } from '../src/engine/attacks/autoattack.js';
import { initBackend } from '../src/engine/backend/backend.js';
import { loadModelFromFiles } from '../src/engine/model/files.js';
import { logitsOf } from '../src/engine/model/logits.js';
import type { Norm } from '../src/engine/types.js';
import { ShardPool } from '../src/jobs/sharding/index.js';

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

const n = Number(option('n', '100'));
const modelDir = option('model', 'models/ratio-cifar10');
const dataFile = option(
  'data',
  `${process.env.RATIO_DATA_DIR ?? '../shared/data'}/cifar10/test_batch_first1000.bin`,
);
const norm = option('norm', 'L2') as Norm;
const eps = Number(option('eps', '0.5'));
const cores = availableParallelism();
const workers = Number(option('workers', String(cores)));
const withFullBudget = !process.argv.includes('--no-full-budget');
const withOurs = !process.argv.includes('--no-ours');
const withPeer = !process.argv.includes('--no-peer');
const peerScript = new URL('../../shared/peer/reference_autoattack.py', import.meta.url).pathname;
const peerWaitPolicy = process.env.OMP_WAIT_POLICY ?? 'PASSIVE';
const log = (line: string) => console.error(line);

/** CPU seconds of this process and of its children already reaped (Linux /proc; else this process). */
function cpuSeconds(): number {
  const own = process.cpuUsage();
  let children = 0;
  try {
    // Fields after the command name (which may hold spaces): cutime and cstime are the 14th and 15th.
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    children = (Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    // Not Linux: children's CPU time unknown.
  }
  return (own.user + own.system) / 1e6 + children;
}

async function measured<T>(
  run: () => Promise<T>,
): Promise<{ value: T; seconds: number; cpu_seconds: number }> {
  const cpuBefore = cpuSeconds();
  const started = performance.now();
  const value = await run();
  return {
    value,
    seconds: Number(((performance.now() - started) / 1000).toFixed(1)),
    cpu_seconds: Number((cpuSeconds() - cpuBefore).toFixed(1)),
  };
}

const backend = await initBackend();
const classifier = await loadModelFromFiles(await readModelDir(modelDir));
const data = (await loadDataset(dataFile)).take(n);
const x = data.tensor();

async function ours(fullBudget: boolean) {
  log(`ours (${fullBudget ? 'full budget, as the reference' : 'with savings'}), ${workers} workers...`);
  const run = await measured(async () => {
    const pool = new ShardPool({ workers });
    try {
      return await pool.autoAttack(classifier, x, data.labels, { norm, eps, seed: 0, fullBudget });
    } finally {
      await pool.close();
    }
  });
  const report: AutoAttackReport = run.value;
  log(`  ${run.seconds} s, robust accuracy ${report.robust_accuracy}`);
  return {
    seconds: run.seconds,
    cpu_seconds: run.cpu_seconds,
    clean_accuracy: report.clean_accuracy,
    robust_accuracy: report.robust_accuracy,
    // Summed over shards (CPU-side seconds per attack, not wall time).
    per_attack: report.per_attack.map((a) => ({
      name: a.name,
      broken: a.broken,
      robust_accuracy_after: a.robust_accuracy_after,
      shard_seconds: Number(a.seconds.toFixed(1)),
    })),
    broken_by: report.samples.map((s) => s.broken_by),
  };
}

interface PeerOutput {
  clean_accuracy: number;
  robust_accuracy: number;
  seconds: number;
  max_abs_logit_difference?: number;
}

/** The reference on the same points, or why it could not run. */
async function peer() {
  if (!withPeer) return { unavailable: 'not asked for (--no-peer)' };
  if (!existsSync(peerScript)) return { unavailable: `${peerScript} not found` };
  log(`peer (reference AutoAttack, PyTorch, ${cores} threads)...`);
  const scratch = mkdtempSync(path.join(tmpdir(), 'ratio-peer-'));
  const logitsFile = path.join(scratch, 'logits.json');
  writeFileSync(logitsFile, JSON.stringify(Array.from(logitsOf(classifier, x, 250))));
  try {
    const run = await measured(async () =>
      spawnSync(
        '/usr/bin/python3',
        [
          peerScript,
          ...['--model', modelDir, '--data', dataFile, '--n', String(n), '--norm', norm],
          ...['--eps', String(eps), '--threads', String(cores), '--verbose', '--logits', logitsFile],
        ],
        { encoding: 'utf8', timeout: 1_800_000, env: { ...process.env, OMP_WAIT_POLICY: peerWaitPolicy } },
      ),
    );
    const out = run.value;
    const line = out.stdout?.trim().split('\n').at(-1);
    if (out.status !== 0 || !line?.startsWith('{')) {
      return { unavailable: (out.stderr || String(out.error)).trim().split('\n').at(-1) ?? 'failed' };
    }
    const result = JSON.parse(line) as PeerOutput;
    // "robust accuracy after APGD-T: 35.00% (total time 41.1 s)": cumulative, as the reference prints.
    const after = [
      ...out.stdout.matchAll(/robust accuracy after ([A-Z-]+): ([\d.]+)% \(total time ([\d.]+) s\)/g),
    ];
    log(`  ${result.seconds} s, robust accuracy ${result.robust_accuracy}`);
    return {
      ...result,
      process_seconds: run.seconds,
      cpu_seconds: run.cpu_seconds,
      omp_wait_policy: peerWaitPolicy,
      threads: cores,
      per_attack: after.map((m) => ({
        name: m[1].toLowerCase(),
        robust_accuracy_after: Number(m[2]) / 100,
        total_seconds: Number(m[3]),
      })),
    };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

const saving = withOurs ? await ours(false) : undefined;
const full = withOurs && withFullBudget ? await ours(true) : undefined;
const reference = await peer();
x.dispose();
classifier.dispose();

const ratio = (a: number, b: number) => Number((a / b).toFixed(2));
const peerSeconds = 'seconds' in reference ? reference.seconds : undefined;
const savingsIdentical =
  saving && full
    ? saving.robust_accuracy === full.robust_accuracy &&
      saving.broken_by.every((b, i) => b === full.broken_by[i])
    : null;
const strip = <T extends { broken_by: unknown }>(run: T | undefined) => {
  if (!run) return undefined;
  const { broken_by: _b, ...rest } = run;
  return rest;
};
const result = {
  bench: 'autoattack-peer',
  model: modelDir,
  data: path.basename(dataFile),
  n,
  threat: `${norm} eps ${eps}, standard, seed 0`,
  machine: { cores, cpu: cpus()[0]?.model ?? 'unknown', backend: backend.name, kernels: backend.kernels },
  workers,
  ours: strip(saving),
  ours_full_budget: strip(full),
  peer: reference,
  savings:
    saving && full ? { identical: savingsIdentical, wall_ratio: ratio(saving.seconds, full.seconds) } : null,
  over_peer:
    peerSeconds !== undefined
      ? {
          wall: saving ? ratio(saving.seconds, peerSeconds) : null,
          wall_full_budget: full ? ratio(full.seconds, peerSeconds) : null,
          cpu: saving && 'cpu_seconds' in reference ? ratio(saving.cpu_seconds, reference.cpu_seconds) : null,
          robust_accuracy_identical: saving
            ? saving.robust_accuracy === (reference as PeerOutput).robust_accuracy
            : null,
        }
      : null,
};
console.log(JSON.stringify(result, null, 2));
if (savingsIdentical === false || result.over_peer?.robust_accuracy_identical === false) process.exitCode = 1;
