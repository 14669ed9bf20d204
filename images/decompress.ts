// Decompressed base images as sparse files. A Flatcar .bin is 8 GiB of which a few hundred MiB are
// data; writing its zeros would cost minutes and gigabytes. The decompressor's output is scanned
// block by block, zero blocks become holes, and the byte ranges that hold data are recorded so later
// stages can write a .bmap without rescanning the file (Node exposes no SEEK_DATA/SEEK_HOLE).
import { open, rm } from 'node:fs/promises';
import { InterruptedError } from '../builders/errors.ts';
import type { EventSink } from '../builders/events.ts';
import { findTool, run, runStreaming } from '../builders/exec.ts';

/**
 * Hole granularity: the page size and ext4 block size, and the block size bmap files describe
 * (bmaptool's default; flashing-and-publishing.md §1). Zero runs are detected at this size.
 */
export const SPARSE_BLOCK = 4096;
/** Runs of data are gathered up to this many bytes before one positional write. */
const SPARSE_WRITE_BATCH = 1024 * 1024;
/** How often (in bytes of output) progress events are emitted. */
const PROGRESS_STEP = 256 * 1024 * 1024;

export type DataRange = [start: number, end: number];

export interface SparseResult {
  /** Apparent size of the written file. */
  size: number;
  /** Merged, sorted [start, end) byte ranges that hold non-zero data; everything else is a hole. */
  dataRanges: DataRange[];
}

export interface SparseOptions {
  signal: AbortSignal;
  events: EventSink;
  /** Shown in progress events. */
  what?: string;
}

const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK);

/** The fastest bzip2 decompressor installed: lbzip2 and pbzip2 decompress in parallel. */
export function bzip2Tool(): string {
  for (const tool of ['lbzip2', 'pbzip2']) if (findTool(tool)) return tool;
  return 'bzip2';
}

/** Decompress a .bz2 file into a sparse file at `dest` (with the fastest decompressor unless `tool` says). */
export async function decompressToSparse(
  src: string,
  dest: string,
  opts: SparseOptions & { tool?: 'lbzip2' | 'pbzip2' | 'bzip2' },
): Promise<SparseResult> {
  const tool = opts.tool ?? bzip2Tool();
  const proc = runStreaming(tool, ['-d', '-c', src], { signal: opts.signal });
  return writeFromTool(proc, dest, opts);
}

/** Extract the one `.img` member of a zip (HypriotOS releases) into a sparse file at `dest`. */
export async function extractZipImageToSparse(zip: string, dest: string, opts: SparseOptions): Promise<SparseResult> {
  const listing = await run('unzip', ['-Z1', zip], { signal: opts.signal });
  const members = listing.stdout.split('\n').filter((n) => n.toLowerCase().endsWith('.img'));
  if (members.length !== 1) {
    const { InputError } = await import('../builders/errors.ts');
    throw new InputError(`${zip}: expected one .img member, found ${members.length ? members.join(', ') : 'none'}`, {
      hint: 'the archive is not a HypriotOS release image; check sources.hypriot and os.version',
    });
  }
  // unzip treats its member arguments as wildcards; escape them so the name is taken literally.
  const literal = members[0]!.replace(/[[\]*?\\]/g, '\\$&');
  const proc = runStreaming('unzip', ['-p', zip, literal], { signal: opts.signal });
  return writeFromTool(proc, dest, opts);
}

async function writeFromTool(
  proc: ReturnType<typeof runStreaming>,
  dest: string,
  opts: SparseOptions,
): Promise<SparseResult> {
  let result: SparseResult;
  try {
    [result] = await Promise.all([writeSparse(proc.stdout, dest, opts), proc.done]);
  } catch (e) {
    // Settle both sides before reporting, so no write or child outlives the call.
    await Promise.allSettled([proc.done]);
    await rm(dest, { force: true });
    if (opts.signal.aborted) throw new InterruptedError();
    throw e;
  }
  return result;
}

/**
 * Write a byte stream to `dest` as a sparse file: all-zero SPARSE_BLOCKs are skipped (left as holes),
 * data is written at its offset, and the file is truncated to the stream's length at the end.
 */
export async function writeSparse(source: AsyncIterable<Buffer>, dest: string, opts: SparseOptions): Promise<SparseResult> {
  const fh = await open(dest, 'w', 0o644);
  const ranges: DataRange[] = [];
  let offset = 0; // bytes of the stream consumed so far (= file offset of the next byte)
  let carry: Buffer = Buffer.alloc(0); // a partial block waiting for the rest of its bytes
  let pending: Buffer[] = []; // consecutive data blocks not yet written
  let pendingStart = 0;
  let pendingBytes = 0;
  let reported = 0;

  const flush = async () => {
    if (pendingBytes === 0) return;
    const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    let written = 0;
    while (written < buf.length) {
      const r = await fh.write(buf, written, buf.length - written, pendingStart + written);
      written += r.bytesWritten;
    }
    const last = ranges[ranges.length - 1];
    if (last && last[1] === pendingStart) last[1] = pendingStart + pendingBytes;
    else ranges.push([pendingStart, pendingStart + pendingBytes]);
    pending = [];
    pendingBytes = 0;
  };

  const isZero = (buf: Buffer, at: number, len: number) => ZERO_BLOCK.compare(buf, at, at + len, 0, len) === 0;

  /** Queue data found at file offset `at`; a gap before it (a hole) or a full batch writes the queue. */
  const addData = async (data: Buffer, at: number) => {
    if (pendingBytes > 0 && pendingStart + pendingBytes !== at) await flush();
    if (pendingBytes === 0) pendingStart = at;
    pending.push(data);
    pendingBytes += data.length;
    if (pendingBytes >= SPARSE_WRITE_BATCH) await flush();
  };

  /** Scan whole blocks of `data` (which starts at file offset `base`) for runs of non-zero blocks. */
  const scan = async (data: Buffer, base: number, whole: number) => {
    let i = 0;
    while (i < whole) {
      while (i < whole && isZero(data, i, SPARSE_BLOCK)) i += SPARSE_BLOCK;
      if (i >= whole) break;
      let j = i;
      while (j < whole && !isZero(data, j, SPARSE_BLOCK)) j += SPARSE_BLOCK;
      await addData(data.subarray(i, j), base + i);
      i = j;
    }
  };

  try {
    for await (const chunk of source) {
      if (opts.signal.aborted) throw new InterruptedError();
      const base = offset - carry.length;
      const data = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk;
      const whole = data.length - (data.length % SPARSE_BLOCK);
      await scan(data, base, whole);
      // Copy the tail: it must outlive this chunk.
      carry = whole < data.length ? Buffer.from(data.subarray(whole)) : Buffer.alloc(0);
      offset += chunk.length;
      if (offset - reported >= PROGRESS_STEP) {
        reported = offset;
        opts.events({ kind: 'progress', stage: 'fetch', what: opts.what ?? dest, done: offset, unit: 'bytes' });
      }
    }
    if (carry.length > 0 && !isZero(carry, 0, carry.length)) await addData(carry, offset - carry.length);
    await flush();
    // Holes at the end exist only once the length is set.
    await fh.truncate(offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
  opts.events({ kind: 'progress', stage: 'fetch', what: opts.what ?? dest, done: offset, total: offset, unit: 'bytes' });
  return { size: offset, dataRanges: ranges };
}
