import { ArrayDataset, type ImageShape } from '../../data/dataset.js';
import { DatasetError, ImageError } from '../../data/errors.js';
import type { ModelFiles } from '../../data/model-dir.js';
import {
  MultipartError,
  type MultipartFile,
  type MultipartForm,
  type MultipartLimits,
  MultipartParser,
} from '../../data/multipart.js';
import {
  type Classifier,
  ModelContractError,
  type ModelContractField,
} from '../../engine/model/classifier.js';
import { ModelFileError, ModelLimitError } from '../../engine/model/files.js';
import { OnnxExternalDataError } from '../../engine/model/onnx/index.js';
import { IntakeLimitError, InvalidInputError, ModelLoadError } from '../errors.js';
import { DeferredClassifier, type ModelFacts, modelFacts } from '../models/deferred.js';
import { type AuditParameters, type PreparedAudit, prepareAudit } from './audit.js';

/**
 * The intake of an uploaded audit: the multipart body parsed as it arrives, then its data set
 * decoded and its model loaded, checked and trial-run (`prepare`). Where that work runs is the
 * intake's choice: `InProcessIntake` does it on the calling thread (tests, the CLI's in-memory
 * service); `WorkerIntake` (intake-host.ts) in a worker thread of its own per upload, so the
 * event loop only moves chunks, and a failure or a client gone frees everything by ending that
 * thread. Either way the form the HTTP layer validates holds stand-in `File`s: the bytes stay with
 * the intake, which finds them again by the stand-in in `prepare`.
 */

/** What `prepare` takes: the form's stand-in files, as the route's schema gave them back. */
export interface IntakeRequest {
  model:
    | { kind: 'served'; name: string; classifier: Classifier; files?: ModelFiles }
    | { kind: 'upload'; parts: readonly File[]; field: string; maxBytes: number };
  data: { part: File; labels?: File; maxBytes: number };
  parameters: Omit<AuditParameters, 'model'>;
}

/** One upload being received and prepared; `close` frees what it holds (always call it). */
export interface IntakeSession {
  /** Text fields and stand-in file parts (empty `File`s named as the uploads). */
  readonly form: FormData;
  prepare(request: IntakeRequest): Promise<PreparedAudit>;
  close(): void;
}

export interface AuditIntake {
  /**
   * Reads a multipart body chunk by chunk with `limits`; rejects with `MultipartError` at the first
   * limit crossed, or with `IntakeLimitError` when the intake is busy or out of resources.
   */
  receive(...args: ReceiveArgs): Promise<IntakeSession>;
  close(): Promise<void>;
}

/** `AuditIntake.receive`'s arguments: the body, its content type, the limits and an abort signal. */
export type ReceiveArgs = [
  body: AsyncIterable<Uint8Array>,
  contentType: string,
  limits: MultipartLimits,
  signal?: AbortSignal,
];

/** The file name a part is keyed by among the model files (its last path segment). */
export const partKey = (filename: string): string => filename.split(/[\\/]/).pop() ?? '';

/** The form as the HTTP layer sees it: text fields, and stand-ins mapped to their parts. */
export function standInForm(parsed: MultipartForm): { form: FormData; parts: Map<File, number> } {
  const form = new FormData();
  const parts = new Map<File, number>();
  for (const [name, value] of parsed.fields) form.append(name, value);
  parsed.files.forEach((file, index) => {
    const standIn = new File([], file.filename, { type: file.type });
    parts.set(standIn, index);
    form.append(file.field, standIn);
  });
  return { form, parts };
}

/** Reads `body` through a parser with `limits`, stopping at the first limit crossed. */
export async function parseBody(
  body: AsyncIterable<Uint8Array>,
  contentType: string,
  limits: MultipartLimits,
  signal?: AbortSignal,
): Promise<MultipartForm> {
  const parser = new MultipartParser(contentType, limits);
  try {
    for await (const chunk of body) {
      signal?.throwIfAborted();
      parser.write(chunk);
    }
    return await parser.end();
  } catch (error) {
    parser.abort();
    throw error;
  }
}

