// Deterministic POSIX ustar archives for the tree-shaped parts of a release (pxe/, registry/, pki/,
// configs/): entries sorted, parent directories listed before their files, every timestamp
// SOURCE_DATE_EPOCH, owner 0:0 with no user or group names, modes from the artefact's secrecy. Same
// files in, same bytes out, which `tar -xf` unpacks into the layout of out/<cluster>/.
import { createReadStream, createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hashingPassThrough } from '../images/hashing-stream.ts';
import { USTAR_BLOCK, ustarHeader, ustarPadding } from '../images/ustar.ts';

export interface TarMember {
  /** Path inside the archive (`pxe/boot.ipxe`), `/`-separated, relative. */
  path: string;
  /** File on disk with its bytes. */
  file: string;
  size: number;
  mode: number;
}

/**
 * Write `members` as a ustar archive to `dest`. `onData(member, chunk)` sees every member byte as it
 * is archived (the secret scan), `dirMode` gives each directory's mode. Returns the archive's size and sha256.
 */
export async function writeTar(
  dest: string,
  members: readonly TarMember[],
  o: { mtime: number; dirMode: (dir: string) => number; onData?: (member: TarMember, chunk: Buffer) => void; signal?: AbortSignal },
): Promise<{ size: number; sha256: string }> {
  const sorted = [...members].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  async function* bytes(): AsyncGenerator<Buffer> {
    const dirs = new Set<string>();
    for (const m of sorted) {
      const parts = m.path.split('/');
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join('/');
        if (dirs.has(dir)) continue;
        dirs.add(dir);
        yield ustarHeader(`${dir}/`, { size: 0, mode: o.dirMode(dir), mtime: o.mtime, type: 'dir' });
      }
      yield ustarHeader(m.path, { size: m.size, mode: m.mode, mtime: o.mtime, type: 'file' });
      let n = 0;
      for await (const chunk of createReadStream(m.file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
        n += chunk.length;
        o.onData?.(m, chunk);
        yield chunk;
      }
      if (n !== m.size) throw new Error(`${m.file}: ${n} bytes, expected ${m.size}`);
      if (n % USTAR_BLOCK) yield ustarPadding(n);
    }
    // Two zero blocks end the archive.
    yield Buffer.alloc(2 * USTAR_BLOCK);
  }
  // Hashed on its way to the file: the release lists the archive's size and digest without reading it back.
  const hashed = hashingPassThrough();
  await pipeline(Readable.from(bytes()), hashed.stream, createWriteStream(dest), { signal: o.signal });
  return hashed.result();
}
