// out/<cluster>/ bookkeeping: atomic writes, secret modes, untouched unchanged files, stale files removed,
// SHA256SUMS that sha256sum accepts, the manifest written last, and the sparse-aware image hash.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import { OutputWriter, sha256File, sha256Sparse } from '../builders/output.ts';
import { discardEvents } from '../builders/events.ts';

async function withTmp(fn: (dir: string) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-output-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const finishArgs = { cluster: 'c', sourceDateEpoch: 0, nodes: [], inputs: [] };

test('writes artefacts with their modes, SHA256SUMS that sha256sum -c accepts, and the manifest last', async () => {
  await withTmp(async (dir) => {
    const out = new OutputWriter(join(dir, 'c'), discardEvents);
    await out.begin();
    await out.writeFile('configs/a.ign', '{"secret":1}\n', { kind: 'ignition', node: 'a', secret: true });
    await out.writeFile('pxe/boot.ipxe', '#!ipxe\n', { kind: 'pxe-script', secret: false });
    const m = await out.finish(finishArgs);
    assert.deepEqual(m.artefacts.map((a) => a.path), ['configs/a.ign', 'pxe/boot.ipxe']);
    assert.equal((await stat(join(dir, 'c/configs/a.ign'))).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'c/pxe/boot.ipxe'))).mode & 0o777, 0o644);
    await run('sha256sum', ['-c', '--quiet', 'SHA256SUMS'], { cwd: join(dir, 'c') });
    const manifest = JSON.parse(await readFile(join(dir, 'c/manifest.json'), 'utf8'));
    assert.equal(manifest.manifestVersion, 1);
  });
});

test('a rebuild leaves unchanged files untouched, rewrites changed ones and removes stale ones', async () => {
  await withTmp(async (dir) => {
    const first = new OutputWriter(join(dir, 'c'), discardEvents);
    await first.begin();
    await first.writeFile('same.txt', 'same', { kind: 'pxe-script', secret: false });
    await first.writeFile('changes.txt', 'one', { kind: 'pxe-script', secret: false });
    await first.writeFile('gone.txt', 'bye', { kind: 'pxe-script', secret: false });
    await first.finish(finishArgs);
    await writeFile(join(dir, 'c/pki-like'), 'x');
    const before = await stat(join(dir, 'c/same.txt'));
    await new Promise((r) => setTimeout(r, 20));

    const second = new OutputWriter(join(dir, 'c'), discardEvents);
    await second.begin();
    assert.equal(existsSync(join(dir, 'c/manifest.json')), false, 'a running build has no manifest');
    await second.writeFile('same.txt', 'same', { kind: 'pxe-script', secret: false });
    await second.writeFile('changes.txt', 'two', { kind: 'pxe-script', secret: false });
    await second.finish(finishArgs);
    const after = await stat(join(dir, 'c/same.txt'));
    assert.equal(after.ino, before.ino);
    assert.equal(after.mtimeMs, before.mtimeMs);
    assert.equal(await readFile(join(dir, 'c/changes.txt'), 'utf8'), 'two');
    assert.equal(existsSync(join(dir, 'c/gone.txt')), false);
    assert.equal(existsSync(join(dir, 'c/pki-like')), false, 'only pki/ survives as an unlisted entry');
  });
});

test('pki/ is kept across builds even though no step writes it', async () => {
  await withTmp(async (dir) => {
    await new OutputWriter(join(dir, 'c'), discardEvents).begin();
    await writeFile(join(dir, 'c/keep'), '');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(join(dir, 'c/pki'));
    await writeFile(join(dir, 'c/pki/ca.key'), 'k');
    const out = new OutputWriter(join(dir, 'c'), discardEvents);
    await out.begin();
    await out.finish(finishArgs);
    assert.equal(await readFile(join(dir, 'c/pki/ca.key'), 'utf8'), 'k');
  });
});

test('sha256Sparse equals the hash of the whole file when the ranges cover the data', async () => {
  await withTmp(async (dir) => {
    const path = join(dir, 'sparse.img');
    const fh = await open(path, 'w');
    const ranges: Array<[number, number]> = [
      [4096, 4096 + 70_000],
      [10 << 20, (10 << 20) + 5_000_000],
    ];
    for (const [s, e] of ranges) await fh.write(randomBytes(e - s), 0, e - s, s);
    await fh.truncate(64 << 20);
    await fh.close();
    assert.equal(await sha256Sparse(path, ranges), await sha256File(path));
    // A range list that misses data gives a different (wrong) hash: the function trusts its ranges.
    assert.notEqual(await sha256Sparse(path, ranges.slice(0, 1)), await sha256File(path));
  });
});