/** The prepare request with parts replaced by indices: what travels to a worker thread. */
export interface PartRequest {
  model:
    | { kind: 'served'; name: string; card: Classifier['card']; numClasses: number }
    | { kind: 'upload'; parts: number[]; field: string; maxBytes: number };
  data: { part: number; labels?: number; maxBytes: number };
  parameters: Omit<AuditParameters, 'model'>;
}

/** What prepare found, in plain data: the points to audit and, for an upload, its model. */
export interface PreparedParts {
  parameters: AuditParameters;
  dataset: { images: Uint8Array; shape: ImageShape; labels: Int32Array; classNames: string[] };
  model?: { facts: ModelFacts; files: Array<[string, Uint8Array]> };
}

/** A served model as the intake's checks see it: its card and classes, no weights. */
function servedFacts(card: Classifier['card'], numClasses: number): Classifier {
  return {
    card,
    numClasses,
    logits: () => {
      throw new Error('the intake checks a served model by its card only');
    },
    dispose: () => {},
  };
}

/**
 * Prepares an audit from parsed parts (on whichever thread holds them): decodes the data set (its
 * first n points), loads and checks an uploaded model (trial forward pass included) and frees it,
 * keeping its facts and files.
 */
export async function prepareParts(
  files: readonly MultipartFile[],
  request: PartRequest,
): Promise<PreparedParts> {
  const part = (index: number) => {
    const file = files[index];
    if (!file) throw new InvalidInputError('body', `no part ${index} in the form`);
    return file;
  };
  const data = part(request.data.part);
  const uploaded =
    request.model.kind === 'upload'
      ? new Map(request.model.parts.map((index) => [partKey(part(index).filename), part(index).bytes]))
      : undefined;
  const prepared = await prepareAudit({
    model:
      request.model.kind === 'served'
        ? {
            kind: 'served',
            name: request.model.name,
            classifier: servedFacts(request.model.card, request.model.numClasses),
          }
        : { kind: 'upload', files: uploaded!, field: request.model.field, maxBytes: request.model.maxBytes },
    data: {
      kind: 'bytes',
      bytes: data.bytes,
      filename: data.filename,
      labels: request.data.labels === undefined ? undefined : part(request.data.labels).bytes,
      maxBytes: request.data.maxBytes,
    },
    parameters: request.parameters,
  });
  const points = prepared.dataset.take(prepared.parameters.n);
  const result: PreparedParts = {
    parameters: prepared.parameters,
    dataset: {
      // Copies of exactly the audited points (the decoded set may be larger).
      images: points.images.slice(),
      shape: points.shape,
      labels: points.labels.slice(),
      classNames: [...points.classNames],
    },
  };
  if (prepared.ownsClassifier) {
    result.model = { facts: modelFacts(prepared.classifier), files: [...uploaded!] };
    prepared.classifier.dispose();
  }
  return result;
}

/** The prepared audit on this side: a served classifier, or a deferred one over the upload's files. */
export function preparedFromParts(parts: PreparedParts, request: IntakeRequest): PreparedAudit {
  const dataset = new ArrayDataset({
    images: parts.dataset.images,
    shape: parts.dataset.shape,
    labels: parts.dataset.labels,
    classNames: parts.dataset.classNames,
  });
  if (request.model.kind === 'served') {
    return {
      parameters: parts.parameters,
      classifier: request.model.classifier,
      ownsClassifier: false,
      dataset,
      ...(request.model.files ? { modelFiles: request.model.files } : {}),
    };
  }
  const files: ModelFiles = new Map(parts.model!.files);
  return {
    parameters: parts.parameters,
    classifier: new DeferredClassifier(files, parts.model!.facts),
    ownsClassifier: true,
    dataset,
    modelFiles: files,
  };
}

