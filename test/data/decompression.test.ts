import { gzipSync } from 'node:zlib';
import { zipSync } from 'fflate';
import { describe, expect, it } from 'vitest';
import { DatasetError } from '../../src/data/errors.js';
import { DecompressionBudget, maybeGunzip } from '../../src/data/idx.js';
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

  it('three gzip layers and a zip inside a gzip are refused without inflating them', async () => {
    const thrice = await refusal(
      datasetFromBytes(gzip(gzip(gzip(images))), { filename: 'a.gz', maxBytes: limit }),
    );
    expect(['too-large', 'bad-magic']).toContain(thrice.code);
    const zipInGzip = gzip(zipSync({ 'set/a/0.png': new Uint8Array(8 * MB) }, { level: 9 }));
    expect((await refusal(datasetFromBytes(zipInGzip, { filename: 'set.gz', maxBytes: limit }))).code).toBe(
      'bad-magic',
    );
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
