// Getting bytes from upstream into the cache with Node's built-in fetch (undici; see
// docs/decisions/001-builtin-fetch.md). A download grows a stable partial file in the cache's tmp/,
// resumed with a Range request on the next attempt; it is hashed, handed to the caller's verifier and
// only then renamed into the blob store. A short body is never accepted.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { BrambleError, HostError, InputError, InterruptedError, VerificationError } from '../builders/errors.ts';
import type { EventSink } from '../builders/events.ts';
import type { Cache, IndexEntry } from './cache.ts';

export interface FetchContext {
  signal: AbortSignal;
  events: EventSink;
  /** No network at all: everything must come from the cache. */
  offline: boolean;
}

/** A verified blob in the cache. */
export interface CachedBlob {
  url: string;
  path: string;
  sha256: string;
  size: number;
  /** What the verifier reported (undefined for a hit by a locked digest). */
  verifiedWith?: string;
}

/** What a verifier sees: a complete file and its digests. `fresh` is false for a cache hit. */
export interface CandidateFile {
  url: string;
  path: string;
  sha256: string;
  sha512: string;
  size: number;
  fresh: boolean;
  /** For a cache hit: how the bytes were verified when they entered. */
  verifiedWith?: string;
}

export interface FetchBlobOptions {
  /** The digest the bytes must have (from a lock): a blob with it is a hit without any request. */
  sha256?: string;
  /**
   * Throws (VerificationError) to keep the bytes out of the cache; returns how it verified them, which
   * the index keeps. Also called on index hits (with fresh: false).
   */
  verify?: (file: CandidateFile) => Promise<string | undefined>;
}

/** Attempts per download; each one after the first resumes what the earlier ones received. */
const MAX_ATTEMPTS = 3;
/** Emit a progress event every this many bytes. */
const PROGRESS_STEP = 4 * 1024 * 1024;

const offlineHint = 'run `bramble fetch` first, online (it fills the cache and writes bramble.lock), or drop --offline';

/** Ensure the bytes of `url` are in the cache, verified; download (or resume) them when they are not. */
export async function fetchBlob(cache: Cache, url: string, ctx: FetchContext, opts: FetchBlobOptions = {}): Promise<CachedBlob> {
  const hit = await cacheHit(cache, url, opts);
  if (hit) {
    ctx.events({ kind: 'download', url, cached: true });
    return hit;
  }
  if (ctx.offline) {
    throw new HostError(`${url} is not in the cache${opts.sha256 ? ` (sha256 ${opts.sha256})` : ''} and --offline forbids downloading it`, {
      hint: offlineHint,
    });
  }
  return cache.withLock(`url:${url}`, ctx, async () => {
    // Another build may have fetched it while we waited for the lock.
    const late = await cacheHit(cache, url, opts);
    if (late) {
      ctx.events({ kind: 'download', url, cached: true });
      return late;
    }
    ctx.events({ kind: 'download', url, cached: false });
    const partial = cache.partialPath(url);
    const got = await downloadResumable(url, partial, ctx);
    const candidate: CandidateFile = { url, path: partial, ...got, fresh: true };
    let verifiedWith: string | undefined;
    try {
      if (opts.sha256 && opts.sha256 !== got.sha256) {
        throw new VerificationError(url, `sha256 ${opts.sha256} (bramble.lock)`, `sha256 ${got.sha256}`, {
          hint: 'upstream changed or the lock was edited: check the source, then delete the entry from bramble.lock to re-resolve',
        });
      }
      verifiedWith = await opts.verify?.(candidate);
    } catch (e) {
      if (!(e instanceof InterruptedError)) await discardPartial(partial);
      throw e;
    }
    const path = await cache.commitBlob(partial, got.sha256);
    await rm(metaPath(partial), { force: true });
    await cache.recordUrl({ url, sha256: got.sha256, sha512: got.sha512, size: got.size, verifiedWith });
    return { url, path, sha256: got.sha256, size: got.size, verifiedWith };
  });
}

async function cacheHit(cache: Cache, url: string, opts: FetchBlobOptions): Promise<CachedBlob | undefined> {
  if (opts.sha256) {
    if (await cache.hasBlob(opts.sha256)) {
      const path = cache.blobPath(opts.sha256);
      return { url, path, sha256: opts.sha256, size: (await stat(path)).size };
    }
    const known = await cache.lookupUrl(url);
    if (known && known.sha256 !== opts.sha256) {
      throw new VerificationError(url, `sha256 ${opts.sha256} (bramble.lock)`, `sha256 ${known.sha256} (verified earlier)`, {
        hint: 'upstream changed or the lock was edited: check the source, then delete the entry from bramble.lock to re-resolve',
      });
    }
    return undefined;
  }
  const known: IndexEntry | undefined = await cache.lookupUrl(url);
  if (!known) return undefined;
  const path = cache.blobPath(known.sha256);
  if (!(await cache.hasBlob(known.sha256))) return undefined;
  let verifiedWith: string | undefined;
  try {
    verifiedWith = (await opts.verify?.({ ...known, path, fresh: false })) ?? known.verifiedWith;
  } catch (e) {
    // Upstream re-published the file since it was cached (and nothing pins the old bytes): fetch it
    // again; the new bytes must then pass upstream's checks like any download.
    if (e instanceof VerificationError) return undefined;
    throw e;
  }
  return { url, path, sha256: known.sha256, size: known.size, verifiedWith };
}

