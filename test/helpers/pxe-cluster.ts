// PXE test clusters against the fixture upstream: a cluster.toml with netbooted pc nodes (and the
// disk-booted control-plane whose static address makes bramble write the dnsmasq configs), built
// with the real CLI; a snapshot of an out/ directory to tell which files a rebuild touched; a
// loopback static HTTP server that logs what a netbooting machine asked for.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pipeline } from 'node:stream/promises';
import { layout } from '../../builders/layout.ts';
import type { Fixture } from './fixture.ts';

export interface PxeTestNode {
  name: string;
  mac: string;
  install?: boolean;
  /** nodes[].kernel_args */
  kernelArgs?: string[];
  /** nodes[].snippets: YAML text, written beside cluster.toml. */
  snippet?: string;
}

export interface PxeTestCluster {
  name: string;
  /** [network] node_cidr; the control plane gets the 2nd address (.2 in a /24), the HTTP server of the tree. */
  nodeCidr: string;
  controlPlaneIp: string;
  /** [provision] kernel_args */
  kernelArgs: string[];
  nodes: PxeTestNode[];
}

export interface PxeClusterFiles {
  dir: string;
  config: string;
  sources: string;
}

const q = (s: string) => JSON.stringify(s);
const list = (xs: readonly string[]) => `[${xs.map(q).join(', ')}]`;

/** Write cluster.toml (+ node snippets) and sources.toml for `c` into `dir` (created). */
export async function writePxeCluster(dir: string, fixture: Fixture, c: PxeTestCluster): Promise<PxeClusterFiles> {
  await mkdir(dir, { recursive: true });
  const sources = join(dir, 'sources.toml');
  await writeFile(sources, fixture.sourcesToml);
  const gateway = c.nodeCidr.replace(/\.0\/\d+$/, '.1');
  const lines = [
    `name = ${q(c.name)}`,
    '',
    '[os]',
    'base = "flatcar"',
    'channel = "stable"',
    '',
    '[network]',
    `node_cidr = ${q(c.nodeCidr)}`,
    `gateway = ${q(gateway)}`,
    `dns = [${q(gateway)}]`,
    '',
    '[provision]',
    `kernel_args = ${list(c.kernelArgs)}`,
    '',
    '[[nodes]]',
    'name = "cp-1"',
    'role = "control-plane"',
    'hardware = "pc"',
    `ip = ${q(c.controlPlaneIp)}`,
  ];
  for (const n of c.nodes) {
    lines.push('', '[[nodes]]', `name = ${q(n.name)}`, 'role = "worker"', 'hardware = "pc"', 'boot = "pxe"', `mac = ${q(n.mac)}`);
    if (n.install) lines.push('install = true');
    if (n.kernelArgs) lines.push(`kernel_args = ${list(n.kernelArgs)}`);
    if (n.snippet !== undefined) {
      await writeFile(join(dir, `${n.name}.yaml`), n.snippet);
      lines.push(`snippets = [${q(`${n.name}.yaml`)}]`);
    }
  }
  const config = join(dir, 'cluster.toml');
  await writeFile(config, lines.join('\n') + '\n');
  return { dir, config, sources };
}

/** A fixed SOURCE_DATE_EPOCH (2025-01-01T00:00:00Z) for reproducible test builds. */
export const PXE_TEST_EPOCH = 1735689600;
const brambleBin = fileURLToPath(new URL('../../bin/bramble.mjs', import.meta.url));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  command: string;
}

/** `bramble build -c … --sources … --target pxe --cache … --out … --lock …` in a child process. */
export function buildPxeWithCli(files: PxeClusterFiles, o: { outDir: string; cacheDir: string; lockPath: string }): Promise<CliRun> {
  const args = [brambleBin, 'build', '-c', files.config, '--sources', files.sources, '--target', 'pxe', '--cache', o.cacheDir, '--out', o.outDir, '--lock', o.lockPath];
  // Only what a build reads: no inherited NODE_OPTIONS or test-runner state.
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', SOURCE_DATE_EPOCH: String(PXE_TEST_EPOCH) };
  for (const k of ['HOME', 'TMPDIR', 'XDG_CACHE_HOME'] as const) if (process.env[k]) env[k] = process.env[k]!;
  const command = [process.execPath, ...args].join(' ');
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', fail);
    child.on('close', (code) => ok({ code, stdout, stderr, command }));
  });
}

/** An assertion message for a failed CLI run. */
export function explainCli(r: CliRun): string {
  return `${r.command}\nexit ${r.code}\n--- stderr ---\n${r.stderr.slice(-4000)}\n--- stdout ---\n${r.stdout.slice(-2000)}`;
}

/** out/<cluster>/pxe for a cluster built into outDir. */
export function pxeRoot(outDir: string, cluster: string): string {
  return join(layout.clusterDir(outDir, cluster), layout.pxeDir);
}

export interface FileState {
  ino: number;
  mtimeMs: number;
  mode: number;
  sha256: string;
}

/** Every regular file under `dir` (relative, `/`-separated) with its inode, mtime, mode and digest. */
export async function snapshotFiles(dir: string): Promise<Map<string, FileState>> {
  const out = new Map<string, FileState>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const full = join(e.parentPath, e.name);
    const s = await lstat(full, { bigint: false });
    const h = createHash('sha256');
    await pipeline(createReadStream(full), h);
    out.set(relative(dir, full).split(sep).join('/'), { ino: s.ino, mtimeMs: s.mtimeMs, mode: s.mode & 0o7777, sha256: h.digest('hex') });
  }
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : 1)));
}

export interface TreeServer {
  /** Base URL as the host sees it, ending in `/`. */
  url: string;
  port: number;
  /** `GET /path` lines, in order. */
  requests: string[];
  close(): Promise<void>;
}

/**
 * Serve `root` read-only under `prefix` (e.g. `/some/base/`) on 127.0.0.1, like a stock static HTTP
 * server: no index pages, no server-side logic, 404 for anything outside the tree.
 */
export async function serveTree(root: string, prefix = '/'): Promise<TreeServer> {
  const requests: string[] = [];
  const base = resolve(root);
  const server: Server = createServer((req, res) => {
    void (async () => {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'http://host').pathname);
      requests.push(`${req.method} ${path}`);
      if (req.method !== 'GET' || !path.startsWith(prefix)) return res.writeHead(404).end();
      const file = resolve(base, path.slice(prefix.length));
      if (!file.startsWith(`${base}${sep}`)) return res.writeHead(404).end();
      const data = await readFile(file).catch(() => undefined);
      if (!data) return res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length }).end(data);
    })();
  });
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', () => ok()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}${prefix}`,
    port,
    requests,
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  };
}
