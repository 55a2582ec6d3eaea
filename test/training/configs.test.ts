import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveConfig, type TrainConfig } from '../../src/training/config.js';

const root = path.resolve(import.meta.dirname, '../..');
const configDir = path.join(root, 'configs');
const files = readdirSync(configDir).filter((name) => name.endsWith('.json'));

function load(name: string): TrainConfig {
  return resolveConfig(
    JSON.parse(readFileSync(path.join(configDir, name), 'utf8')) as Record<string, unknown>,
  );
}

/** The settings a warm restart may change; everything else must stay its base run's. */
const RESTART_FIELDS: ReadonlyArray<keyof TrainConfig> = [
  'epochs',
  'lr',
  'warmupEpochs',
  'runDir',
  'initFrom',
];

describe('shipped training configs', () => {
  it.each(files)('%s resolves and says why', (name) => {
    const config = load(name);
    const raw = JSON.parse(readFileSync(path.join(configDir, name), 'utf8')) as { why?: unknown };
    expect(typeof raw.why).toBe('string');
    expect(config.epochs).toBeGreaterThan(0);
  });

  const warm = files.filter((name) => name.endsWith('-warm.json'));
  it('has a warm restart for RATIO and for its AT baseline alike', () => {
    expect(warm).toEqual(expect.arrayContaining(['ratio-cifar10-warm.json', 'at-cifar10-warm.json']));
  });

  it.each(warm)('%s continues its base run from a committed checkpoint at the same budget', (name) => {
    const restart = load(name);
    const base = load(name.replace('-warm.json', '.json'));
    expect(restart.initFrom).toBe(`${base.runDir}/${base.name}/checkpoint.bin`);
    expect(existsSync(path.join(root, restart.initFrom ?? ''))).toBe(true);
    expect(restart.runDir).not.toBe(base.runDir);
    for (const key of Object.keys(base) as Array<keyof TrainConfig>) {
      if (key === 'why' || RESTART_FIELDS.includes(key)) continue;
      expect({ key, value: restart[key] }).toEqual({ key, value: base[key] });
    }
  });

  it('gives the RATIO and AT warm restarts one schedule', () => {
    const [ratio, at] = ['ratio-cifar10-warm.json', 'at-cifar10-warm.json'].map(load);
    for (const key of RESTART_FIELDS.filter((field) => field !== 'initFrom')) {
      expect({ key, value: at?.[key] }).toEqual({ key, value: ratio?.[key] });
    }
  });
});
