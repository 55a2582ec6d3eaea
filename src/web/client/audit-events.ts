import { createParser } from 'eventsource-parser';
import { type AuditJob, call, callJson } from './api.js';

/**
 * Follows an audit until it ends: its SSE stream read with fetch (EventSource cannot send the
 * bearer key), parsed by eventsource-parser; if the stream ends before the `result` event (a proxy
 * timeout, a restart), the job is polled until it is final. Resolves with the final job.
 */

const FINAL = new Set<AuditJob['state']>(['succeeded', 'failed', 'cancelled']);

export const isFinal = (job: AuditJob) => FINAL.has(job.state);

export async function followAudit(
  id: string,
  onJob: (job: AuditJob) => void,
  signal: AbortSignal,
): Promise<AuditJob> {
  const path = `/v1/audits/${encodeURIComponent(id)}`;
  let last: AuditJob | undefined;
  try {
    const res = await call(`${path}/events`, { headers: { accept: 'text/event-stream' }, signal });
    const parser = createParser({
      onEvent: (message) => {
        last = JSON.parse(message.data) as AuditJob;
        onJob(last);
      },
    });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    while (!(last && isFinal(last))) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
    await reader.cancel().catch(() => undefined);
  } catch (error) {
    if (signal.aborted) throw error;
    // The stream failed: polling below finds the state.
  }
  while (!(last && isFinal(last))) {
    signal.throwIfAborted();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    last = await callJson<AuditJob>(path, { signal });
    onJob(last);
  }
  return last;
}
