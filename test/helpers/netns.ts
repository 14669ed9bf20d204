// A network namespace a test creates and owns, processes started inside it (killed when the test
// ends or the process exits), and a readiness wait that fails with the process's output.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireTool, run } from '../../builders/exec.ts';

/** A process started inside the namespace, with its combined output. */
export interface Started {
  child: ChildProcess;
  output: () => string;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class NetworkNamespace {
  private readonly started = new Set<ChildProcess>();
  private constructor(readonly name: string) {}

  /** `ip netns add`; undefined (with the reason) when the kernel or sandbox does not allow it. */
  static async create(name: string): Promise<NetworkNamespace | string> {
    const r = await run('ip', ['netns', 'add', name], { okCodes: [1, 2] });
    if (r.exitCode !== 0) {
      if (/Operation not permitted|Permission denied/.test(r.stderr)) return `ip netns add: ${r.stderr.trim()}`;
      throw new Error(`ip netns add ${name}: ${r.stderr}`);
    }
    const ns = new NetworkNamespace(name);
    await ns.ip('link', 'set', 'lo', 'up');
    return ns;
  }

  /** `ip -n NS …` */
  async ip(...args: string[]): Promise<void> {
    await run('ip', ['-n', this.name, ...args]);
  }

  /** Run a command inside the namespace to its end. */
  exec(argv: string[], opts: { okCodes?: number[]; timeoutMs?: number } = {}) {
    return run('ip', ['netns', 'exec', this.name, ...argv], opts);
  }

  /** Start a long-running command inside the namespace. */
  start(argv: string[]): Started {
    const child = spawn(requireTool('ip'), ['netns', 'exec', this.name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.started.add(child);
    live.add(child);
    // 'close': the process has exited and its output has been read to the end.
    const exited = new Promise<void>((ok) => child.once('close', () => ok()));
    void exited.then(() => {
      this.started.delete(child);
      live.delete(child);
    });
    let out = '';
    child.stdout!.setEncoding('latin1').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('latin1').on('data', (d: string) => (out += d));
    return { child, output: () => out, exited };
  }

  /** Kill everything started here, then delete the namespace (its links go with it). */
  async destroy(): Promise<void> {
    for (const child of [...this.started]) await stop(child);
    await run('ip', ['netns', 'del', this.name], { okCodes: [1, 2] }).catch(() => undefined);
  }
}

export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once('exit', ok));
  child.kill('SIGKILL');
  await exited;
}

/** Poll `ready()` until it holds; fails with `what` and the output when the process exits or `ms` pass. */
export async function waitFor(what: string, p: Started, ready: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ready())) {
    assert.ok(p.child.exitCode === null && p.child.signalCode === null, `${what} exited:\n${p.output()}`);
    assert.ok(Date.now() < deadline, `${what} not ready after ${ms} ms:\n${p.output()}`);
    await sleep(200);
  }
}
