import type { AttackProgress } from '../../engine/attacks/types.js';
import type { AuditReport } from './audit.js';
import type { AuditParameters } from './parameters.js';

/** An audit as a background job: what GET /v1/audits/<id> shows and the store keeps in job.json. */

export type AuditState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface AuditJob {
  id: string;
  state: AuditState;
  parameters: AuditParameters;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  progress: AttackProgress | null;
  result: AuditReport | null;
  error: string | null;
}
