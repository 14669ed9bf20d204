// Real peers for the registry bundle besides the registry itself (test/helpers/registry.ts): skopeo
// reading what a registry serves, and a private containerd (own root, state and socket in a temp
// dir) for `ctr images import`. containerdForTest stops it and removes its directory after the test.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../builders/exec.ts';

// 60 s, like the other peers: a machine busy with TCG guests can take a while to start one.
async function until(what: string, child: ChildProcess, log: () => string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}:\n${log().slice(-3000)}`);
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`${what} did not come up within ${timeoutMs} ms:\n${log().slice(-3000)}`);
}

function stopper(child: ChildProcess): () => Promise<void> {
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  };
}

/** `skopeo inspect --raw`: the exact manifest bytes a registry serves for `ref` (docker:// transport, plain HTTP). */
export async function rawManifest(ref: string): Promise<Buffer> {
  const r = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { binary: true });
  return r.stdoutBytes!;
}

export const sha256Digest = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface PrivateContainerd {
  /** The socket for `ctr --address`. */
  address: string;
  ctr(args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

/**
 * A private containerd in a fresh short directory (prepared by `prepare` before containerd starts),
 * stopped and then its directory removed after the test: one hook, since after-hooks run in the
 * order they were added and containerd must be gone before its root is.
 */
export async function containerdForTest(
  t: { after(fn: () => Promise<void>): void },
  prepare?: (dir: string) => Promise<void>,
): Promise<PrivateContainerd & { dir: string }> {
  const dir = await mkdtemp('/tmp/ctrd-');
  let running: PrivateContainerd | undefined;
  t.after(async () => {
    await running?.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await prepare?.(dir);
  running = await startContainerd(dir);
  return { ...running, dir };
}

/**
 * containerd as root with its own root, state and socket under `dir` (short path: a unix socket
 * name is limited to 107 bytes), the CRI plugin off, the native snapshotter (works in any container).
 */
async function startContainerd(dir: string): Promise<PrivateContainerd> {
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const address = join(dir, 'c.sock');
  await mkdir(root, { recursive: true });
  await mkdir(state, { recursive: true });
  const config = join(dir, 'config.toml');
  await writeFile(
    config,
    [
      'version = 2',
      `root = ${JSON.stringify(root)}`,
      `state = ${JSON.stringify(state)}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = ${JSON.stringify(address)}`,
      '[ttrpc]',
      `  address = ${JSON.stringify(`${address}.ttrpc`)}`,
      '[debug]',
      `  address = ""`,
      '[metrics]',
      `  address = ""`,
      '',
    ].join('\n'),
  );
  const child = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const ctr = async (args: readonly string[]) => (await run('ctr', ['--address', address, ...args])).stdout;
  await until('containerd', child, () => log, async () => {
    await ctr(['version']);
    return true;
  });
  return { address, ctr, stop: stopper(child) };
}
