import { gzipSync } from 'node:zlib';
import { zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { DatasetError } from '../../src/data/errors.js';
import { DecompressionBudget, MAX_GZIP_LAYERS, maybeGunzip } from '../../src/data/idx.js';
import { datasetFromBytes } from '../../src/data/load.js';
import { idxImages, idxLabels } from '../helpers/idx.js';
import { rejectionOf } from '../helpers/rejection.js';

/**
 * Issue 26: `parseIdx` gunzipped a second time with a 2^31-1 byte cap of its own, so a 3 kB
 * double-gzipped IDX upload inflated to 1.88 GB past the 256 MiB limit. Every layer of one input
 * (and its labels) now draws on one budget.
 */

const MB = 1024 * 1024;

const gzip = (bytes: Uint8Array) => new Uint8Array(gzipSync(bytes, { level: 9 }));

const refusal = (promise: Promise<unknown>) => rejectionOf(promise, DatasetError);

describe('one decompression budget across nested layers', () => {
  // 20,000 images: 15.7 MB inflated, a few kB twice gzipped; the limit here is 4 MB.
  const images = idxImages(20_000);
  const limit = 4 * MB;

  it('a double-gzipped IDX file is refused at the budget, not inflated in full', async () => {
    const twice = gzip(gzip(images));
    expect(twice.length).toBeLessThan(64 * 1024);
    const error = await refusal(
      datasetFromBytes(twice, { filename: 'train-images-idx3-ubyte.gz', maxBytes: limit }),
    );
    expect(error.code).toBe('too-large');
    expect(error.message).toContain('all its compressed layers together');
  });

  it('a single gzip layer past the budget is refused the same way', async () => {
    const error = await refusal(
      datasetFromBytes(gzip(images), { filename: 'x-idx3-ubyte.gz', maxBytes: limit }),
    );
    expect(error.code).toBe('too-large');
  });

  it('images and labels share the budget: each fits, together they do not', async () => {
    const fits = idxImages(4_000); // 3.1 MB of the 4 MB
    const labels = new Uint8Array(1.5 * MB).fill(0);
    labels.set(idxLabels(4_000).subarray(0, 8));
    const error = await refusal(
      datasetFromBytes(gzip(fits), { filename: 'x-idx3-ubyte.gz', maxBytes: limit, labels: gzip(labels) }),
    );
    expect(error.code).toBe('too-large');
    // Within the budget the same pair loads (labels of the right size).
    const set = await datasetFromBytes(gzip(fits), {
      filename: 'x-idx3-ubyte.gz',
      maxBytes: limit,
      labels: gzip(idxLabels(4_000)),
    });
    expect(set.size).toBe(4_000);
  });

  it('three gzip layers and a zip inside a gzip meet the same budget', async () => {
    // The third layer (15.7 MB) is where the 4 MB budget runs out, not the IDX magic of the second.
    const thrice = await refusal(
      datasetFromBytes(gzip(gzip(gzip(images))), { filename: 'x-idx3-ubyte.gz', maxBytes: limit }),
    );
    expect(thrice.code).toBe('too-large');
    // The zip found inside the gzip is checked as a zip: its entries (8 MB) go past the budget.
    const zipInGzip = gzip(zipSync({ 'set/a/0.png': new Uint8Array(8 * MB) }, { level: 9 }));
    const zipped = await refusal(datasetFromBytes(zipInGzip, { filename: 'set.gz', maxBytes: limit }));
    expect(zipped.code).toBe('too-large');
  });

  it('a gzip wraps any format: a gzipped CIFAR-10 file loads as the file it wraps', async () => {
    const records = new Uint8Array(2 * 3073);
    records[0] = 3;
    records[3073] = 7;
    records[1] = 200;
    const set = await datasetFromBytes(gzip(gzip(records)), { filename: 'test_batch.bin.gz' });
    expect(set.size).toBe(2);
    expect([...set.labels]).toEqual([3, 7]);
    const plain = await datasetFromBytes(records, { filename: 'test_batch.bin' });
    expect([...set.images]).toEqual([...plain.images]);
  });

  it('a gzip inside a gzip, past the layer limit, is refused before it is inflated further', async () => {
    let nested = gzip(idxImages(1));
    for (let i = 1; i < MAX_GZIP_LAYERS + 1; i++) nested = gzip(nested);
    const error = await refusal(datasetFromBytes(nested, { filename: 'x-idx3-ubyte.gz' }));
    expect(error.code).toBe('too-large');
    // One layer fewer loads.
    let fits = gzip(idxImages(1));
    for (let i = 1; i < MAX_GZIP_LAYERS; i++) fits = gzip(fits);
    expect((await datasetFromBytes(fits, { filename: 'x-idx3-ubyte.gz' })).size).toBe(1);
  });

  it('a zip whose entries declare more than the budget is refused before inflating them', async () => {
    const zip = zipSync(
      {
        'set/a/0.png': new Uint8Array(3 * MB),
        'set/b/1.png': new Uint8Array(3 * MB),
      },
      { level: 9 },
    );
    const error = await refusal(datasetFromBytes(zip, { filename: 'set.zip', maxBytes: limit }));
    expect(error.code).toBe('too-large');
  });

  it('the budget counts every layer it is charged with', () => {
    const budget = new DecompressionBudget(1000);
    const inner = new Uint8Array(600);
    expect(maybeGunzip(gzip(inner), 'a', budget).length).toBe(600);
    expect(budget.remaining).toBe(400);
    expect(() => maybeGunzip(gzip(inner), 'b', budget)).toThrow(/more than the limit of 1000 bytes/);
    expect(() => budget.charge(401, 'c')).toThrow(DatasetError);
  });
});
