// A deterministic writer for the "newc" (SVR4, no CRC) cpio format, the one the Linux kernel unpacks
// as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst) and the one Flatcar's
// PXE initrd uses. Same entries in → same bytes out: entries sorted, parents first, fixed owner and mtime.
import { posix } from 'node:path';
import { InputError } from '../builders/errors.ts';

/** newc magic: "070701" (no checksum); "070702" would be the CRC variant (cpio(5)). */
export const CPIO_NEWC_MAGIC = '070701';
/** newc header: 6-byte magic + 13 fields of 8 ASCII hex digits = 110 bytes (cpio(5), "New ASCII Format"). */
export const CPIO_NEWC_HEADER_SIZE = 110;
/** Header+name and file data are each padded to a multiple of 4 bytes (cpio(5)). */
export const CPIO_NEWC_ALIGN = 4;
/** The last entry of every archive (cpio(5)). */
export const CPIO_TRAILER_NAME = 'TRAILER!!!';
/** Each numeric field is 8 hex digits, so sizes and numbers must fit 32 bits. */
const CPIO_FIELD_MAX = 0xffffffff;

/** st_mode file-type bits (POSIX <sys/stat.h>), as stored in the newc mode field. */
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
const PERMISSION_BITS = 0o7777;

export type CpioEntryType = 'file' | 'dir' | 'symlink';

export interface CpioEntry {
  /** Relative path inside the archive, e.g. `usr/share/oem/config.ign` (a leading `./` or `/` is dropped). */
  path: string;
  type: CpioEntryType;
  /** Permission bits (0..0o7777); the type bits are added from `type`. */
  mode: number;
  /** File contents (files only). */
  data?: Buffer | string;
  /** Link target (symlinks only). */
  target?: string;
}

export interface CpioOptions {
  /** mtime of every entry, seconds since the epoch; default SOURCE_DATE_EPOCH, else 0. */
  mtime?: number;
}

/** The reproducible-builds timestamp: SOURCE_DATE_EPOCH when set, else 0 (1970-01-01). */
export function sourceDateEpoch(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return 0;
  if (!/^\d+$/.test(raw) || Number(raw) > CPIO_FIELD_MAX) {
    throw new InputError(`SOURCE_DATE_EPOCH=${raw} is not a number of seconds since 1970`, {
      hint: 'set SOURCE_DATE_EPOCH to an integer such as $(git log -1 --format=%ct), or unset it',
    });
  }
  return Number(raw);
}

interface NormalisedEntry {
  path: string;
  parts: string[];
  type: CpioEntryType;
  mode: number;
  data: Buffer;
  implicit: boolean;
}

function normalisePath(raw: string): string {
  let p = raw.replace(/^(\.\/|\/)+/, '');
  if (p.endsWith('/')) p = p.replace(/\/+$/, '');
  if (p === '' || p === '.') throw new Error(`cpio: empty path ${JSON.stringify(raw)}`);
  if (posix.normalize(p) !== p || p.split('/').some((c) => c === '..' || c === '.' || c === '')) {
    throw new Error(`cpio: path ${JSON.stringify(raw)} is not a normalised relative path`);
  }
  if (p.includes('\0')) throw new Error(`cpio: path ${JSON.stringify(raw)} contains NUL`);
  return p;
}

/** Component-wise order, so a directory's children stay together and parents precede children. */
function comparePaths(a: string[], b: string[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return Buffer.compare(Buffer.from(a[i]), Buffer.from(b[i]));
  }
  return a.length - b.length;
}

function normaliseEntries(entries: readonly CpioEntry[]): NormalisedEntry[] {
  const byPath = new Map<string, NormalisedEntry>();
  for (const e of entries) {
    const path = normalisePath(e.path);
    if (byPath.has(path)) throw new Error(`cpio: duplicate path ${path}`);
    if (!Number.isInteger(e.mode) || e.mode < 0 || e.mode > PERMISSION_BITS) {
      throw new Error(`cpio: ${path}: mode ${e.mode} is outside 0..0o7777`);
    }
    let data: Buffer;
    if (e.type === 'file') {
      data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : (e.data ?? Buffer.alloc(0));
    } else if (e.type === 'symlink') {
      if (!e.target) throw new Error(`cpio: symlink ${path} has no target`);
      data = Buffer.from(e.target, 'utf8');
    } else {
      data = Buffer.alloc(0);
    }
    if (data.length > CPIO_FIELD_MAX) throw new Error(`cpio: ${path} is larger than newc's 4 GiB limit`);
    byPath.set(path, { path, parts: path.split('/'), type: e.type, mode: e.mode, data, implicit: false });
  }
  // Parents the caller did not list are emitted as 0755 directories, so extraction never has to guess.
  for (const e of [...byPath.values()]) {
    for (let i = 1; i < e.parts.length; i++) {
      const parent = e.parts.slice(0, i).join('/');
      const existing = byPath.get(parent);
      if (existing && existing.type !== 'dir') throw new Error(`cpio: ${parent} is a ${existing.type} but ${e.path} is inside it`);
      if (!existing) byPath.set(parent, { path: parent, parts: e.parts.slice(0, i), type: 'dir', mode: 0o755, data: Buffer.alloc(0), implicit: true });
    }
  }
  return [...byPath.values()].sort((a, b) => comparePaths(a.parts, b.parts));
}

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > CPIO_FIELD_MAX) throw new Error(`cpio: field value ${n} does not fit 8 hex digits`);
  return n.toString(16).padStart(8, '0');
}

