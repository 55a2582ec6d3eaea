import type { AuditJob } from './api.js';
import { duration } from './format.js';

/**
 * What the Audit view says while an audit runs, from the SSE events: the attack, points done and
 * left, time elapsed and an estimate for the current attack (its rate so far). Times are this
 * browser's clock when each attack's first event arrived, so a page that joins late estimates from
 * then on.
 */

export interface ProgressLine {
  state: AuditJob['state'];
  attack: string | null;
  /** Index of the attack among those seen so far (1-based), with the count seen. */
  attackNumber: number;
  done: number;
  total: number;
  left: number;
  elapsedSeconds: number;
  /** Seconds the current attack probably still needs; null until it has a rate. */
  attackEstimateSeconds: number | null;
}

export class ProgressTracker {
  private readonly attacks: string[] = [];
  private attackStartedAt = 0;
  private attackDoneAtStart = 0;
  private readonly startedAt: number;

  constructor(
    job: AuditJob,
    private readonly now: () => number = () => Date.now(),
  ) {
    const started = job.started_at ? Date.parse(job.started_at) : Number.NaN;
    this.startedAt = Number.isFinite(started) ? Math.min(started, now()) : now();
  }

  /** The line for the latest state of the job. */
  update(job: AuditJob): ProgressLine {
    const now = this.now();
    const progress = job.progress;
    if (progress && this.attacks[this.attacks.length - 1] !== progress.attack) {
      this.attacks.push(progress.attack);
      this.attackStartedAt = now;
      this.attackDoneAtStart = progress.done;
    }
    const done = progress?.done ?? 0;
    const total = progress?.total ?? 0;
    const measured = done - this.attackDoneAtStart;
    const spent = (now - this.attackStartedAt) / 1000;
    const attackEstimateSeconds =
      progress && measured > 0 && spent > 0 ? (spent / measured) * (total - done) : null;
    return {
      state: job.state,
      attack: progress?.attack ?? null,
      attackNumber: this.attacks.length,
      done,
      total,
      left: Math.max(0, total - done),
      elapsedSeconds: Math.max(0, (now - this.startedAt) / 1000),
      attackEstimateSeconds,
    };
  }
}

/** The sentence under the progress bar. */
export function progressText(line: ProgressLine): string {
  const elapsed = `elapsed ${duration(line.elapsedSeconds)}`;
  if (line.state === 'queued') return `Queued, waiting for a free slot (${elapsed}).`;
  if (line.attack === null) return `Starting: loading the model and the points (${elapsed}).`;
  const estimate =
    line.attackEstimateSeconds === null
      ? ''
      : `, about ${duration(line.attackEstimateSeconds)} left in this attack`;
  return (
    `Attack ${line.attackNumber} (${line.attack}): ${line.done} of ${line.total} points done, ` +
    `${line.left} left; ${elapsed}${estimate}.`
  );
}
