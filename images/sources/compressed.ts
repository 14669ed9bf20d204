// Compressed images, decompressed on the fly by the host's own tools (zstd, xz, bzip2). A decompressor
// wraps another source: a local file is handed to the tool by path, anything else (a download) is
// piped into its stdin. The output can only be read in order, once.
import { HostToolError, InputError } from '../../builders/errors.ts';
import { run, runStreaming } from '../../builders/exec.ts';
import { bzip2Tool } from '../decompress.ts';
import type { ImageSource, RandomAccessSource } from './source.ts';

export type Compression = 'zstd' | 'xz' | 'bzip2';

/** zstd frame magic 0xFD2FB528, little-endian (RFC 8878 §3.1.1). */
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
/** xz stream header magic (The .xz File Format 1.2.0 §2.1.1.1). */
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
/** bzip2 stream header "BZh" followed by the block size digit '1'..'9' (bzip2 format, stream header). */
const BZIP2_MAGIC = Buffer.from('BZh', 'ascii');
/** Bytes needed to recognise any of the above. */
export const MAGIC_BYTES = 6;

export function compressionOfBytes(head: Buffer): Compression | undefined {
  const starts = (m: Buffer) => head.length >= m.length && head.subarray(0, m.length).equals(m);
  if (starts(ZSTD_MAGIC)) return 'zstd';
  if (starts(XZ_MAGIC)) return 'xz';
  if (starts(BZIP2_MAGIC) && head.length > 3 && head[3]! >= 0x31 && head[3]! <= 0x39) return 'bzip2';
  return undefined;
}

/** By file name, for URLs whose bytes are not seen before reading. */
export function compressionOfName(name: string): Compression | undefined {
  const n = name.toLowerCase();
  if (n.endsWith('.zst') || n.endsWith('.zstd')) return 'zstd';
  if (n.endsWith('.xz')) return 'xz';
  if (n.endsWith('.bz2')) return 'bzip2';
  return undefined;
}

/** The decompressor command: the tool and its arguments, reading `path` or stdin. */
function decompressor(format: Compression, path: string | undefined): [string, string[]] {
  const input = path === undefined ? [] : ['--', path];
  switch (format) {
    case 'zstd':
      return ['zstd', ['-d', '-c', '-q', ...input]];
    case 'xz':
      // -T0: xz 5.4 decompresses multi-block files in parallel; older versions ignore it.
      return ['xz', ['-d', '-c', '-T0', ...input]];
    case 'bzip2':
      return [bzip2Tool(), ['-d', '-c', ...input]];
  }
}

/**
 * The decompressed size recorded in a local file's headers, when the format records it: zstd frames
 * written with a known size, and xz's index. bzip2 does not record it.
 */
export async function recordedSize(format: Compression, path: string, signal: AbortSignal): Promise<number | undefined> {
  if (format === 'zstd') {
    const r = await run('zstd', ['-l', '-v', '--', path], { signal, okCodes: [1] });
    const m = /Decompressed Size:.*\((\d+) B\)/.exec(r.stdout + r.stderr);
    return m ? Number(m[1]) : undefined;
  }
  if (format === 'xz') {
    const r = await run('xz', ['--robot', '--list', '--', path], { signal, okCodes: [1] });
    // "totals<TAB>streams<TAB>blocks<TAB>compressed<TAB>uncompressed<TAB>..." (xz(1), ROBOT MODE).
    const totals = r.stdout.split('\n').find((l) => l.startsWith('totals\t'));
    const n = totals?.split('\t')[4];
    return n && /^\d+$/.test(n) ? Number(n) : undefined;
  }
  return undefined;
}

export class DecompressedSource implements ImageSource {
  constructor(
    private readonly inner: ImageSource,
    readonly format: Compression,
    readonly size: number | undefined,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  canRead(): this is RandomAccessSource {
    return false;
  }

  async *stream(signal: AbortSignal): AsyncIterable<Buffer> {
    const local = this.inner.canRead() ? this.inner.path : undefined;
    const [tool, args] = decompressor(this.format, local);
    // Our own signal too: leaving early (every target failed) must stop the child.
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    const proc = runStreaming(tool, args, { signal: stop.signal, stdin: local === undefined ? this.inner.stream(signal) : undefined });
    let finished = false;
    try {
      yield* proc.stdout;
      await proc.done;
      finished = true;
    } catch (e) {
      if (e instanceof HostToolError) {
        throw new InputError(`${this.name}: cannot decompress it (${this.format}): ${e.message}`, {
          hint: 'the file is damaged or not what its name says; fetch or build it again',
          cause: e,
        });
      }
      throw e;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (!finished) stop.abort();
      await proc.done.catch(() => {});
    }
  }

  async close(): Promise<void> {
    await this.inner.close();
  }
}
