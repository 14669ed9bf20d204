// Scoped edits of one partition of an image file: find it by GPT name or type GUID, hand the editor
// its byte span, and collect the byte ranges the edit wrote, so the build can make the bmap from the
// base image's data map plus these ranges without rescanning the whole image.
import { open } from 'node:fs/promises';
import { InputError, InterruptedError } from '../builders/errors.ts';
import { findPartition, partitionBytes, readGpt, type Gpt, type GptPartition, type PartitionQuery } from './gpt.ts';
import { alignRanges, DATA_BLOCK, forEachDataRun, mergeRanges, scanDataRanges, writeFully, type ByteRange } from './sparse.ts';

/** Where a partition's bytes are in the image. */
export interface PartitionSpan {
  offset: number;
  size: number;
}

const IO_CHUNK = 4 * 1024 * 1024;

/** Copy a partition's bytes to `dest` as a sparse file of the partition's size (for tools that take no offset). */
export async function extractPartition(image: string, span: PartitionSpan, dest: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
  const input = await open(image, 'r');
  const output = await open(dest, 'w', 0o600);
  try {
    await forEachDataRun(input, span.offset, span.offset + span.size, opts.signal, (data, at) => writeFully(output, data, at - span.offset));
    await output.truncate(span.size);
  } finally {
    await output.close();
    await input.close();
  }
}

export interface WritePartitionOptions {
  signal?: AbortSignal;
  /** The file's data ranges (offsets in the file), when known (buildBtrfsImage returns them). */
  fileRanges?: readonly ByteRange[];
  /** The image's data ranges (image offsets), when known (the base map). */
  imageRanges?: readonly ByteRange[];
}

/**
 * Make the partition's first bytes equal `file` (a filesystem image no larger than the partition),
 * writing only the 4 KiB blocks that differ, so unchanged blocks and holes are left alone. Returns
 * the image byte ranges that now hold the file's data (its non-zero blocks): the partition's data
 * map after the write, for a bmap built from the base map with this partition's part replaced.
 * Given both data maps, only the blocks in either are read: elsewhere both sides are zeros.
 */
export async function writePartition(image: string, span: PartitionSpan, file: string, opts: WritePartitionOptions = {}): Promise<ByteRange[]> {
  const src = await open(file, 'r');
  const dst = await open(image, 'r+');
  const data: ByteRange[] = [];
  try {
    const size = (await src.stat()).size;
    if (size > span.size) throw new InputError(`${file} (${size} bytes) does not fit the partition of ${span.size} bytes at byte ${span.offset} of ${image}`);
    const visit: ByteRange[] =
      opts.fileRanges && opts.imageRanges
        ? alignRanges(
            [...opts.fileRanges, ...opts.imageRanges.map(([s, e]): ByteRange => [s - span.offset, e - span.offset])]
              .map(([s, e]): ByteRange => [Math.max(0, s), Math.min(size, e)])
              .filter(([s, e]) => e > s),
            size,
          )
        : [[0, size]];
    const a = Buffer.alloc(IO_CHUNK);
    const b = Buffer.alloc(IO_CHUNK);
    const zero = Buffer.alloc(DATA_BLOCK);
    const zeroChunk = Buffer.alloc(IO_CHUNK);
    for (const [from, to] of visit) {
      for (let pos = from; pos < to; pos += IO_CHUNK) {
        if (opts.signal?.aborted) throw new InterruptedError();
        const n = Math.min(IO_CHUNK, to - pos);
        const [ra, rb] = await Promise.all([src.read(a, 0, n, pos), dst.read(b, 0, n, span.offset + pos)]);
        if (ra.bytesRead !== n) throw new InputError(`${file} shrank while being written into ${image}`);
        b.fill(0, rb.bytesRead, n);
        // Most of a fresh filesystem is zeros over a hole: one comparison each settles a whole chunk.
        const aZero = zeroChunk.compare(a, 0, n, 0, n) === 0;
        if (aZero && zeroChunk.compare(b, 0, n, 0, n) === 0) continue;
        const identical = a.compare(b, 0, n, 0, n) === 0;
        const same = (f: number, t: number) => identical || a.compare(b, f, t, f, t) === 0;
        let run = -1; // start of a run of differing blocks not yet written
        const flush = async (end: number) => {
          if (run >= 0) await writeFully(dst, a.subarray(run, end), span.offset + pos + run);
          run = -1;
        };
        for (let i = 0; i < n; i += DATA_BLOCK) {
          const end = Math.min(n, i + DATA_BLOCK);
          if (same(i, end)) await flush(i);
          else if (run < 0) run = i;
          if (!aZero && zero.compare(a, i, end, 0, end - i) !== 0) data.push([span.offset + pos + i, span.offset + pos + end]);
        }
        await flush(n);
      }
    }
  } finally {
    await dst.close();
    await src.close();
  }
  return mergeRanges(data);
}

export interface PartitionEdit extends PartitionSpan {
  image: string;
  gpt: Gpt;
  partition: GptPartition;
  /** Record image byte ranges this edit wrote. */
  wrote(ranges: readonly ByteRange[]): void;
  /**
   * After a host tool edited the partition in place (mtools, debugfs): record its data blocks by
   * scanning this partition only. Faster, from the filesystem's own allocation maps:
   * `wrote(await fatDataRanges(...))` / `wrote(await ext4DataRanges(...))`. Record after every tool
   * call: a later call may free blocks the earlier one wrote without zeroing them.
   */
  rescan(): Promise<void>;
  /** writePartition into this partition, recording what it wrote. */
  writeFile(file: string, ranges?: Pick<WritePartitionOptions, 'fileRanges' | 'imageRanges'>): Promise<ByteRange[]>;
}

/**
 * Run `edit` on one partition (found by GPT name and/or type GUID) and return its result with the
 * merged byte ranges it wrote, checked to lie inside the partition.
 */
export async function withPartition<T>(
  image: string,
  query: PartitionQuery,
  edit: (p: PartitionEdit) => Promise<T>,
  opts: { signal?: AbortSignal; gpt?: Gpt } = {},
): Promise<{ value: T; written: ByteRange[] }> {
  const gpt = opts.gpt ?? (await readGpt(image));
  const partition = findPartition(gpt, query);
  const span = partitionBytes(gpt, partition);
  let written: ByteRange[] = [];
  const wrote = (ranges: readonly ByteRange[]) => {
    for (const [s, e] of ranges) {
      if (s < span.offset || e > span.offset + span.size) {
        throw new InputError(`edit of partition ${partition.name} wrote bytes ${s}-${e}, outside its span ${span.offset}-${span.offset + span.size}`);
      }
    }
    written = mergeRanges([...written, ...ranges]);
  };
  const value = await edit({
    image,
    gpt,
    partition,
    ...span,
    wrote,
    rescan: async () => wrote(await scanDataRanges(image, { start: span.offset, end: span.offset + span.size, signal: opts.signal })),
    writeFile: async (file, known) => {
      const ranges = await writePartition(image, span, file, { ...known, signal: opts.signal });
      wrote(ranges);
      return ranges;
    },
  });
  return { value, written };
}
