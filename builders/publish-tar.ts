// Deterministic POSIX ustar archives for the tree-shaped parts of a release (pxe/, registry/, pki/,
// configs/): entries sorted, parent directories listed before their files, every timestamp
// SOURCE_DATE_EPOCH, owner 0:0 with no user or group names, modes from the artefact's secrecy. Same
// files in, same bytes out, which `tar -xf` unpacks into the layout of out/<cluster>/.
import { createReadStream, createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** ustar block size (POSIX.1-1988 pax "ustar Interchange Format"). */
const BLOCK = 512;
/** ustar field widths and offsets. */
const FIELD = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  magic: [257, 6],
  version: [263, 2],
  prefix: [345, 155],
} as const;
const TYPE_FILE = '0';
const TYPE_DIR = '5';
/** The largest size an 11-digit octal size field holds. */
const MAX_SIZE = 8 ** 11 - 1;

export interface TarMember {
  /** Path inside the archive (`pxe/boot.ipxe`), `/`-separated, relative. */
  path: string;
  /** File on disk with its bytes. */
  file: string;
  size: number;
  mode: number;
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

/** Split a path over ustar's prefix (155) and name (100) fields at a `/`. */
function splitPath(path: string): { prefix: string; name: string } {
  if (Buffer.byteLength(path) <= 100) return { prefix: '', name: path };
  for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return { prefix, name };
  }
  throw new Error(`${path}: too long for a ustar archive`);
}

function header(path: string, type: string, size: number, mode: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const put = (field: keyof typeof FIELD, text: string) => h.write(text, FIELD[field][0], FIELD[field][1], 'utf8');
  const { prefix, name } = splitPath(path);
  put('name', name);
  put('mode', octal(mode, 8));
  put('uid', octal(0, 8));
  put('gid', octal(0, 8));
  put('size', octal(size, 12));
  put('mtime', octal(mtime, 12));
  put('typeflag', type);
  put('magic', 'ustar\0');
  put('version', '00');
  put('prefix', prefix);
  // The checksum is the byte sum of the header with the checksum field read as eight spaces.
  h.fill(' ', FIELD.chksum[0], FIELD.chksum[0] + FIELD.chksum[1]);
  let sum = 0;
  for (const b of h) sum += b;
  put('chksum', sum.toString(8).padStart(6, '0') + '\0 ');
  return h;
}

/**
 * Write `members` as a ustar archive to `dest`. `onData(member, chunk)` sees every member byte as it
 * is archived (the secret scan), `dirMode` gives each directory's mode.
 */
export async function writeTar(
  dest: string,
  members: readonly TarMember[],
  o: { mtime: number; dirMode: (dir: string) => number; onData?: (member: TarMember, chunk: Buffer) => void; signal?: AbortSignal },
): Promise<void> {
  const sorted = [...members].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  async function* bytes(): AsyncGenerator<Buffer> {
    const dirs = new Set<string>();
    for (const m of sorted) {
      if (m.size > MAX_SIZE) throw new Error(`${m.path}: larger than a ustar member can be`);
      const parts = m.path.split('/');
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join('/');
        if (dirs.has(dir)) continue;
        dirs.add(dir);
        yield header(`${dir}/`, TYPE_DIR, 0, o.dirMode(dir), o.mtime);
      }
      yield header(m.path, TYPE_FILE, m.size, m.mode, o.mtime);
      let n = 0;
      for await (const chunk of createReadStream(m.file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
        n += chunk.length;
        o.onData?.(m, chunk);
        yield chunk;
      }
      if (n !== m.size) throw new Error(`${m.file}: ${n} bytes, expected ${m.size}`);
      if (n % BLOCK) yield Buffer.alloc(BLOCK - (n % BLOCK));
    }
    // Two zero blocks end the archive.
    yield Buffer.alloc(2 * BLOCK);
  }
  await pipeline(Readable.from(bytes()), createWriteStream(dest), { signal: o.signal });
}
