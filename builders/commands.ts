// One function per verb. Each takes the parsed command line and returns an exit code; the work is
// done by the pipeline stages, which never print.
import { dirname, join, resolve } from 'node:path';
import type { CliValues } from './cli.ts';
import { UsageError } from './errors.ts';
import type { EventSink } from './events.ts';
import { layout } from './layout.ts';
import { applySourcesFile, loadClusterFile } from './load.ts';

import { defaultCluster } from './defaults.ts';
import { planBuild, formatPlan, planToJson } from './plan.ts';
import { readLock, writeLock } from './lockfile.ts';
import { fetchInputs } from './fetch.ts';
import { kubernetesBinariesApply } from './kubernetes-content.ts';
import { defaultCacheDir } from '../images/cache.ts';
import { buildCluster } from './build.ts';
import { inspectPath } from './inspect.ts';
import { flashCommand } from './flash-command.ts';
import { publishCommands } from './publish-commands.ts';
import { cachedMirrorSize } from './registry-content.ts';
import type { ClusterSpec, Target } from './spec.ts';
import { ttyProgress } from './tty-progress.ts';

export interface CommandContext {
  values: CliValues;
  positionals: string[];
  signal: AbortSignal;
  events: EventSink;
  interactive: boolean;
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

export type Command = (ctx: CommandContext) => Promise<number>;

const targetNames: readonly Target[] = ['rpi4', 'rpi3', 'pc', 'arm64-uefi', 'pxe'];

function targetsOf(values: CliValues): Target[] | undefined {
  if (!values.target?.length) return undefined;
  for (const t of values.target) {
    if (!targetNames.includes(t as Target)) {
      throw new UsageError(`unknown target "${t}"`, { hint: `use one of: ${targetNames.join(', ')}` });
    }
  }
  return [...new Set(values.target as Target[])];
}

function noPositionals(ctx: CommandContext, verb: string) {
  if (ctx.positionals.length) {
    throw new UsageError(`bramble ${verb} takes no arguments, got "${ctx.positionals[0]}"`, {
      hint: 'pass the cluster file with -c FILE',
    });
  }
}

export async function resolveSpec(values: CliValues): Promise<ClusterSpec> {
  if (values.config) return loadClusterFile(resolve(values.config), { sourcesFile: values.sources && resolve(values.sources) });
  const spec = defaultCluster(targetsOf(values)?.[0] ?? 'pc');
  return values.sources ? applySourcesFile(spec, resolve(values.sources)) : spec;
}

export function cacheDirOf(values: CliValues): string {
  return values.cache ? resolve(values.cache) : defaultCacheDir(process.env);
}

export function lockPathOf(values: CliValues): string {
  if (values.lock) return resolve(values.lock);
  return values.config ? join(dirname(resolve(values.config)), layout.lockFile) : resolve(layout.lockFile);
}

const plan: Command = async (ctx) => {
  noPositionals(ctx, 'plan');
  const spec = await resolveSpec(ctx.values);
  const lock = await readLock(lockPathOf(ctx.values));
  const p = planBuild(spec, { targets: targetsOf(ctx.values), nodes: ctx.values.node, lock });
  // The mirror's size needs no request: it is read from the cache when the lock pins every image.
  if (p.registry.bundle) p.registry.bundle.cachedSize = await cachedMirrorSize(p.registry.bundle, { spec, cacheDir: cacheDirOf(ctx.values), lock, signal: ctx.signal });
  ctx.stdout(ctx.values.json ? planToJson(p) : formatPlan(p));
  return 0;
};

const fetch: Command = async (ctx) => {
  noPositionals(ctx, 'fetch');
  const spec = await resolveSpec(ctx.values);
  const lockPath = lockPathOf(ctx.values);
  const lock = await readLock(lockPath);
  const targets = targetsOf(ctx.values);
  // The plan's checks first (nothing is fetched for a config the build would refuse), and what it selects.
  const planned = planBuild(spec, { targets, lock });
  const selected = spec.nodes.filter((n) => planned.nodes.some((p) => p.name === n.name));
  const result = await fetchInputs(spec, {
    cacheDir: cacheDirOf(ctx.values),
    lock,
    offline: !!ctx.values.offline,
    targets,
    kubernetes: kubernetesBinariesApply(spec, selected),
    signal: ctx.signal,
    events: ctx.events,
  });
  await writeLock(lockPath, result.lock);
  ctx.events({ kind: 'info', message: `${result.inputs.size} inputs verified; lock written to ${lockPath}` });
  return 0;
};

const build: Command = async (ctx) => {
  noPositionals(ctx, 'build');
  const spec = await resolveSpec(ctx.values);
  const opts = {
    spec,
    targets: targetsOf(ctx.values),
    nodes: ctx.values.node,
    outDir: resolve(ctx.values.out ?? 'out'),
    cacheDir: cacheDirOf(ctx.values),
    lockPath: lockPathOf(ctx.values),
    offline: !!ctx.values.offline,
    signal: ctx.signal,
  };
  let result;
  if (ctx.interactive) {
    const tty = ttyProgress(buildStages);
    result = await tty.runWith(() => buildCluster({ ...opts, events: tty.sink }));
  } else {
    result = await buildCluster({ ...opts, events: ctx.events });
  }
  if (!ctx.values.json) ctx.stdout(result.summary);
  return 0;
};

export const buildStages = [
  { id: 'plan', title: 'Plan the build' },
  { id: 'fetch', title: 'Fetch and verify inputs' },
  { id: 'render', title: 'Render node configs' },
  { id: 'assemble', title: 'Assemble images and PXE tree' },
  { id: 'package', title: 'Write manifest and checksums' },
];

const inspect: Command = async (ctx) => {
  if (ctx.positionals.length !== 1) {
    throw new UsageError('bramble inspect takes one PATH (an image or an out/<cluster> directory)');
  }
  ctx.stdout(await inspectPath(resolve(ctx.positionals[0]!), { json: !!ctx.values.json, signal: ctx.signal }));
  return 0;
};

export const commands: Record<string, Command> = { plan, fetch, build, inspect, flash: flashCommand, ...publishCommands };
