import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { commandOptions, UsageError } from './args.js';

/**
 * `ratio audit merge <shard.json>...`: the report of an audit from the shard files that
 * `ratio audit --shard i/N` wrote (every shard of one audit, once each); the same gate and exit
 * codes as `ratio audit`.
 */

const HELP = `usage: ratio audit merge <shard.json>... [--report <file>] [--min-robust-accuracy <p>]

  <shard.json>...               the files of 'ratio audit --shard i/N --report <file>', all N of them
  --report <file>               write the merged JSON report there
  --min-robust-accuracy <p>     exit 1 when robust accuracy is below p (in [0,1])
  --junit <file>, --markdown <file>   summaries as 'ratio audit' writes them

Exit codes: 0 pass, 1 under --min-robust-accuracy, 2 bad input (unreadable, foreign, missing or
duplicate shards).
`;

function parseMergeArguments(argv: string[]) {
  return parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: commandOptions(['report', 'min-robust-accuracy', 'junit', 'markdown']),
  });
}

export async function run(argv: string[]): Promise<number> {
  const { ShardError } = await import('../jobs/sharding/index.js');
  try {
    let parsed: ReturnType<typeof parseMergeArguments>;
    try {
      parsed = parseMergeArguments(argv);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
    const { values, positionals: files } = parsed;
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (files.length === 0) throw new UsageError('name the shard files to merge');
    const threshold = values['min-robust-accuracy'];
    const minRobustAccuracy = threshold === undefined ? undefined : Number(threshold);
    if (minRobustAccuracy !== undefined && !(minRobustAccuracy >= 0 && minRobustAccuracy <= 1)) {
      throw new UsageError(`--min-robust-accuracy must lie in [0, 1], got '${threshold}'`);
    }
    const { mergeShardDocuments, parseShardDocument } = await import('../jobs/audit/index.js');
    const documents = [];
    for (const file of files) {
      const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
        throw new UsageError(`${file}: cannot read (${error.code ?? error.message})`);
      });
      documents.push(parseShardDocument(text, file));
    }
    const report = mergeShardDocuments(documents);
    const { printAuditReport, gateExitCode, writeSummaries } = await import('./audit-output.js');
    const document = {
      audit: documents[0].audit,
      shards: documents[0].shards,
      min_robust_accuracy: minRobustAccuracy ?? null,
      ...report,
    };
    const reportPath = values.report;
    if (reportPath) await writeFile(reportPath, `${JSON.stringify(document, null, 2)}\n`);
    printAuditReport(report);
    await writeSummaries(report, { ...values, minRobustAccuracy }, `audit ${documents[0].audit}`);
    return gateExitCode(report, minRobustAccuracy);
  } catch (error) {
    if (error instanceof UsageError || error instanceof ShardError) {
      console.error(`ratio audit merge: ${error.message}\n\n${HELP}`);
      return 2;
    }
    const { AutoAttackMergeError } = await import('../jobs/audit/index.js');
    if (error instanceof AutoAttackMergeError) {
      console.error(`ratio audit merge: ${error.message}`);
      return 2;
    }
    throw error;
  }
}