/** A small mutable text that must not be cached (Flatcar's current/version.txt). */
export async function fetchText(url: string, ctx: FetchContext): Promise<string> {
  if (ctx.offline) {
    throw new HostError(`${url} is needed to resolve a version and --offline forbids the request`, { hint: offlineHint });
  }
  const res = await request(url, {}, ctx);
  if (res.status === 404 || res.status === 410) throw notFound(url);
  if (!res.ok) throw httpError(url, res.status);
  try {
    return await res.text();
  } catch (e) {
    throw networkError(url, e, ctx.signal);
  }
}

/** Largest checksum file, signature or DIGESTS we accept (they are a few hundred bytes). */
const SMALL_FILE_MAX = 1024 * 1024;

/**
 * A small immutable side file (checksum file, DIGESTS, signature), read into memory and never cached:
 * it is only needed to verify a download, and a failed verification must leave the cache as it was.
 */
export async function fetchSmall(url: string, ctx: FetchContext): Promise<Buffer> {
  if (ctx.offline) {
    throw new HostError(`${url} is needed to verify a download and --offline forbids the request`, { hint: offlineHint });
  }
  const res = await request(url, {}, ctx);
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel();
    throw notFound(url);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(url, res.status);
  }
  const declared = Number(res.headers.get('content-length') ?? '0');
  if (declared > SMALL_FILE_MAX) {
    await res.body?.cancel();
    throw new VerificationError(url, `at most ${SMALL_FILE_MAX} bytes`, `${declared} bytes`, { hint: 'this is not a checksum or signature file; check [sources]' });
  }
  let body: Buffer;
  try {
    body = Buffer.from(await res.arrayBuffer());
  } catch (e) {
    throw networkError(url, e, ctx.signal);
  }
  if (body.length > SMALL_FILE_MAX) {
    throw new VerificationError(url, `at most ${SMALL_FILE_MAX} bytes`, `${body.length} bytes`, { hint: 'this is not a checksum or signature file; check [sources]' });
  }
  return body;
}

/** A 404 from upstream means the config names something that does not exist. */
export class NotFoundError extends InputError {
  constructor(readonly url: string) {
    super(`${url} does not exist (HTTP 404)`, {
      hint: 'check the version in cluster.toml and the [sources] base URLs',
    });
  }
}

function notFound(url: string): NotFoundError {
  return new NotFoundError(url);
}

function httpError(url: string, status: number): HostError {
  return new HostError(`${url}: HTTP ${status}`, { hint: 'the server refused the request; check [sources] and try again later' });
}

function networkError(url: string, e: unknown, signal: AbortSignal): BrambleError {
  if (signal.aborted) return signal.reason instanceof BrambleError ? signal.reason : new InterruptedError();
  if (e instanceof BrambleError) return e;
  const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : e instanceof Error ? `: ${e.message}` : '';
  return new HostError(`cannot download ${url}${cause}`, {
    cause: e,
    hint: 'check the network and the [sources] URLs; with a bramble.lock and a warm cache, --offline needs no network',
  });
}

async function request(url: string, headers: Record<string, string>, ctx: FetchContext): Promise<Response> {
  try {
    // identity: undici would otherwise undo a Content-Encoding and hand us bytes that match no checksum.
    return await fetch(url, { headers: { 'accept-encoding': 'identity', ...headers }, signal: ctx.signal, redirect: 'follow' });
  } catch (e) {
    throw networkError(url, e, ctx.signal);
  }
}

interface PartialMeta {
  url: string;
  etag?: string;
  lastModified?: string;
}

const metaPath = (partial: string) => `${partial}.json`;

