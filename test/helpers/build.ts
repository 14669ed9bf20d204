// Builds test clusters against the fixture upstream through the real CLI (bin/bramble.mjs): writes a
// cluster.toml, a snippet and a --sources file into a temp dir, then runs `bramble build` in a child
// process, optionally as another user. Happy-path builds share one warm download cache per machine
// (warmBuildCache()), so the 8 GiB Flatcar images are decompressed once, not once per test.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, open, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../builders/exec.ts';
import { mergeRanges } from '../../images/sparse.ts';
import { testCacheRoot } from '../../scripts/fixtures/cache.ts';
import type { Fixture } from './fixture.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const brambleBin = join(repoRoot, 'bin/bramble.mjs');

/** A fixed SOURCE_DATE_EPOCH (2025-01-01T00:00:00Z) for reproducible test builds. */
export const TEST_EPOCH = 1735689600;

/** The download cache the happy-path builds share: `${XDG_CACHE_HOME:-~/.cache}/bramble-test/build-cache`. */
export function warmBuildCache(): string {
  return join(testCacheRoot(), 'build-cache');
}

export interface TestNode {
  name: string;
  hardware: 'pc' | 'rpi4';
  role?: 'control-plane' | 'worker';
  /** nodes[].size, e.g. "10GiB". */
  size?: string;
  /** nodes[].kernel_args */
  kernelArgs?: string[];
}

export interface TestClusterOptions {
  name: string;
  /** os.version: "current" (default) or a pinned release such as "4459.2.4". */
  osVersion?: string;
  /** provision.kernel_args (default ["bramble.test=yes"]). */
  kernelArgs?: string[];
  /** network.node_cidr: static addressing (nodes get ips allocated), which also gives the cluster its
   * Kubernetes bootstrap (an API address known at build time) and so a sysext on ROOT. */
  nodeCidr?: string;
  nodes: TestNode[];
}

export interface TestClusterFiles {
  dir: string;
  config: string;
  sources: string;
  /** The provision snippet's file and the file it writes on the node. */
  snippet: { file: string; path: string; contents: string };
}

/** The file every test cluster's snippet puts on its nodes. */
export const SNIPPET_PATH = '/etc/bramble-test/motd';
export const SNIPPET_CONTENTS = 'written by the build-disk test snippet\n';

/**
 * Write cluster.toml, snippet.yaml and sources.toml into `dir`. The fixture's trusted key is copied
 * beside them, so a build running as an unprivileged user can read everything it names.
 */
export async function writeTestCluster(dir: string, fixture: Fixture, o: TestClusterOptions): Promise<TestClusterFiles> {
  await mkdir(dir, { recursive: true });
  const key = join(dir, basename(fixture.keys.signingPublicInTree));
  await copyFile(fixture.keys.signingPublicInTree, key);
  const sourcesText = fixture.sourcesToml.replace(/^trusted_keys = .*$/m, `trusted_keys = [${JSON.stringify(key)}]`);
  if (!sourcesText.includes(key)) throw new Error('the fixture [sources] block has no trusted_keys line to rewrite');
  const sources = join(dir, 'sources.toml');
  await writeFile(sources, sourcesText);

  const snippetFile = join(dir, 'snippet.yaml');
  await writeFile(
    snippetFile,
    ['storage:', '  files:', `    - path: ${SNIPPET_PATH}`, '      mode: 0644', '      contents:', `        inline: ${JSON.stringify(SNIPPET_CONTENTS)}`, ''].join('\n'),
  );
  const q = (s: string) => JSON.stringify(s);
  const list = (xs: readonly string[]) => `[${xs.map(q).join(', ')}]`;
  const lines = [
    `name = ${q(o.name)}`,
    '',
    '[os]',
    'base = "flatcar"',
    'channel = "stable"',
    `version = ${q(o.osVersion ?? 'current')}`,
    '',
    '[provision]',
    `kernel_args = ${list(o.kernelArgs ?? ['bramble.test=yes'])}`,
    `snippets = [${q(basename(snippetFile))}]`,
  ];
  if (o.nodeCidr) lines.push('', '[network]', `node_cidr = ${q(o.nodeCidr)}`);
  o.nodes.forEach((n, i) => {
    lines.push('', '[[nodes]]', `name = ${q(n.name)}`, `role = ${q(n.role ?? (i === 0 ? 'control-plane' : 'worker'))}`, `hardware = ${q(n.hardware)}`);
    if (n.size) lines.push(`size = ${q(n.size)}`);
    if (n.kernelArgs) lines.push(`kernel_args = ${list(n.kernelArgs)}`);
  });
  const config = join(dir, 'cluster.toml');
  await writeFile(config, lines.join('\n') + '\n');
  return { dir, config, sources, snippet: { file: snippetFile, path: SNIPPET_PATH, contents: SNIPPET_CONTENTS } };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The command, for assertion messages. */
  command: string;
}

