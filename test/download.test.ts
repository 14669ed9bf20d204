// The cache and downloader against a real HTTP server on 127.0.0.1: verification before entry,
// truncated bodies, resuming with Range, concurrent builds and stale locks, offline misses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExitCode, VerificationError, type BrambleError } from '../builders/errors.ts';
import type { BrambleEvent } from '../builders/events.ts';
import { breakStaleLock, Cache, defaultCacheDir, sha256Hex, type LockOwner } from '../images/cache.ts';
import { fetchBlob, type FetchContext } from '../images/download.ts';
import { filesUnder, sha256 } from './helpers/tiny-upstream.ts';
import { UpstreamServer } from './helpers/upstream-server.ts';

async function setup(t: import('node:test').TestContext) {
  const server = await new UpstreamServer().start();
  const dir = await mkdtemp(join(tmpdir(), 'bramble-dl-'));
  t.after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const events: BrambleEvent[] = [];
  const ctx: FetchContext = { signal: new AbortController().signal, events: (e) => events.push(e), offline: false };
  return { server, cache: new Cache(dir), dir, events, ctx };
}


function exitCodeOf(code: number, pattern?: RegExp) {
  return (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, code, `expected exit ${code}, got ${String(e)}`);
    if (pattern) assert.match((e as Error).message + ' ' + ((e as BrambleError).hint ?? ''), pattern);
    return true;
  };
}

test('a download is verified, stored by sha256 and indexed by URL; the next fetch is a hit with no request', async (t) => {
  const { server, cache, ctx, events } = await setup(t);
  const data = randomBytes(5 * 1024 * 1024 + 123);
  server.files.set('/f.bin', data);
  const seen: string[] = [];
  const blob = await fetchBlob(cache, server.url('/f.bin'), ctx, {
    verify: async (f) => {
      seen.push(`${f.fresh}:${f.sha256}`);
      return 'test-check';
    },
  });
  assert.equal(blob.sha256, sha256(data));
  assert.equal(blob.path, join(cache.root, 'blobs', 'sha256', sha256(data)));
  assert.deepEqual(await readFile(blob.path), data);
  assert.equal(blob.verifiedWith, 'test-check');
  assert.deepEqual(await filesUnder(cache.root), [`blobs/sha256/${sha256(data)}`, `index/url/${sha256Hex(server.url('/f.bin'))}.json`]);
  const progress = events.filter((e) => e.kind === 'progress');
  assert.ok(progress.length >= 2, 'progress events while downloading');
  assert.deepEqual(progress.at(-1), { kind: 'progress', stage: 'fetch', what: 'f.bin', done: data.length, total: data.length, unit: 'bytes' });

  const again = await fetchBlob(cache, server.url('/f.bin'), ctx, { verify: async (f) => void seen.push(`${f.fresh}:${f.sha256}`) });
  assert.equal(again.path, blob.path);
  assert.equal(again.verifiedWith, 'test-check', 'the index keeps how the bytes were verified');
  assert.equal(server.log.length, 1);
  assert.deepEqual(seen, [`true:${sha256(data)}`, `false:${sha256(data)}`]);
  assert.deepEqual(
    events.filter((e) => e.kind === 'download'),
    [
      { kind: 'download', url: server.url('/f.bin'), cached: false },
      { kind: 'download', url: server.url('/f.bin'), cached: true },
    ],
  );
});

test('a known sha256 (from a lock) present in the cache is a hit without any request, even offline', async (t) => {
  const { server, cache, ctx } = await setup(t);
  const data = randomBytes(1000);
  server.files.set('/a', data);
  await fetchBlob(cache, server.url('/a'), ctx);
  server.log.length = 0;
  // Another URL with the same bytes: the digest is what counts.
  const hit = await fetchBlob(cache, server.url('/elsewhere'), { ...ctx, offline: true }, { sha256: sha256(data) });
  assert.deepEqual(await readFile(hit.path), data);
  assert.equal(server.log.length, 0);
});

test('bytes that fail verification, or differ from the locked digest, leave nothing in the cache (exit 3)', async (t) => {
  const { server, cache, ctx } = await setup(t);
  server.files.set('/f', randomBytes(70_000));
  await assert.rejects(
    fetchBlob(cache, server.url('/f'), ctx, {
      verify: async () => {
        throw new VerificationError('f', 'good', 'bad');
      },
    }),
    exitCodeOf(ExitCode.verification),
  );
  assert.deepEqual(await filesUnder(cache.root), []);
  const other = sha256(Buffer.from('something else'));
  await assert.rejects(
    fetchBlob(cache, server.url('/f'), ctx, { sha256: other }),
    exitCodeOf(ExitCode.verification, new RegExp(`expected sha256 ${other} \\(bramble.lock\\)`)),
  );
  assert.deepEqual(await filesUnder(cache.root), []);
});

