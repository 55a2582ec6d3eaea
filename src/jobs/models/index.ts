/** Models as the use cases load them: from a directory, a folder of them or an upload; the classifier type and its typed errors. */
export { ModelDirError, type ModelFiles, readModelPath } from '../../data/model-dir.js';
export { type Classifier, ModelContractError } from '../../engine/model/classifier.js';
export { ModelFileError } from '../../engine/model/files.js';
export { NonFiniteLogitsError } from '../../engine/model/logits.js';
export { inspectModel, loadModelDir, loadModelsFolder, loadUploadedModel } from './load.js';
