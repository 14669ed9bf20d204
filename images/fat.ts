// FAT partitions inside an image file, edited with mtools and no mount. mtools addresses a
// filesystem at a byte offset of a file as `image@@offset` (mtools manual, "drive letters"; checked
// with Debian's mtools 4.0.32). Output is reproducible: sorted writes, timestamps from SOURCE_DATE_EPOCH
// (mcopy -m keeps the source's mtime; mmd stamps new directories with SOURCE_DATE_EPOCH), TZ=UTC.
import { copyFile, mkdir, mkdtemp, open, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { HostToolError, InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { sourceDateEpoch } from './cpio.ts';
import { alignRanges, scanDataRanges, type ByteRange } from './sparse.ts';

/** FAT timestamps start at 1980-01-01 00:00:00 (Microsoft FAT32 spec, "Date Format"); earlier times clamp to it. */
export const FAT_EARLIEST_TIME = 315532800;

export interface FatEntry {
  /** Absolute path inside the filesystem, e.g. /EFI/boot/bootx64.efi. */
  path: string;
  type: 'file' | 'dir';
  /** Bytes, for files. */
  size?: number;
}

export interface FatFile {
  /** Absolute path inside the filesystem; missing directories are created. */
  path: string;
  data?: Buffer | string;
  /** A host file to copy instead of `data`. */
  source?: string;
  /** Modification time in seconds since 1970; default the build epoch. */
  mtime?: number;
}

export interface FatOptions {
  signal?: AbortSignal;
  /** Temp files go under this directory (the run's workspace); default the OS temp dir. */
  workDir?: string;
  /** Build timestamp (seconds): SOURCE_DATE_EPOCH by default. */
  epoch?: number;
}

const drive = (image: string, offset: number) => {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InputError(`bad FAT partition offset ${offset}`);
  return `${image}@@${offset}`;
};

function mtoolsEnv(epoch: number): Record<string, string> {
  return {
    TZ: 'UTC',
    SOURCE_DATE_EPOCH: String(epoch),
    // Partition images rarely have a geometry mtools likes; these checks only refuse, never fix.
    MTOOLS_SKIP_CHECK: '1',
    MTOOLS_LOWER_CASE: '0',
    MTOOLS_NO_VFAT: '0',
  };
}

const fatTime = (t: number) => Math.max(FAT_EARLIEST_TIME, Math.floor(t));

/** `/a/b` → `::/a/b`, refusing relative paths, `..` and characters FAT long names cannot hold. */
function fatPath(path: string): string {
  const norm = posix.normalize(`/${path}`);
  const parts = norm.split('/').filter(Boolean);
  if (parts.length === 0 && norm !== '/') throw new InputError(`bad FAT path ${JSON.stringify(path)}`);
  for (const p of parts) {
    if (p === '..' || /["*:<>?\\|\x00-\x1f]/.test(p)) throw new InputError(`FAT path ${JSON.stringify(path)} has a name FAT cannot store`);
  }
  return `::/${parts.join('/')}`;
}

async function withTemp<T>(opts: FatOptions, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'fat-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const ENTRY_LINE = /^(.{8}) (.{3}) +(<DIR>|\d+) +\d{4}-\d\d-\d\d +\d\d?:\d\d(?::\d\d)?(?: {2}(.*?))? *$/;

/** Every file and directory under `dir` (default the root), sorted by path. */
export async function listFat(image: string, partOffset: number, opts: FatOptions & { dir?: string } = {}): Promise<FatEntry[]> {
  const env = mtoolsEnv(opts.epoch ?? 0);
  const root = fatPath(opts.dir ?? '/');
  const args = ['-i', drive(image, partOffset), '-a', root];
  let { stdout, exitCode } = await run('mdir', ['-/', ...args], { env, signal: opts.signal, okCodes: [1] });
  // mtools 4.0.32's recursive mdir fails on a directory with no entries at all; list it flat instead.
  if (exitCode !== 0) ({ stdout } = await run('mdir', args, { env, signal: opts.signal }));
  // mdir's long listing: "Directory for ::/x" headers, then "NAME    EXT     SIZE DATE TIME  LONG NAME".
  const entries: FatEntry[] = [];
  let current: string | undefined;
  for (const line of stdout.split('\n')) {
    const header = /^Directory for ::(\/.*)$/.exec(line);
    if (header) {
      current = header[1]!.replace(/\/$/, '');
      continue;
    }
    const m = current === undefined ? null : ENTRY_LINE.exec(line);
    if (!m) continue;
    const short = m[1]!.trim() + (m[2]!.trim() ? `.${m[2]!.trim()}` : '');
    const name = m[4] ?? short;
    if (name === '.' || name === '..') continue;
    const path = `${current}/${name}`;
    entries.push(m[3] === '<DIR>' ? { path, type: 'dir' } : { path, type: 'file', size: Number(m[3]) });
  }
  return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The bytes of one file. */
export async function readFatFile(image: string, partOffset: number, path: string, opts: FatOptions = {}): Promise<Buffer> {
  return withTemp(opts, async (dir) => {
    const out = join(dir, 'file');
    try {
      await run('mcopy', ['-n', '-i', drive(image, partOffset), fatPath(path), out], { env: mtoolsEnv(opts.epoch ?? 0), signal: opts.signal });
    } catch (e) {
      if (e instanceof HostToolError && !(await listFat(image, partOffset, opts)).some((f) => f.path.toLowerCase() === posix.normalize(`/${path}`).toLowerCase())) {
        throw new InputError(`no file ${path} on the FAT filesystem at byte ${partOffset} of ${image}`, { cause: e });
      }
      throw e;
    }
    return readFile(out);
  });
}

/**
 * Write files (creating directories as needed), in sorted order with fixed timestamps, so the same
 * inputs on the same filesystem give the same bytes. Existing files are replaced.
 */
export async function writeFatFiles(image: string, partOffset: number, files: readonly FatFile[], opts: FatOptions = {}): Promise<void> {
  const epoch = fatTime(opts.epoch ?? sourceDateEpoch());
  const env = mtoolsEnv(epoch);
  const target = drive(image, partOffset);
  const sorted = files.map((f) => ({ ...f, fat: fatPath(f.path) })).sort((a, b) => (a.fat < b.fat ? -1 : a.fat > b.fat ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]!.fat.toLowerCase() === sorted[i - 1]!.fat.toLowerCase()) throw new InputError(`FAT path ${sorted[i]!.path} given twice`);
  }
  if (sorted.length === 0) return;

  const existing = new Map((await listFat(image, partOffset, { ...opts, epoch })).map((e) => [`::${e.path}`.toLowerCase(), e.type]));
  const dirs = new Set<string>();
  for (const f of sorted) {
    if (existing.get(f.fat.toLowerCase()) === 'dir') throw new InputError(`${f.path} is a directory on the FAT filesystem`);
    const parts = f.fat.slice(3).split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(`::/${parts.slice(0, i).join('/')}`);
  }
  const missing = [...dirs].sort().filter((d) => {
    const type = existing.get(d.toLowerCase());
    if (type === 'file') throw new InputError(`${d.slice(2)} is a file on the FAT filesystem, not a directory`);
    return type === undefined;
  });
  if (missing.length > 0) await run('mmd', ['-i', target, ...missing], { env, signal: opts.signal });

  await withTemp(opts, async (dir) => {
    // One mcopy per target directory; each file is staged under its own name with its mtime set.
    const groups = new Map<string, typeof sorted>();
    for (const f of sorted) {
      const parent = posix.dirname(f.fat.slice(2));
      groups.set(parent, [...(groups.get(parent) ?? []), f]);
    }
    let n = 0;
    for (const [parent, group] of groups) {
      const stage = join(dir, String(n++));
      await mkdir(stage);
      const staged: string[] = [];
      for (const f of group) {
        const file = join(stage, posix.basename(f.fat));
        if (f.source !== undefined) await copyFile(f.source, file);
        else if (f.data !== undefined) await writeFile(file, f.data);
        else throw new InputError(`FAT file ${f.path} has neither data nor source`);
        const t = fatTime(f.mtime ?? epoch);
        await utimes(file, t, t);
        staged.push(file);
      }
      await run('mcopy', ['-o', '-m', '-i', target, ...staged, `::${parent === '/' ? '/' : `${parent}/`}`], { env, signal: opts.signal });
    }
  });
}

/** Delete one file. */
export async function removeFatFile(image: string, partOffset: number, path: string, opts: FatOptions = {}): Promise<void> {
  const entries = await listFat(image, partOffset, opts);
  const wanted = posix.normalize(`/${path}`).toLowerCase();
  const hit = entries.find((e) => e.path.toLowerCase() === wanted);
  if (!hit) throw new InputError(`no file ${path} on the FAT filesystem at byte ${partOffset} of ${image}`);
  if (hit.type !== 'file') throw new InputError(`${path} is a directory; removeFatFile deletes files only`);
  await run('mdel', ['-i', drive(image, partOffset), fatPath(path)], { env: mtoolsEnv(fatTime(opts.epoch ?? sourceDateEpoch())), signal: opts.signal });
}

// BIOS Parameter Block fields (Microsoft "FAT: General Overview of On-Disk Format", BPB and FAT32 BPB).
const BPB_BYTES_PER_SECTOR = 11;
const BPB_SECTORS_PER_CLUSTER = 13;
const BPB_RESERVED_SECTORS = 14;
const BPB_NUM_FATS = 16;
const BPB_ROOT_ENTRIES = 17;
const BPB_TOTAL_SECTORS_16 = 19;
const BPB_FAT_SIZE_16 = 22;
const BPB_TOTAL_SECTORS_32 = 32;
const BPB_FAT_SIZE_32 = 36;
const BOOT_SIGNATURE_OFFSET = 510;
const BOOT_SIGNATURE = 0xaa55;
const DIR_ENTRY_SIZE = 32;
/** The FAT type follows from the cluster count alone: below 4085 FAT12, below 65525 FAT16, else FAT32. */
const FAT12_MAX_CLUSTERS = 4084;
const FAT16_MAX_CLUSTERS = 65524;
/** FAT32 entries use the low 28 bits. */
const FAT32_ENTRY_MASK = 0x0fffffff;
/** Clusters are numbered from 2. */
const FIRST_CLUSTER = 2;

/**
 * Where a FAT filesystem can hold data, read from its boot sector and allocation table instead of
 * scanning the partition: the non-zero blocks of the reserved area, FATs and (FAT12/16) root
 * directory, plus every allocated cluster. Free clusters can still hold stale bytes (a replaced
 * file's old clusters), so use it together with the base image's map, never instead of it. Image
 * byte offsets.
 */
export async function fatDataRanges(image: string, partOffset: number, opts: { signal?: AbortSignal } = {}): Promise<ByteRange[]> {
  const fh = await open(image, 'r');
  try {
    const boot = Buffer.alloc(512);
    await fh.read(boot, 0, 512, partOffset);
    const bad = (why: string) => new InputError(`no FAT filesystem at byte ${partOffset} of ${image}: ${why}`);
    if (boot.readUInt16LE(BOOT_SIGNATURE_OFFSET) !== BOOT_SIGNATURE) throw bad('no boot sector signature');
    const bytesPerSector = boot.readUInt16LE(BPB_BYTES_PER_SECTOR);
    const perCluster = boot.readUInt8(BPB_SECTORS_PER_CLUSTER);
    const reserved = boot.readUInt16LE(BPB_RESERVED_SECTORS);
    const fats = boot.readUInt8(BPB_NUM_FATS);
    if (![512, 1024, 2048, 4096].includes(bytesPerSector) || perCluster === 0 || reserved === 0 || fats === 0) throw bad('implausible BPB');
    const rootSectors = Math.ceil((boot.readUInt16LE(BPB_ROOT_ENTRIES) * DIR_ENTRY_SIZE) / bytesPerSector);
    const fatSize = boot.readUInt16LE(BPB_FAT_SIZE_16) || boot.readUInt32LE(BPB_FAT_SIZE_32);
    const total = boot.readUInt16LE(BPB_TOTAL_SECTORS_16) || boot.readUInt32LE(BPB_TOTAL_SECTORS_32);
    const dataStart = reserved + fats * fatSize + rootSectors;
    const clusters = Math.floor((total - dataStart) / perCluster);
    if (fatSize === 0 || clusters <= 0) throw bad('implausible BPB');
    const kind = clusters <= FAT12_MAX_CLUSTERS ? 12 : clusters <= FAT16_MAX_CLUSTERS ? 16 : 32;

    const ranges = await scanDataRanges(image, { start: partOffset, end: partOffset + dataStart * bytesPerSector, signal: opts.signal });
    const fat = Buffer.alloc(fatSize * bytesPerSector);
    await fh.read(fat, 0, fat.length, partOffset + reserved * bytesPerSector);
    const entry = (n: number) => {
      if (kind === 32) return fat.readUInt32LE(n * 4) & FAT32_ENTRY_MASK;
      if (kind === 16) return fat.readUInt16LE(n * 2);
      const v = fat.readUInt16LE(Math.floor((n * 3) / 2));
      return n % 2 ? v >> 4 : v & 0xfff;
    };
    const clusterBytes = perCluster * bytesPerSector;
    const base = partOffset + dataStart * bytesPerSector;
    for (let n = FIRST_CLUSTER; n < clusters + FIRST_CLUSTER; n++) {
      if (entry(n) === 0) continue;
      const start = base + (n - FIRST_CLUSTER) * clusterBytes;
      const last = ranges[ranges.length - 1];
      if (last && last[1] === start) last[1] = start + clusterBytes;
      else ranges.push([start, start + clusterBytes]);
    }
    // Clusters can be smaller than the 4 KiB blocks data maps count in.
    return alignRanges(ranges, (await fh.stat()).size);
  } finally {
    await fh.close();
  }
}
