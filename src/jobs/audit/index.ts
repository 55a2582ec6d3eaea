/** Audits: prepare and run one (CLI and service alike), the service's queue of audit jobs and its durable store, shard files for audits split by hand. */
export { defaultStateDir } from '../../data/data-root.js';
export { DEFAULT_MULTIPART_LIMITS, type MultipartLimits } from '../../data/multipart.js';
export { AutoAttackMergeError } from '../../engine/attacks/autoattack.js';
export {
  type AuditModelSource,
  type AuditReport,
  type PreparedAudit,
  prepareAudit,
  runAudit,
} from './audit.js';
export { type AuditIntake, InProcessIntake, type IntakeRequest, type IntakeSession } from './intake.js';
export { WorkerIntake, type WorkerIntakeOptions } from './intake-host.js';
export { type AuditLayout, auditLayout, auditWorkInPoints } from './layout.js';
export {
  AUTOATTACK_VERSIONS,
  type AuditParameters,
  AuditParametersSchema,
  type AutoAttackVersion,
  DEFAULT_AUDIT_POINTS,
  DEFAULT_SEED,
  DEFAULT_VERSION,
  NORMS,
} from './parameters.js';
export {
  type AuditEvent,
  type AuditJob,
  AuditQueue,
  type AuditQueueOptions,
  isFinal,
  ShuttingDownError,
} from './registry.js';
export { mergeShardDocuments, parseShardDocument, runAuditShard, shardDocument } from './shard-files.js';
export { AuditStore } from './store.js';
export { junitReport, markdownReport } from './summaries.js';
