/** Models as the use cases load them: from a directory, a folder of them or an upload; the classifier type and its typed errors. */
export { ModelDirError, type ModelFiles, readModelPath } from '../../data/model-dir.js';
export { type Classifier, ModelContractError } from '../../engine/model/classifier.js';
export { ModelFileError, ModelLimitError } from '../../engine/model/files.js';
export { NonFiniteLogitsError } from '../../engine/model/logits.js';
export { OnnxExternalDataError } from '../../engine/model/onnx/index.js';
export {
  CHECKED_MODEL_LIMITS,
  limitVariable,
  loadOptions,
  localModelLimits,
  MODEL_LIMIT_VARIABLES,
  type ModelLimits,
  parseModelLimit,
  SERVICE_MODEL_LIMITS,
  serviceModelLimits,
} from './limits.js';
export { inspectModel, loadModelDir, loadModelsFolder, loadUploadedModel, readLocalModel } from './load.js';
