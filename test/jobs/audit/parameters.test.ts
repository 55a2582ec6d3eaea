import { describe, expect, it } from 'vitest';
import {
  AuditParametersSchema,
  SHARD_SETTING_KEYS,
  shardSettingsOf,
} from '../../../src/jobs/audit/parameters.js';

describe('the audit parameters record', () => {
  it('takes the shard settings out of any record: only those keys, only the set ones', () => {
    const parameters = AuditParametersSchema.parse({
      model: 'm',
      norm: 'Linf',
      eps: 0.03,
      version: 'plus',
      n: 40,
      seed: 7,
      iterations: 5,
      queries: undefined,
    });
    expect(shardSettingsOf(parameters)).toStrictEqual({
      norm: 'Linf',
      eps: 0.03,
      version: 'plus',
      seed: 7,
      iterations: 5,
    });
    // The engine's options carry callbacks and a signal: none of them travels to a shard.
    const engineOptions = {
      norm: 'L2' as const,
      eps: 0.5,
      batchSize: 64,
      onProgress: () => {},
      keepAdversarial: true,
    };
    expect(shardSettingsOf(engineOptions)).toStrictEqual({
      norm: 'L2',
      eps: 0.5,
      batchSize: 64,
      version: 'standard',
      seed: 0,
    });
  });

  it('names every shard setting as a field of the record', () => {
    const fields = Object.keys(AuditParametersSchema.shape);
    expect(SHARD_SETTING_KEYS.filter((key) => !fields.includes(key))).toEqual([]);
    expect(fields.filter((key) => !(SHARD_SETTING_KEYS as readonly string[]).includes(key))).toEqual([
      'model',
      'n',
    ]);
  });
});
