/**
 * The audit's vocabulary as callers name it, without loading tfjs: a command's help text and flag
 * parsing import this, not the face (index.ts), which loads the engine.
 */
export { AUTOATTACK_VERSIONS, type AutoAttackVersion } from '../../engine/types.js';
