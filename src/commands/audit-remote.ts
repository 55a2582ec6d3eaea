import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { zipSync } from 'fflate';
import { Agent, FormData, fetch, type Response } from 'undici';
import type { AuditJob, AuditReport } from '../jobs/audit/index.js';
import type { AuditParameters } from '../jobs/audit/parameters.js';
import { pairedLabelsName } from '../jobs/datasets/index.js';
import { DatasetError } from '../jobs/errors.js';
import { readLocalModel } from '../jobs/models/index.js';
import { gateExitCode, printAuditReport, writeSummaries } from './audit-output.js';
import { PhaseProgress } from './progress.js';

/**
 * `ratio audit --server URL`: the same audit run by a running service. Uploads the model files and
 * the data set to POST /v1/audits, follows the audit's Server-Sent Events with the progress display
 * a local run shows, fetches the finished job and prints, writes and gates on its report exactly as
 * a local run does. Every random draw depends only on (seed, point, attack, restart), so the report
 * equals a local `ratio audit` of the same model, points and seed (timings aside).
 *
 * Exit codes as locally: 0 pass, 1 under --min-robust-accuracy, 2 bad input (also a 4xx answer of
 * the service, printed with its title, detail and fields), 3 the service or the connection failed
 * (refused, 5xx, 408/429, an event stream lost for good, an audit the service failed or cancelled).
 */

export interface RemoteAuditArguments {
  server: string;
  apiKey?: string;
  model: string;
  data: string;
  parameters: Omit<AuditParameters, 'model'>;
  report?: string;
  minRobustAccuracy?: number;
  junit?: string;
  markdown?: string;
}

/** A 4xx problem+json answer: the request (model, data set, parameters or key) was refused. */
export class ServiceRefusedError extends Error {
  override readonly name = 'ServiceRefusedError';
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly fields: ReadonlyArray<{ field: string; message: string }>,
  ) {
    super(`${status} ${title}: ${detail}`);
  }
}

/** The service could not be reached, answered 5xx, lost the event stream, or failed the audit. */
export class ServiceUnavailableError extends Error {
  override readonly name = 'ServiceUnavailableError';
}

interface ProblemBody {
  title?: string;
  detail?: string;
  errors?: Array<{ field: string; message: string }>;
}

/** Statuses that say "try again later", not "your input is wrong". */
const TRANSIENT_STATUSES = new Set([408, 429]);

/** Reconnects of the event stream before the audit counts as lost. */
const STREAM_RECONNECTS = 3;

class ServiceClient {
  /** No body timeout: an event stream may be silent for minutes while a slow attack runs. */
  private readonly dispatcher = new Agent({ bodyTimeout: 0, headersTimeout: 60_000 });
  private readonly base: string;

  constructor(
    server: string,
    private readonly apiKey: string | undefined,
  ) {
    this.base = server.replace(/\/+$/, '');
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.apiKey ? { authorization: `Bearer ${this.apiKey}`, ...extra } : extra;
  }

  async call(pathname: string, init: { method?: string; body?: FormData; accept?: string } = {}) {
    let response: Response;
    try {
      response = await fetch(`${this.base}${pathname}`, {
        method: init.method ?? 'GET',
        body: init.body,
        headers: this.headers({ accept: init.accept ?? 'application/json' }),
        dispatcher: this.dispatcher,
      });
    } catch (error) {
      const cause = (error as Error & { cause?: { code?: string; message?: string } }).cause;
      throw new ServiceUnavailableError(
        `cannot reach ${this.base}: ${cause?.code ?? cause?.message ?? (error as Error).message}`,
      );
    }
    if (response.ok) return response;
    const text = await response.text().catch(() => '');
    let problem: ProblemBody = {};
    try {
      problem = JSON.parse(text) as ProblemBody;
    } catch {
      // not a problem document (a proxy's error page): the status speaks for itself
    }
    const title = problem.title ?? response.statusText;
    const detail = problem.detail ?? text.slice(0, 200);
    if (response.status >= 400 && response.status < 500 && !TRANSIENT_STATUSES.has(response.status)) {
      throw new ServiceRefusedError(response.status, title, detail, problem.errors ?? []);
    }
    throw new ServiceUnavailableError(
      `${init.method ?? 'GET'} ${pathname}: ${response.status} ${title}${detail ? `: ${detail}` : ''}`,
    );
  }

