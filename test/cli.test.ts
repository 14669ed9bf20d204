// The `bramble` command as users run it: exit codes, messages without stack traces, --json events,
// the built-in default cluster, and a clean stop on Ctrl-C that leaves no complete-looking output.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getFixture } from './helpers/fixture.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin/bramble.mjs');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function bramble(args: string[], opts: { cwd?: string; onStdout?: (chunk: string, kill: () => void) => void; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      cwd: opts.cwd ?? root,
      env: { ...process.env, CI: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
      opts.onStdout?.(c, () => child.kill('SIGINT'));
    });
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    // 'close', not 'exit': only then has all of stdout been read.
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let tmp: string;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-cli-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('usage', () => {
  test('no command prints usage and exits 2', async () => {
    const r = await bramble([]);
    assert.equal(r.code, 2);
    assert.match(r.stdout, /Usage:/);
  });
  test('--help exits 0', async () => {
    const r = await bramble(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /bramble build/);
  });
  test('an unknown command names the commands', async () => {
    const r = await bramble(['bulid']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown command "bulid"/);
    assert.match(r.stderr, /hint: commands: .*build/);
    assert.doesNotMatch(r.stderr, /at .*\.ts:\d+/);
  });
  test('an unknown option is a usage error', async () => {
    const r = await bramble(['plan', '--frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /frobnicate/);
  });
  test('an unknown target lists the targets', async () => {
    const r = await bramble(['plan', '--target', 'rpi5']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown target "rpi5"/);
    assert.match(r.stderr, /rpi4, rpi3, pc, arm64-uefi, pxe/);
  });
});

describe('config errors', () => {
  test('a bad config exits 2 with file, line, key path and hint, and no stack trace', async () => {
    const file = join(tmp, 'bad.toml');
    await writeFile(file, ['name = "c"', '[[nodes]]', 'name = "cp-1"', 'role = "control-plane"', 'hardware = "pc"', 'mac = "01:00:5e:00:00:01"', ''].join('\n'));
    const r = await bramble(['plan', '-c', file]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:6: nodes\\[0\\]\\.mac: `));
    assert.match(r.stderr, /multicast/);
    assert.match(r.stderr, /hint: /);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });
  test('a missing config file exits 2 and says so', async () => {
    const r = await bramble(['plan', '-c', join(tmp, 'nope.toml')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /nope\.toml/);
  });
  test('inspect of a directory without a manifest exits 2', async () => {
    const r = await bramble(['inspect', tmp]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no readable manifest\.json/);
  });
});

describe('plan', () => {
  test('the example plans, and --json is a stable versioned document', async () => {
    const a = await bramble(['plan', '-c', 'examples/cluster.toml', '--json', '--lock', join(tmp, 'none.lock')]);
    const b = await bramble(['plan', '-c', 'examples/cluster.toml', '--json', '--lock', join(tmp, 'none.lock')]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    const plan = JSON.parse(a.stdout) as { planVersion: number; nodes: Array<{ name: string }> };
    assert.equal(plan.planVersion, 1);
    assert.deepEqual(plan.nodes.map((n) => n.name).sort(), ['cp-1', 'worker-1', 'worker-pxe-1']);
    const human = await bramble(['plan', '-c', 'examples/cluster.toml', '--lock', join(tmp, 'none.lock')]);
    assert.equal(human.code, 0);
    assert.match(human.stdout, /worker-pxe-1/);
  });
  test('without -c the built-in default cluster has one control-plane node of the target', async () => {
    const r = await bramble(['plan', '--target', 'rpi4', '--json', '--lock', join(tmp, 'none.lock')]);
    assert.equal(r.code, 0, r.stderr);
    const plan = JSON.parse(r.stdout) as { nodes: Array<{ role: string; hardware: string; ip: string }> };
    assert.equal(plan.nodes.length, 1);
    assert.equal(plan.nodes[0]!.role, 'control-plane');
    assert.equal(plan.nodes[0]!.hardware, 'rpi4');
    assert.equal(plan.nodes[0]!.ip, 'dhcp');
  });
});

describe('fetch and build against the fixture upstream', () => {
  let sources: string;
  before(async () => {
    const f = await getFixture();
    sources = join(tmp, 'sources.toml');
    await writeFile(sources, f.sourcesToml);
  });

  test('--offline with a cold cache and no lock exits 4 with what to do', async () => {
    const r = await bramble(['fetch', '--target', 'pc', '--sources', sources, '--offline', '--cache', join(tmp, 'cold'), '--lock', join(tmp, 'offline.lock')]);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /--offline/);
    assert.match(r.stderr, /hint: run `bramble fetch` first/);
  });

  test('Ctrl-C during a build exits 130 and leaves no manifest', { timeout: 300_000 }, async () => {
    const out = join(tmp, 'interrupted-out');
    let sent = false;
    const r = await bramble(
      ['build', '--target', 'pc', '--sources', sources, '--json', '--cache', join(tmp, 'interrupt-cache'), '--out', out, '--lock', join(tmp, 'interrupt.lock')],
      {
        onStdout: (chunk, kill) => {
          // Interrupt once the download or decompression is under way.
          if (!sent && /"kind":"progress"/.test(chunk)) {
            sent = true;
            kill();
          }
        },
      },
    );
    assert.ok(sent, `no progress event seen:\n${r.stdout}\n${r.stderr}`);
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /interrupted/);
    assert.equal(existsSync(join(out, 'bramble', 'manifest.json')), false);
  });

  test('--json prints one event per line for a whole build', { timeout: 600_000 }, async () => {
    const out = join(tmp, 'json-out');
    const r = await bramble(['build', '--target', 'pxe', '--sources', sources, '--json', '--cache', join(tmp, 'json-cache'), '--out', out, '--lock', join(tmp, 'json.lock')]);
    assert.equal(r.code, 0, r.stderr);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; stage?: string; path?: string });
    const stages = events.filter((e) => e.kind === 'stage-finished').map((e) => e.stage);
    assert.deepEqual(stages, ['plan', 'fetch', 'render', 'assemble', 'package']);
    assert.ok(events.some((e) => e.kind === 'artefact-written' && e.path === 'pxe/boot.ipxe'));
    assert.ok(existsSync(join(out, 'bramble', 'manifest.json')));
  });
});
