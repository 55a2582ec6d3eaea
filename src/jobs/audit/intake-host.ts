import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { workerEntry } from '../../util/worker-entry.js';
import { IntakeLimitError } from '../errors.js';
import {
  type AuditIntake,
  type IntakeSession,
  partRequest,
  preparedFromParts,
  type ReceiveArgs,
  reviveError,
} from './intake.js';
import type { IntakeMessage, IntakeReply } from './intake-worker.js';

/**
 * The service's intake of uploaded audits (see intake.ts): each upload gets a worker thread of its
 * own (intake-worker.ts) that parses its body, decodes its data set and loads, checks and trial-runs
 * its model; the event loop only hands it the body's chunks. The thread is ended when the upload is
 * done with (prepared, refused, or its client gone), which frees all it used; its heap is capped, so
 * an upload that needs more memory to check is refused (413) instead of exhausting the process. One
 * thread is kept started in advance, so an upload does not wait for a thread's start.
 */

export interface WorkerIntakeOptions {
  /** Uploads checked at once (default 2); more wait for a turn. */
  maxConcurrent?: number;
  /** Uploads waiting for a turn (default 8); more are refused as busy (429). */
  maxWaiting?: number;
  /** Heap of one intake thread, MB (default 4096; env RATIO_INTAKE_HEAP_MB). */
  heapMb?: number;
  /** Time one upload may take from its first byte to its prepared audit, ms (default 300 s). */
  timeoutMs?: number;
  /** Environment of the threads (default: this process's, one tfjs thread). */
  env?: NodeJS.ProcessEnv;
}

/** The thread's entry (intake-worker), compiled or through tsx like this module. */
function intakeThreadCode(): string {
  const entry = workerEntry(import.meta.url, 'intake-worker');
  if (!existsSync(entry.path)) throw new Error(`the intake worker's entry is missing: ${entry.path}`);
  return entry.threadCode;
}

class IntakeThread {
  readonly worker: Worker;
  private readonly listeners = new Set<(reply: IntakeReply) => void>();
  private failure: Error | undefined;
  private readonly failed: Array<(error: Error) => void> = [];
  ended = false;

  constructor(options: Required<Pick<WorkerIntakeOptions, 'heapMb'>> & { env: NodeJS.ProcessEnv }) {
    this.worker = new Worker(intakeThreadCode(), {
      eval: true,
      name: 'ratio-intake',
      env: options.env,
      resourceLimits: { maxOldGenerationSizeMb: options.heapMb },
    });
    this.worker.unref();
    this.worker.on('message', (reply: IntakeReply) => {
      for (const listener of this.listeners) listener(reply);
    });
    this.worker.on('error', (error: Error & { code?: string }) => {
      this.fail(
        error.code === 'ERR_WORKER_OUT_OF_MEMORY'
          ? new IntakeLimitError(
              'memory',
              `checking the upload needs more than the ${options.heapMb} MB of memory the service gives one upload`,
            )
          : error,
      );
    });
    this.worker.on('exit', (code) => {
      this.ended = true;
      this.fail(new Error(`the intake thread exited (code ${code})`));
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const reject of this.failed.splice(0)) reject(this.failure);
  }

  post(message: IntakeMessage, transfer: ArrayBuffer[] = []): void {
    if (!this.ended) this.worker.postMessage(message, transfer);
  }

  /** The next reply of `type` (or the thread's error, whichever comes first). */
  next<T extends IntakeReply['type']>(type: T): Promise<Extract<IntakeReply, { type: T }>> {
    return new Promise((resolve, reject) => {
      if (this.failure) {
        reject(this.failure);
        return;
      }
      const onReply = (reply: IntakeReply) => {
        if (reply.type !== type && reply.type !== 'error') return;
        this.listeners.delete(onReply);
        const index = this.failed.indexOf(onFail);
        if (index >= 0) this.failed.splice(index, 1);
        if (reply.type === 'error') reject(reviveError(reply.error));
        else resolve(reply as Extract<IntakeReply, { type: T }>);
      };
      const onFail = (error: Error) => {
        this.listeners.delete(onReply);
        reject(error);
      };
      this.listeners.add(onReply);
      this.failed.push(onFail);
    });
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    void this.worker.terminate();
  }
}

export class WorkerIntake implements AuditIntake {
  private readonly options: Required<Omit<WorkerIntakeOptions, 'env'>> & { env: NodeJS.ProcessEnv };
  private spare: IntakeThread | undefined;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private closed = false;
  /** Threads started (tests and the reliability report: one per upload, plus the spare). */
  started = 0;
  private readonly live = new Set<IntakeThread>();

