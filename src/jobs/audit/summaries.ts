import type { AuditReport } from './audit.js';

/**
 * An audit report as the summaries CI reads: JUnit XML for test panels and Markdown for step
 * summaries or PR comments. `ratio audit --junit/--markdown` writes them; the service answers them
 * for a finished audit (GET /v1/audits/{id}/report).
 */

const escapeXml = (text: string) =>
  text.replace(
    /[<>&"']/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!,
  );

const percent = (value: number) => `${(value * 100).toFixed(2)}%`;

/**
 * JUnit XML for CI test panels: one test case for the gate (failed under the threshold) and one per
 * attack (its cumulative robust accuracy), plus one per warning as a skipped case.
 */
export function junitReport(
  report: AuditReport,
  minRobustAccuracy: number | undefined,
  name: string,
): string {
  const gateFailed = minRobustAccuracy !== undefined && report.robust_accuracy < minRobustAccuracy;
  const cases: string[] = [];
  const threat = `${report.norm} eps ${report.eps}`;
  const gate = `robust accuracy ${percent(report.robust_accuracy)} >= ${minRobustAccuracy === undefined ? 'no threshold' : percent(minRobustAccuracy)} (${threat})`;
  cases.push(
    `    <testcase classname="${escapeXml(name)}" name="${escapeXml(gate)}" time="${report.seconds.toFixed(3)}">` +
      (gateFailed
        ? `\n      <failure message="${escapeXml(`robust accuracy ${report.robust_accuracy} is below ${minRobustAccuracy}`)}"/>\n    `
        : '') +
      '</testcase>',
  );
  for (const step of report.per_attack) {
    const title = `after ${step.name}: ${percent(step.robust_accuracy_after)} robust, ${step.broken} broken`;
    cases.push(
      `    <testcase classname="${escapeXml(name)}" name="${escapeXml(title)}" time="${step.seconds.toFixed(3)}"/>`,
    );
  }
  for (const warning of report.warnings) {
    cases.push(
      `    <testcase classname="${escapeXml(name)}" name="warning"><skipped message="${escapeXml(warning)}"/></testcase>`,
    );
  }
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites tests="${cases.length}" failures="${gateFailed ? 1 : 0}">`,
    `  <testsuite name="${escapeXml(name)}" tests="${cases.length}" failures="${gateFailed ? 1 : 0}" skipped="${report.warnings.length}" time="${report.seconds.toFixed(3)}">`,
    ...cases,
    '  </testsuite>',
    '</testsuites>',
    '',
  ].join('\n');
}

/** A Markdown summary (e.g. for $GITHUB_STEP_SUMMARY or a PR comment). */
export function markdownReport(
  report: AuditReport,
  minRobustAccuracy: number | undefined,
  name: string,
): string {
  const gateFailed = minRobustAccuracy !== undefined && report.robust_accuracy < minRobustAccuracy;
  const verdict =
    minRobustAccuracy === undefined
      ? 'no threshold'
      : gateFailed
        ? `**FAIL** (< ${percent(minRobustAccuracy)})`
        : `pass (>= ${percent(minRobustAccuracy)})`;
  const lines = [
    `### Robustness audit: ${name}`,
    '',
    `AutoAttack ${report.version}, ${report.norm} eps ${report.eps}, n ${report.n}, seed ${report.seed} (${report.backend}, ${report.seconds.toFixed(1)} s)`,
    '',
    '| | value |',
    '| --- | --- |',
    `| clean accuracy | ${percent(report.clean_accuracy)} |`,
    `| robust accuracy | ${percent(report.robust_accuracy)} |`,
    `| gate | ${verdict} |`,
    '',
    '| attack | robust accuracy after | broken | seconds |',
    '| --- | --- | --- | --- |',
    ...report.per_attack.map(
      (a) => `| ${a.name} | ${percent(a.robust_accuracy_after)} | ${a.broken} | ${a.seconds.toFixed(1)} |`,
    ),
  ];
  if (report.warnings.length > 0) lines.push('', ...report.warnings.map((w) => `- warning: ${w}`));
  return `${lines.join('\n')}\n`;
}
