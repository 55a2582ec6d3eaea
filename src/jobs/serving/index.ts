/** The service's synchronous use cases (predict, worst-case OOD, counterfactuals) and what runs them: batcher, compute threads, admission by cost and by slots. */
export type { BatcherOptions } from './batcher.js';
export { InProcessCompute, type ModelCompute } from './compute.js';
export { ModelRouter, WorkerCompute } from './compute-host.js';
export { counterfactualsOf, DEFAULT_COUNTERFACTUAL_RADII } from './counterfactual-request.js';
export type { ImageInput, ImageLimits } from './images.js';
export { createInferenceMetrics, InferenceService } from './inference.js';
export { InferenceProbe } from './inference-probe.js';
export { worstCaseOod } from './ood-request.js';
export { oodThreshold, predictImages, verdictOf } from './predict.js';
export { auditForwardPasses, checkAuditCost, checkRequestCost, RequestCostError } from './request-cost.js';
export { ComputeSemaphore } from './semaphore.js';
