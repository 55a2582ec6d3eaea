import type { Schedule } from './config.js';

export interface ScheduleSettings {
  schedule: Schedule;
  lr: number;
  /** Linear warm-up from lr / warmupSteps to lr over this many steps (0 = none). */
  warmupSteps: number;
  totalSteps: number;
  /** Step schedule: step indices where the rate is multiplied by `gamma`. */
  milestones: readonly number[];
  gamma: number;
}

/**
 * Learning rate of optimisation step `step` (0-based): linear warm-up, then cosine decay to 0 over
 * the remaining steps, piecewise-constant decay at the milestones, or constant.
 */
export function learningRateAt(step: number, settings: ScheduleSettings): number {
  const { lr, warmupSteps, totalSteps } = settings;
  if (step < warmupSteps) return (lr * (step + 1)) / warmupSteps;
  switch (settings.schedule) {
    case 'cosine': {
      const span = Math.max(totalSteps - warmupSteps, 1);
      const progress = Math.min((step - warmupSteps) / span, 1);
      return 0.5 * lr * (1 + Math.cos(Math.PI * progress));
    }
    case 'step': {
      const passed = settings.milestones.filter((milestone) => step >= milestone).length;
      return lr * settings.gamma ** passed;
    }
    default:
      return lr;
  }
}
