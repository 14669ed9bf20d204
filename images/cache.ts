// The content-addressed download cache. Blobs live under their sha256, derived files (a decompressed
// image) under the digest of the blob they came from, and a small index maps a URL to the digests of
// what it served. Everything enters by rename from the cache's own tmp/ directory, so a reader sees
// either nothing or a whole verified file; a lock file per entry serialises concurrent builds.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HostError, InterruptedError } from '../builders/errors.ts';
import type { EventSink } from '../builders/events.ts';

/** `${XDG_CACHE_HOME:-~/.cache}/bramble`; XDG says a relative XDG_CACHE_HOME is to be ignored. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg && xdg.startsWith('/') ? xdg : join(env.HOME || homedir(), '.cache');
  return join(base, 'bramble');
}

/** What the index knows about a URL: the digests and size of the verified bytes it served. */
export interface IndexEntry {
  url: string;
  sha256: string;
  sha512: string;
  size: number;
  /** How the bytes were verified when they entered the cache. */
  verifiedWith?: string;
}

/** A lock older than this whose owner we cannot check (another host) is taken over. */
const FOREIGN_LOCK_STALE_MS = 24 * 60 * 60 * 1000;
const LOCK_POLL_MS = 100;

const HEX64 = /^[0-9a-f]{64}$/;