test('a body shorter than its Content-Length is never accepted: retried with Range, then exit 3 and nothing kept', async (t) => {
  const { server, cache, ctx } = await setup(t);
  const data = randomBytes(300_000);
  server.files.set('/cut', data);
  server.misbehave.set('/cut', { truncateAt: 1000 });
  let verified = false;
  await assert.rejects(
    fetchBlob(cache, server.url('/cut'), ctx, { verify: async () => void (verified = true) }),
    exitCodeOf(ExitCode.verification, /300000 bytes.*truncated download/),
  );
  assert.equal(verified, false);
  assert.deepEqual(await filesUnder(cache.root), []);
  // Three attempts; later ones resume from whatever reached the disk (how much did is up to the transport).
  const reqs = server.requestsFor('/cut');
  assert.equal(reqs.length, 3);
  assert.equal(reqs[0]!.range, undefined);
  for (const r of reqs.slice(1)) assert.match(r.range ?? 'bytes=0-', /^bytes=(\d{1,3}|1\d{3}|2000)-$/);
});

/** Wait until the partial download of `url` holds `size` bytes. */
async function partialReaches(cache: Cache, url: string, size: number): Promise<void> {
  while (((await stat(cache.partialPath(url)).catch(() => undefined))?.size ?? 0) < size) await sleep(10);
}

test('a connection closed early is resumed with Range (206) and the result is whole', async (t) => {
  const { server, cache, ctx, events } = await setup(t);
  const data = randomBytes(2 * 1024 * 1024);
  server.files.set('/big', data);
  server.misbehave.set('/big', [{ stallAt: 777_777 }]);
  const pending = fetchBlob(cache, server.url('/big'), ctx);
  await partialReaches(cache, server.url('/big'), 777_777);
  server.dropStalled();
  const blob = await pending;
  assert.deepEqual(await readFile(blob.path), data);
  const reqs = server.requestsFor('/big');
  assert.deepEqual(
    reqs.map((r) => [r.status, r.range]),
    [
      [200, undefined],
      [206, 'bytes=777777-'],
    ],
  );
  assert.match(reqs[1]!.ifRange ?? '', /^"/, 'If-Range carries the ETag');
  assert.ok(events.some((e) => e.kind === 'warning' && /resuming/.test(e.message)));
});

test('a server that ignores Range gets a fresh whole download', async (t) => {
  const { server, cache, ctx } = await setup(t);
  const data = randomBytes(400_000);
  server.files.set('/norange', data);
  server.misbehave.set('/norange', [{ stallAt: 50_000 }, { ignoreRange: true }]);
  const pending = fetchBlob(cache, server.url('/norange'), ctx);
  await partialReaches(cache, server.url('/norange'), 50_000);
  server.dropStalled();
  const blob = await pending;
  assert.deepEqual(await readFile(blob.path), data);
  assert.deepEqual(
    server.requestsFor('/norange').map((r) => [r.status, r.range]),
    [
      [200, undefined],
      [200, 'bytes=50000-'],
    ],
  );
});

test('a download interrupted by the AbortSignal is resumed by the next run', async (t) => {
  const { server, cache, ctx } = await setup(t);
  const data = randomBytes(1024 * 1024);
  server.files.set('/slow', data);
  server.misbehave.set('/slow', [{ stallAt: 300_000 }]);
  const url = server.url('/slow');
  const abort = new AbortController();
  const first = fetchBlob(cache, url, { ...ctx, signal: abort.signal });
  // Wait for the stalled server's bytes to reach the partial file, then interrupt.
  await partialReaches(cache, url, 300_000);
  abort.abort();
  await assert.rejects(first, exitCodeOf(ExitCode.interrupted));
  assert.equal((await stat(cache.partialPath(url))).size, 300_000, 'the partial file is kept for the next run');
  assert.deepEqual(await filesUnder(join(cache.root, 'locks')), [], 'the lock is released');

  const blob = await fetchBlob(cache, url, ctx);
  assert.deepEqual(await readFile(blob.path), data);
  assert.deepEqual(
    server.requestsFor('/slow').map((r) => [r.status, r.range]),
    [
      [200, undefined],
      [206, 'bytes=300000-'],
    ],
  );
  assert.deepEqual(await filesUnder(join(cache.root, 'tmp')), []);
});

test('concurrent fetches of one entry download it once and all get the same verified file', async (t) => {
  const { server, cache, ctx } = await setup(t);
  const data = randomBytes(3 * 1024 * 1024);
  server.files.set('/shared', data);
  const url = server.url('/shared');
  // A second Cache object on the same directory stands for a second build.
  const results = await Promise.all([
    fetchBlob(cache, url, ctx),
    fetchBlob(new Cache(cache.root), url, ctx),
    fetchBlob(new Cache(cache.root), url, ctx),
  ]);
  assert.equal(new Set(results.map((r) => r.path)).size, 1);
  assert.deepEqual(await readFile(results[0]!.path), data);
  assert.equal(server.requestsFor('/shared').length, 1);
  assert.deepEqual(await filesUnder(join(cache.root, 'locks')), []);
});

test('a waiter that saw a dead owner does not remove the live lock another waiter has taken since', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-lock-'));
  try {
    const path = join(dir, 'x.lock');
    const dead: LockOwner = { pid: spawnSync('true').pid!, host: hostname(), key: 'x', since: 1 };
    await writeFile(path, JSON.stringify(dead));
    // The faster waiter has already broken that lock and taken it: the file now names a live owner.
    const live: LockOwner = { pid: process.pid, host: hostname(), key: 'x', since: Date.now() };
    await writeFile(path, JSON.stringify(live));
    await breakStaleLock(path, dead);
    assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), live);
    // Still the dead owner's file: it is removed, and so is the breaker.
    await writeFile(path, JSON.stringify(dead));
    await breakStaleLock(path, dead);
    assert.deepEqual(await filesUnder(dir), []);
    // While another waiter is breaking it (its breaker file is fresh), nothing is removed.
    await writeFile(path, JSON.stringify(dead));
    await writeFile(`${path}.break`, '');
    await breakStaleLock(path, dead);
    assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), dead);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a lock left by a dead process is taken over; a live holder is waited for', async (t) => {
  const { server, cache, ctx, events } = await setup(t);
  const data = randomBytes(10_000);
  server.files.set('/locked', data);
  const url = server.url('/locked');
  const dead = spawnSync('true').pid;
  await mkdir(join(cache.root, 'locks'), { recursive: true });
  const lockFile = join(cache.root, 'locks', `${sha256Hex(`url:${url}`)}.lock`);
  await writeFile(lockFile, JSON.stringify({ pid: dead, host: hostname(), key: `url:${url}`, since: Date.now() }));
  const blob = await fetchBlob(cache, url, ctx);
  assert.deepEqual(await readFile(blob.path), data);

  // Held by a live owner (this process): the fetch waits until it is released.
  const data2 = randomBytes(10_000);
  server.files.set('/held', data2);
  const url2 = server.url('/held');
  let release!: () => void;
  let held!: () => void;
  const lockTaken = new Promise<void>((r) => (held = r));
  const holding = cache.withLock(`url:${url2}`, ctx, () =>
    new Promise<void>((r) => {
      release = r;
      held();
    }),
  );
  // The fetch starts only once the lock is held, so it cannot win the race for it.
  await lockTaken;
  const waiting = fetchBlob(new Cache(cache.root), url2, ctx);
  while (!events.some((e) => e.kind === 'info' && e.message.startsWith(`waiting for url:${url2}`))) await sleep(10);
  assert.equal(server.requestsFor('/held').length, 0);
  release();
  await holding;
  assert.deepEqual(await readFile((await waiting).path), data2);
});

