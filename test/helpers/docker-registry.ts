// Debian's docker-registry (distribution 2.8) as a writable registry for push tests: temp storage,
// an ephemeral port on 127.0.0.1, optionally htpasswd basic auth. stop() ends it; tests call it in t.after.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort } from './registry-peers.ts';

export interface WritableRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  /** The storage root (distribution's filesystem driver layout). */
  storage: string;
  log(): string;
  stop(): Promise<void>;
}

export async function startWritableRegistry(dir: string, o: { htpasswd?: string } = {}): Promise<WritableRegistry> {
  const port = await freePort();
  const storage = join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const config = join(dir, 'registry.yml');
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (o.htpasswd) lines.push('auth:', '  htpasswd:', '    realm: bramble-test', `    path: ${o.htpasswd}`);
  await writeFile(config, lines.join('\n') + '\n');
  const child: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  };
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}:\n${log.slice(-3000)}`);
    // 200 without auth, 401 with: either way it is serving.
    const status = await fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.status, () => 0);
    if (status === 200 || status === 401) break;
    if (Date.now() - t0 > 20_000) {
      await stop();
      throw new Error(`docker-registry did not come up within 20 s:\n${log.slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host: `127.0.0.1:${port}`, storage, log: () => log, stop };
}
