import { createHash } from 'node:crypto';
import { z } from 'zod';
import type { AutoAttackReport } from '../../engine/attacks/autoattack.js';
import type { AttackProgress } from '../../engine/attacks/types.js';
import { TfjsClassifier } from '../../engine/model/classifier.js';
import { saveModelToFiles } from '../../engine/model/files.js';
import {
  auditKey,
  mergeShardResults,
  planShards,
  runShard,
  ShardError,
  type ShardResult,
  sliceRows,
} from '../sharding/index.js';
import type { PreparedAudit } from './audit.js';
import { AuditParametersSchema, DEFAULT_BATCH_SIZE, shardSettingsOf } from './parameters.js';

/**
 * The audit use case split over machines (a k8s Indexed Job, a CI matrix): `runAuditShard` runs shard
 * i of N of a prepared audit and returns its rows, tagged with a fingerprint of the model, the data
 * and the settings; `mergeShardDocuments` checks that shard files belong to one audit and merges
 * them into the report of one run.
 */

/** What identifies a shard file. */
export const SHARD_DOCUMENT_KIND = 'ratio-audit-shard';

export interface AuditShardOptions {
  signal?: AbortSignal;
  onProgress?: (progress: AttackProgress) => void;
}

function sha256(chunks: Iterable<Uint8Array | string>): string {
  const hash = createHash('sha256');
  for (const chunk of chunks) hash.update(chunk);
  return hash.digest('hex');
}

/** A fingerprint of the model's weights and topology (the same on every machine for the same files). */
export async function modelFingerprint(prepared: PreparedAudit): Promise<string> {
  const { classifier } = prepared;
  if (!(classifier instanceof TfjsClassifier)) return `unserialisable:${classifier.card.name}`;
  const files = await saveModelToFiles(classifier);
  const names = [...files.keys()].sort();
  return sha256(names.flatMap((name) => [name, files.get(name)!]));
}

/** Runs shard `shard` of `shards` of a prepared audit (its first n points). */
export async function runAuditShard(
  prepared: PreparedAudit,
  spec: { shard: number; shards: number },
  options: AuditShardOptions = {},
): Promise<ShardResult> {
  const data = prepared.dataset.take(prepared.parameters.n);
  const n = data.size;
  const range = planShards(n, spec.shards)[spec.shard];
  if (!range) throw new ShardError(`shard ${spec.shard} does not exist in a plan of ${spec.shards}`);
  const settings = shardSettingsOf(prepared.parameters);
  const audit = auditKey({
    model: await modelFingerprint(prepared),
    data: sha256([
      data.images,
      new Uint8Array(data.labels.buffer, data.labels.byteOffset, data.labels.byteLength),
    ]),
    n,
    settings,
  });
  const all = data.tensor();
  const x = sliceRows(all, range.start, range.end);
  const probeSize = Math.min(n, settings.batchSize ?? DEFAULT_BATCH_SIZE);
  const probe =
    range.start === 0 ? { x: sliceRows(all, 0, probeSize), y: data.labels.slice(0, probeSize) } : undefined;
  all.dispose();
  try {
    const part = await runShard(
      prepared.classifier,
      { x, y: data.labels.slice(range.start, range.end), probe },
      range,
      settings,
      { signal: options.signal, onProgress: options.onProgress },
    );
    return { audit, shard: range.shard, shards: spec.shards, n, start: range.start, end: range.end, part };
  } finally {
    x.dispose();
    probe?.x.dispose();
  }
}

const sampleSchema = z.object({
  index: z.number().int().nonnegative(),
  clean_correct: z.boolean(),
  predicted: z.number().int().nonnegative(),
  broken_by: z.string().nullable(),
  perturbation_norm: z.number().nullable(),
  seconds: z.number(),
});

const partSchema = AuditParametersSchema.pick({ norm: true, eps: true, version: true, seed: true }).extend({
  backend: z.string(),
  seconds: z.number(),
  attacks: z.array(
    z.object({
      name: z.string(),
      skipped: z.string().nullable(),
      failed: z.number().int().nonnegative(),
      first_failure: z.string().nullable(),
      seconds: z.number(),
    }),
  ),
  samples: z.array(sampleSchema),
  sanity_warnings: z.array(z.string()).nullable(),
});

const shardDocumentSchema = z.object({
  kind: z.literal(SHARD_DOCUMENT_KIND),
  audit: z.string().min(1),
  shard: z.number().int().nonnegative(),
  shards: z.number().int().positive(),
  n: z.number().int().nonnegative(),
  start: z.number().int().nonnegative(),
  end: z.number().int().nonnegative(),
  part: partSchema,
});

/** A shard result as the JSON document `ratio audit --shard` writes (extra fields are kept). */
export function shardDocument(
  result: ShardResult,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return { kind: SHARD_DOCUMENT_KIND, ...extra, ...result };
}

/** `text` as JSON that `schema` accepts; throws `ShardError` naming the source and the field at fault. */
function parseShardJson<T>(schema: z.ZodType<T>, text: string, source: string): T {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ShardError(`${source}: not JSON (${(error as Error).message})`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ShardError(`${source}: '${issue.path.join('.') || '(document)'}' ${issue.message}`);
  }
  return parsed.data;
}

/** Reads a shard document; throws `ShardError` naming the source and the field at fault. */
export function parseShardDocument(text: string, source: string): ShardResult {
  const { kind: _kind, ...result } = parseShardJson(shardDocumentSchema, text, source);
  return result;
}

/** Reads a shard result as the durable store keeps it (no `kind`); throws `ShardError` naming the source. */
export function parseStoredShard(text: string, source: string): ShardResult {
  return parseShardJson(shardDocumentSchema.omit({ kind: true }), text, source);
}

/** The report of an audit from its shard documents (all N shards of one audit, each once). */
export function mergeShardDocuments(documents: readonly ShardResult[]): AutoAttackReport {
  const seconds = documents.reduce((longest, d) => Math.max(longest, d.part.seconds), 0);
  return mergeShardResults(documents, { seconds });
}
