import type { OpenAPIHono } from '@hono/zod-openapi';
import type { AuditIntake, AuditQueue, IntakeSession } from '../jobs/audit/index.js';
import type { Classifier, ModelFiles } from '../jobs/models/index.js';
import type { ComputeSemaphore, InferenceService, ModelCompute } from '../jobs/serving/index.js';
import type { ImageLimits } from './images.js';
import { notFound } from './problem.js';

/**
 * Hono environment of the service: the request id (request-id middleware), the principal (API key
 * id, `dev` or `anonymous`, set by the auth middleware), the id of an accepted audit and the intake
 * session of an audit upload (multipart.ts).
 */
export type ServiceEnv = {
  Variables: { requestId: string; principal: string; auditId: string; intake: IntakeSession };
};
export type ServiceApp = OpenAPIHono<ServiceEnv>;

export interface ServiceLimits extends ImageLimits {
  /** Largest body of the model endpoints, bytes. */
  bodyBytes: number;
  /** Largest audit upload (model + data set), bytes. */
  auditBodyBytes: number;
  /** Wall-clock budget of one synchronous computation (predict, ood, counterfactuals), ms. */
  requestTimeoutMs: number;
  /** Most APGD iterations a synchronous request may ask for. */
  maxIterations: number;
  /** Largest estimated cost of one synchronous request (images x iterations x restarts x model FLOPs). */
  maxRequestFlops: number;
  /** Largest estimated cost of one audit. */
  maxAuditFlops: number;
  /** Audit event streams (SSE) one key may hold open at once. */
  sseStreamsPerKey: number;
  /** Audit event streams open at once over all keys. */
  sseStreams: number;
}

/** What the route modules share. */
export interface ServiceContext {
  models: ReadonlyMap<string, Classifier>;
  compute: ComputeSemaphore;
  /** Predictions through the dynamic batcher (off the event loop in the server). */
  inference: InferenceService;
  /** Worst-case OOD and counterfactuals (a worker thread of their own in the server). */
  analysis: ModelCompute;
  audits: AuditQueue;
  /** Where audit uploads are parsed, decoded and checked (a worker thread per upload in the server). */
  intake: AuditIntake;
  /** Files of the served models loaded from files: audits of them travel and are stored as these. */
  servedFiles?: ReadonlyMap<string, ModelFiles>;
  limits: ServiceLimits;
}

export function findModel(context: ServiceContext, name: string): Classifier {
  const model = context.models.get(name);
  if (!model) {
    throw notFound(
      'model',
      'model',
      `no model named '${name}'; served: ${[...context.models.keys()].join(', ') || '(none)'}`,
    );
  }
  return model;
}

/**
 * Runs synchronous compute (predict, worst-case OOD, counterfactuals) under the compute semaphore
 * with one deadline from arrival: it bounds the wait for a slot (behind a long counterfactual, say)
 * and the work itself, which gets it as its abort signal. Past it the answer is a 504.
 */
export function computeWithin<T>(
  context: ServiceContext,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const deadline = AbortSignal.timeout(context.limits.requestTimeoutMs);
  return context.compute.run(() => work(deadline), deadline);
}
