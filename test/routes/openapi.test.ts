import { readFile } from 'node:fs/promises';
import { createConfig, lintFromString } from '@redocly/openapi-core';
import { describe, expect, it } from 'vitest';
import { documentText, typesText } from '../../openapi/generate.js';

describe('openapi/openapi.json', () => {
  it('matches the document generated from the code (run `npm run openapi` after changing a route)', async () => {
    const generated = documentText();
    expect(await readFile('openapi/openapi.json', 'utf8')).toBe(generated);
    // The client types are generated from it (formatted by biome): they must name every operation.
    const types = await readFile('openapi/schema.d.ts', 'utf8');
    for (const operation of ['predict', 'counterfactuals', 'worstCaseOod', 'createAudit', 'cancelAudit']) {
      expect(types).toContain(`${operation}: {`);
    }
    expect((await typesText(generated)).length).toBeGreaterThan(1000);
  });

  it('passes the redocly recommended lint offline, with an operationId and examples everywhere', async () => {
    const source = documentText();
    const config = await createConfig({ extends: ['recommended'] });
    const problems = await lintFromString({ source, absoluteRef: 'openapi.json', config });
    const errors = problems.filter((p) => p.severity === 'error').map((p) => `${p.ruleId}: ${p.message}`);
    expect(errors).toEqual([]);
    const doc = JSON.parse(source) as {
      paths: Record<
        string,
        Record<
          string,
          {
            operationId?: string;
            responses: Record<string, { content?: Record<string, { schema?: unknown; example?: unknown }> }>;
          }
        >
      >;
      components: { schemas: Record<string, { example?: unknown }> };
    };
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        expect(op.operationId, `${method} ${path}`).toMatch(/^[a-zA-Z]+$/);
      }
    }
    for (const name of ['PredictResponse', 'OodResponse', 'CounterfactualResponse', 'AuditJob', 'Problem']) {
      expect(JSON.stringify(doc.components.schemas[name]), name).toContain('example');
    }
  });
});