export interface RunBrambleOptions {
  env?: Record<string, string>;
  /** Run as this uid/gid with no supplementary groups (via setpriv; the caller must be root). */
  asUser?: { uid: number; gid: number };
  cwd?: string;
  signal?: AbortSignal;
}

/** Run bin/bramble.mjs with `args` and collect its output; never throws on a non-zero exit. */
export function runBramble(args: readonly string[], o: RunBrambleOptions = {}): Promise<CliResult> {
  let cmd = process.execPath;
  let argv = [brambleBin, ...args];
  if (o.asUser) {
    argv = [`--reuid=${o.asUser.uid}`, `--regid=${o.asUser.gid}`, '--clear-groups', cmd, ...argv];
    cmd = 'setpriv';
  }
  // Only the variables a build reads: no inherited NODE_OPTIONS/test-runner state leaks into the child.
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', ...o.env };
  const command = [cmd, ...argv].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { cwd: o.cwd ?? repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'], signal: o.signal });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr, command }));
  });
}

export interface CliBuildOptions {
  outDir: string;
  cacheDir: string;
  lockPath: string;
  targets?: Array<'pc' | 'rpi4'>;
  /** Extra environment (TMPDIR, HOME for another user); SOURCE_DATE_EPOCH defaults to TEST_EPOCH. */
  env?: Record<string, string>;
  asUser?: { uid: number; gid: number };
}

/** `bramble build -c … --sources … --out … --cache … --lock … [--target …]` */
export function buildWithCli(files: TestClusterFiles, o: CliBuildOptions): Promise<CliResult> {
  const args = ['build', '-c', files.config, '--sources', files.sources, '--out', o.outDir, '--cache', o.cacheDir, '--lock', o.lockPath];
  for (const t of o.targets ?? []) args.push('--target', t);
  const inherited: Record<string, string> = {};
  for (const k of ['HOME', 'TMPDIR', 'XDG_CACHE_HOME'] as const) if (process.env[k]) inherited[k] = process.env[k]!;
  return runBramble(args, { env: { ...inherited, SOURCE_DATE_EPOCH: String(TEST_EPOCH), ...o.env }, asUser: o.asUser });
}

/** An assertion message for a failed CLI run. */
export function explainCli(r: CliResult): string {
  return `${r.command}\nexit ${r.code}\n--- stderr ---\n${r.stderr.slice(-4000)}\n--- stdout ---\n${r.stdout.slice(-2000)}`;
}

/** One GPT partition as `sfdisk --json` reports it (sectors of 512 bytes). */
export interface SfdiskPartition {
  name: string;
  type: string;
  uuid: string;
  start: number;
  size: number;
  attrs?: string;
}

export interface SfdiskTable {
  id: string;
  firstlba: number;
  lastlba: number;
  partitions: SfdiskPartition[];
}

/** The partition table as util-linux reads it (independent of bramble's own GPT code), without device names. */
export async function sfdiskTable(image: string): Promise<SfdiskTable> {
  const { stdout } = await run('sfdisk', ['--json', image]);
  const t = (JSON.parse(stdout) as { partitiontable: SfdiskTable & { device?: string } }).partitiontable;
  return {
    id: t.id,
    firstlba: t.firstlba,
    lastlba: t.lastlba,
    partitions: t.partitions.map(({ name, type, uuid, start, size, attrs }) => ({ name, type, uuid, start, size, ...(attrs ? { attrs } : {}) })),
  };
}

