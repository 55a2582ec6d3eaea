import type { components } from '../../../openapi/schema.js';

/**
 * The service's API as the page calls it: same origin, the API key (if any) from this tab's
 * sessionStorage as a bearer token, problem+json errors as `ApiError` with a sentence for people.
 */

export type Schemas = components['schemas'];
export type ModelSummary = Schemas['ModelSummary'];
export type ModelDetail = Schemas['ModelDetail'];
export type PredictResponse = Schemas['PredictResponse'];
export type OodResponse = Schemas['OodResponse'];
export type CounterfactualResponse = Schemas['CounterfactualResponse'];
export type AuditJob = Schemas['AuditJob'];
export type AuditReport = Schemas['AuditReport'];
export type Problem = Schemas['Problem'];

const KEY_ITEM = 'ratio-api-key';
/** The key when sessionStorage is unavailable (disabled storage): it lives as long as the page. */
let memoryKey = '';

/** The API key of this tab (sessionStorage: gone when the tab closes, never sent elsewhere). */
export function apiKey(): string {
  try {
    return sessionStorage.getItem(KEY_ITEM) ?? '';
  } catch {
    return '';
  }
}

export function setApiKey(key: string): void {
  try {
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    else sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // Storage disabled: memoryKey keeps it.
  }
  memoryKey = key;
  window.dispatchEvent(new Event(KEY_CHANGED_EVENT));
}

/** Fired on the window when the key changes, so views reload what a 401 refused. */
export const KEY_CHANGED_EVENT = 'ratio-key-changed';

const currentKey = () => apiKey() || memoryKey;

/** Fired on the window when the service answers 401, so the key field can open itself. */
export const UNAUTHORIZED_EVENT = 'ratio-unauthorized';

export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly fields: ReadonlyArray<{ field: string; message: string }> = [],
  ) {
    super(message);
  }
}

/** What a person should read for a refused request. */
export function problemMessage(
  status: number,
  problem: Partial<Problem> | undefined,
  hadKey: boolean,
): string {
  if (status === 401) {
    return hadKey
      ? 'The service refused the API key (401 Unauthorized). Check the key under "API key" at the top.'
      : 'This needs an API key (401 Unauthorized). Enter one under "API key" at the top; it stays in this tab only.';
  }
  const detail = problem?.detail ?? '';
  const title = problem?.title ?? `HTTP ${status}`;
  return detail ? `${title}: ${detail}` : title;
}

/** fetch() against the service with the key; throws ApiError for any answer but 2xx. */
export async function call(path: string, init: RequestInit = {}): Promise<Response> {
  const key = currentKey();
  const headers = new Headers(init.headers);
  if (key) headers.set('authorization', `Bearer ${key}`);
  const res = await fetch(path, { ...init, headers });
  if (res.ok) return res;
  let problem: Partial<Problem> | undefined;
  try {
    problem = (await res.json()) as Partial<Problem>;
  } catch {
    problem = undefined;
  }
  if (res.status === 401) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
  throw new ApiError(res.status, problemMessage(res.status, problem, key !== ''), problem?.errors ?? []);
}

export async function callJson<T>(path: string, init: RequestInit = {}): Promise<T> {
  const res = await call(path, init);
  return (await res.json()) as T;
}

/** POST a JSON body, answer parsed. */
export function postJson<T>(path: string, body: unknown, signal?: AbortSignal): Promise<T> {
  return callJson<T>(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

/** A message for anything thrown by a call (network errors included). */
export function errorText(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof DOMException && error.name === 'AbortError') return 'Stopped.';
  if (error instanceof TypeError) return 'The service cannot be reached (network error).';
  return error instanceof Error ? error.message : String(error);
}

export const modelPath = (name: string) => `/v1/models/${encodeURIComponent(name)}`;
