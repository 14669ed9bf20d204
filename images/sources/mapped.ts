// The bytes of an image that need writing, as pieces in aligned buffers: the ranges a bmap (or a scan)
// maps, read at their offsets from a file, or picked out of a stream; or, with no map, the non-zero
// blocks of a stream. Zeros are never written: a bmap's unmapped blocks are holes, i.e. zeros.
import { InputError, InterruptedError } from '../../builders/errors.ts';
import { DATA_BLOCK, type ByteRange } from '../sparse.ts';
import type { BufferPool } from './aligned.ts';
import type { RandomAccessSource } from './source.ts';

export interface Piece {
  /** Offset of `data` in the image. */
  pos: number;
  /** The bytes: a view into `buffer`. */
  data: Buffer;
  /** The pooled buffer, to release once the piece is written. */
  buffer: Buffer;
}

/** Counts what a stream held, for the caller once the pieces are done. */
export interface StreamTally {
  length: number;
}

function endedEarly(name: string, at: number, wanted: number): InputError {
  return new InputError(`${name}: the image ends at byte ${at}, but its map has data up to byte ${wanted}`, {
    hint: 'the bmap belongs to another image, or the image is truncated; rebuild or fetch both again',
  });
}

/** Positional reads of `ranges`; a piece never crosses a range's end and is at most one pool buffer. */
export async function* readRanges(
  src: RandomAccessSource,
  ranges: readonly ByteRange[],
  pool: BufferPool,
  signal: AbortSignal,
): AsyncGenerator<Piece> {
  for (const [start, end] of ranges) {
    for (let pos = start; pos < end; ) {
      if (signal.aborted) throw new InterruptedError();
      const buffer = await pool.acquire();
      const want = Math.min(buffer.length, end - pos);
      let n: number;
      try {
        n = await src.read(buffer, want, pos);
      } catch (e) {
        pool.release(buffer);
        throw e;
      }
      if (n < want) {
        pool.release(buffer);
        throw endedEarly(src.name, pos + n, end);
      }
      yield { pos, data: buffer.subarray(0, n), buffer };
      pos += n;
    }
  }
}

/** The bytes of `ranges` picked out of a stream of the whole image, in order. */
export async function* streamRanges(
  stream: AsyncIterable<Buffer>,
  ranges: readonly ByteRange[],
  pool: BufferPool,
  signal: AbortSignal,
  tally: StreamTally,
  name: string,
): AsyncGenerator<Piece> {
  let r = 0;
  let offset = 0; // image offset of the current chunk's first byte
  let cur: { buffer: Buffer; pos: number; fill: number } | undefined;
  for await (const chunk of stream) {
    if (signal.aborted) throw new InterruptedError();
    let i = 0;
    while (i < chunk.length && r < ranges.length) {
      const [start, end] = ranges[r]!;
      const at = offset + i;
      if (at < start) {
        i = Math.min(chunk.length, start - offset);
        continue;
      }
      cur ??= { buffer: await pool.acquire(), pos: at, fill: 0 };
      const take = Math.min(chunk.length - i, end - at, cur.buffer.length - cur.fill);
      chunk.copy(cur.buffer, cur.fill, i, i + take);
      cur.fill += take;
      i += take;
      const rangeDone = offset + i === end;
      if (rangeDone || cur.fill === cur.buffer.length) {
        yield { pos: cur.pos, data: cur.buffer.subarray(0, cur.fill), buffer: cur.buffer };
        cur = undefined;
      }
      if (rangeDone) r++;
    }
    offset += chunk.length;
  }
  tally.length = offset;
  if (cur) pool.release(cur.buffer);
  if (r < ranges.length) throw endedEarly(name, offset, ranges[ranges.length - 1]![1]);
}

const ZERO_BLOCK = Buffer.alloc(DATA_BLOCK);
const isZero = (b: Buffer, at: number, len: number) => ZERO_BLOCK.compare(b, at, at + len, 0, len) === 0;

/**
 * With no map: the non-zero DATA_BLOCKs of a stream, joined into pieces of consecutive blocks. A piece
 * never crosses `boundary` (the held-back head of the image) and is at most one pool buffer.
 */
export async function* streamDataBlocks(
  stream: AsyncIterable<Buffer>,
  pool: BufferPool,
  signal: AbortSignal,
  tally: StreamTally,
  boundary: number,
): AsyncGenerator<Piece> {
  let offset = 0; // image offset of the next byte to scan
  let cur: { buffer: Buffer; pos: number; fill: number } | undefined;
  const carry = Buffer.alloc(DATA_BLOCK); // a block split across chunks
  let carried = 0;

  /** Runs of data blocks in `b[from, from + len)`, which is at image offset `at`; len is whole blocks. */
  async function* scan(b: Buffer, from: number, len: number, at: number): AsyncGenerator<Piece> {
    let i = 0;
    while (i < len) {
      if (isZero(b, from + i, Math.min(DATA_BLOCK, len - i))) {
        i += DATA_BLOCK;
        if (cur) {
          yield { pos: cur.pos, data: cur.buffer.subarray(0, cur.fill), buffer: cur.buffer };
          cur = undefined;
        }
        continue;
      }
      const blockLen = Math.min(DATA_BLOCK, len - i);
      const pos = at + i;
      if (cur && (cur.fill + blockLen > cur.buffer.length || pos === boundary)) {
        yield { pos: cur.pos, data: cur.buffer.subarray(0, cur.fill), buffer: cur.buffer };
        cur = undefined;
      }
      cur ??= { buffer: await pool.acquire(), pos, fill: 0 };
      b.copy(cur.buffer, cur.fill, from + i, from + i + blockLen);
      cur.fill += blockLen;
      i += blockLen;
    }
  }

  for await (const chunk of stream) {
    if (signal.aborted) throw new InterruptedError();
    let i = 0;
    if (carried > 0) {
      const take = Math.min(DATA_BLOCK - carried, chunk.length);
      chunk.copy(carry, carried, 0, take);
      carried += take;
      i = take;
      if (carried < DATA_BLOCK) continue;
      yield* scan(carry, 0, DATA_BLOCK, offset);
      offset += DATA_BLOCK;
      carried = 0;
    }
    const whole = Math.floor((chunk.length - i) / DATA_BLOCK) * DATA_BLOCK;
    yield* scan(chunk, i, whole, offset);
    offset += whole;
    i += whole;
    if (i < chunk.length) {
      chunk.copy(carry, 0, i);
      carried = chunk.length - i;
    }
  }
  if (carried > 0) {
    yield* scan(carry, 0, carried, offset);
    offset += carried;
  }
  if (cur) yield { pos: cur.pos, data: cur.buffer.subarray(0, cur.fill), buffer: cur.buffer };
  tally.length = offset;
}

/**
 * Keep the next piece being read while the caller hashes and writes this one: the source, the CPU
 * and the targets then work at the same time instead of taking turns.
 */
export async function* readAhead<T>(source: AsyncGenerator<T>): AsyncGenerator<T> {
  let next = source.next();
  try {
    for (;;) {
      const r = await next;
      if (r.done) return;
      next = source.next();
      yield r.value;
    }
  } finally {
    // Leaving early (every target failed, an error): let the read under way settle, then close the source.
    await next.catch(() => {});
    await source.return(undefined).catch(() => {});
  }
}