async function discardPartial(partial: string): Promise<void> {
  await rm(partial, { force: true });
  await rm(metaPath(partial), { force: true });
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function readMeta(partial: string, url: string): Promise<PartialMeta | undefined> {
  try {
    const m = JSON.parse(await readFile(metaPath(partial), 'utf8')) as PartialMeta;
    return m.url === url ? m : undefined;
  } catch {
    return undefined;
  }
}

/** `Content-Range: bytes <start>-<end>/<total>` (RFC 9110 §14.4); total may be `*`. */
function parseContentRange(v: string | null): { start: number; total?: number } | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(v?.trim() ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

/** `Content-Range: bytes *\/<total>` on a 416: what the server says the full size is. */
function unsatisfiedTotal(v: string | null): number | undefined {
  const m = /^bytes \*\/(\d+)$/.exec(v?.trim() ?? '');
  return m ? Number(m[1]) : undefined;
}

/** Download `url` into `partial`, resuming what is there; returns the digests of the complete file. */
async function downloadResumable(url: string, partial: string, ctx: FetchContext): Promise<{ size: number; sha256: string; sha512: string }> {
  let lastShort: { expected: number; got: number } | undefined;
  let lastError: BrambleError | undefined;
  await mkdir(dirname(partial), { recursive: true });
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    if (attempt > 1) await sleep(200 * attempt, undefined, { signal: ctx.signal }).catch(() => {});
    if (ctx.signal.aborted) throw networkError(url, undefined, ctx.signal);
    let offset = await sizeOf(partial);
    const meta = offset > 0 ? await readMeta(partial, url) : undefined;
    if (offset > 0 && !meta) {
      await discardPartial(partial);
      offset = 0;
    }
    const headers: Record<string, string> = {};
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      // If-Range: a changed file comes back whole (200) instead of being spliced onto old bytes.
      const validator = meta?.etag ?? meta?.lastModified;
      if (validator) headers['if-range'] = validator;
    }
    const res = await request(url, headers, ctx);
    if (res.status === 404 || res.status === 410) {
      await discardPartial(partial);
      throw notFound(url);
    }
    if (res.status === 416 && offset > 0) {
      await res.body?.cancel();
      // The partial may already be whole (we were stopped between the last byte and the rename).
      if (unsatisfiedTotal(res.headers.get('content-range')) === offset) return hashFile(partial, ctx.signal);
      await discardPartial(partial);
      continue;
    }
    let append = false;
    let total: number | undefined;
    if (res.status === 206 && offset > 0) {
      const range = parseContentRange(res.headers.get('content-range'));
      if (!range || range.start !== offset) {
        await res.body?.cancel();
        await discardPartial(partial);
        continue;
      }
      append = true;
      total = range.total;
    } else if (res.status === 200) {
      const len = res.headers.get('content-length');
      total = len === null ? undefined : Number(len);
      offset = 0;
    } else {
      await res.body?.cancel();
      throw httpError(url, res.status);
    }
    const newMeta: PartialMeta = {
      url,
      etag: res.headers.get('etag') ?? undefined,
      lastModified: res.headers.get('last-modified') ?? undefined,
    };
    await writeFile(metaPath(partial), JSON.stringify(newMeta));
    let failure: BrambleError | undefined;
    try {
      await streamBody(res, partial, append, offset, total, url, ctx);
    } catch (e) {
      if (ctx.signal.aborted) throw networkError(url, e, ctx.signal); // keep the partial for the next run
      failure = networkError(url, e, ctx.signal);
    }
    const have = await sizeOf(partial);
    if (total === undefined ? !failure : have === total) return hashFile(partial, ctx.signal);
    if (total !== undefined && have > total) {
      await discardPartial(partial);
      continue;
    }
    lastShort = total === undefined ? undefined : { expected: total, got: have };
    lastError = failure;
    if (attempt < MAX_ATTEMPTS) {
      ctx.events({ kind: 'warning', message: `${url}: connection closed after ${have} bytes; resuming (attempt ${attempt + 1} of ${MAX_ATTEMPTS})` });
    }
  }
  // A body that never arrived whole is not kept: the next run starts clean.
  await discardPartial(partial);
  if (lastShort) {
    throw new VerificationError(url, `${lastShort.expected} bytes`, `${lastShort.got} bytes (truncated download)`, {
      hint: 'the server closed the connection before the whole file arrived; try again, or check the mirror',
    });
  }
  throw lastError ?? new HostError(`cannot download ${url} after ${MAX_ATTEMPTS} attempts`, { hint: 'check the network and try again' });
}

async function streamBody(
  res: Response,
  partial: string,
  append: boolean,
  offset: number,
  total: number | undefined,
  url: string,
  ctx: FetchContext,
): Promise<void> {
  if (!res.body) throw new HostError(`${url}: empty response body`);
  let done = offset;
  let reported = offset;
  const what = url.slice(url.lastIndexOf('/') + 1);
  const progress = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      done += chunk.length;
      if (done - reported >= PROGRESS_STEP) {
        reported = done;
        ctx.events({ kind: 'progress', stage: 'fetch', what, done, total, unit: 'bytes' });
      }
      cb(null, chunk);
    },
    flush(cb) {
      ctx.events({ kind: 'progress', stage: 'fetch', what, done, total, unit: 'bytes' });
      cb();
    },
  });
  const fh = await open(partial, append ? 'a' : 'w');
  try {
    await pipeline(
      Readable.fromWeb(res.body as WebReadableStream<Uint8Array>),
      progress,
      // Each chunk is on disk before the next is read, so after a dropped connection the partial file
      // holds every byte received and the resume starts exactly there.
      async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) await fh.write(chunk);
      },
      { signal: ctx.signal },
    );
  } finally {
    await fh.close();
  }
}

/** sha256 and sha512 of a file in one read. */
export async function hashFile(path: string, signal?: AbortSignal): Promise<{ size: number; sha256: string; sha512: string }> {
  const hashes: Hash[] = [createHash('sha256'), createHash('sha512')];
  let size = 0;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      for (const h of hashes) h.update(chunk);
      cb();
    },
  });
  try {
    await pipeline(createReadStream(path), sink, { signal });
  } catch (e) {
    if (signal?.aborted) throw new InterruptedError();
    throw e;
  }
  return { size, sha256: hashes[0]!.digest('hex'), sha512: hashes[1]!.digest('hex') };
}
