import { initBackend } from '../src/engine/backend/backend.js';

// Every test file runs on the backend the project selects (RATIO_BACKEND forces one).
await initBackend();
