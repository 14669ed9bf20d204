// Every layer is read through before it enters the blob store: decompressed (gzip in-process, zstd with
// the `zstd` tool, chosen by the stream's magic bytes so a mislabelled layer cannot slip through as
// "uncompressed"), its tar headers parsed (POSIX ustar, PAX `path`/`linkpath`, GNU long names), and any
// entry whose name is absolute or climbs out with `..`, or a hard link whose target does, is rejected.
// A digest proves the bytes are what the registry published, not that they are harmless to unpack on
// a node. Symlink targets are not checked: they resolve inside the container's root at run time, and
// absolute or `../` targets are normal in images (containerd resolves them within the rootfs).
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { BrambleError, InterruptedError, VerificationError } from '../../builders/errors.ts';
import { runStreaming } from '../../builders/exec.ts';

/** POSIX tar block size (pax/ustar, IEEE 1003.1). */
const BLOCK = 512;
/** ustar header fields (offset, length). */
const NAME = [0, 100] as const;
const SIZE = [124, 12] as const;
const CHECKSUM = [148, 8] as const;
const TYPEFLAG = 156;
const LINKNAME = [157, 100] as const;
const MAGIC = [257, 6] as const;
const PREFIX = [345, 155] as const;
/** Metadata entries this scanner needs the content of, and the most of it accepted. */
const META_MAX = 1024 * 1024;

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

export interface LayerCheck {
  /** Tar entries seen (metadata entries not counted). */
  entries: number;
  compression: 'gzip' | 'zstd' | 'none';
}

/** Decompress and scan the layer file at `path`; a VerificationError (exit 3) when it is unsafe or malformed. */
export async function checkLayer(path: string, subject: string, signal: AbortSignal): Promise<LayerCheck> {
  const head = Buffer.alloc(4);
  const fh = await open(path, 'r');
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  const compression = head.subarray(0, 2).equals(GZIP_MAGIC) ? 'gzip' : head.equals(ZSTD_MAGIC) ? 'zstd' : 'none';
  const scanner = new TarScanner(subject);
  try {
    if (compression === 'zstd') {
      const tool = runStreaming('zstd', ['-d', '-c', '-q', path], { signal });
      try {
        await pipeline(tool.stdout, (source: AsyncIterable<Buffer>) => scanner.consume(source), { signal });
      } catch (e) {
        await tool.done.catch(() => {}); // stopped early: the tool's exit is not the news
        throw e;
      }
      await tool.done;
    } else if (compression === 'gzip') {
      await pipeline(createReadStream(path), createGunzip(), (source: AsyncIterable<Buffer>) => scanner.consume(source), { signal });
    } else {
      await pipeline(createReadStream(path), (source: AsyncIterable<Buffer>) => scanner.consume(source), { signal });
    }
  } catch (e) {
    if (signal.aborted) throw new InterruptedError();
    // pipeline() may report the decompressor's teardown instead of the scanner's own verdict.
    if (scanner.failure) throw scanner.failure;
    if (e instanceof BrambleError) throw e;
    throw new VerificationError(subject, `a ${compression === 'none' ? '' : `${compression}-compressed `}tar layer`, `unreadable data (${(e as Error).message})`, {
      hint: 'the registry serves a damaged or non-tar layer under a matching digest; the image itself is broken',
    });
  }
  return { entries: scanner.entries, compression };
}

/** Why a tar path is unsafe to unpack, or undefined when it stays inside the root. */
export function unsafeTarPath(path: string): string | undefined {
  if (path.startsWith('/')) return 'is absolute';
  if (path.includes('\0')) return 'contains a NUL byte';
  let depth = 0;
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      depth--;
      if (depth < 0) return 'climbs out of the root with ".."';
    } else depth++;
  }
  return undefined;
}

class TarScanner {
  entries = 0;
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  /** Content bytes still to pass over (data and padding) before the next header. */
  private skip = 0;
  /** A metadata entry being collected: its type and remaining content size. */
  private collecting?: { type: string; size: number; padded: number };
  private pax: Record<string, string> = {};
  private globalPax: Record<string, string> = {};
  private longName?: string;
  private longLink?: string;
  private ended = false;

  constructor(private readonly subject: string) {}

  async consume(source: AsyncIterable<Buffer>): Promise<void> {
    for await (const chunk of source) {
      if (this.ended) continue; // drain, so the decompressor checks its trailer
      this.push(chunk);
    }
    // Ending exactly on a block boundary without the two zero blocks is accepted, as GNU tar does.
    if (!this.ended && (this.skip > 0 || this.collecting || this.bufferedBytes > 0)) throw this.fail('a complete tar archive', 'an archive cut short inside an entry');
  }

  /** The first verdict against the layer (kept because a pipeline may report its teardown instead). */
  failure?: VerificationError;

  private fail(expected: string, actual: string): VerificationError {
    this.failure ??= new VerificationError(this.subject, expected, actual, { hint: 'this layer must not be unpacked on a node; the image is broken or malicious' });
    return this.failure;
  }

