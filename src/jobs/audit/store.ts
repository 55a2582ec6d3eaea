import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomically } from '../../data/atomic-file.js';
import { defaultStateDir } from '../../data/data-root.js';
import { ArrayDataset, type ImageShape } from '../../data/dataset.js';
import { readModelDir, writeModelDir } from '../../data/model-dir.js';
import { TfjsClassifier } from '../../engine/model/classifier.js';
import { loadModelFromFiles, saveModelToFiles } from '../../engine/model/files.js';
import type { ShardResult } from '../sharding/index.js';
import type { PreparedAudit } from './audit.js';
import type { AuditJob } from './job.js';

/**
 * The embedded mode's durable audit state: one directory per audit under the state directory
 * (`RATIO_STATE_DIR`, default `$XDG_STATE_HOME/ratio-audit` or `~/.local/state/ratio-audit`):
 *
 *   audits/<id>/job.json          the job as GET /v1/audits/<id> shows it (state, result, ...)
 *   audits/<id>/input.json        what a restart needs besides the files: shape, labels
 *   audits/<id>/images.bin        the audited points, uint8 NHWC
 *   audits/<id>/model/            the model files
 *   audits/<id>/shards/<i>.json   finished shard results, keyed by shard (a rerun replaces)
 *
 * Every file is written to a temporary name and renamed into place, so a kill -9 leaves either the
 * old or the new version. A service restarted on the same directory lists every audit again and
 * resumes the unfinished ones from their finished shards.
 */

const ID = /^[0-9a-f-]{36}$/;

export interface StoredAudit {
  job: AuditJob;
  /** Who submitted it (the principal, an API key id): ownership survives a restart. */
  owner?: string;
  /** Finished shard results (for an unfinished audit). */
  shards: ShardResult[];
  /** Loads the audit's model and points again (unfinished audits only; the caller owns the classifier). */
  load(): Promise<PreparedAudit>;
}

export class AuditStore {
  readonly dir: string;
  /** Writes of one audit's job.json, in order (a later state never lands before an earlier one). */
  private readonly jobWrites = new Map<string, Promise<void>>();

  constructor(dir = defaultStateDir()) {
    this.dir = path.join(dir, 'audits');
  }

  private auditDir(id: string): string {
    if (!ID.test(id)) throw new RangeError(`not an audit id: '${id}'`);
    return path.join(this.dir, id);
  }

  /**
   * Persists a new audit with everything a restart needs. Returns false (and stores nothing) when
   * the model cannot be serialised (not a tfjs model): that audit lives in memory only.
   */
  async create(job: AuditJob, audit: PreparedAudit, owner?: string): Promise<boolean> {
    if (!(audit.classifier instanceof TfjsClassifier)) return false;
    const dir = this.auditDir(job.id);
    await mkdir(path.join(dir, 'shards'), { recursive: true });
    // Apart from job.json, which GET shows as it is: the owner is not part of the job's public view.
    if (owner !== undefined)
      await writeFileAtomically(path.join(dir, 'owner.json'), JSON.stringify({ owner }));
    await writeModelDir(path.join(dir, 'model'), await saveModelToFiles(audit.classifier));
    const data = audit.dataset.take(audit.parameters.n);
    await writeFileAtomically(path.join(dir, 'images.bin'), data.images);
    await writeFileAtomically(
      path.join(dir, 'input.json'),
      JSON.stringify({ shape: data.shape, labels: Array.from(data.labels), parameters: audit.parameters }),
    );
    // job.json last: an audit without it is an incomplete write and is ignored (then removed).
    await this.saveJob(job);
    return true;
  }

  saveJob(job: AuditJob): Promise<void> {
    const target = path.join(this.auditDir(job.id), 'job.json');
    const text = JSON.stringify(job);
    const write = (this.jobWrites.get(job.id) ?? Promise.resolve())
      .catch(() => {})
      .then(() => writeFileAtomically(target, text));
    this.jobWrites.set(job.id, write);
    return write;
  }

  async saveShard(id: string, result: ShardResult): Promise<void> {
    await writeFileAtomically(
      path.join(this.auditDir(id), 'shards', `${result.shard}.json`),
      JSON.stringify(result),
    );
  }

  async remove(id: string): Promise<void> {
    await rm(this.auditDir(id), { recursive: true, force: true });
  }

  /** Every stored audit, oldest first; incomplete writes are removed. */
  async list(): Promise<StoredAudit[]> {
    const names = await readdir(this.dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [] as string[];
      throw error;
    });
    const audits: StoredAudit[] = [];
    for (const name of names.filter((n) => ID.test(n))) {
      const dir = path.join(this.dir, name);
      let job: AuditJob;
      try {
        job = JSON.parse(await readFile(path.join(dir, 'job.json'), 'utf8')) as AuditJob;
      } catch {
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      const shardNames = await readdir(path.join(dir, 'shards')).catch(() => [] as string[]);
      const shards: ShardResult[] = [];
      for (const file of shardNames.filter((f) => /^\d+\.json$/.test(f))) {
        shards.push(JSON.parse(await readFile(path.join(dir, 'shards', file), 'utf8')) as ShardResult);
      }
      const owner = await readFile(path.join(dir, 'owner.json'), 'utf8').then(
        (text) => (JSON.parse(text) as { owner?: string }).owner,
        () => undefined,
      );
      audits.push({
        job,
        ...(owner === undefined ? {} : { owner }),
        shards,
        load: async () => {
          const input = JSON.parse(await readFile(path.join(dir, 'input.json'), 'utf8')) as {
            shape: ImageShape;
            labels: number[];
            parameters: PreparedAudit['parameters'];
          };
          const images = new Uint8Array(await readFile(path.join(dir, 'images.bin')));
          const classifier = await loadModelFromFiles(await readModelDir(path.join(dir, 'model')));
          return {
            parameters: input.parameters,
            classifier,
            ownsClassifier: true,
            dataset: new ArrayDataset({ images, shape: input.shape, labels: Int32Array.from(input.labels) }),
          };
        },
      });
    }
    return audits.sort((a, b) => a.job.created_at.localeCompare(b.job.created_at));
  }
}