test('upstream failures: 404 is bad input (2), no server is a host problem (4), offline miss says what to run', async (t) => {
  const { server, cache, ctx } = await setup(t);
  await assert.rejects(fetchBlob(cache, server.url('/missing'), ctx), exitCodeOf(ExitCode.badInput, /does not exist \(HTTP 404\)/));
  const closed = await new UpstreamServer().start();
  const deadUrl = closed.url('/x');
  await closed.close();
  await assert.rejects(fetchBlob(cache, deadUrl, ctx), exitCodeOf(ExitCode.hostEnvironment, /cannot download/));
  await assert.rejects(
    fetchBlob(cache, server.url('/x'), { ...ctx, offline: true }),
    exitCodeOf(ExitCode.hostEnvironment, /not in the cache.*run `bramble fetch` first, online/s),
  );
  assert.equal(server.requestsFor('/x').length, 0);
  assert.deepEqual(await filesUnder(cache.root), []);
});

test('temp files of dead processes on this host are swept; live ones are kept', async (t) => {
  const { cache } = await setup(t);
  const mine = await cache.tempPath('derive-bz2-sparse');
  const dead = mine.replace(`.${process.pid}.`, `.${spawnSync('true').pid}.`);
  await writeFile(mine, 'x');
  await writeFile(dead, 'y');
  await cache.sweepTemp();
  assert.deepEqual(await filesUnder(join(cache.root, 'tmp')), [mine.slice(cache.root.length + 5)]);
});

test('the default cache is $XDG_CACHE_HOME/bramble, else ~/.cache/bramble', () => {
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache', HOME: '/home/u' }), '/x/cache/bramble');
  assert.equal(defaultCacheDir({ HOME: '/home/u' }), '/home/u/.cache/bramble');
  assert.equal(defaultCacheDir({ XDG_CACHE_HOME: 'relative', HOME: '/home/u' }), '/home/u/.cache/bramble');
});
