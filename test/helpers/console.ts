import { vi } from 'vitest';

/**
 * Silences a command's console and progress output for the length of a test, keeping what it wrote
 * to console.error (the messages a test checks).
 */
export function quiet(): { errors: () => string; restore: () => void } {
  const errors: string[] = [];
  const spies = [
    vi.spyOn(console, 'log').mockImplementation(() => {}),
    vi.spyOn(console, 'error').mockImplementation((message: unknown) => {
      errors.push(String(message));
    }),
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true),
  ];
  return {
    errors: () => errors.join('\n'),
    restore: () => {
      for (const spy of spies) spy.mockRestore();
    },
  };
}
