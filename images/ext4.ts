// ext4 filesystems inside an image file, edited with e2fsprogs' debugfs and no mount. debugfs opens
// a filesystem at a byte offset as `image?offset=N` (unix_io options; checked with Debian's
// e2fsprogs 1.47.0). New inodes take E2FSPROGS_FAKE_TIME as their times; owners and modes are set
// explicitly, so files are root-owned whoever runs the build, and the same inputs give the same bytes.
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { HostToolError, InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { sourceDateEpoch } from './cpio.ts';
import { alignRanges, forEachDataRun, mergeRanges, type ByteRange } from './sparse.ts';
import { writePartition } from './partition.ts';

/** File type bits of i_mode (POSIX <sys/stat.h>, as ext4 stores them: "The Second Extended File System", i_mode). */
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
/** Permission and set-id/sticky bits a caller may give. */
const MODE_BITS = 0o7777;

export interface Ext4Location {
  /** Byte offset of the filesystem inside the image. */
  offset: number;
}

export type Ext4Entry =
  | { path: string; type: 'file'; data?: Buffer | string; source?: string; mode: number; uid?: number; gid?: number }
  | { path: string; type: 'dir'; mode: number; uid?: number; gid?: number }
  | { path: string; type: 'symlink'; target: string; uid?: number; gid?: number };

export interface Ext4Listing {
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  /** Permission bits (without the type). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  inode: number;
}

export interface Ext4Options {
  signal?: AbortSignal;
  workDir?: string;
  /** Inode times, seconds since 1970: SOURCE_DATE_EPOCH by default. */
  epoch?: number;
}

const device = (image: string, at: Ext4Location) => {
  if (!Number.isSafeInteger(at.offset) || at.offset < 0) throw new InputError(`bad ext4 offset ${at.offset}`);
  return `${image}?offset=${at.offset}`;
};

/** A path debugfs can take as one double-quoted argument. */
function ext4Path(path: string): string {
  const norm = posix.normalize(`/${path}`).replace(/\/$/, '') || '/';
  if (/["\\\x00-\x1f]/.test(norm) || norm.split('/').includes('..')) throw new InputError(`ext4 path ${JSON.stringify(path)} cannot be written`);
  return norm;
}
/** One double-quoted debugfs argument; debugfs has no escape for a quote inside quotes. */
const q = (s: string) => {
  if (/["\x00-\x1f]/.test(s)) throw new InputError(`${JSON.stringify(s)} cannot be passed to debugfs (quote or control character)`);
  return `"${s}"`;
};

async function withTemp<T>(opts: Ext4Options, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'ext4-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Run a debugfs command script. debugfs exits 0 even when a command fails and reports failures on
 * stderr, so anything there besides its version banner is an error.
 */
async function debugfs(
  image: string,
  at: Ext4Location,
  script: string[],
  opts: Ext4Options & { write?: boolean; dir: string; allowErrors?: boolean },
): Promise<string> {
  const file = join(opts.dir, 'debugfs.cmd');
  await writeFile(file, `${script.join('\n')}\n`);
  const env: Record<string, string> = { TZ: 'UTC' };
  if (opts.epoch !== undefined) {
    env.E2FSPROGS_FAKE_TIME = String(opts.epoch);
    env.SOURCE_DATE_EPOCH = String(opts.epoch);
  }
  const { stdout, stderr } = await run('debugfs', [...(opts.write ? ['-w'] : []), '-f', file, device(image, at)], { env, signal: opts.signal });
  const problems = stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d+\.\d+/.test(l));
  if (problems.length > 0 && !opts.allowErrors) throw new HostToolError('debugfs', `debugfs on ${image} at byte ${at.offset} failed:\n${problems.slice(0, 8).join('\n')}`);
  return stdout;
}

function typeOf(mode: number): Ext4Listing['type'] {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 'file';
    case S_IFDIR:
      return 'dir';
    case S_IFLNK:
      return 'symlink';
    default:
      return 'other';
  }
}

/** `ls -p` prints /inode/mode/uid/gid/name/size/ per entry; one listing per `debugfs:` echo line. */
function parseListings(stdout: string): Map<string, Ext4Listing[]> {
  const out = new Map<string, Ext4Listing[]>();
  let dir: string | undefined;
  for (const line of stdout.split('\n')) {
    const cmd = /^debugfs: ls -p "(.*)"$/.exec(line);
    if (cmd) {
      dir = cmd[1]!;
      out.set(dir, []);
      continue;
    }
    const m = /^\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line);
    if (!m || dir === undefined || m[5] === '.' || m[5] === '..') continue;
    const mode = parseInt(m[2]!, 8);
    out.get(dir)!.push({
      path: dir === '/' ? `/${m[5]}` : `${dir}/${m[5]}`,
      type: typeOf(mode),
      mode: mode & MODE_BITS,
      uid: Number(m[3]),
      gid: Number(m[4]),
      size: Number(m[6] || 0),
      inode: Number(m[1]),
    });
  }
  return out;
}

/** Every entry under `dir` (default the root), recursively, sorted by path. */
export async function listExt4(image: string, at: Ext4Location, opts: Ext4Options & { dir?: string } = {}): Promise<Ext4Listing[]> {
  return withTemp(opts, async (tmp) => {
    const all: Ext4Listing[] = [];
    let level = [ext4Path(opts.dir ?? '/')];
    while (level.length > 0) {
      const listings = parseListings(await debugfs(image, at, level.map((d) => `ls -p ${q(d)}`), { ...opts, epoch: undefined, dir: tmp }));
      const next: string[] = [];
      for (const d of level) {
        for (const e of listings.get(d) ?? []) {
          all.push(e);
          if (e.type === 'dir' && e.path !== '/lost+found') next.push(e.path);
        }
      }
      level = next;
    }
    return all.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  });
}

/** The bytes of one regular file. */
export async function readExt4File(image: string, at: Ext4Location, path: string, opts: Ext4Options = {}): Promise<Buffer> {
  const p = ext4Path(path);
  return withTemp(opts, async (tmp) => {
    const out = join(tmp, 'file');
    try {
      await debugfs(image, at, [`dump ${q(p)} ${q(out)}`], { ...opts, epoch: undefined, dir: tmp });
    } catch (e) {
      throw new InputError(`no readable file ${path} on the ext4 filesystem at byte ${at.offset} of ${image}`, { cause: e });
    }
    return readFile(out);
  });
}

/**
 * Create directories, files and symlinks (missing parents become 0755 root directories), replacing
 * existing files and links, and set owner (default root), mode and times (the epoch) on each.
 */
export async function writeExt4Files(image: string, at: Ext4Location, entries: readonly Ext4Entry[], opts: Ext4Options = {}): Promise<void> {
  const epoch = opts.epoch ?? sourceDateEpoch();
  const wanted = entries.map((e) => ({ ...e, path: ext4Path(e.path) })).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (let i = 1; i < wanted.length; i++) if (wanted[i]!.path === wanted[i - 1]!.path) throw new InputError(`ext4 path ${wanted[i]!.path} given twice`);
  if (wanted.length === 0) return;

  const parents = new Set<string>();
  for (const e of wanted) for (let d = posix.dirname(e.path); d !== '/'; d = posix.dirname(d)) parents.add(d);
  const existing = new Map<string, Ext4Listing>();
  await withTemp(opts, async (tmp) => {
    // What exists already, in the directories this touches.
    const dirs = ['/', ...[...parents].sort()];
    // Directories that do not exist yet only print an error here.
    const found = parseListings(await debugfs(image, at, dirs.map((d) => `ls -p ${q(d)}`), { ...opts, epoch: undefined, dir: tmp, allowErrors: true }));
    for (const list of found.values()) for (const e of list) existing.set(e.path, e);

    const script: string[] = [];
    const inodeFields = (path: string, mode: number, uid = 0, gid = 0) => {
      script.push(`sif ${q(path)} mode 0${mode.toString(8)}`, `sif ${q(path)} uid ${uid}`, `sif ${q(path)} gid ${gid}`);
      for (const f of ['atime', 'ctime', 'mtime', 'crtime']) script.push(`sif ${q(path)} ${f} ${epoch}`);
    };
    const created = new Set<string>();
    for (const d of [...parents].sort()) {
      const old = existing.get(d);
      if (old && old.type !== 'dir') throw new InputError(`${d} exists on the ext4 filesystem and is not a directory`);
      if (!old) {
        script.push(`mkdir ${q(d)}`);
        inodeFields(d, S_IFDIR | 0o755);
        created.add(d);
      }
    }
    let n = 0;
    for (const e of wanted) {
      const old = existing.get(e.path);
      if (e.type === 'dir') {
        if (old && old.type !== 'dir') throw new InputError(`${e.path} exists on the ext4 filesystem and is not a directory`);
        if (!old && !created.has(e.path)) script.push(`mkdir ${q(e.path)}`);
        inodeFields(e.path, S_IFDIR | (e.mode & MODE_BITS), e.uid, e.gid);
        continue;
      }
      if (old?.type === 'dir') throw new InputError(`${e.path} is a directory on the ext4 filesystem`);
      if (old) script.push(`rm ${q(e.path)}`);
      if (e.type === 'symlink') {
        if (!e.target || /["\\\x00-\x1f]/.test(e.target)) throw new InputError(`symlink ${e.path} has a bad target ${JSON.stringify(e.target)}`);
        script.push(`symlink ${q(e.path)} ${q(e.target)}`);
        inodeFields(e.path, S_IFLNK | 0o777, e.uid, e.gid);
      } else {
        let host: string;
        if (e.source !== undefined) {
          host = e.source;
          if (!(await stat(host)).isFile()) throw new InputError(`${host} is not a regular file`);
        } else if (e.data !== undefined) {
          host = join(tmp, `data-${n++}`);
          await writeFile(host, e.data);
        } else throw new InputError(`ext4 file ${e.path} has neither data nor source`);
        script.push(`write ${q(host)} ${q(e.path)}`);
        inodeFields(e.path, S_IFREG | (e.mode & MODE_BITS), e.uid, e.gid);
      }
    }
    await debugfs(image, at, script, { ...opts, epoch, write: true, dir: tmp });
  });
}

/**
 * The data map of an ext4 filesystem inside an image without scanning the whole partition: the
 * blocks dumpe2fs reports in use (from the block bitmaps), of which the non-zero 4 KiB blocks are
 * kept. The cost follows the space in use, not the partition size (a grown ROOT can be huge).
 * Freed blocks can keep stale bytes, so use it together with the base image's map. Image offsets.
 */
export async function ext4DataRanges(image: string, at: Ext4Location, opts: { signal?: AbortSignal } = {}): Promise<ByteRange[]> {
  const { stdout } = await run('dumpe2fs', [device(image, at)], { signal: opts.signal });
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(stdout);
    if (!m) throw new InputError(`no ext4 filesystem at byte ${at.offset} of ${image} (dumpe2fs shows no "${name}")`);
    return Number(m[1]);
  };
  const blockSize = field('Block size');
  const blockCount = field('Block count');
  // Per-group lines ("  Free blocks: 4387-8192, 9000") list the free blocks; everything else is in use.
  const free: ByteRange[] = [];
  for (const m of stdout.matchAll(/^ {2}Free blocks: ?(.*)$/gm)) {
    for (const part of m[1]!.split(',').map((p) => p.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      free.push([a!, (b ?? a!) + 1]);
    }
  }
  const used: ByteRange[] = [];
  let next = 0;
  for (const [s, e] of mergeRanges(free)) {
    if (s > next) used.push([next, s]);
    next = Math.max(next, e);
  }
  if (next < blockCount) used.push([next, blockCount]);
  const fh = await open(image, 'r');
  const found: ByteRange[] = [];
  try {
    for (const [s, e] of used) {
      await forEachDataRun(fh, at.offset + s * blockSize, at.offset + e * blockSize, opts.signal, (data, where) => {
        found.push([where, where + data.length]);
      });
    }
  } finally {
    await fh.close();
  }
  return alignRanges(found, Number.MAX_SAFE_INTEGER);
}

/**
 * Grow an ext4 filesystem inside an image to `sizeBytes` (its partition's size), so content written at
 * build time can use a partition the image builder grew (Flatcar itself grows ROOT only at first boot).
 * resize2fs truncates a regular file to the new filesystem size even with `?offset=`, cutting off the
 * image's tail, so the filesystem's used blocks are copied into a sparse file of exactly the
 * partition's size, grown there, and written back. Returns the image ranges written.
 */
export async function growExt4(image: string, at: Ext4Location, sizeBytes: number, opts: Ext4Options = {}): Promise<ByteRange[]> {
  const used = await ext4DataRanges(image, at, opts);
  const epoch = String(opts.epoch ?? sourceDateEpoch());
  const env = { TZ: 'UTC', E2FSPROGS_FAKE_TIME: epoch, SOURCE_DATE_EPOCH: epoch };
  return withTemp(opts, async (tmp) => {
    const fsFile = join(tmp, 'grow.ext4');
    const src = await open(image, 'r');
    const dst = await open(fsFile, 'w');
    try {
      await dst.truncate(sizeBytes);
      const buf = Buffer.alloc(1 << 20);
      for (const [s, e] of used) {
        for (let pos = s; pos < e; pos += buf.length) {
          const n = Math.min(buf.length, e - pos);
          const { bytesRead } = await src.read(buf, 0, n, pos);
          if (bytesRead !== n) throw new InputError(`${image} ended inside its ext4 filesystem at byte ${pos}`);
          await dst.write(buf, 0, n, pos - at.offset);
        }
      }
    } finally {
      await src.close();
      await dst.close();
    }
    const { blockSize } = await ext4Space(fsFile, { offset: 0 }, opts);
    // -f: the base image's filesystem was never mounted, so it needs no fsck first.
    await run('resize2fs', ['-f', fsFile, String(Math.floor(sizeBytes / blockSize))], { env, signal: opts.signal });
    const fsRanges = await ext4DataRanges(fsFile, { offset: 0 }, opts);
    const imageRanges = used;
    return writePartition(image, { offset: at.offset, size: sizeBytes }, fsFile, {
      signal: opts.signal,
      fileRanges: fsRanges,
      imageRanges,
    });
  });
}

export interface Ext4Space {
  blockSize: number;
  freeBlocks: number;
  freeInodes: number;
}

/** Block size, free blocks and free inodes of an ext4 filesystem inside an image, from its superblock (`dumpe2fs -h`). */
export async function ext4Space(image: string, at: Ext4Location, opts: { signal?: AbortSignal } = {}): Promise<Ext4Space> {
  const { stdout } = await run('dumpe2fs', ['-h', device(image, at)], { signal: opts.signal });
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(stdout);
    if (!m) throw new InputError(`no ext4 filesystem at byte ${at.offset} of ${image} (dumpe2fs shows no "${name}")`);
    return Number(m[1]);
  };
  return { blockSize: field('Block size'), freeBlocks: field('Free blocks'), freeInodes: field('Free inodes') };
}

/**
 * Whether `entries` fit the ext4 filesystem at `at`: undefined when they do, else its free space and
 * the blocks they need (data blocks, plus one per entry for a directory or inode, plus an extent block
 * per 128 MiB of file: a generous bound on fragmentation). Callers word the refusal.
 */
export async function ext4Shortfall(image: string, at: Ext4Location, entries: readonly Ext4Entry[], opts: { signal?: AbortSignal } = {}): Promise<{ space: Ext4Space; blocks: number } | undefined> {
  const space = await ext4Space(image, at, opts);
  let blocks = 0;
  for (const e of entries) {
    const bytes = e.type === 'file' ? (e.source !== undefined ? (await stat(e.source)).size : Buffer.byteLength(e.data ?? '')) : 0;
    blocks += Math.ceil(bytes / space.blockSize) + 1 + Math.ceil(bytes / (128 << 20));
  }
  return blocks > space.freeBlocks || entries.length > space.freeInodes ? { space, blocks } : undefined;
}
