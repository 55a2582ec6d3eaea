import { writeFile } from 'node:fs/promises';
import { type AuditReport, junitReport, markdownReport } from '../jobs/audit/index.js';

/** What `ratio audit` and `ratio audit merge` print, and the gate's exit code. */

export function printAuditReport(report: AuditReport): void {
  for (const warning of report.warnings) console.error(`warning: ${warning}`);
  console.log(
    `clean accuracy ${(report.clean_accuracy * 100).toFixed(2)}%, robust accuracy ` +
      `${(report.robust_accuracy * 100).toFixed(2)}% (${report.norm}, eps ${report.eps}, n ${report.n}, ` +
      `${report.version}, seed ${report.seed}, ${report.backend}, ${report.seconds.toFixed(1)} s)`,
  );
  for (const step of report.per_attack) {
    console.log(
      `  after ${step.name.padEnd(9)} ${(step.robust_accuracy_after * 100).toFixed(2)}% ` +
        `(${step.broken} broken, ${step.seconds.toFixed(1)} s)`,
    );
  }
}

/** 0 when the robust accuracy meets the threshold (or none is set), 1 under it. */
export function gateExitCode(report: AuditReport, minRobustAccuracy: number | undefined): number {
  if (minRobustAccuracy !== undefined && report.robust_accuracy < minRobustAccuracy) {
    console.error(`robust accuracy ${report.robust_accuracy} is below the threshold ${minRobustAccuracy}`);
    return 1;
  }
  return 0;
}

/** Writes the --junit and --markdown files that were asked for. */
export async function writeSummaries(
  report: AuditReport,
  targets: { junit?: string; markdown?: string; minRobustAccuracy?: number },
  name: string,
): Promise<void> {
  if (targets.junit) await writeFile(targets.junit, junitReport(report, targets.minRobustAccuracy, name));
  if (targets.markdown)
    await writeFile(targets.markdown, markdownReport(report, targets.minRobustAccuracy, name));
}
