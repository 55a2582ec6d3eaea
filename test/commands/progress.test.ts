import { describe, expect, it } from 'vitest';
import { formatDuration, PhaseProgress } from '../../src/commands/progress.js';

describe('PhaseProgress', () => {
  it('prints a line per 10% with an ETA off a TTY', () => {
    const lines: string[] = [];
    let clock = 0;
    const progress = new PhaseProgress({ write: (t) => lines.push(t), isTTY: false }, () => clock);
    progress.start('attack');
    for (let done = 1; done <= 20; done++) {
      clock += 1000;
      progress.update(done, 20);
    }
    progress.done();
    // deciles 0 (5%) .. 10 (100%): 11 lines, then the done line
    expect(lines.length).toBe(12);
    expect(lines[0]).toBe('attack: 5% (1/20) elapsed 1s eta 19s\n');
    expect(lines[10]).toBe('attack: 100% (20/20) elapsed 20s eta 0s\n');
    expect(lines[11]).toBe('attack: done in 20s\n');
  });

  it('formats durations', () => {
    expect(formatDuration(5)).toBe('5s');
    expect(formatDuration(125)).toBe('2m05s');
    expect(formatDuration(7322)).toBe('2h02m');
    expect(formatDuration(Number.NaN)).toBe('?');
  });
});