/** Byte span of the partition named `name`. */
export function partitionSpan(table: SfdiskTable, name: string): { offset: number; size: number } {
  const p = table.partitions.find((x) => x.name === name);
  if (!p) throw new Error(`no partition named ${name} (have ${table.partitions.map((x) => x.name).join(', ')})`);
  return { offset: p.start * 512, size: p.size * 512 };
}

/**
 * [start, end) byte ranges the filesystem has allocated for a file (FIEMAP via `filefrag`), so
 * comparisons read only data and skip holes; the whole file when FIEMAP is not available.
 */
export async function allocatedRanges(path: string): Promise<Array<[number, number]>> {
  const size = (await stat(path)).size;
  try {
    const { stdout } = await run('filefrag', ['-s', '-v', '-b4096', path]);
    const ranges: Array<[number, number]> = [];
    for (const m of stdout.matchAll(/^\s*\d+:\s+(\d+)\.\.\s*(\d+):/gm)) {
      ranges.push([Number(m[1]) * 4096, Math.min(size, (Number(m[2]) + 1) * 4096)]);
    }
    if (!/extents? found/.test(stdout)) throw new Error(`filefrag printed no extent count for ${path}`);
    return ranges;
  } catch {
    return [[0, size]];
  }
}

/** Sorted, merged ranges of `ranges` less every range of `minus`. */
export function subtractRanges(ranges: ReadonlyArray<[number, number]>, minus: ReadonlyArray<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const cut = [...minus].sort((a, b) => a[0] - b[0]);
  for (const [s0, e] of mergeRanges(ranges as Array<[number, number]>)) {
    let s = s0;
    for (const [cs, ce] of cut) {
      if (ce <= s || cs >= e) continue;
      if (cs > s) out.push([s, cs]);
      s = Math.max(s, ce);
    }
    if (s < e) out.push([s, e]);
  }
  return out;
}

/**
 * Compare two files byte for byte except inside `skip`, reading only where either file has data
 * (elsewhere both are holes, hence zeros). Returns the first differing offset, or undefined when
 * equal; files of different size differ at the shorter one's end.
 */
export async function firstDifference(a: string, b: string, skip: ReadonlyArray<[number, number]> = []): Promise<number | undefined> {
  const [sa, sb] = [(await stat(a)).size, (await stat(b)).size];
  if (sa !== sb) return Math.min(sa, sb);
  const ranges = subtractRanges([...(await allocatedRanges(a)), ...(await allocatedRanges(b))], skip);
  const [fa, fb] = [await open(a, 'r'), await open(b, 'r')];
  const chunk = 4 << 20;
  const [ba, bb] = [Buffer.alloc(chunk), Buffer.alloc(chunk)];
  try {
    for (const [s, e] of ranges) {
      for (let pos = s; pos < e; pos += chunk) {
        const n = Math.min(chunk, e - pos);
        const [ra, rb] = await Promise.all([fa.read(ba, 0, n, pos), fb.read(bb, 0, n, pos)]);
        ba.fill(0, ra.bytesRead, n);
        bb.fill(0, rb.bytesRead, n);
        if (ba.compare(bb, 0, n, 0, n) !== 0) {
          for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i;
        }
      }
    }
  } finally {
    await fa.close();
    await fb.close();
  }
  return undefined;
}

/**
 * sha256 of a file, reading only what the filesystem has allocated (FIEMAP) and hashing zeros for the
 * holes: the same digest as `sha256sum`, without reading gigabytes of holes. Independent of bramble's
 * own data maps.
 */
export async function sha256Allocated(path: string): Promise<string> {
  const size = (await stat(path)).size;
  const ranges = mergeRanges(await allocatedRanges(path));
  const h = createHash('sha256');
  const zero = Buffer.alloc(4 << 20);
  const buf = Buffer.alloc(4 << 20);
  const fh = await open(path, 'r');
  let at = 0;
  const zeros = (end: number) => {
    for (; at < end; at += Math.min(zero.length, end - at)) h.update(zero.subarray(0, Math.min(zero.length, end - at)));
  };
  try {
    for (const [s, e] of ranges) {
      zeros(Math.min(s, size));
      for (; at < Math.min(e, size); ) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, Math.min(e, size) - at), at);
        if (bytesRead === 0) throw new Error(`${path} ended at ${at}`);
        h.update(buf.subarray(0, bytesRead));
        at += bytesRead;
      }
    }
    zeros(size);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}
