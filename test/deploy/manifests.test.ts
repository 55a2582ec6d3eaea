import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { validate } from 'dockerfile-utils';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

/**
 * Every deployment file, parsed (YAML with `yaml`, Dockerfiles with dockerfile-ast and linted with
 * dockerfile-utils, offline) and checked against the code: ports, probe paths that are routed, env
 * names that src/ reads, `ratio` commands and flags that the CLI accepts. There is no Docker engine
 * here: this is what keeps the files from drifting away from the service they deploy.
 */

const ROOT = path.resolve('.');
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');

/** Env names a manifest may set that src/ does not read, and who reads them. */
const EXTERNAL_ENV: Record<string, string> = {
  NODE_ENV: 'Node libraries (hono, pino) and tfjs production mode',
  DEBIAN_FRONTEND: 'apt-get during the image build',
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory())
      return name === 'node_modules' || name === 'build' ? [] : sourceFiles(full);
    return /\.(ts|mjs)$/.test(name) ? [full] : [];
  });
}

const SOURCES = sourceFiles(path.join(ROOT, 'src')).map((file) => readFileSync(file, 'utf8'));

/** Env names the code reads: `process.env.X`, `env.X`, `env['X']` anywhere under src/. */
const ENV_READ = new Set(
  SOURCES.flatMap((text) => [
    ...[...text.matchAll(/\benv\.([A-Z][A-Z0-9_]*)/g)].map((m) => m[1]),
    ...[...text.matchAll(/\benv\[['"]([A-Z][A-Z0-9_]*)['"]\]/g)].map((m) => m[1]),
  ]),
);

/** Paths the service routes (`path: '/...'` of every route definition). */
const ROUTED = new Set(
  sourceFiles(path.join(ROOT, 'src/routes')).flatMap((file) =>
    [...readFileSync(file, 'utf8').matchAll(/\bpath:\s*'(\/[^']*)'/g)].map((m) => m[1]),
  ),
);

/** The CLI's commands, as src/cli.ts registers them: name -> module file. */
const COMMANDS = new Map(
  [
    ...read('src/cli.ts').matchAll(
      /^\s*'?([a-z][a-z-]*)'?:\s*\(\)\s*=>\s*import\('\.\/commands\/([\w-]+)\.js'\)/gm,
    ),
  ].map((m) => [m[1], m[2]]),
);

/**
 * The flags a command module accepts: the keys of its parseArgs options written out
 * (`name: { type: ... }`) and the names it declares through `commandOptions([...], [...])`.
 */
function acceptedFlags(moduleName: string): Set<string> {
  const text = read(`src/commands/${moduleName}.ts`);
  const written = [...text.matchAll(/^\s*'?([a-z][a-z0-9-]*)'?:\s*\{\s*type:\s*'(?:string|boolean)'/gm)].map(
    (m) => m[1],
  );
  const declared = [...text.matchAll(/commandOptions\(([^)]*)\)/g)].flatMap((call) =>
    [...(call[1] ?? '').matchAll(/'([a-z][a-z0-9-]*)'/g)].map((m) => m[1]),
  );
  return new Set([...written, ...declared]);
}

function commandExists(name: string): boolean {
  return COMMANDS.has(name);
}

/** `ratio <command> [sub] ...flags`: one invocation found in a manifest's shell text. */
interface Invocation {
  command: string;
  subcommand?: string;
  flags: string[];
  /** Each flag's value (the token after it), for cross-checks. */
  values: Map<string, string>;
  where: string;
}

/** Finds `ratio ...` / `bin/ratio.js ...` invocations in shell text (up to the next `&&`, `;`, `|`). */
function invocations(shell: string, where: string): Invocation[] {
  const found: Invocation[] = [];
  const tokens = shell.replace(/\\\n/g, ' ').split(/\s+/).filter(Boolean);
  for (let i = 0; i < tokens.length; i++) {
    if (!/^(ratio|(\S*\/)?bin\/ratio\.js)$/.test(tokens[i])) continue;
    const command = tokens[i + 1]?.replace(/^["']|["']$/g, '');
    // Not a command word (e.g. the user name `ratio` in `useradd ... ratio &&`): not an invocation.
    if (!command || !/^[a-z][a-z-]*$/.test(command)) continue;
    const invocation: Invocation = { command, flags: [], values: new Map(), where };
    let j = i + 2;
    const next = tokens[j];
    const subModule = `${COMMANDS.get(command) ?? command}-${next}`;
    if (next && /^[a-z]+$/.test(next) && existsModule(subModule)) {
      invocation.subcommand = next;
      j += 1;
    }
    for (; j < tokens.length && !/^(&&|;|\||\|\||exec)$/.test(tokens[j]) && !tokens[j].endsWith(';'); j++) {
      const flag = /^--([a-z][a-z0-9-]*)(=.*)?$/.exec(tokens[j]);
      if (flag) {
        invocation.flags.push(flag[1]);
        invocation.values.set(flag[1], flag[2]?.slice(1) ?? tokens[j + 1]?.replace(/^["']|["']$/g, '') ?? '');
      }
    }
    found.push(invocation);
  }
  return found;
}

function existsModule(name: string): boolean {
  try {
    statSync(path.join(ROOT, `src/commands/${name}.ts`));
    return true;
  } catch {
    return false;
  }
}

/** Throws unless the command exists and accepts every flag of the invocation. */
function checkInvocation(invocation: Invocation): void {
  const { command, subcommand, where } = invocation;
  expect(commandExists(command), `${where}: 'ratio ${command}' is not a command of src/cli.ts`).toBe(true);
  const moduleName = subcommand ? `${COMMANDS.get(command)}-${subcommand}` : COMMANDS.get(command);
  const accepted = moduleName ? acceptedFlags(moduleName) : new Set<string>();
  for (const flag of invocation.flags) {
    expect(
      accepted.has(flag),
      `${where}: 'ratio ${command}${subcommand ? ` ${subcommand}` : ''}' has no --${flag}`,
    ).toBe(true);
  }
}

/** Throws unless src/ reads the env name (or it is one of the documented external ones). */
function checkEnvName(name: string, where: string, shellUses = ''): void {
  const read = ENV_READ.has(name) || name in EXTERNAL_ENV || new RegExp(`\\$\\{?${name}\\b`).test(shellUses);
  expect(read, `${where}: env ${name} is set but nothing reads it`).toBe(true);
}

function checkHealthUrl(url: string, where: string): { port: number; path: string } {
  const match = /^http:\/\/127\.0\.0\.1:(\d+|'\+process\.env\.PORT\+')(\/[^'"]*)/.exec(url);
  expect(match, `${where}: '${url}' is not a loopback health URL`).not.toBeNull();
  const probe = match![2];
  expect(ROUTED.has(probe), `${where}: probe path ${probe} is not routed in src/routes`).toBe(true);
  return { port: /^\d+$/.test(match![1]) ? Number(match![1]) : Number.NaN, path: probe };
}

interface ParsedDockerfile {
  instructions: Instruction[];
  stages: Array<{ image: string; name: string | null; instructions: Instruction[] }>;
  args: Map<string, string>;
}

function parseDockerfile(file: string): ParsedDockerfile {
  const text = read(file);
  const dockerfile = DockerfileParser.parse(text);
  const instructions = dockerfile.getInstructions();
  const stages: ParsedDockerfile['stages'] = [];
  const args = new Map<string, string>();
  for (const instruction of instructions) {
    const keyword = instruction.getKeyword();
    if (keyword === 'FROM') {
      const [image, , name] = instruction.getArgumentsContent()!.split(/\s+/);
      stages.push({ image, name: name ?? null, instructions: [] });
    } else if (keyword === 'ARG') {
      const [key, value] = instruction.getArgumentsContent()!.split('=');
      args.set(key, value ?? '');
    } else stages.at(-1)?.instructions.push(instruction);
  }
  return { instructions, stages, args };
}

const keywordOf = (stage: ParsedDockerfile['stages'][number], keyword: string) =>
  stage.instructions.filter((i) => i.getKeyword() === keyword);

/** The shell commands of a stage's RUN instructions. */
const runsOf = (stage: ParsedDockerfile['stages'][number]) =>
  keywordOf(stage, 'RUN').map((i) => i.getArgumentsContent()!);

function envOf(stage: ParsedDockerfile['stages'][number]): Map<string, string> {
  const env = new Map<string, string>();
  for (const instruction of keywordOf(stage, 'ENV')) {
    for (const property of (
      instruction as unknown as { getProperties(): Array<{ getName(): string; getValue(): string | null }> }
    ).getProperties()) {
      env.set(property.getName(), property.getValue() ?? '');
    }
  }
  return env;
}

const PACKAGE = JSON.parse(read('package.json')) as {
  dependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
};

function checkDockerfileCommon(file: string, parsed: ParsedDockerfile) {
  // dockerfile-utils: the same checks as VS Code's Dockerfile support (syntax, flags, durations, ports).
  const diagnostics = validate(read(file)).map((d) => `${file}:${d.range.start.line + 1}: ${d.message}`);
  expect(diagnostics).toEqual([]);
  const final = parsed.stages.at(-1)!;
  const env = envOf(final);
  for (const stage of parsed.stages) {
    for (const name of envOf(stage).keys()) checkEnvName(name, `${file} ENV`);
  }
  // The port the service listens on (PORT) is the one exposed and the one the health check asks.
  const exposed = keywordOf(final, 'EXPOSE').map((i) => Number(i.getArgumentsContent()));
  expect(exposed).toEqual([Number(env.get('PORT'))]);
  expect(env.get('HOST')).toBe('0.0.0.0');
  const healthcheck = keywordOf(final, 'HEALTHCHECK')[0].getArgumentsContent()!;
  const url = /fetch\('([^)]*)\)/.exec(healthcheck)?.[1] ?? '';
  checkHealthUrl(url.replace(/'$/, ''), `${file} HEALTHCHECK`);
  expect(healthcheck).toContain('process.env.PORT');
  // Not root in the final image.
  const user = keywordOf(final, 'USER').at(-1)?.getArgumentsContent();
  expect(user, `${file}: no USER in the final stage`).toBeDefined();
  expect(['root', '0']).not.toContain(user);
  // The command is `ratio serve` with flags it accepts.
  const cmd = JSON.parse(keywordOf(final, 'CMD')[0].getArgumentsContent()!) as string[];
  const found = invocations(cmd.join(' '), `${file} CMD`);
  expect(found.map((i) => i.command)).toEqual(['serve']);
  for (const invocation of found) checkInvocation(invocation);
  // Every RUN that calls `ratio` uses real flags too.
  for (const run of parsed.instructions.filter((i) => i.getKeyword() === 'RUN')) {
    for (const invocation of invocations(run.getArgumentsContent() ?? '', `${file} RUN`))
      checkInvocation(invocation);
  }
  checkCompiled(file, parsed);
  return { final, env };
}

/** The image runs the compiled JavaScript: dist/ from a stage that built it, no TypeScript sources. */
function checkCompiled(file: string, parsed: ParsedDockerfile) {
  const build = parsed.stages.find((stage) => stage.name === 'build');
  expect(build, `${file}: no 'build' stage`).toBeDefined();
  expect(runsOf(build!)).toContain('npm run build');
  // The whole line: the arguments alone leave out the flags (--from).
  const copies = keywordOf(parsed.stages.at(-1)!, 'COPY').map((i) =>
    i.getTextContent().replace(/^COPY\s+/, ''),
  );
  expect(copies).toContain('--from=build /app/dist ./dist');
  const sources = copies.map((args) => args.split(/\s+/).at(-2) ?? '');
  expect(sources.filter((source) => /^(\.\/)?src(\/|$)/.test(source))).toEqual([]);
  // Every stage that runs npm ci (and with it `prepare`) has the build script it calls.
  for (const stage of parsed.stages.filter((s) => runsOf(s).some((run) => /npm ci/.test(run)))) {
    expect(keywordOf(stage, 'COPY').map((i) => i.getArgumentsContent())).toContain(
      'scripts/build.mjs ./scripts/build.mjs',
    );
  }
  expect(read('bin/ratio.js')).toContain("'../dist/cli.js'");
}

describe.each(['Dockerfile', 'Dockerfile.cpu'])('%s', (file) => {
  it('lints clean, exposes PORT, probes a routed path, runs `ratio serve` as a non-root user', () => {
    checkDockerfileCommon(file, parseDockerfile(file));
  });
});

describe('Dockerfile (GPU)', () => {
  const parsed = parseDockerfile('Dockerfile');

  it('runs on the CUDA 11.2 / cuDNN 8 runtime that tfjs-node-gpu 4.x links against, with Node 20 checked', () => {
    const first = parsed.stages[0];
    expect(first.image).toBe(`\${CUDA_IMAGE}`);
    expect(parsed.args.get('CUDA_IMAGE')).toBe('nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04');
    // Every later stage builds on that one (named `node`): the final image has CUDA and Node.
    expect(parsed.stages.slice(1).map((s) => s.image.split(':')[0])).toEqual(['node', 'node', 'node']);
    expect(first.name).toBe('node');
    const install = runsOf(first).find((text) => text.includes('nodejs.org/dist'))!;
    expect(install).toBeDefined();
    expect(parsed.args.get('NODE_VERSION')).toMatch(/^20\.\d+\.\d+$/);
    // The tarball's checksum comes from SHASUMS256.txt, whose signature gpg verifies.
    expect(install).toContain('gpg --batch --decrypt --output SHASUMS256.txt SHASUMS256.txt.asc');
    expect(install).toMatch(/grep " \$\{tarball\}\\\$" SHASUMS256\.txt \| sha256sum -c -/);
    expect(install.indexOf('sha256sum -c')).toBeLessThan(install.indexOf('tar -xJf'));
    // The GPU binding is the one package.json pins (an optional dependency), and its install is checked.
    expect(PACKAGE.optionalDependencies['@tensorflow/tfjs-node-gpu']).toMatch(/^\^4\./);
    const deps = parsed.stages.find((s) => s.name === 'deps')!;
    const npm = runsOf(deps).join('\n');
    expect(npm).toContain('npm ci --omit=dev --include=optional');
    expect(npm).toContain('@tensorflow/tfjs-node-gpu/deps/lib');
    const { env } = checkDockerfileCommon('Dockerfile', parsed);
    expect(env.get('RATIO_BACKEND')).toBe('tensorflow');
    expect(read('src/engine/backend/backend.ts')).toContain("'@tensorflow/tfjs-node-gpu'");
  });
});

describe('Dockerfile.cpu', () => {
  const parsed = parseDockerfile('Dockerfile.cpu');

  it('installs @tensorflow/tfjs-node at the tfjs version package.json pins, on Node 20', () => {
    for (const stage of parsed.stages) expect(stage.image).toMatch(/^node:20-/);
    const tfjs = PACKAGE.dependencies['@tensorflow/tfjs'].replace(/^\^/, '');
    const deps = parsed.stages.find((s) => s.name === 'deps')!;
    const npm = runsOf(deps).join('\n');
    expect(npm).toContain(`@tensorflow/tfjs-node@${tfjs}`);
    expect(npm).toContain('--omit=optional');
    expect(npm).toContain('@tensorflow/tfjs-node/deps/lib');
    expect(read('src/engine/backend/backend.ts')).toContain("'@tensorflow/tfjs-node'");
  });
});

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  healthcheck?: { test: string[] };
  deploy?: { replicas?: number };
  depends_on?: Record<string, { condition: string }>;
}

describe('deploy/compose.yaml', () => {
  const compose = parseAllDocuments(read('deploy/compose.yaml'))[0].toJS() as {
    services: Record<string, ComposeService>;
    volumes: Record<string, unknown>;
  };
  const { api, redis, worker } = compose.services;

  it('runs the api, redis and 2 workers on the queue, from an image that exists here', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['api', 'redis', 'worker']);
    expect(worker.deploy?.replicas).toBe(2);
    expect(statSync(path.join(ROOT, 'deploy', api.build!.context, api.build!.dockerfile)).isFile()).toBe(
      true,
    );
    expect(worker.image).toBe(api.image);
    expect(worker.build).toEqual(api.build);
    const apiCall = invocations(api.command!.join(' '), 'compose api')[0];
    const workerCall = invocations(worker.command!.join(' '), 'compose worker')[0];
    expect(apiCall.command).toBe('serve');
    expect(workerCall.command).toBe('worker');
    for (const call of [apiCall, workerCall]) checkInvocation(call);
    // Both talk to the redis service on its port, and that Redis keeps BullMQ's keys (noeviction).
    for (const call of [apiCall, workerCall]) expect(call.values.get('queue')).toBe('redis://redis:6379');
    expect(redis.command).toEqual(expect.arrayContaining(['--maxmemory-policy', 'noeviction']));
    for (const service of [api, worker]) expect(service.depends_on?.redis?.condition).toBe('service_healthy');
  });

  it('shares the store volume at the path RATIO_STORE_URL names, and sets only env names the code reads', () => {
    const mountOf = (service: ComposeService, volume: string) =>
      service.volumes?.find((v) => v.startsWith(`${volume}:`))?.split(':')[1];
    for (const service of [api, worker]) {
      const store = service.environment?.RATIO_STORE_URL;
      expect(store).toMatch(/^file:\/\//);
      expect(mountOf(service, 'store')).toBe(new URL(store!).pathname);
    }
    expect(mountOf(api, 'state')).toBe(api.environment?.RATIO_STATE_DIR);
    for (const name of ['store', 'state', 'redis-data']) expect(compose.volumes).toHaveProperty(name);
    for (const [serviceName, service] of Object.entries(compose.services)) {
      if (serviceName === 'redis') continue;
      for (const name of Object.keys(service.environment ?? {})) checkEnvName(name, `compose ${serviceName}`);
    }
  });

  it('publishes the api port PORT names on loopback and probes a routed path on it', () => {
    const port = Number(api.environment?.PORT);
    expect(api.ports).toEqual([`127.0.0.1:${port}:${port}`]);
    const script = api.healthcheck!.test.at(-1)!;
    const url = /fetch\('([^']*)'\)/.exec(script)?.[1] ?? '';
    expect(checkHealthUrl(url, 'compose api healthcheck').port).toBe(port);
    // Development mode (no keys) only because the port is loopback-only.
    expect(api.environment?.RATIO_DEV_MODE).toBe('1');
  });
});

interface K8sContainer {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value?: string }>;
  ports?: Array<{ containerPort: number }>;
  readinessProbe?: { httpGet: { path: string } };
  livenessProbe?: { httpGet: { path: string } };
}

interface K8sJob {
  kind: string;
  metadata: { name: string };
  spec: {
    completionMode?: string;
    completions?: number;
    parallelism?: number;
    template: { spec: { initContainers?: K8sContainer[]; containers: K8sContainer[] } };
  };
}

function checkContainer(container: K8sContainer, where: string): Invocation[] {
  const shell = [...(container.command ?? []), ...(container.args ?? [])].join(' ');
  for (const { name } of container.env ?? []) checkEnvName(name, where, shell);
  const found = invocations(shell, where);
  for (const invocation of found) checkInvocation(invocation);
  return found;
}

describe('deploy/audit-indexed-job.yaml', () => {
  const [shards, merge] = parseAllDocuments(read('deploy/audit-indexed-job.yaml')).map(
    (d) => d.toJS() as K8sJob,
  );

  it('runs one shard per completion index and merges exactly those shard files', () => {
    expect(shards.kind).toBe('Job');
    expect(shards.spec.completionMode).toBe('Indexed');
    const [container] = shards.spec.template.spec.containers;
    const [audit] = checkContainer(container, 'indexed job audit');
    expect(audit.command).toBe('audit');
    // `--shards N` takes i from JOB_COMPLETION_INDEX, which src/commands/audit.ts reads.
    const count = Number(audit.values.get('shards'));
    expect(count).toBe(shards.spec.completions);
    expect(audit.flags).not.toContain('shard');
    expect(ENV_READ.has('JOB_COMPLETION_INDEX')).toBe(true);
    const report = audit.values.get('report')!;
    expect(report).toContain('$JOB_COMPLETION_INDEX');
    // Written under a temporary name, renamed into place when complete.
    const shell = container.args!.join(' ');
    expect(report.endsWith('.tmp')).toBe(true);
    expect(shell).toContain(`mv "${report}" "${report.replace(/\.tmp$/, '')}"`);

    const [wait] = merge.spec.template.spec.initContainers!;
    const [mergeContainer] = merge.spec.template.spec.containers;
    const [mergeCall] = checkContainer(mergeContainer, 'merge job');
    checkContainer(wait, 'merge job wait');
    expect([mergeCall.command, mergeCall.subcommand]).toEqual(['audit', 'merge']);
    expect(mergeCall.flags).toContain('min-robust-accuracy');
    // The merge's glob matches the final shard names (not the .tmp ones), and it waits for all of them.
    const finalName = report.replace(/\.tmp$/, '').replace('$JOB_COMPLETION_INDEX', '*');
    expect(mergeContainer.args!.join(' ')).toContain(`merge ${finalName.replace(/"/g, '')}`);
    expect(wait.args!.join(' ')).toContain(finalName.replace(/"/g, ''));
    expect(Number(wait.env!.find((e) => e.name === 'SHARDS')!.value)).toBe(count);
    // One run directory for all three containers.
    const runs = [container, wait, mergeContainer].map(
      (c) => c.env!.find((e) => e.name === 'AUDIT_RUN')?.value,
    );
    expect(new Set(runs).size).toBe(1);
    expect(runs[0]).toBeTruthy();
  });
});

describe('deploy/cloudrun-service.yaml', () => {
  const service = parseAllDocuments(read('deploy/cloudrun-service.yaml'))[0].toJS() as {
    spec: { template: { spec: { containers: K8sContainer[] } } };
  };

  it('serves on the image PORT, probes routed paths, sets env names the code reads', () => {
    const [container] = service.spec.template.spec.containers;
    const port = Number(envOf(parseDockerfile('Dockerfile').stages.at(-1)!).get('PORT'));
    expect(container.ports).toEqual([{ containerPort: port }]);
    for (const probe of [container.readinessProbe, container.livenessProbe]) {
      expect(ROUTED.has(probe!.httpGet.path), `probe ${probe!.httpGet.path} is not routed`).toBe(true);
    }
    checkContainer(container, 'cloud run service');
  });
});

interface Workflow {
  jobs: Record<string, { steps: Array<{ run?: string; env?: Record<string, string> }> }>;
}

function workflowCalls(file: string) {
  const workflow = parseAllDocuments(read(file))[0].toJS() as Workflow;
  return Object.entries(workflow.jobs).flatMap(([job, { steps }]) =>
    steps.flatMap((step) => {
      for (const name of Object.keys(step.env ?? {})) checkEnvName(name, `${file} ${job}`, step.run ?? '');
      return step.run ? invocations(step.run, `${file} ${job}`) : [];
    }),
  );
}

describe('deploy/ci workflows', () => {
  it('audit.yml: shards on a matrix, then gates with merge, with flags the CLI accepts', () => {
    const calls = workflowCalls('deploy/ci/audit.yml');
    expect(calls.map((c) => [c.command, c.subcommand ?? null])).toEqual([
      ['audit', null],
      ['audit', 'merge'],
    ]);
    for (const call of calls) checkInvocation(call);
  });

  it('audit-server.yml: one audit on a service, key from a secret, gated by the threshold', () => {
    const calls = workflowCalls('deploy/ci/audit-server.yml');
    expect(calls.map((c) => c.command)).toEqual(['audit']);
    for (const call of calls) checkInvocation(call);
    expect(calls[0].flags).toEqual(expect.arrayContaining(['server', 'min-robust-accuracy', 'junit']));
    expect(ENV_READ.has('RATIO_API_KEY')).toBe(true);
  });

  it('covers every file in deploy/ci', () => {
    expect(readdirSync(path.join(ROOT, 'deploy/ci')).sort()).toEqual(['audit-server.yml', 'audit.yml']);
  });
});

describe('every manifest', () => {
  it('is one of those checked above (a new one needs its checks here)', () => {
    expect(readdirSync(path.join(ROOT, 'deploy')).sort()).toEqual([
      'audit-indexed-job.yaml',
      'ci',
      'cloudrun-service.yaml',
      'compose.yaml',
    ]);
    expect(
      readdirSync(ROOT)
        .filter((name) => name.startsWith('Dockerfile'))
        .sort(),
    ).toEqual(['Dockerfile', 'Dockerfile.cpu']);
  });
});

describe('the checks themselves', () => {
  it('catch a flag, a command, an env name and a probe path that do not exist', () => {
    const [bad] = invocations('node bin/ratio.js audit --model m --no-such-flag 1', 'self-test');
    expect(() => checkInvocation(bad)).toThrow('has no --no-such-flag');
    const [unknown] = invocations('ratio frobnicate --x', 'self-test');
    expect(() => checkInvocation(unknown)).toThrow("'ratio frobnicate' is not a command");
    expect(() => checkEnvName('RATIO_NO_SUCH_SETTING', 'self-test')).toThrow('nothing reads it');
    expect(() => checkHealthUrl('http://127.0.0.1:8080/healthz', 'self-test')).toThrow('not routed');
    // And accept what is real.
    const [good] = invocations('ratio audit merge a.json --report r.json --junit j.xml', 'self-test');
    expect(good.subcommand).toBe('merge');
    checkInvocation(good);
    checkEnvName('RATIO_WORKERS', 'self-test');
    expect(COMMANDS.get('audit')).toBe('audit');
    expect(acceptedFlags('audit')).toContain('server');
  });
});
