// `npm run bench:pxe [-- --nodes 50] [-- --runs 3]`: the PXE tree for N netbooted nodes from a warm
// download cache, against the fixture upstream on 127.0.0.1. One untimed build fills the cache and the
// lock; then, offline (so nothing is downloaded), each run times a full build into an empty out/
// directory, a rebuild with nothing changed, and a rebuild after one node's kernel_args changed, and
// lists the files each rebuild replaced (by inode and mtime). Prints medians, minimums and per-stage times.
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { buildCluster } from '../../builders/build.ts';
import type { BrambleEvent } from '../../builders/events.ts';
import { loadClusterFile } from '../../builders/load.ts';
import { ensureFixture } from '../fixtures/build.ts';
import { startFixtureServer } from '../fixtures/server.ts';

const args = parseArgs({ options: { nodes: { type: 'string' }, runs: { type: 'string' } } }).values;
const nodeCount = Math.max(1, Math.min(250, Number(args.nodes ?? '50')));
const runs = Math.max(1, Number(args.runs ?? '3'));
const log = (line: string) => process.stderr.write(`${line}\n`);
const CLUSTER = 'bench';

/** cluster.toml: a disk-booted control plane (its static ip makes bramble write the dnsmasq configs) and N pxe workers. */
function clusterToml(changedArg?: string): string {
  const lines = [
    `name = "${CLUSTER}"`,
    '[os]',
    'base = "flatcar"',
    'channel = "stable"',
    '[network]',
    'node_cidr = "10.90.0.0/23"',
    'gateway = "10.90.0.1"',
    '[provision]',
    'kernel_args = ["flatcar.autologin"]',
    '[[nodes]]',
    'name = "cp-1"',
    'role = "control-plane"',
    'hardware = "pc"',
    'ip = "10.90.0.2"',
  ];
  for (let i = 1; i <= nodeCount; i++) {
    const mac = `52:54:00:90:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;
    lines.push('[[nodes]]', `name = "w-${i}"`, 'role = "worker"', 'hardware = "pc"', 'boot = "pxe"', `mac = "${mac}"`);
    if (i === 1 && changedArg) lines.push(`kernel_args = ["${changedArg}"]`);
  }
  return lines.join('\n') + '\n';
}

/** Inode and mtime of every file: a file replaced by rename changes both (an inode alone may be recycled). */
async function fileIdentities(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const s = await stat(join(e.parentPath, e.name));
    out.set(join(e.parentPath, e.name), `${s.ino}:${s.mtimeMs}`);
  }
  return out;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  process.env.SOURCE_DATE_EPOCH ??= '1735689600';
  const fixture = await ensureFixture({ log: (l) => log(`fixture: ${l}`) });
  const server = await startFixtureServer({ root: fixture.root });
  const dir = await mkdtemp(join(tmpdir(), 'bramble-bench-pxe-'));
  try {
    const sources = join(dir, 'sources.toml');
    await writeFile(sources, server.sourcesToml);
    const config = join(dir, 'cluster.toml');
    const cacheDir = join(dir, 'cache');
    const lockPath = join(dir, 'bramble.lock');
    /** `scenario stage` → ms per timed build. */
    const stageMs = new Map<string, number[]>();
    const build = async (outDir: string, toml: string, offline: boolean, scenario = 'warm-up') => {
      await writeFile(config, toml);
      const spec = await loadClusterFile(config, { sourcesFile: sources });
      const events = (e: BrambleEvent) => {
        if (e.kind === 'stage-finished') stageMs.set(`${scenario} ${e.stage}`, [...(stageMs.get(`${scenario} ${e.stage}`) ?? []), e.ms]);
      };
      const t0 = performance.now();
      const r = await buildCluster({ spec, targets: ['pxe'], outDir, cacheDir, lockPath, offline, signal: new AbortController().signal, events });
      return { ms: performance.now() - t0, files: r.manifest.artefacts.length };
    };
    log(`bench:pxe: warming the cache (${nodeCount} nodes)`);
    await build(join(dir, 'warm'), clusterToml(), false);
    stageMs.clear();
    const scenarios = { full: 'full build into an empty out/', same: 'rebuild, nothing changed', changed: 'rebuild, one node kernel_args' };

    const full: number[] = [];
    const same: number[] = [];
    const changed: number[] = [];
    let files = 0;
    let replacedSame: string[] = [];
    let replacedChanged: string[] = [];
    for (let run = 0; run < runs; run++) {
      const outDir = join(dir, `out-${run}`);
      const a = await build(outDir, clusterToml(), true, 'full');
      full.push(a.ms);
      files = a.files;
      const before = await fileIdentities(outDir);
      same.push((await build(outDir, clusterToml(), true, 'same')).ms);
      const afterSame = await fileIdentities(outDir);
      replacedSame = [...afterSame].filter(([p, id]) => before.get(p) !== id).map(([p]) => relative(join(outDir, CLUSTER), p));
      changed.push((await build(outDir, clusterToml(`bramble.bench=${run}`), true, 'changed')).ms);
      replacedChanged = [...(await fileIdentities(outDir))].filter(([p, id]) => afterSame.get(p) !== id).map(([p]) => relative(join(outDir, CLUSTER), p));
      await rm(outDir, { recursive: true, force: true });
    }
    const row = (label: string, xs: number[], note: string) =>
      `${label.padEnd(34)} ${(median(xs) / 1000).toFixed(2).padStart(8)} s ${(Math.min(...xs) / 1000).toFixed(2).padStart(8)} s  ${note}`;
    const stages = (scenario: keyof typeof scenarios) =>
      `  ${scenarios[scenario]}: ` + ['plan', 'fetch', 'render', 'assemble', 'package'].map((st) => `${st} ${median(stageMs.get(`${scenario} ${st}`) ?? [0])}`).join(', ');
    const out = [
      `PXE tree for ${nodeCount} netbooted nodes (+1 disk control plane), warm cache, offline; ${runs} run(s)`,
      `${''.padEnd(34)} ${'median'.padStart(10)} ${'min'.padStart(10)}`,
      row(scenarios.full, full, `${files} files`),
      row(scenarios.same, same, `replaced: ${replacedSame.sort().join(' ')}`),
      row(scenarios.changed, changed, `replaced: ${replacedChanged.sort().join(' ')}`),
      '',
      'median ms per stage (render includes the Kubernetes PKI and sysext when the cluster carries Kubernetes):',
      stages('full'),
      stages('same'),
      stages('changed'),
    ];
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