  async json<T>(pathname: string, init?: { method?: string; body?: FormData }): Promise<T> {
    const response = await this.call(pathname, init);
    return (await response.json()) as T;
  }

  /** Drops every connection, an event stream still open after an interrupt included. */
  close(): Promise<void> {
    return this.dispatcher.destroy();
  }
}

/** One Server-Sent Event (event name and data), as the service's `streamSSE` writes them. */
export interface ServerSentEvent {
  event: string;
  data: string;
}

/** Parses an event stream (text/event-stream) into events, as the chunks arrive. */
export async function* serverSentEvents(body: AsyncIterable<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = 'message';
  let data: string[] = [];
  const flushLine = function* (line: string): Generator<ServerSentEvent> {
    if (line === '') {
      if (data.length > 0) yield { event, data: data.join('\n') };
      event = 'message';
      data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  };
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      if (end < 0) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(buffer[end] === '\r' && buffer[end + 1] === '\n' ? end + 2 : end + 1);
      yield* flushLine(line);
    }
  }
}

/** The model files as the upload form takes them (the file name is the key). */
async function modelParts(form: FormData, modelPath: string): Promise<string> {
  // The machine's limits here: the service answers a model over its own limits with 413.
  const files = await readLocalModel(modelPath);
  for (const [key, bytes] of files)
    form.append('model_files', new Blob([bytes as Uint8Array<ArrayBuffer>]), key);
  const card = files.get('card.json');
  if (card) {
    try {
      const name = (JSON.parse(new TextDecoder().decode(card)) as { name?: unknown }).name;
      if (typeof name === 'string' && name) return name;
    } catch {
      // the service says what is wrong with the card
    }
  }
  return path.basename(modelPath).replace(/\.onnx$/i, '');
}

/** Every file under `dir`, by path relative to it (for zipping an image folder). */
async function folderFiles(dir: string, prefix = ''): Promise<Record<string, Uint8Array>> {
  const files: Record<string, Uint8Array> = {};
  for (const entry of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) Object.assign(files, await folderFiles(dir, relative));
    else if (entry.isFile()) files[relative] = new Uint8Array(await readFile(path.join(dir, relative)));
  }
  return files;
}

/** The data set as the upload form takes it: the file (plus paired labels), or a folder as a zip. */
async function datasetParts(form: FormData, dataPath: string): Promise<void> {
  const info = await stat(dataPath).catch((error: NodeJS.ErrnoException) => {
    throw new DatasetError('not-found', `cannot read '${dataPath}': ${error.code ?? error.message}`);
  });
  if (info.isDirectory()) {
    const zip = zipSync(await folderFiles(dataPath), { level: 0 });
    form.append('dataset', new Blob([zip as Uint8Array<ArrayBuffer>]), `${path.basename(dataPath)}.zip`);
    return;
  }
  form.append('dataset', new Blob([await readFile(dataPath)]), path.basename(dataPath));
  const labelsName = pairedLabelsName(path.basename(dataPath));
  if (labelsName) {
    const labels = await readFile(path.join(path.dirname(dataPath), labelsName)).catch(() => undefined);
    if (labels) form.append('labels', new Blob([labels]), labelsName);
  }
}

/** The form's parameter fields: every parameter but the batch size and full budget (the service's own). */
function auditForm(parameters: RemoteAuditArguments['parameters']): FormData {
  const form = new FormData();
  const { batchSize: _batchSize, fullBudget: _fullBudget, ...fields } = parameters;
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined) form.append(name, String(value));
  }
  return form;
}

const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

