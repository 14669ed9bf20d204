// Sparse copies of disk images and the byte ranges that hold their data. A Flatcar image is 8 GiB
// apparent and a few hundred MiB of data: copying zeros would cost the whole size in time and disk.
// Node has no SEEK_DATA/SEEK_HOLE, so data is found from recorded ranges or by scanning for zero blocks.
import { open, type FileHandle } from 'node:fs/promises';
import { HostToolError, InterruptedError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';

/** Hole and bmap granularity: the page size, ext4 block size and bmaptool's default block size. */
export const DATA_BLOCK = 4096;
/** Bytes read or written per system call when copying or scanning. */
const IO_CHUNK = 4 * 1024 * 1024;

/** [start, end) byte offsets. */
export type ByteRange = [start: number, end: number];

/** Sorted, with overlapping and touching ranges joined; empty ranges dropped. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const sorted = ranges.filter(([s, e]) => e > s).map(([s, e]): ByteRange => [s, e]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push(r);
  }
  return out;
}

/** `ranges` plus one more range, merged (for an editor adding what it wrote to a base map). */
export function addRange(ranges: readonly ByteRange[], range: ByteRange): ByteRange[] {
  return mergeRanges([...ranges, range]);
}

/** Widen ranges to whole `block`s (the last one stops at `size`), then merge. */
export function alignRanges(ranges: readonly ByteRange[], size: number, block = DATA_BLOCK): ByteRange[] {
  return mergeRanges(ranges.map(([s, e]): ByteRange => [Math.floor(s / block) * block, Math.min(size, Math.ceil(e / block) * block)]));
}

const ZERO = Buffer.alloc(IO_CHUNK);
const isZero = (buf: Buffer, start: number, end: number) => ZERO.compare(buf, start, end, 0, end - start) === 0;

/** Read up to `length` bytes at `position` into `buf`, looping over short reads; returns how many (less at EOF). */
export async function readFully(fh: FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

export async function writeFully(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Visit the non-zero DATA_BLOCKs of [start, end) of an open file, in order, as runs: `onData(buf, at)`
 * gets each run of consecutive data blocks found within one read.
 */
export async function forEachDataRun(
  fh: FileHandle,
  start: number,
  end: number,
  signal: AbortSignal | undefined,
  onData: (data: Buffer, at: number) => Promise<void> | void,
): Promise<void> {
  const buf = Buffer.alloc(IO_CHUNK);
  for (let pos = start; pos < end; pos += IO_CHUNK) {
    if (signal?.aborted) throw new InterruptedError();
    const n = await readFully(fh, buf, Math.min(IO_CHUNK, end - pos), pos);
    if (n === 0) break;
    // Most of an image is holes: one comparison clears a whole chunk of zeros.
    if (isZero(buf, 0, n)) continue;
    let i = 0;
    while (i < n) {
      while (i < n && isZero(buf, i, Math.min(n, i + DATA_BLOCK))) i += DATA_BLOCK;
      if (i >= n) break;
      let j = i;
      while (j < n && !isZero(buf, j, Math.min(n, j + DATA_BLOCK))) j += DATA_BLOCK;
      j = Math.min(j, n);
      await onData(buf.subarray(i, j), pos + i);
      i = j;
    }
  }
}

/** The DATA_BLOCK-aligned ranges of a file (or of [start, end) of it) that hold non-zero bytes. */
export async function scanDataRanges(path: string, opts: { signal?: AbortSignal; start?: number; end?: number } = {}): Promise<ByteRange[]> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const ranges: ByteRange[] = [];
    await forEachDataRun(fh, opts.start ?? 0, Math.min(opts.end ?? size, size), opts.signal, (data, at) => {
      const last = ranges[ranges.length - 1];
      if (last && last[1] === at) last[1] = at + data.length;
      else ranges.push([at, at + data.length]);
    });
    return ranges;
  } finally {
    await fh.close();
  }
}

export interface CopySparseResult {
  /** `reflink`: the destination shares the source's blocks (FICLONE via cp); `ranges`: data copied into a sparse file. */
  method: 'reflink' | 'ranges';
  /** The source's data ranges, when given or found by the copy (a reflink copy does not scan). */
  dataRanges?: ByteRange[];
}

/**
 * Copy an image so that holes stay holes: a reflink clone where the filesystem can (btrfs, XFS), else
 * only the data ranges (given, e.g. recorded while decompressing, or found by scanning for non-zero
 * blocks) into a truncated, sparse destination.
 */
export async function copySparse(
  src: string,
  dest: string,
  opts: { dataRanges?: readonly ByteRange[]; signal?: AbortSignal; reflink?: boolean } = {},
): Promise<CopySparseResult> {
  if (opts.reflink !== false) {
    try {
      await run('cp', ['--reflink=always', '--', src, dest], { signal: opts.signal });
      return { method: 'reflink', dataRanges: opts.dataRanges ? mergeRanges(opts.dataRanges) : undefined };
    } catch (e) {
      // "Operation not supported" / "Invalid cross-device link": this filesystem cannot clone.
      if (!(e instanceof HostToolError)) throw e;
    }
  }
  const input = await open(src, 'r');
  const output = await open(dest, 'w', 0o644);
  try {
    const size = (await input.stat()).size;
    let found: ByteRange[];
    if (opts.dataRanges) {
      found = mergeRanges(opts.dataRanges);
      const buf = Buffer.alloc(IO_CHUNK);
      for (const [s, e] of found) {
        for (let pos = s; pos < Math.min(e, size); pos += IO_CHUNK) {
          if (opts.signal?.aborted) throw new InterruptedError();
          const n = await readFully(input, buf, Math.min(IO_CHUNK, e - pos, size - pos), pos);
          await writeFully(output, buf.subarray(0, n), pos);
        }
      }
    } else {
      found = [];
      await forEachDataRun(input, 0, size, opts.signal, async (data, at) => {
        await writeFully(output, data, at);
        const last = found[found.length - 1];
        if (last && last[1] === at) last[1] = at + data.length;
        else found.push([at, at + data.length]);
      });
    }
    await output.truncate(size);
    return { method: 'ranges', dataRanges: found };
  } finally {
    await output.close();
    await input.close();
  }
}
