/** The offline evaluation of a model (accuracy, robustness, calibration, OOD) and its report. */
export { DEFAULT_EVAL_SETTINGS, type EvalSettings, evaluateModel, writeCalibration } from './evaluate.js';
