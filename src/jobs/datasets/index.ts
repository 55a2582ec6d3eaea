/** Data sets and image sets as the commands name them: fetch, load, and the OOD image sets of an evaluation. */
export { labelCounts } from '../../data/dataset.js';
export { fetchDataset, isOfficialDatasetName, OFFICIAL_DATASETS } from '../../data/fetch.js';
export type { ImageSet } from '../../data/image-set.js';
export {
  checkImageShape,
  defaultOodSpecs,
  loadImageSet,
  parseOodSpec,
  uniformNoise,
} from '../../data/image-sets.js';
export { type DatasetFormat, loadDataset, pairedLabelsName } from '../../data/load.js';