  private push(chunk: Buffer): void {
    let data = chunk;
    while (data.length > 0 && !this.ended) {
      if (this.skip > 0 && !this.collecting) {
        const n = Math.min(this.skip, data.length);
        this.skip -= n;
        data = data.subarray(n);
        continue;
      }
      const need = this.collecting ? this.collecting.padded : BLOCK;
      const take = Math.min(need - this.bufferedBytes, data.length);
      this.buffered.push(data.subarray(0, take));
      this.bufferedBytes += take;
      data = data.subarray(take);
      if (this.bufferedBytes < need) return;
      const block = Buffer.concat(this.buffered);
      this.buffered = [];
      this.bufferedBytes = 0;
      if (this.collecting) this.finishMeta(block.subarray(0, this.collecting.size));
      else this.header(block);
    }
  }

  private finishMeta(content: Buffer): void {
    const type = this.collecting!.type;
    this.collecting = undefined;
    if (type === 'L') this.longName = cString(content);
    else if (type === 'K') this.longLink = cString(content);
    else if (type === 'x') Object.assign(this.pax, parsePax(content, this.fail.bind(this)));
    else if (type === 'g') Object.assign(this.globalPax, parsePax(content, this.fail.bind(this)));
  }

  private header(block: Buffer): void {
    if (block.every((b) => b === 0)) {
      // The end-of-archive marker (two zero blocks; one is enough to stop reading headers).
      this.ended = true;
      return;
    }
    const stored = parseOctal(field(block, CHECKSUM));
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= CHECKSUM[0] && i < CHECKSUM[0] + CHECKSUM[1] ? 0x20 : block[i]!;
    if (stored !== sum) throw this.fail('a tar header', `a block whose checksum does not match (entry ${this.entries + 1})`);
    const type = String.fromCharCode(block[TYPEFLAG]!) || '0';
    const size = parseSize(field(block, SIZE));
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      if (size > META_MAX) throw this.fail(`a tar metadata entry of at most ${META_MAX} bytes`, `${size} bytes`);
      if (padded === 0) return;
      this.collecting = { type, size, padded };
      return;
    }
    const ustar = field(block, MAGIC).toString('latin1') === 'ustar\0';
    const rawName = cString(field(block, NAME));
    const prefix = ustar ? cString(field(block, PREFIX)) : '';
    const name = this.pax.path ?? this.longName ?? this.globalPax.path ?? (prefix ? `${prefix}/${rawName}` : rawName);
    const link = this.pax.linkpath ?? this.longLink ?? cString(field(block, LINKNAME));
    this.pax = {};
    this.longName = undefined;
    this.longLink = undefined;
    this.entries++;
    const bad = unsafeTarPath(name);
    if (bad) throw this.fail('entries inside the layer root', `entry "${printable(name)}" which ${bad}`);
    if (type === '1') {
      const badLink = unsafeTarPath(link);
      if (badLink) throw this.fail('hard links inside the layer root', `hard link "${printable(name)}" to "${printable(link)}" which ${badLink}`);
    }
    // Links, directories, devices and FIFOs have no content whatever their size field says.
    this.skip = type === '1' || type === '2' || type === '3' || type === '4' || type === '5' || type === '6' ? 0 : padded;
  }
}

function field(block: Buffer, [offset, length]: readonly [number, number]): Buffer {
  return block.subarray(offset, offset + length);
}

function cString(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
}

function parseOctal(b: Buffer): number {
  const text = b.toString('latin1').replace(/\0.*$/s, '').trim();
  return text === '' ? 0 : parseInt(text, 8);
}

/** Octal, or GNU base-256 (high bit of the first byte set) for sizes past 8 GiB. */
function parseSize(b: Buffer): number {
  if (b[0]! & 0x80) {
    let n = b[0]! & 0x7f;
    for (let i = 1; i < b.length; i++) n = n * 256 + b[i]!;
    return n;
  }
  return parseOctal(b);
}

/** PAX records: `<len> <key>=<value>\n` (IEEE 1003.1 pax). */
function parsePax(content: Buffer, fail: (expected: string, actual: string) => VerificationError): Record<string, string> {
  const out: Record<string, string> = {};
  let at = 0;
  while (at < content.length) {
    const space = content.indexOf(0x20, at);
    if (space < 0) break;
    const len = Number(content.subarray(at, space).toString('latin1'));
    if (!Number.isInteger(len) || len <= space - at || at + len > content.length) throw fail('well-formed PAX records', 'a malformed record');
    const record = content.subarray(space + 1, at + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) out[record.slice(0, eq)] = record.slice(eq + 1);
    at += len;
  }
  return out;
}

/** Names shown in errors: control characters escaped, long names cut. */
function printable(s: string): string {
  const clean = s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return clean.length > 200 ? `${clean.slice(0, 200)}…` : clean;
}
