// FAT partitions inside an image file, edited with mtools and no mount. mtools addresses a
// filesystem at a byte offset of a file as `image@@offset` (mtools manual, "drive letters"; checked
// with Debian's mtools 4.0.32). Output is reproducible: sorted writes, timestamps from SOURCE_DATE_EPOCH
// (mcopy -m keeps the source's mtime; mmd stamps new directories with SOURCE_DATE_EPOCH), TZ=UTC.
import { mkdtemp, readFile, rm, utimes, writeFile, copyFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { HostToolError, InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { sourceDateEpoch } from './cpio.ts';

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