/** The request with its stand-ins replaced by part indices. */
export function partRequest(request: IntakeRequest, parts: ReadonlyMap<File, number>): PartRequest {
  const index = (file: File) => {
    const at = parts.get(file);
    if (at === undefined) throw new InvalidInputError('body', `'${file.name}' is not a part of this form`);
    return at;
  };
  return {
    model:
      request.model.kind === 'served'
        ? {
            kind: 'served',
            name: request.model.name,
            card: request.model.classifier.card,
            numClasses: request.model.classifier.numClasses,
          }
        : {
            kind: 'upload',
            parts: request.model.parts.map(index),
            field: request.model.field,
            maxBytes: request.model.maxBytes,
          },
    data: {
      part: index(request.data.part),
      ...(request.data.labels ? { labels: index(request.data.labels) } : {}),
      maxBytes: request.data.maxBytes,
    },
    parameters: request.parameters,
  };
}

/** The intake on the calling thread (tests, single-process use): same checks, same answers. */
export class InProcessIntake implements AuditIntake {
  async receive(...[body, contentType, limits, signal]: ReceiveArgs): Promise<IntakeSession> {
    const parsed = await parseBody(body, contentType, limits, signal);
    const { form, parts } = standInForm(parsed);
    return {
      form,
      // The same two steps as across a thread, so both intakes answer alike.
      prepare: async (request) =>
        preparedFromParts(await prepareParts(parsed.files, partRequest(request, parts)), request),
      close: () => {
        parsed.files.length = 0;
      },
    };
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------- errors across a thread

/** A typed error as plain data (postMessage keeps neither class nor own fields of errors). */
export interface SerializedError {
  name: string;
  message: string;
  code?: string;
  field?: string;
  path?: string;
  kind?: string;
  /** A ModelLimitError's limit, value and maximum. */
  limit?: string;
  value?: number;
  maximum?: number;
  /** An ONNX external data refusal behind a ModelFileError (`cause`): its reason and location. */
  externalData?: { message: string; reason: OnnxExternalDataError['reason']; location: string };
}

export function serializeError(error: unknown): SerializedError {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const fields = error as unknown as Record<string, unknown>;
  const text = (key: string) => (typeof fields[key] === 'string' ? (fields[key] as string) : undefined);
  const number = (key: string) => (typeof fields[key] === 'number' ? (fields[key] as number) : undefined);
  const { cause } = error;
  return {
    name: error.name,
    message: error.message,
    code: text('code'),
    field: text('field'),
    path: text('path'),
    kind: text('kind'),
    limit: text('limit'),
    value: number('value'),
    maximum: number('maximum'),
    ...(cause instanceof OnnxExternalDataError && {
      externalData: { message: cause.message, reason: cause.reason, location: cause.location },
    }),
  };
}

/** The typed error again (the message as it was), or a plain Error for anything untyped. */
export function reviveError(error: SerializedError): Error {
  let revived: Error;
  switch (error.name) {
    case 'DatasetError':
      revived = new DatasetError(error.code as DatasetError['code'], error.message);
      break;
    case 'ImageError':
      revived = new ImageError(error.code as ImageError['code'], error.message);
      break;
    case 'ModelFileError': {
      const external = error.externalData;
      revived = new ModelFileError(error.path ?? 'model', error.field, '', {
        kind: error.kind === 'over-budget' ? 'over-budget' : 'invalid',
        ...(external && {
          cause: new OnnxExternalDataError(external.message, external.reason, external.location),
        }),
      });
      break;
    }
    case 'ModelLimitError':
      revived = new ModelLimitError(
        error.path ?? 'model',
        error.field,
        error.limit ?? 'bytes',
        error.value ?? 0,
        error.maximum ?? 0,
        '',
      );
      break;
    case 'ModelContractError':
      revived = new ModelContractError((error.field ?? 'input') as ModelContractField, error.message);
      break;
    case 'InvalidInputError':
      revived = new InvalidInputError(error.field ?? 'body', error.message);
      break;
    case 'ModelLoadError':
      revived = new ModelLoadError(error.field ?? 'model_files', error.message);
      break;
    case 'MultipartError':
      revived = new MultipartError(
        error.kind as MultipartError['kind'],
        error.field ?? 'body',
        error.message,
      );
      break;
    case 'IntakeLimitError':
      revived = new IntakeLimitError(error.kind as IntakeLimitError['kind'], error.message);
      break;
    default:
      revived = new Error(error.message);
      revived.name = error.name;
  }
  revived.message = error.message;
  return revived;
}