/** Temp names carry the host, so a cache shared between hosts is swept only of this host's dead files. */
const HOST_TAG = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export class Cache {
  constructor(readonly root: string) {}

  blobPath(sha256: string): string {
    if (!HEX64.test(sha256)) throw new Error(`not a sha256 digest: ${sha256}`);
    return join(this.root, 'blobs', 'sha256', sha256);
  }

  /** A file derived from a blob, e.g. derived/bz2-sparse/<blob sha256>. */
  derivedPath(kind: string, blobSha256: string): string {
    if (!/^[a-z0-9-]+$/.test(kind)) throw new Error(`bad derived kind: ${kind}`);
    if (!HEX64.test(blobSha256)) throw new Error(`not a sha256 digest: ${blobSha256}`);
    return join(this.root, 'derived', kind, blobSha256);
  }

  /** Where a download of `url` is kept while it is incomplete: a stable name, so a later run can resume it. */
  partialPath(url: string): string {
    return join(this.root, 'tmp', `${sha256Hex(url)}.part`);
  }

  /** A fresh temp file name inside the cache (same filesystem as the entries, so rename is atomic). */
  async tempPath(label: string): Promise<string> {
    await mkdir(join(this.root, 'tmp'), { recursive: true });
    return join(this.root, 'tmp', `${label}.${HOST_TAG}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  }

  /** Remove temp files left by processes of this host that died (a killed decompression leaves GiBs). */
  async sweepTemp(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(join(this.root, 'tmp'));
    } catch {
      return;
    }
    for (const name of names) {
      const m = /\.([0-9a-f]{8})\.(\d+)\.[0-9a-f]+\.tmp$/.exec(name);
      if (m && m[1] === HOST_TAG && !pidAlive(Number(m[2]))) await rm(join(this.root, 'tmp', name), { force: true });
    }
  }

  private indexPath(url: string): string {
    return join(this.root, 'index', 'url', `${sha256Hex(url)}.json`);
  }

  async lookupUrl(url: string): Promise<IndexEntry | undefined> {
    let entry: IndexEntry;
    try {
      entry = JSON.parse(await readFile(this.indexPath(url), 'utf8')) as IndexEntry;
    } catch {
      return undefined;
    }
    if (entry.url !== url || !(await this.hasBlob(entry.sha256, entry.size))) return undefined;
    return entry;
  }

  async recordUrl(entry: IndexEntry): Promise<void> {
    await this.writeAtomic(this.indexPath(entry.url), JSON.stringify(entry, null, 2) + '\n');
  }

  /** True when the blob is present with the expected size (a cheap check; bytes were verified on entry). */
  async hasBlob(sha256: string, size?: number): Promise<boolean> {
    try {
      const st = await stat(this.blobPath(sha256));
      return st.isFile() && (size === undefined || st.size === size);
    } catch {
      return false;
    }
  }

  /** Move a verified temp file into the blob store. */
  async commitBlob(tempFile: string, sha256: string): Promise<string> {
    const dest = this.blobPath(sha256);
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    await rename(tempFile, dest);
    return dest;
  }

  /** Write a small file by temp + rename. */
  async writeAtomic(dest: string, content: string | Uint8Array): Promise<void> {
    const tmp = await this.tempPath('write');
    try {
      await writeFile(tmp, content);
      await mkdir(join(dest, '..'), { recursive: true });
      await rename(tmp, dest);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /**
   * Run `fn` holding the lock named `key` (one lock file per cache entry, created with O_EXCL and holding
   * our pid). A lock whose owner died is taken over; otherwise we wait, honouring the signal.
   */
  async withLock<T>(key: string, ctx: { signal: AbortSignal; events: EventSink }, fn: () => Promise<T>): Promise<T> {
    const dir = join(this.root, 'locks');
    await mkdir(dir, { recursive: true });
    const path = join(dir, `${sha256Hex(key)}.lock`);
    const me: LockOwner = { pid: process.pid, host: hostname(), key, since: Date.now() };
    let announced = false;
    for (;;) {
      if (ctx.signal.aborted) throw new InterruptedError();
      try {
        const fh = await open(path, 'wx', 0o644);
        try {
          await fh.writeFile(JSON.stringify(me));
        } finally {
          await fh.close();
        }
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new HostError(`cannot create lock ${path}: ${(e as Error).message}`, {
            cause: e,
            hint: `check that the cache directory ${this.root} is writable (or pass --cache DIR)`,
          });
        }
      }
      const owner = await readOwner(path);
      if (owner && isStale(owner)) {
        await breakStaleLock(path, owner);
        continue;
      }
      if (!announced && owner) {
        ctx.events({ kind: 'info', message: `waiting for ${key} (locked by pid ${owner.pid} on ${owner.host})` });
        announced = true;
      }
      try {
        await sleep(LOCK_POLL_MS, undefined, { signal: ctx.signal });
      } catch {
        throw new InterruptedError();
      }
    }
    try {
      return await fn();
    } finally {
      await unlink(path).catch(() => {});
    }
  }
}

export interface LockOwner {
  pid: number;
  host: string;
  key: string;
  since: number;
}

/** A lock file that stays empty this long was left by a process that died between create and write. */
const EMPTY_LOCK_STALE_MS = 10_000;

/**
 * Remove the lock file at `path` if it still holds the stale owner `seen`. Waiters do this one at a
 * time, under `<lock>.break` (O_EXCL): two waiters that both saw the dead owner must not both remove
 * a lock, or the slower one would remove the live lock the faster one has created meanwhile. A
 * breaker file left by a process that died in between is removed once it is old.
 */
export async function breakStaleLock(path: string, seen: LockOwner): Promise<void> {
  const breaker = `${path}.break`;
  try {
    await (await open(breaker, 'wx', 0o644)).close();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new HostError(`cannot create ${breaker}: ${(e as Error).message}`, { cause: e, hint: 'check that the cache directory is writable (or pass --cache DIR)' });
    }
    const st = await stat(breaker).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > EMPTY_LOCK_STALE_MS) await unlink(breaker).catch(() => {});
    return;
  }
  try {
    const now = await readOwner(path);
    if (now && now.pid === seen.pid && now.host === seen.host && now.since === seen.since && isStale(now)) await unlink(path).catch(() => {});
  } finally {
    await unlink(breaker).catch(() => {});
  }
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as LockOwner;
  } catch {
    // Vanished, or its owner is between create and write: look again on the next round.
    try {
      const st = await stat(path);
      if (Date.now() - st.mtimeMs > EMPTY_LOCK_STALE_MS) return { pid: -1, host: hostname(), key: '', since: st.mtimeMs };
    } catch {
      /* gone */
    }
    return undefined;
  }
}

function isStale(owner: LockOwner): boolean {
  if (owner.pid <= 0) return true;
  if (owner.host !== hostname()) return Date.now() - owner.since > FOREIGN_LOCK_STALE_MS;
  return !pidAlive(owner.pid);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}
