import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlobNotFoundError,
  type BlobStore,
  BlobStoreError,
  FileBlobStore,
  openBlobStore,
  S3BlobStore,
  type S3ObjectClient,
} from '../../../src/jobs/sharding/blob-store.js';
import {
  fetchModel,
  mergeChildrenValues,
  modelKey,
  parseLockDuration,
  parseQueueUrl,
  QueueUnavailableError,
  ShardTally,
  stageModel,
} from '../../../src/jobs/sharding/queue.js';
import { mergeShardResults, planShards, type ShardResult } from '../../../src/jobs/sharding/shards.js';

/**
 * The pure parts of audits on BullMQ: the blob stores that carry models and points to workers
 * (a directory; S3 through its client interface, here an in-memory double), the tally that counts
 * each (audit, shard) once, and the parent's merge.
 */

/** An in-memory S3 bucket behind the `S3ObjectClient` interface (the test double). */
class MemoryS3 implements S3ObjectClient {
  readonly objects = new Map<string, Uint8Array>();
  calls: string[] = [];
  async putObject({ bucket, key, body }: { bucket: string; key: string; body: Uint8Array }) {
    this.calls.push(`put ${bucket}/${key}`);
    this.objects.set(`${bucket}/${key}`, new Uint8Array(body));
  }
  async getObject({ bucket, key }: { bucket: string; key: string }) {
    return this.objects.get(`${bucket}/${key}`);
  }
  async listObjects({ bucket, prefix }: { bucket: string; prefix: string }) {
    return [...this.objects.keys()]
      .filter((k) => k.startsWith(`${bucket}/${prefix}`))
      .map((k) => k.slice(bucket.length + 1));
  }
  async deleteObjects({ bucket, keys }: { bucket: string; keys: string[] }) {
    for (const key of keys) this.objects.delete(`${bucket}/${key}`);
  }
}

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-blobs-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MODEL = new Map<string, Uint8Array>([
  ['model.json', new TextEncoder().encode('{"format":"layers-model"}')],
  ['group1-shard1of1.bin', Uint8Array.from([1, 2, 3, 4, 250])],
]);

/** Made when a test runs (the temporary directory exists only then). */
const STORES: [string, () => BlobStore][] = [
  ['directory', () => new FileBlobStore(path.join(dir, 'files'))],
  ['s3 (double)', () => new S3BlobStore(new MemoryS3(), 'audit-bucket', 'ratio/store')],
];

describe('blob stores', () => {
  for (const [name, makeStore] of STORES) {
    it(`${name}: round trip, missing keys, prefix removal, staged models`, async () => {
      const store = makeStore();
      expect(store instanceof FileBlobStore ? store.dir.startsWith(dir) && dir !== '' : true).toBe(true);
      await store.put('audits/a1/points-0.f32', Uint8Array.from([9, 8, 7]));
      await store.put('audits/a1/points-1.f32', Uint8Array.from([6]));
      await store.put('audits/a2/points-0.f32', Uint8Array.from([5]));
      expect([...(await store.get('audits/a1/points-0.f32'))]).toEqual([9, 8, 7]);
      await expect(store.get('audits/a1/none.f32')).rejects.toBeInstanceOf(BlobNotFoundError);
      await store.removePrefix('audits/a1');
      await expect(store.get('audits/a1/points-1.f32')).rejects.toBeInstanceOf(BlobNotFoundError);
      expect([...(await store.get('audits/a2/points-0.f32'))]).toEqual([5]);

      // A model is staged with its audit and goes with the audit's blobs.
      const staged = await stageModel(store, MODEL, 'audits/a3/model');
      expect(staged).toEqual({
        key: modelKey(MODEL),
        files: ['group1-shard1of1.bin', 'model.json'],
        dir: 'audits/a3/model',
      });
      expect(await fetchModel(store, staged)).toEqual(MODEL);
      // A file changed behind the content address is refused, not loaded.
      await store.put('audits/a3/model/model.json', new TextEncoder().encode('{}'));
      await expect(fetchModel(store, staged)).rejects.toThrow(/does not match its content address/);
      await store.removePrefix('audits/a3');
      await expect(fetchModel(store, staged)).rejects.toBeInstanceOf(BlobNotFoundError);
    });
  }

  it('keys cannot leave the store', async () => {
    const store = new FileBlobStore(path.join(dir, 'safe'));
    for (const key of ['../x', '/etc/passwd', 'a/../../b', '', 'a//b', 'a/.hidden']) {
      await expect(store.put(key, new Uint8Array(1))).rejects.toBeInstanceOf(BlobStoreError);
    }
    expect(await readdir(dir)).not.toContain('x');
  });

  it('opens stores by URL: a path, file://, s3:// with a client; refuses the rest', () => {
    expect(openBlobStore(path.join(dir, 'p'))).toBeInstanceOf(FileBlobStore);
    const fromUrl = openBlobStore(`file://${path.join(dir, 'u')}`);
    expect(fromUrl).toBeInstanceOf(FileBlobStore);
    expect((fromUrl as FileBlobStore).dir).toBe(path.join(dir, 'u'));
    const s3 = openBlobStore('s3://my-bucket/ratio/audits', { s3: new MemoryS3() });
    expect(s3).toBeInstanceOf(S3BlobStore);
    expect(s3.url).toBe('s3://my-bucket/ratio/audits');
    expect(() => openBlobStore('s3://my-bucket')).toThrow(/needs an S3 object client/);
    expect(() => openBlobStore('s3://x')).toThrow(BlobStoreError);
    expect(() => openBlobStore('gs://bucket/x')).toThrow(/unknown store URL scheme/);
  });
});

