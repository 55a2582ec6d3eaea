import { randomUUID } from 'node:crypto';
import { autoAttack } from '../../engine/attacks/autoattack.js';
import type { AttackProgress } from '../../engine/attacks/types.js';
import { QueueFullError } from '../errors.js';
import { DeferredClassifier } from '../models/deferred.js';
import type { ShardResult } from '../sharding/index.js';
import { type AttackRunner, type AuditReport, type PreparedAudit, runAudit } from './audit.js';
import type { AuditJob, AuditState } from './job.js';
import { type AuditStore, type QuarantinedAudit, StoredFileError } from './store.js';

/**
 * Audits as background jobs: an in-memory store, a bounded queue run N at a time, progress events
 * for Server-Sent Events, and cancellation through an AbortController per job.
 */

export type { AuditParameters, AuditReport } from './audit.js';
export type { AuditJob, AuditState } from './job.js';

export type AuditEvent =
  | { type: 'progress'; job: AuditJob; progress: AttackProgress }
  | { type: 'state'; job: AuditJob }
  | { type: 'done'; job: AuditJob };

/** A prepared audit (audit.ts: `prepareAudit`) handed to the queue, with who submitted it. */
export type AuditSubmission = PreparedAudit & {
  /** The principal (API key id) that submitted it: only it sees and cancels the job. */
  owner?: string;
};

export interface AuditQueueOptions {
  maxRunning?: number;
  maxQueued?: number;
  /** Finished jobs kept for GET (oldest forgotten first). */
  retain?: number;
  /**
   * Runs the attacks; the default is the engine's AutoAttack (tests may inject a slower or failing
   * one, the service its shard pool, which also takes the audit id, finished shards and a callback).
   */
  run?: AttackRunner;
  /** Durable state (embedded mode): jobs, inputs and finished shards survive a restart. */
  store?: AuditStore;
  /** Called once when a job reaches a final state (the service logs failures and cancellations). */
  onFinished?: (job: AuditJob) => void;
  /** Called at `recover()` for each stored audit whose state cannot be read (the service logs it). */
  onQuarantined?: (audit: QuarantinedAudit) => void;
}

interface Entry {
  job: AuditJob;
  owner?: string;
  submission?: AuditSubmission;
  controller: AbortController;
  listeners: Set<(event: AuditEvent) => void>;
  finished: Promise<void>;
  finish: () => void;
  /** Resolves when the store holds the audit (false: not durable, e.g. a function model). */
  persisted?: Promise<boolean>;
  /** Finished shards of a resumed audit. */
  shards: ShardResult[];
  /** Listed from a store whose files cannot be read: never written, never removed. */
  quarantined?: boolean;
}

const FINAL_STATES: ReadonlySet<AuditState> = new Set(['succeeded', 'failed', 'cancelled']);

export function isFinal(state: AuditState): boolean {
  return FINAL_STATES.has(state);
}

export class ShuttingDownError extends Error {
  override readonly name = 'ShuttingDownError';
}

export class AuditQueue {
  private readonly entries = new Map<string, Entry>();
  private readonly queued: string[] = [];
  private running = 0;
  private draining = false;
  private readonly options: Required<Omit<AuditQueueOptions, 'run' | 'store'>> &
    Pick<AuditQueueOptions, 'run' | 'store'>;

  constructor(options: AuditQueueOptions = {}) {
    this.options = {
      maxRunning: 1,
      maxQueued: 8,
      retain: 200,
      onFinished: () => {},
      onQuarantined: () => {},
      ...options,
    };
  }