/** Follows the audit's events with a progress display until it is final; reconnects a lost stream. */
async function followAudit(client: ServiceClient, id: string, progress: PhaseProgress): Promise<AuditJob> {
  let attack = '';
  const show = (job: AuditJob) => {
    const p = job.progress;
    if (!p) return;
    if (p.attack !== attack) {
      if (attack) progress.done();
      attack = p.attack;
      progress.start(attack);
    }
    progress.update(p.done, p.total);
  };
  let lost = '';
  for (let attempt = 0; attempt <= STREAM_RECONNECTS; attempt += 1) {
    try {
      const response = await client.call(`/v1/audits/${id}/events`, { accept: 'text/event-stream' });
      if (!response.body) throw new ServiceUnavailableError('the event stream has no body');
      for await (const message of serverSentEvents(response.body)) {
        const job = JSON.parse(message.data) as AuditJob;
        show(job);
        if (message.event === 'result' || FINAL.has(job.state)) {
          if (attack) progress.done();
          return job;
        }
      }
      lost = 'the event stream ended before the audit finished';
    } catch (error) {
      if (error instanceof ServiceRefusedError) throw error;
      lost = (error as Error).message;
    }
    // The stream is gone: the job may have finished meanwhile; otherwise listen again.
    const job = await client.json<AuditJob>(`/v1/audits/${id}`).catch((error: Error) => {
      if (error instanceof ServiceRefusedError) throw error;
      return undefined;
    });
    if (job && FINAL.has(job.state)) {
      if (attack) progress.done();
      return job;
    }
    await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
  }
  throw new ServiceUnavailableError(`lost the audit's event stream: ${lost}`);
}

function printRefusal(error: ServiceRefusedError): void {
  console.error(`ratio audit: the service refused the audit: ${error.status} ${error.title}`);
  if (error.detail) console.error(`  ${error.detail}`);
  for (const field of error.fields) console.error(`  field '${field.field}': ${field.message}`);
}

/** Runs the audit on the service; returns the exit code (0, 1, 2 or 3). */
export async function remoteAudit(args: RemoteAuditArguments): Promise<number> {
  const client = new ServiceClient(args.server, args.apiKey);
  const progress = new PhaseProgress(process.stderr);
  let id: string | undefined;
  const controller = new AbortController();
  const interrupt = () => controller.abort();
  process.once('SIGINT', interrupt);
  try {
    const form = auditForm(args.parameters);
    const name = await modelParts(form, args.model);
    await datasetParts(form, args.data);
    const created = await client.json<AuditJob>('/v1/audits', { method: 'POST', body: form });
    id = created.id;
    console.error(`audit ${id} on ${args.server}`);
    const followed = await Promise.race([
      followAudit(client, id, progress),
      new Promise<never>((_, reject) =>
        controller.signal.addEventListener('abort', () =>
          reject(new DOMException('interrupted', 'AbortError')),
        ),
      ),
    ]);
    // The finished job as the service keeps it (the event carries it too; GET is the record).
    const job = await client.json<AuditJob>(`/v1/audits/${id}`).catch(() => followed);
    if (job.state !== 'succeeded' || !job.result) {
      console.error(`ratio audit: the service ${job.state} the audit ${id}: ${job.error ?? 'no report'}`);
      return 3;
    }
    const report: AuditReport = job.result;
    const document = {
      server: args.server,
      audit: id,
      model: { path: path.resolve(args.model), name },
      data: { path: path.resolve(args.data) },
      min_robust_accuracy: args.minRobustAccuracy ?? null,
      ...report,
    };
    if (args.report) await writeFile(args.report, `${JSON.stringify(document, null, 2)}\n`);
    printAuditReport(report);
    await writeSummaries(report, args, name);
    return gateExitCode(report, args.minRobustAccuracy);
  } catch (error) {
    if (error instanceof ServiceRefusedError) {
      printRefusal(error);
      return 2;
    }
    if (error instanceof ServiceUnavailableError) {
      console.error(`ratio audit: service error: ${error.message}`);
      return 3;
    }
    if (error instanceof Error && error.name === 'AbortError' && id !== undefined) {
      // Interrupted: cancel the audit on the service too, so it does not keep the workers busy.
      await client.call(`/v1/audits/${id}`, { method: 'DELETE' }).catch(() => undefined);
    }
    throw error;
  } finally {
    process.removeListener('SIGINT', interrupt);
    await client.close();
  }
}
