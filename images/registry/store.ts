// The registry blob store: `<root>/sha256/<hex>`, one file per digest whatever image, repository or
// arch it came from (types.ts blobPath). Manifests are stored as the exact bytes upstream served, like
// any blob. A file appears there only by rename after its size and sha256 were checked, so a reader
// never sees unverified or partial bytes. Downloads grow under `<root>/tmp/` (a stable name per digest,
// resumable by a later run) and a lock per digest under `<root>/locks/` keeps concurrent builds apart.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VerificationError } from '../../builders/errors.ts';
import type { StageContext } from '../../builders/events.ts';
import { Cache } from '../cache.ts';
import { blobPath, type Digest } from './types.ts';

export function sha256Digest(bytes: Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Throw a VerificationError unless `bytes` have the descriptor's size (checked first, §3.6) and digest. */
export function verifyBytes(subject: string, bytes: Uint8Array, expected: { digest: Digest; size?: number }): void {
  if (expected.size !== undefined && bytes.length !== expected.size) {
    throw new VerificationError(subject, `${expected.size} bytes`, `${bytes.length} bytes`, { hint: digestHint });
  }
  const actual = sha256Digest(bytes);
  if (actual !== expected.digest) throw new VerificationError(subject, expected.digest, actual, { hint: digestHint });
}

export const digestHint = 'the registry (or a proxy on the way) served other bytes than the digest names; check [sources].registries and try again';

export class BlobStore {
  private readonly locks: Cache;

  constructor(readonly root: string) {
    // The download cache's lock files (owner pid, stale takeover) serve this store too.
    this.locks = new Cache(root);
  }

  path(digest: Digest): string {
    return blobPath(this.root, digest);
  }

  /** Present with the expected size (bytes were verified when they entered). */
  async has(digest: Digest, size?: number): Promise<boolean> {
    try {
      const st = await stat(this.path(digest));
      return st.isFile() && (size === undefined || st.size === size);
    } catch {
      return false;
    }
  }

  async read(digest: Digest): Promise<Buffer> {
    return readFile(this.path(digest));
  }

  /** Store verified bytes (a manifest) under their digest, by temp file and rename. */
  async putVerified(bytes: Uint8Array, digest: Digest): Promise<void> {
    if (await this.has(digest, bytes.length)) return;
    const tmp = await this.tempPath();
    try {
      await writeFile(tmp, bytes);
      await this.commit(tmp, digest);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** Where a download of `digest` grows; stable, so an interrupted run's bytes are resumed by the next. */
  partialPath(digest: Digest): string {
    return join(this.root, 'tmp', `${this.path(digest).slice(-64)}.partial`);
  }

  async tempPath(): Promise<string> {
    await mkdir(join(this.root, 'tmp'), { recursive: true });
    return join(this.root, 'tmp', `put.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  }

  /** Move a verified file into place. */
  async commit(file: string, digest: Digest): Promise<void> {
    await mkdir(join(this.root, 'sha256'), { recursive: true });
    await rename(file, this.path(digest));
  }

  /** Run `fn` holding the lock of one digest (another build may be fetching the same blob). */
  withLock<T>(digest: Digest, ctx: StageContext, fn: () => Promise<T>): Promise<T> {
    return this.locks.withLock(`registry-blob ${digest}`, ctx, fn);
  }
}

/** Every blob in a store root with its size: what the bundle writers and the dedup test count. */
export async function listStoredBlobs(root: string): Promise<{ digest: Digest; size: number }[]> {
  let names: string[];
  try {
    names = await readdir(join(root, 'sha256'));
  } catch {
    return [];
  }
  const out: { digest: Digest; size: number }[] = [];
  for (const name of names.sort()) {
    if (!/^[a-f0-9]{64}$/.test(name)) continue;
    const st = await stat(join(root, 'sha256', name));
    out.push({ digest: `sha256:${name}`, size: st.size });
  }
  return out;
}
