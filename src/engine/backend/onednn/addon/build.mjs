// Builds the oneDNN addon (onednn.cc) with node-gyp; the root package's `install` script, so `npm ci`
// runs it. It never fails the install: where a C++ compiler, libdnnl-dev or the Node headers are
// missing (or RATIO_SKIP_ONEDNN_BUILD=1), it says so and the engine runs on the wasm kernels.
// node-gyp gets the headers of the Node that runs it (--nodedir), so it never downloads any.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const addonDir = dirname(fileURLToPath(import.meta.url));
const built = join(addonDir, 'build', 'Release', 'ratio_onednn.node');

function skip(why) {
  // A build left from before would still load: the outcome must be what this run says.
  rmSync(join(addonDir, 'build'), { recursive: true, force: true });
  console.warn(`ratio-audit: oneDNN kernels not built (${why}); the engine runs on its wasm kernels.`);
  process.exit(0);
}

function succeeds(command, args, input) {
  const run = spawnSync(command, args, { input, encoding: 'utf8' });
  return run.status === 0;
}

if (process.env.RATIO_SKIP_ONEDNN_BUILD === '1') skip('RATIO_SKIP_ONEDNN_BUILD=1');

const compiler = process.env.CXX || 'c++';
if (!succeeds(compiler, ['--version']))
  skip(`no C++ compiler '${compiler}' (apt-get install build-essential)`);
if (
  !succeeds(compiler, ['-fsyntax-only', '-std=c++17', '-x', 'c++', '-'], '#include <oneapi/dnnl/dnnl.hpp>\n')
) {
  skip('no oneDNN headers (apt-get install libdnnl-dev)');
}

// The headers of the running Node: <prefix>/include/node, as node-gyp's --nodedir expects.
const nodeDir = process.env.npm_config_nodedir || join(dirname(process.execPath), '..');
if (!existsSync(join(nodeDir, 'include', 'node', 'node_api.h'))) {
  skip(`no Node headers under ${join(nodeDir, 'include', 'node')}`);
}

// npm ships node-gyp and names it to lifecycle scripts; else the one beside the npm that runs us.
const require = createRequire(import.meta.url);
const candidates = [
  process.env.npm_config_node_gyp,
  join(
    dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  ),
];
try {
  candidates.push(require.resolve('node-gyp/bin/node-gyp.js'));
} catch {
  // not installed as a package: the candidates above
}
const nodeGyp = candidates.find((path) => path && existsSync(path));
if (!nodeGyp) skip('node-gyp not found');
try {
  require.resolve('node-addon-api');
} catch {
  skip('node-addon-api is not installed');
}

const build = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodeDir}`], {
  cwd: addonDir,
  stdio: ['ignore', 'inherit', 'inherit'],
});
if (build.status !== 0) {
  skip(`node-gyp failed with status ${build.status}`);
}
// Load it once in a child: a library that links but does not load must not be left in place.
const load = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(built)}).version()`], {
  encoding: 'utf8',
});
if (load.status !== 0) {
  skip(`the built addon does not load: ${load.stderr.trim().split('\n')[0]}`);
}
console.log(`ratio-audit: oneDNN kernels built (${built}).`);