describe('queue settings', () => {
  it('queue URLs are redis:// or rediss://', () => {
    expect(parseQueueUrl('redis://127.0.0.1:6379/2')).toBe('redis://127.0.0.1:6379/2');
    expect(parseQueueUrl('rediss://user:pw@cache:6380')).toBe('rediss://user:pw@cache:6380');
    expect(() => parseQueueUrl('http://127.0.0.1:6379')).toThrow(QueueUnavailableError);
    expect(() => parseQueueUrl('localhost:6379')).toThrow(QueueUnavailableError);
  });

  it('lock durations: default 300 s, integers >= 1 s', () => {
    expect(parseLockDuration(undefined)).toBe(300_000);
    expect(parseLockDuration('')).toBe(300_000);
    expect(parseLockDuration('600000')).toBe(600_000);
    expect(() => parseLockDuration('999')).toThrow(RangeError);
    expect(() => parseLockDuration('1.5e3x')).toThrow(RangeError);
    expect(parseLockDuration('500', 30_000, 100)).toBe(500);
  });
});

/** Shard results of a fake audit of n points with hand-made rows (the merge is pure). */
function shardResults(audit: string, n: number, shards: number): ShardResult[] {
  return planShards(n, shards).map((range) => ({
    audit,
    shard: range.shard,
    shards,
    n,
    start: range.start,
    end: range.end,
    part: {
      norm: 'L2',
      eps: 0.5,
      version: 'standard',
      seed: 3,
      backend: 'cpu',
      seconds: 1 + range.shard,
      attacks: [{ name: 'apgd-ce', skipped: null, failed: 0, first_failure: null, seconds: 1 }],
      samples: Array.from({ length: range.end - range.start }, (_, i) => {
        const index = range.start + i;
        return {
          index,
          clean_correct: index % 3 !== 0,
          predicted: index % 10,
          broken_by: index % 3 === 1 ? 'apgd-ce' : null,
          perturbation_norm: index % 3 === 1 ? 0.25 : null,
          seconds: 0.1,
        };
      }),
      sanity_warnings: range.start === 0 ? [] : null,
    },
  }));
}

describe('each (audit, shard) counts once', () => {
  it('the tally counts a shard reported twice once; progress never passes the total', () => {
    const results = shardResults('a', 10, 3);
    const tally = new ShardTally('a', planShards(10, 3));
    tally.progress(0, 1);
    tally.progress(1, 0.5);
    expect(tally.done).toBe(Math.floor(0.5 * 3 + 0.25 * 3));
    expect(tally.finish(results[0])).toBe(true);
    expect(tally.finish(results[0])).toBe(false);
    expect(tally.finish(results[1])).toBe(true);
    // A late progress event of a finished shard adds nothing.
    tally.progress(1, 1);
    expect(tally.finishedShards).toBe(2);
    expect(tally.done).toBe(results[0].end - results[0].start + (results[1].end - results[1].start));
    expect(tally.finish(results[2])).toBe(true);
    expect(tally.finish(results[2])).toBe(false);
    expect(tally.done).toBe(10);
    expect(() => tally.finish({ ...results[0], audit: 'b' })).toThrow(/audit b/);
  });

  it("the parent's merge keys children by shard: a duplicate child value changes nothing", () => {
    const results = shardResults('a', 10, 3);
    const values = Object.fromEntries(results.map((r) => [`ratio:audit-shards:a.${r.shard}`, r]));
    const expected = mergeShardResults(results, { seconds: 3 });
    const { adversarial: _none, ...report } = expected;
    expect(mergeChildrenValues('a', values)).toEqual(report);
    const withDuplicate = { ...values, 'ratio:audit-shards:a.1-retry': results[1] };
    expect(mergeChildrenValues('a', withDuplicate)).toEqual(report);
    const { 'ratio:audit-shards:a.2': _missing, ...gap } = values;
    expect(() => mergeChildrenValues('a', gap)).toThrow(/missing shard results: 2\/3/);
  });
});
