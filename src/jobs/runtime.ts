/** The process's compute backend: chosen once per process, then reported (name, threads, tfjs memory). */
export {
  type BackendInfo,
  backendInfo,
  initBackend,
  tensorMemory,
  tfjsVersion,
} from '../engine/backend/backend.js';
