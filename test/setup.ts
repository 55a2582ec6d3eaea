import { initBackend } from '../src/engine/backend/backend.js';

// The `ratio` commands tests start run the TypeScript sources too (bin/ratio.js), never a stale dist/.
process.env.RATIO_FROM_SOURCE = '1';

// Every test file runs on the backend the project selects (RATIO_BACKEND forces one).
await initBackend();