function padding(length: number): Buffer {
  return Buffer.alloc((CPIO_NEWC_ALIGN - (length % CPIO_NEWC_ALIGN)) % CPIO_NEWC_ALIGN);
}

interface HeaderFields {
  ino: number;
  mode: number;
  nlink: number;
  mtime: number;
  filesize: number;
  name: string;
}

function header(f: HeaderFields): Buffer {
  const name = Buffer.from(`${f.name}\0`, 'utf8');
  const fields = [
    f.ino,
    f.mode,
    0, // uid: root
    0, // gid: root
    f.nlink,
    f.mtime,
    f.filesize,
    0, // devmajor
    0, // devminor
    0, // rdevmajor
    0, // rdevminor
    name.length, // namesize, including the NUL
    0, // check: always 0 for 070701
  ];
  const head = Buffer.from(CPIO_NEWC_MAGIC + fields.map(hex8).join(''), 'ascii');
  if (head.length !== CPIO_NEWC_HEADER_SIZE) throw new Error('cpio: header size mismatch');
  return Buffer.concat([head, name, padding(head.length + name.length)]);
}

const typeBits: Record<CpioEntryType, number> = { file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK };

/** Write a newc cpio archive holding exactly `entries` (plus their missing parent directories). */
export function writeCpio(entries: readonly CpioEntry[], options: CpioOptions = {}): Buffer {
  const mtime = options.mtime ?? sourceDateEpoch();
  const sorted = normaliseEntries(entries);
  // A directory's link count is 2 ("." and its entry in the parent) plus one ".." per subdirectory.
  const subdirs = new Map<string, number>();
  for (const e of sorted) {
    if (e.type === 'dir' && e.parts.length > 1) {
      const parent = e.parts.slice(0, -1).join('/');
      subdirs.set(parent, (subdirs.get(parent) ?? 0) + 1);
    }
  }
  const chunks: Buffer[] = [];
  let ino = 1;
  for (const e of sorted) {
    const nlink = e.type === 'dir' ? 2 + (subdirs.get(e.path) ?? 0) : 1;
    chunks.push(header({ ino: ino++, mode: typeBits[e.type] | e.mode, nlink, mtime, filesize: e.data.length, name: e.path }));
    if (e.data.length > 0) chunks.push(e.data, padding(e.data.length));
  }
  chunks.push(header({ ino: 0, mode: 0, nlink: 1, mtime: 0, filesize: 0, name: CPIO_TRAILER_NAME }));
  return Buffer.concat(chunks);
}

export interface CpioRecord {
  path: string;
  type: CpioEntryType;
  mode: number;
  nlink: number;
  mtime: number;
  data: Buffer;
}

/** Read a newc archive back (for `bramble inspect` and tests); stops at TRAILER!!!. */
export function readCpio(archive: Buffer): CpioRecord[] {
  const out: CpioRecord[] = [];
  let off = 0;
  for (;;) {
    if (off + CPIO_NEWC_HEADER_SIZE > archive.length) throw new InputError('cpio: archive ends without TRAILER!!!');
    const magic = archive.toString('ascii', off, off + 6);
    if (magic !== CPIO_NEWC_MAGIC) throw new InputError(`cpio: bad magic ${JSON.stringify(magic)} at offset ${off}`);
    const field = (i: number) => parseInt(archive.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const nlink = field(4);
    const mtime = field(5);
    const filesize = field(6);
    const namesize = field(11);
    const nameStart = off + CPIO_NEWC_HEADER_SIZE;
    const name = archive.toString('utf8', nameStart, nameStart + namesize - 1);
    let dataStart = nameStart + namesize;
    dataStart += padding(dataStart).length;
    if (name === CPIO_TRAILER_NAME) return out;
    const data = archive.subarray(dataStart, dataStart + filesize);
    const kind = mode & 0o170000;
    const type: CpioEntryType = kind === S_IFDIR ? 'dir' : kind === S_IFLNK ? 'symlink' : 'file';
    out.push({ path: name, type, mode: mode & PERMISSION_BITS, nlink, mtime, data: Buffer.from(data) });
    off = dataStart + filesize;
    off += padding(off).length;
  }
}