  get depth(): { running: number; queued: number } {
    return { running: this.running, queued: this.queued.length };
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** True when `submit` would throw `QueueFullError` now. */
  get isFull(): boolean {
    return this.queued.length >= this.options.maxQueued && this.running >= this.options.maxRunning;
  }

  countByState(): Record<AuditState, number> {
    const counts: Record<AuditState, number> = {
      queued: 0,
      running: 0,
      succeeded: 0,
      failed: 0,
      cancelled: 0,
    };
    for (const { job } of this.entries.values()) counts[job.state] += 1;
    return counts;
  }

  /** Queues an audit; throws `QueueFullError` when the queue is full, `ShuttingDownError` when draining. */
  submit(submission: AuditSubmission): AuditJob {
    if (this.draining) throw new ShuttingDownError('the service is shutting down and accepts no new audits');
    if (this.isFull) {
      throw new QueueFullError(
        `the audit queue is full (${this.running} running, ${this.queued.length} queued)`,
        30,
        'audit',
      );
    }
    let finish = () => {};
    const finished = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const job: AuditJob = {
      id: randomUUID(),
      state: 'queued',
      parameters: submission.parameters,
      created_at: new Date().toISOString(),
      started_at: null,
      finished_at: null,
      progress: null,
      result: null,
      error: null,
    };
    const store = this.options.store;
    this.entries.set(job.id, {
      job,
      owner: submission.owner,
      submission,
      controller: new AbortController(),
      listeners: new Set(),
      finished,
      finish,
      persisted: store?.create({ ...job }, submission, submission.owner).catch(() => false),
      shards: [],
    });
    this.queued.push(job.id);
    this.forgetOldJobs();
    queueMicrotask(() => this.pump());
    return { ...job };
  }

  /** The job, if it exists and (when `owner` is given) belongs to `owner`. */
  get(id: string, owner?: string): AuditJob | undefined {
    const entry = this.visible(id, owner);
    return entry ? { ...entry.job } : undefined;
  }

  private visible(id: string, owner: string | undefined): Entry | undefined {
    const entry = this.entries.get(id);
    if (!entry || (owner !== undefined && entry.owner !== owner)) return undefined;
    return entry;
  }

  /** Ids of the jobs held (queued, running and retained finished ones). */
  ids(): string[] {
    return [...this.entries.keys()];
  }

  /** Listens to a job's events; returns the unsubscribe function (undefined for unknown ids). */
  subscribe(id: string, listener: (event: AuditEvent) => void): (() => void) | undefined {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    entry.listeners.add(listener);
    return () => entry.listeners.delete(listener);
  }

  /** Resolves when the job reaches a final state. */
  async settled(id: string): Promise<AuditJob | undefined> {
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    await entry.finished;
    return { ...entry.job };
  }

  /** Cancels a queued or running job (of `owner`, when given); a finished job is left as it is. */
  cancel(id: string, owner?: string, reason = 'cancelled'): AuditJob | undefined {
    const entry = this.visible(id, owner);
    if (!entry) return undefined;
    if (isFinal(entry.job.state)) return { ...entry.job };
    // Aborted first, whatever the state: a job taken off the queue but not yet running (its
    // persistence awaited) sees the abort and never starts.
    entry.controller.abort(new DOMException(reason, 'AbortError'));
    if (entry.job.state === 'queued') {
      const at = this.queued.indexOf(id);
      if (at >= 0) this.queued.splice(at, 1);
      this.end(entry, 'cancelled', null, `${reason} before it started`);
    }
    return { ...entry.job };
  }

  /**
   * Refuses new audits, cancels queued ones and either aborts running ones or lets them finish,
   * waiting at most `timeoutMs` for them.
   */
  async drain(options: { abortRunning: boolean; timeoutMs: number }): Promise<void> {
    this.draining = true;
    for (const id of [...this.queued]) this.cancel(id, undefined, 'aborted at shutdown');
    const running = [...this.entries.values()].filter((e) => e.job.state === 'running');
    if (options.abortRunning)
      for (const entry of running) this.cancel(entry.job.id, undefined, 'aborted at shutdown');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(running.map((e) => e.finished)),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, options.timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  private emit(entry: Entry, event: AuditEvent): void {
    for (const listener of entry.listeners) {
      try {
        listener(event);
      } catch {
        // A broken SSE stream must not break the job.
      }
    }
  }

  private end(entry: Entry, state: AuditState, result: AuditReport | null, error: string | null): void {
    entry.job.state = state;
    entry.job.result = result;
    entry.job.error = error;
    entry.job.finished_at = new Date().toISOString();
    this.persist(entry);
    const submission = entry.submission;
    entry.submission = undefined;
    try {
      if (submission?.ownsClassifier) submission.classifier.dispose();
    } catch {
      // A model that fails to free itself must not keep its audit from ending (nor its quota slot).
    }
    this.emit(entry, { type: 'done', job: { ...entry.job } });
    entry.listeners.clear();
    entry.finish();
    try {
      this.options.onFinished({ ...entry.job });
    } catch {
      // Logging must not break the queue.
    }
  }

  private pump(): void {
    while (this.running < this.options.maxRunning && this.queued.length > 0) {
      const id = this.queued.shift()!;
      const entry = this.entries.get(id);
      if (entry?.job.state !== 'queued') continue;
      this.running += 1;
      // Nothing here may reject unhandled: tfjs-wasm's runtime rethrows unhandled rejections, which
      // would end the service. An audit whose run broke outside its own try ends failed.
      this.execute(entry)
        .catch((error: unknown) => {
          if (!isFinal(entry.job.state))
            this.end(entry, 'failed', null, error instanceof Error ? error.message : String(error));
        })
        .catch(() => {})
        .finally(() => {
          this.running -= 1;
          this.pump();
        });
    }
  }

  /**
   * Writes the job to the store (when it holds the audit); a failed write never fails the job. Once
   * the job is final, its inputs (model copy, points, shards) are removed: the result stays.
   */
  private persist(entry: Entry): void {
    const store = this.options.store;
    if (!store || !entry.persisted) return;
    const snapshot = { ...entry.job };
    void entry.persisted
      .then(async (stored) => {
        if (!stored) return;
        await store.saveJob(snapshot, entry.owner);
        if (isFinal(snapshot.state)) await store.removeInputs(snapshot.id);
      })
      .catch(() => {});
  }

  /** Bytes the durable state takes on disk (undefined without a store). */
  async stateBytes(): Promise<number | undefined> {
    return this.options.store?.diskUsage();
  }

  /**
   * Lists the store's audits again after a restart: finished ones as they were, unfinished ones
   * queued to resume from their finished shards. Returns how many will resume.
   */
  async recover(): Promise<number> {
    const store = this.options.store;
    if (!store) return 0;
    let resumed = 0;
    const { audits, quarantined } = await store.list();
    for (const bad of quarantined) {
      if (this.entries.has(bad.job.id)) continue;
      this.entries.set(bad.job.id, {
        job: bad.job,
        owner: bad.owner,
        controller: new AbortController(),
        listeners: new Set(),
        finished: Promise.resolve(),
        finish: () => {},
        shards: [],
        quarantined: true,
      });
      try {
        this.options.onQuarantined(bad);
      } catch {
        // Logging must not break the recovery.
      }
    }
    for (const stored of audits) {
      if (this.entries.has(stored.job.id)) continue;
      let finish = () => {};
      const finished = new Promise<void>((resolve) => {
        finish = resolve;
      });
      const entry: Entry = {
        job: stored.job,
        owner: stored.owner,
        controller: new AbortController(),
        listeners: new Set(),
        finished,
        finish,
        persisted: Promise.resolve(true),
        shards: stored.shards,
      };
      if (isFinal(stored.job.state)) {
        finish();
      } else {
        try {
          entry.submission = await stored.load();
        } catch (error) {
          // Its files stay as they are (nothing written, nothing removed): quarantined.
          const file = error instanceof StoredFileError ? error.file : 'model/';
          const reason = error instanceof StoredFileError ? error.reason : (error as Error).message;
          const job: AuditJob = {
            ...stored.job,
            state: 'failed',
            error: `quarantined at restart: cannot resume, ${file} cannot be read (${reason})`,
          };
          this.entries.set(job.id, { ...entry, job, persisted: undefined, quarantined: true });
          finish();
          try {
            this.options.onQuarantined({ job, owner: stored.owner, file, reason });
          } catch {
            // Logging must not break the recovery.
          }
          continue;
        }
        entry.job.state = 'queued';
        this.queued.push(stored.job.id);
        resumed += 1;
      }
      this.entries.set(stored.job.id, entry);
    }
    this.forgetOldJobs();
    this.pump();
    return resumed;
  }

  private async execute(entry: Entry): Promise<void> {
    const submission = entry.submission!;
    await entry.persisted;
    // Cancelled while its persistence was awaited: it ended there and must not run.
    if (entry.controller.signal.aborted || isFinal(entry.job.state)) return;
    // A model checked in another thread is loaded here only when the attacks run here too.
    if (!this.options.run && submission.classifier instanceof DeferredClassifier) {
      try {
        await submission.classifier.load();
      } catch (error) {
        this.end(entry, 'failed', null, `the model cannot be loaded: ${(error as Error).message}`);
        return;
      }
      if (entry.controller.signal.aborted || isFinal(entry.job.state)) return;
    }
    entry.job.state = 'running';
    entry.job.started_at ??= new Date().toISOString();
    this.persist(entry);
    this.emit(entry, { type: 'state', job: { ...entry.job } });
    const run = this.options.run ?? autoAttack;
    const store = this.options.store;
    try {
      const report = await runAudit(submission, {
        run: (classifier, x, y, options) =>
          run(classifier, x, y, {
            ...options,
            audit: entry.job.id,
            finished: entry.shards,
            onShard: (result) => {
              entry.shards.push(result);
              if (store && entry.persisted) {
                void entry.persisted
                  .then((stored) => (stored ? store.saveShard(entry.job.id, result) : undefined))
                  .catch(() => {});
              }
            },
          }),
        signal: entry.controller.signal,
        onProgress: (progress) => {
          entry.job.progress = { ...progress };
          this.emit(entry, { type: 'progress', job: { ...entry.job }, progress: { ...progress } });
        },
      });
      // A cancel wins over a report that arrived after it (a run that did not see the signal).
      if (entry.controller.signal.aborted) throw entry.controller.signal.reason;
      this.end(entry, 'succeeded', report, null);
    } catch (error) {
      if (entry.controller.signal.aborted) {
        const reason = entry.controller.signal.reason;
        const why = reason instanceof Error ? reason.message : 'cancelled';
        this.end(entry, 'cancelled', null, `${why} while running`);
      } else this.end(entry, 'failed', null, error instanceof Error ? error.message : String(error));
    }
  }

  private forgetOldJobs(): void {
    const excess = this.entries.size - this.options.retain;
    if (excess <= 0) return;
    let removed = 0;
    for (const [id, entry] of this.entries) {
      if (removed >= excess) break;
      if (isFinal(entry.job.state) && !entry.quarantined) {
        this.entries.delete(id);
        void this.options.store?.remove(id).catch(() => {});
        removed += 1;
      }
    }
  }
}
