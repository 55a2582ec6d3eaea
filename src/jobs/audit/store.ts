import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { writeFileAtomically } from '../../data/atomic-file.js';
import { defaultStateDir } from '../../data/data-root.js';
import { ArrayDataset, type ImageShape } from '../../data/dataset.js';
import { type ModelFiles, ONNX_FILE, writeModelDir } from '../../data/model-dir.js';
import { AUTOATTACK_VERSIONS } from '../../engine/attacks/autoattack.js';
import { TfjsClassifier } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles, saveModelToFiles } from '../../engine/model/files.js';
import { DeferredClassifier, type ModelFacts, modelFacts } from '../models/deferred.js';
import { CHECKED_MODEL_LIMITS, loadOptions, readLocalModel } from '../models/index.js';
import type { ShardResult } from '../sharding/index.js';
import type { AuditParameters, PreparedAudit } from './audit.js';
import type { AuditJob } from './job.js';
import { parseStoredShard } from './shard-files.js';

/**
 * The embedded mode's durable audit state: one directory per audit under the state directory
 * (`RATIO_STATE_DIR`, default `$XDG_STATE_HOME/ratio-audit` or `~/.local/state/ratio-audit`):
 *
 *   audits/<id>/job.json          the job as GET /v1/audits/<id> shows it, plus its owner
 *   audits/<id>/owner.json        the owner again (older stores kept it only here)
 *   audits/<id>/input.json        what a restart needs besides the files: shape, labels, model facts
 *   audits/<id>/images.bin        the audited points, uint8 NHWC
 *   audits/<id>/model/            the model files (model.json and shards, or model.onnx)
 *   audits/<id>/shards/<i>.json   finished shard results, keyed by shard (a rerun replaces)
 *
 * Every file is written to a temporary name and renamed into place, so a kill -9 leaves either the
 * old or the new version. A service restarted on the same directory lists every audit again and
 * resumes the unfinished ones from their finished shards. When an audit ends, its inputs (model,
 * points, shards) are removed: only job.json, the result, is kept, as long as the queue retains it.
 *
 * A file that cannot be read (truncated, `null`, edited by hand) never stops a restart and is never
 * deleted: its audit is quarantined, listed as failed with the file and the reason, and left on
 * disk as it was; the other audits are served as usual.
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

/** An audit whose state could not be read: listed as failed, its directory left as it is. */
export interface QuarantinedAudit {
  job: AuditJob;
  owner?: string;
  /** The file at fault, relative to the audit's directory. */
  file: string;
  reason: string;
}

/** A stored file that cannot be read, named relative to its audit's directory. */
export class StoredFileError extends Error {
  override readonly name = 'StoredFileError';
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
  }
}

const parametersSchema = z.object({
  model: z.string(),
  norm: z.enum(['L2', 'Linf']),
  eps: z.number(),
  version: z.enum(AUTOATTACK_VERSIONS as unknown as ['standard', 'plus', 'rand']),
  n: z.number().int(),
  seed: z.number().int(),
  iterations: z.number().int().optional(),
  restarts: z.number().int().optional(),
  queries: z.number().int().optional(),
});

