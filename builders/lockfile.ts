// bramble.lock: what `bramble fetch` resolved (OS version, input URLs and verified digests), so a
// rebuild is offline and identical. JSON with a fixed key order and inputs sorted by id.
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from './errors.ts';

export interface LockFile {
  lockVersion: 1;
  cluster: string;
  os: { base: string; channel: string; version: string };
  inputs: LockedInput[];
}

export interface LockedInput {
  id: string;
  url: string;
  version: string;
  sha256: string;
  size: number;
  verifiedWith: string;
}

const HEX64 = /^[0-9a-f]{64}$/;

function bad(path: string, problem: string): InputError {
  return new InputError(`${path}: ${problem}`, { hint: 'delete the lock file and run `bramble fetch` to write a new one' });
}

function str(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0;
}

/** Read a lock file; undefined when there is none. A malformed lock is an InputError naming the problem. */
export async function readLock(path: string): Promise<LockFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw bad(path, `not JSON (${(e as Error).message})`);
  }
  const o = raw as Partial<LockFile> | null;
  if (!o || typeof o !== 'object') throw bad(path, 'not a lock object');
  if (o.lockVersion !== 1) throw bad(path, `lockVersion ${String(o.lockVersion)} is not supported (expected 1)`);
  if (!str(o.cluster)) throw bad(path, 'cluster is missing');
  if (!o.os || !str(o.os.base) || !str(o.os.channel) || !str(o.os.version)) throw bad(path, 'os must have base, channel and version');
  if (!Array.isArray(o.inputs)) throw bad(path, 'inputs must be a list');
  const inputs: LockedInput[] = o.inputs.map((i: Partial<LockedInput>, n) => {
    const where = `inputs[${n}]`;
    if (!i || !str(i.id) || !str(i.url) || !str(i.version) || !str(i.verifiedWith)) {
      throw bad(path, `${where} needs id, url, version and verifiedWith`);
    }
    if (!str(i.sha256) || !HEX64.test(i.sha256)) throw bad(path, `${where}.sha256 is not a sha256 digest`);
    if (typeof i.size !== 'number' || !Number.isSafeInteger(i.size) || i.size < 0) throw bad(path, `${where}.size is not a byte count`);
    return { id: i.id, url: i.url, version: i.version, sha256: i.sha256, size: i.size, verifiedWith: i.verifiedWith };
  });
  return { lockVersion: 1, cluster: o.cluster, os: { base: o.os.base, channel: o.os.channel, version: o.os.version }, inputs };
}

/** The lock's text: fixed key order, inputs sorted by id, so the same resolution gives the same bytes. */
export function formatLock(lock: LockFile): string {
  const inputs = [...lock.inputs]
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((i) => ({ id: i.id, url: i.url, version: i.version, sha256: i.sha256, size: i.size, verifiedWith: i.verifiedWith }));
  const ordered = {
    lockVersion: lock.lockVersion,
    cluster: lock.cluster,
    os: { base: lock.os.base, channel: lock.os.channel, version: lock.os.version },
    inputs,
  };
  return JSON.stringify(ordered, null, 2) + '\n';
}

/** Write the lock atomically (temp file beside it, then rename). */
export async function writeLock(path: string, lock: LockFile): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, formatLock(lock));
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