  /** Threads alive now: the spare and one per upload being received or prepared. */
  get active(): number {
    return this.live.size;
  }

  constructor(options: WorkerIntakeOptions = {}) {
    const heapFromEnv = Number(process.env.RATIO_INTAKE_HEAP_MB);
    this.options = {
      maxConcurrent: options.maxConcurrent ?? 2,
      maxWaiting: options.maxWaiting ?? 8,
      heapMb: options.heapMb ?? (Number.isInteger(heapFromEnv) && heapFromEnv > 0 ? heapFromEnv : 4096),
      timeoutMs: options.timeoutMs ?? 300_000,
      env: options.env ?? { ...process.env, RATIO_THREADS: '1' },
    };
    this.spare = this.startThread();
  }

  private startThread(): IntakeThread {
    this.started += 1;
    const thread = new IntakeThread(this.options);
    this.live.add(thread);
    // A spare that dies (it should not) is replaced when it is next needed.
    thread.worker.on('exit', () => {
      this.live.delete(thread);
      if (this.spare === thread) this.spare = undefined;
    });
    return thread;
  }

  private takeThread(): IntakeThread {
    const thread = this.spare && !this.spare.ended ? this.spare : this.startThread();
    this.spare = this.closed ? undefined : this.startThread();
    return thread;
  }

  private async turn(): Promise<void> {
    if (this.running < this.options.maxConcurrent) {
      this.running += 1;
      return;
    }
    if (this.waiting.length >= this.options.maxWaiting) {
      throw new IntakeLimitError(
        'busy',
        `${this.running} uploads are being checked and ${this.waiting.length} wait; retry shortly`,
        10,
      );
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private leave(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.running -= 1;
  }

  async receive(...[body, contentType, limits, signal]: ReceiveArgs): Promise<IntakeSession> {
    if (this.closed) throw new IntakeLimitError('busy', 'the service is shutting down', 30);
    await this.turn();
    const thread = this.takeThread();
    let done = false;
    const close = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', close);
      thread.end();
      this.leave();
    };
    const timer = setTimeout(() => {
      thread.end();
    }, this.options.timeoutMs);
    timer.unref();
    signal?.addEventListener('abort', close, { once: true });
    const timedOut = () =>
      new IntakeLimitError('time', `checking the upload took longer than ${this.options.timeoutMs / 1000} s`);
    try {
      thread.post({ type: 'open', contentType, limits });
      const formReply = thread.next('form');
      // A refusal mid-body (a limit crossed) stops the reading: the rest is never looked at.
      let refused = false;
      formReply.catch(() => {
        refused = true;
      });
      for await (const chunk of body) {
        if (thread.ended || refused) break;
        // An exact copy, so the message carries this chunk and not the buffer it may sit in.
        const copy = chunk.slice();
        thread.post({ type: 'chunk', bytes: copy }, [copy.buffer as ArrayBuffer]);
      }
      thread.post({ type: 'end' });
      const { fields, files } = await formReply.catch((error: unknown) => {
        throw thread.ended && !signal?.aborted && !(error instanceof IntakeLimitError) && !isTyped(error)
          ? timedOut()
          : error;
      });
      const form = new FormData();
      const parts = new Map<File, number>();
      for (const [name, value] of fields) form.append(name, value);
      files.forEach((file, index) => {
        const standIn = new File([], file.filename, { type: file.type });
        parts.set(standIn, index);
        form.append(file.field, standIn);
      });
      return {
        form,
        prepare: async (request) => {
          thread.post({ type: 'prepare', request: partRequest(request, parts) });
          const reply = await thread.next('prepared').catch((error: unknown) => {
            throw thread.ended && !isTyped(error) ? timedOut() : error;
          });
          return preparedFromParts(reply.parts, request);
        },
        close,
      };
    } catch (error) {
      close();
      throw error;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.spare?.end();
    this.spare = undefined;
  }
}

/** An error the worker typed (a refusal), as opposed to the thread's own end. */
function isTyped(error: unknown): boolean {
  return error instanceof Error && error.name !== 'Error';
}