const jobSchema = z.object({
  id: z.string(),
  state: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']),
  parameters: parametersSchema,
  created_at: z.string(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
  progress: z.object({ attack: z.string(), done: z.number(), total: z.number() }).nullable(),
  result: z.record(z.string(), z.unknown()).nullable(),
  error: z.string().nullable(),
  owner: z.string().optional(),
});

const inputSchema = z.object({
  shape: z.tuple([z.number().int().positive(), z.number().int().positive(), z.number().int().positive()]),
  labels: z.array(z.number().int()),
  parameters: parametersSchema,
  model: z
    .object({
      card: z.record(z.string(), z.unknown()),
      numClasses: z.number().int().positive(),
      flopsPerImage: z.number().positive(),
    })
    .optional(),
  /** sha256 of images.bin and of each model file (model/<name>), checked at a restart. */
  checksums: z.record(z.string(), z.string()).optional(),
});

type StoredInput = z.infer<typeof inputSchema>;

/** Parses a stored JSON file against its schema; throws `StoredFileError` naming the file. */
function parseStored<T>(text: string, file: string, schema: z.ZodType<T>): T {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new StoredFileError(file, `not JSON (${(error as Error).message})`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const at = issue.path.join('.');
    throw new StoredFileError(file, `${at ? `'${at}' ` : ''}${issue.message}`);
  }
  return parsed.data;
}

async function readText(dir: string, file: string): Promise<string> {
  try {
    return await readFile(path.join(dir, file), 'utf8');
  } catch (error) {
    throw new StoredFileError(file, `cannot be read (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
}

/**
 * The model files as stored: an ONNX upload (named anything.onnx) becomes model.onnx; its card and
 * any external data (a served model's) stay beside it.
 */
function storedModelFiles(files: ModelFiles): ModelFiles {
  const onnx = [...files.keys()].find((key) => key.toLowerCase().endsWith('.onnx'));
  if (!onnx || onnx === ONNX_FILE) return files;
  return new Map([[ONNX_FILE, files.get(onnx)!], ...[...files].filter(([key]) => key !== onnx)]);
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** Files the store removes when an audit ends (its result stays in job.json). */
const INPUTS = ['model', 'images.bin', 'input.json', 'shards'];

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
   * Persists a new audit with everything a restart needs: the model's files as they came (a TF.js
   * model or an ONNX file), else the model serialised. Returns false (and stores nothing) when
   * neither is possible (a function model): that audit lives in memory only.
   */
  async create(job: AuditJob, audit: PreparedAudit, owner?: string): Promise<boolean> {
    const files = audit.modelFiles
      ? storedModelFiles(audit.modelFiles)
      : audit.classifier instanceof TfjsClassifier
        ? await saveModelToFiles(audit.classifier)
        : undefined;
    if (!files) return false;
    const dir = this.auditDir(job.id);
    await mkdir(path.join(dir, 'shards'), { recursive: true });
    if (owner !== undefined)
      await writeFileAtomically(path.join(dir, 'owner.json'), JSON.stringify({ owner }));
    await writeModelDir(path.join(dir, 'model'), files);
    const data = audit.dataset.take(audit.parameters.n);
    await writeFileAtomically(path.join(dir, 'images.bin'), data.images);
    const checksums: Record<string, string> = { 'images.bin': sha256(data.images) };
    for (const [name, bytes] of files) checksums[`model/${name}`] = sha256(bytes);
    const input: StoredInput = {
      shape: data.shape,
      labels: Array.from(data.labels),
      parameters: audit.parameters,
      model: modelFacts(audit.classifier),
      checksums,
    };
    await writeFileAtomically(path.join(dir, 'input.json'), JSON.stringify(input));
    // job.json last: an audit without it is an incomplete write (listed as such, never resumed).
    await this.saveJob(job, owner);
    return true;
  }

  /** Writes job.json (the job and its owner). */
  saveJob(job: AuditJob, owner?: string): Promise<void> {
    const target = path.join(this.auditDir(job.id), 'job.json');
    const text = JSON.stringify(owner === undefined ? job : { ...job, owner });
    const write = (this.jobWrites.get(job.id) ?? Promise.resolve())
      .catch(() => {})
      .then(() => writeFileAtomically(target, text));
    this.jobWrites.set(job.id, write);
    // Both outcomes handled here: a `finally` chain would re-reject unobserved when the write fails
    // (the audit's directory gone), and tfjs-wasm turns any unhandled rejection into a process exit.
    const forget = () => {
      if (this.jobWrites.get(job.id) === write) this.jobWrites.delete(job.id);
    };
    write.then(forget, forget);
    return write;
  }

  async saveShard(id: string, result: ShardResult): Promise<void> {
    await writeFileAtomically(
      path.join(this.auditDir(id), 'shards', `${result.shard}.json`),
      JSON.stringify(result),
    );
  }

  /** Removes what only a running audit needs (model copy, points, shards); job.json stays. */
  async removeInputs(id: string): Promise<void> {
    const dir = this.auditDir(id);
    await Promise.all(INPUTS.map((name) => rm(path.join(dir, name), { recursive: true, force: true })));
  }

  async remove(id: string): Promise<void> {
    await rm(this.auditDir(id), { recursive: true, force: true });
  }

  /** Bytes the stored audits take on disk. */
  async diskUsage(): Promise<number> {
    const entries = await readdir(this.dir, { recursive: true, withFileTypes: true }).catch(
      (error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return [];
        throw error;
      },
    );
    let bytes = 0;
    for (const entry of entries) {
      if (!entry.isFile()) continue;
      bytes += await stat(path.join(entry.parentPath, entry.name)).then(
        (s) => s.size,
        () => 0,
      );
    }
    return bytes;
  }

  /**
   * Every stored audit, oldest first, and the quarantined ones (a file that cannot be read). Inputs
   * left behind by finished audits (a kill between their last two writes) are removed.
   */
  async list(): Promise<{ audits: StoredAudit[]; quarantined: QuarantinedAudit[] }> {
    const names = await readdir(this.dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [] as string[];
      throw error;
    });
    const audits: StoredAudit[] = [];
    const quarantined: QuarantinedAudit[] = [];
    for (const name of names.filter((n) => ID.test(n))) {
      const dir = path.join(this.dir, name);
      try {
        audits.push(await this.read(name, dir));
      } catch (error) {
        if (!(error instanceof StoredFileError)) throw error;
        quarantined.push(await this.quarantine(name, dir, error));
      }
    }
    const byCreation = (a: { job: AuditJob }, b: { job: AuditJob }) =>
      a.job.created_at.localeCompare(b.job.created_at);
    return { audits: audits.sort(byCreation), quarantined: quarantined.sort(byCreation) };
  }

  private async read(id: string, dir: string): Promise<StoredAudit> {
    const { owner: ownerInJob, ...job } = parseStored(await readText(dir, 'job.json'), 'job.json', jobSchema);
    if (job.id !== id) throw new StoredFileError('job.json', `'id' is '${job.id}', the directory '${id}'`);
    const owner = ownerInJob ?? (await this.readOwnerFile(dir));
    const stored = job as AuditJob;
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) {
      await this.removeInputs(id);
      return {
        job: stored,
        ...(owner === undefined ? {} : { owner }),
        shards: [],
        load: () => Promise.reject(new StoredFileError('job.json', 'the audit has ended')),
      };
    }
    const input = parseStored(await readText(dir, 'input.json'), 'input.json', inputSchema);
    const shardNames = await readdir(path.join(dir, 'shards')).catch(() => [] as string[]);
    const shards: ShardResult[] = [];
    for (const file of shardNames.filter((f) => /^\d+\.json$/.test(f))) {
      const at = `shards/${file}`;
      try {
        shards.push(parseStoredShard(await readText(dir, at), at));
      } catch (error) {
        throw new StoredFileError(at, (error as Error).message.replace(`${at}: `, ''));
      }
    }
    const images = path.join(dir, 'images.bin');
    const expected = input.labels.length * input.shape[0] * input.shape[1] * input.shape[2];
    const size = await stat(images).then(
      (s) => s.size,
      () => -1,
    );
    if (size !== expected) {
      throw new StoredFileError(
        'images.bin',
        size < 0 ? 'is missing' : `holds ${size} bytes, input.json needs ${expected}`,
      );
    }
    for (const [file, digest] of Object.entries(input.checksums ?? {})) {
      if (file.split('/').some((segment) => segment === '..' || segment === '')) {
        throw new StoredFileError('input.json', `'checksums' names '${file}', outside the audit`);
      }
      const bytes = await readFile(path.join(dir, file)).catch(() => undefined);
      if (!bytes) throw new StoredFileError(file, 'is missing');
      if (sha256(bytes) !== digest) {
        throw new StoredFileError(file, 'does not match the checksum recorded at submission');
      }
    }
    return {
      job: stored,
      ...(owner === undefined ? {} : { owner }),
      shards,
      load: () => this.load(dir, input),
    };
  }

  /** owner.json of an older store (owners now live in job.json too); absent means no owner. */
  private async readOwnerFile(dir: string): Promise<string | undefined> {
    let text: string;
    try {
      text = await readFile(path.join(dir, 'owner.json'), 'utf8');
    } catch {
      return undefined;
    }
    return parseStored(text, 'owner.json', z.object({ owner: z.string() })).owner;
  }

  private async load(dir: string, input: StoredInput): Promise<PreparedAudit> {
    const images = new Uint8Array(await readFile(path.join(dir, 'images.bin')));
    let files: ModelFiles;
    try {
      files = await readLocalModel(path.join(dir, 'model'), CHECKED_MODEL_LIMITS);
    } catch (error) {
      throw new StoredFileError('model/', (error as Error).message);
    }
    const classifier = input.model
      ? new DeferredClassifier(files, input.model as ModelFacts)
      : await loadClassifierFromFiles(files, loadOptions(CHECKED_MODEL_LIMITS, 'local')).catch(
          (error: Error) => {
            throw new StoredFileError('model/', error.message);
          },
        );
    return {
      parameters: input.parameters as AuditParameters,
      classifier,
      ownsClassifier: true,
      dataset: new ArrayDataset({
        images,
        shape: input.shape as ImageShape,
        labels: Int32Array.from(input.labels),
      }),
      modelFiles: files,
    };
  }

  /** The failed job a quarantined audit is listed as: what can still be read of it, and why. */
  private async quarantine(id: string, dir: string, error: StoredFileError): Promise<QuarantinedAudit> {
    const job = await readFile(path.join(dir, 'job.json'), 'utf8')
      .then((text) => jobSchema.safeParse(JSON.parse(text)))
      .then((parsed) => (parsed.success ? parsed.data : undefined))
      .catch(() => undefined);
    const input = await readFile(path.join(dir, 'input.json'), 'utf8')
      .then((text) => inputSchema.safeParse(JSON.parse(text)))
      .then((parsed) => (parsed.success ? parsed.data : undefined))
      .catch(() => undefined);
    const owner = job?.owner ?? (await this.readOwnerFile(dir).catch(() => undefined));
    const created = await stat(dir).then(
      (s) => s.birthtime.toISOString(),
      () => new Date(0).toISOString(),
    );
    const parameters = (job?.parameters ?? input?.parameters) as AuditParameters | undefined;
    return {
      job: {
        id,
        state: 'failed',
        // Unknown parameters are shown as such rather than invented.
        parameters: parameters ?? {
          model: 'unknown',
          norm: 'L2',
          eps: 0,
          version: 'standard',
          n: 0,
          seed: 0,
        },
        created_at: job?.created_at ?? created,
        started_at: job?.started_at ?? null,
        finished_at: job?.finished_at ?? null,
        progress: null,
        result: null,
        error: `quarantined at restart: ${error.file} cannot be read (${error.reason}); the audit's files are kept in ${dir}`,
      },
      ...(owner === undefined ? {} : { owner }),
      file: error.file,
      reason: error.reason,
    };
  }
}
