import { parseArgs } from 'node:util';
import {
  type DatasetFormat,
  fetchDataset,
  isOfficialDatasetName,
  labelCounts,
  loadDataset,
  OFFICIAL_DATASETS,
} from '../jobs/datasets/index.js';
import type { CommandModule } from './command.js';

/** `ratio datasets fetch|list|info`: official archives, and a quick look at any data set on disk. */

const HELP = `usage: ratio datasets <subcommand>

  fetch <${Object.keys(OFFICIAL_DATASETS).join('|')}> --dir <dir>
        download the official files, verify their published MD5s, unpack archives
  list  the official data sets, URLs and checksums
  info <path> [--format <f>] [--coarse]
        load a data set (CIFAR binary, IDX(.gz), .npy, image folder, zip) and print size, shape, classes
`;

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function fetchCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: { dir: { type: 'string' } },
  });
  const name = positionals[0];
  if (!name || !isOfficialDatasetName(name)) {
    console.error(
      `ratio datasets fetch: the data set must be one of ${Object.keys(OFFICIAL_DATASETS).join(', ')}, got '${name ?? ''}'`,
    );
    return 2;
  }
  if (!values.dir) {
    console.error('ratio datasets fetch: --dir is required');
    return 2;
  }
  let lastReport = 0;
  const result = await fetchDataset(name, values.dir, {
    onProgress: ({ file, bytes, totalBytes }) => {
      if (Date.now() - lastReport < 2000) return;
      lastReport = Date.now();
      const share = totalBytes ? ` (${((100 * bytes) / totalBytes).toFixed(0)}%)` : '';
      console.error(`${file}: ${(bytes / 1e6).toFixed(1)} MB${share}`);
    },
  });
  for (const file of result.files)
    console.log(`${file.file}: verified (${file.source}), ${file.unpacked} entries unpacked`);
  if (result.note) console.log(`note: ${result.note}`);
  return 0;
}

async function infoCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: { format: { type: 'string' }, coarse: { type: 'boolean' } },
  });
  if (!positionals[0]) {
    console.error('ratio datasets info: a path is required');
    return 2;
  }
  const set = await loadDataset(positionals[0], {
    // loadDataset rejects an unknown format by name.
    format: values.format as DatasetFormat | undefined,
    cifar100Labels: values.coarse ? 'coarse' : 'fine',
  });
  const counts = labelCounts(set);
  console.log(
    JSON.stringify(
      {
        size: set.size,
        shape: set.shape,
        unlabelled: set.unlabelled,
        classes: set.classNames.map((name, label) => ({ label, name, count: counts[label] ?? 0 })),
      },
      null,
      2,
    ),
  );
  return 0;
}

export const summary = 'fetch official data sets (verified), or describe a data set on disk';

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    if (sub === 'fetch') return await fetchCommand(rest);
    if (sub === 'info') return await infoCommand(rest);
    if (sub === 'list') {
      for (const [name, spec] of Object.entries(OFFICIAL_DATASETS)) {
        console.log(`${name}: ${spec.description}`);
        for (const file of spec.files)
          console.log(`  ${file.file}  md5 ${file.md5}  ${file.urls.join(' | ')}`);
      }
      return 0;
    }
    console.log(HELP);
    return sub === undefined || sub === '--help' || sub === 'help' ? 0 : 2;
  } catch (error) {
    console.error(`ratio datasets ${sub}: ${message(error)}`);
    return 2;
  }
}

const command: CommandModule = { summary, run };
export default command;
