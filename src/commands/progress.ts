/**
 * The CLI's progress display: a bar per phase with an ETA (`ratio eval`, `ratio audit`), and the
 * bar and duration format that `ratio train`'s status line uses too. On a TTY it redraws one line;
 * otherwise (CI logs, pipes) it prints a plain line at every 10% so logs stay short.
 */

export interface ProgressSink {
  write(text: string): void;
  isTTY?: boolean;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 60) return `${seconds.toFixed(0)}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
}

/** `#` for the done share of `width` characters, `.` for the rest. */
export function progressBar(fraction: number, width: number): string {
  const filled = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
}

export class PhaseProgress {
  private phase = '';
  private started = 0;
  private lastDecile = -1;
  private lastDraw = 0;

  constructor(
    private readonly sink: ProgressSink = process.stderr,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Starts a phase (closes the previous one's line). */
  start(phase: string): void {
    this.finishLine();
    this.phase = phase;
    this.started = this.now();
    this.lastDecile = -1;
    this.lastDraw = 0;
  }

  /** Reports `done` of `total` units of the current phase. */
  update(done: number, total: number): void {
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const elapsed = (this.now() - this.started) / 1000;
    const eta = fraction > 0 ? (elapsed * (1 - fraction)) / fraction : Number.NaN;
    const percent = Math.floor(fraction * 100);
    if (this.sink.isTTY) {
      const now = this.now();
      if (now - this.lastDraw < 100 && fraction < 1) return;
      this.lastDraw = now;
      this.sink.write(
        `\r${this.phase.padEnd(24)} [${progressBar(fraction, 24)}] ${String(percent).padStart(3)}% ${done}/${total} ` +
          `elapsed ${formatDuration(elapsed)} eta ${formatDuration(eta)}   `,
      );
      return;
    }
    const decile = Math.floor(fraction * 10);
    if (decile === this.lastDecile) return;
    this.lastDecile = decile;
    this.sink.write(
      `${this.phase}: ${percent}% (${done}/${total}) elapsed ${formatDuration(elapsed)} eta ${formatDuration(eta)}\n`,
    );
  }

  /** Ends the current phase with its wall time. */
  done(): number {
    const seconds = (this.now() - this.started) / 1000;
    this.finishLine();
    this.sink.write(`${this.phase}: done in ${formatDuration(seconds)}\n`);
    this.phase = '';
    return seconds;
  }

  private finishLine(): void {
    if (this.sink.isTTY && this.lastDraw > 0) this.sink.write('\n');
    this.lastDraw = 0;
  }
}
