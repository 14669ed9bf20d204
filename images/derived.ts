// Derived cache entries: the sparse, decompressed disk image made from a verified blob, keyed by the
// blob's sha256 (derived/<kind>/<hex>), with its data map beside it (<hex>.ranges.json). The map is
// written last and is what marks the entry complete.
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { EventSink } from '../builders/events.ts';
import type { Cache } from './cache.ts';
import type { DeriveKind } from './catalog/input.ts';
import { decompressToSparse, extractZipImageToSparse, type DataRange, type SparseResult } from './decompress.ts';

export interface DerivedImage {
  path: string;
  size: number;
  dataRanges: DataRange[];
}

interface RangesFile {
  /** sha256 of the blob the image was made from. */
  from: string;
  kind: DeriveKind;
  size: number;
  dataRanges: DataRange[];
}

export const rangesPath = (imagePath: string) => `${imagePath}.ranges.json`;

async function readDerived(path: string, kind: DeriveKind, from: string): Promise<DerivedImage | undefined> {
  try {
    const r = JSON.parse(await readFile(rangesPath(path), 'utf8')) as RangesFile;
    if (r.from !== from || r.kind !== kind) return undefined;
    if ((await stat(path)).size !== r.size) return undefined;
    return { path, size: r.size, dataRanges: r.dataRanges };
  } catch {
    return undefined;
  }
}

/** The derived image of a blob, made (under the entry's lock) when the cache does not have it yet. */
export async function deriveImage(
  cache: Cache,
  kind: DeriveKind,
  blob: { path: string; sha256: string },
  opts: { signal: AbortSignal; events: EventSink; what: string },
): Promise<DerivedImage> {
  const path = cache.derivedPath(kind, blob.sha256);
  const have = await readDerived(path, kind, blob.sha256);
  if (have) return have;
  return cache.withLock(`derived:${kind}:${blob.sha256}`, opts, async () => {
    const late = await readDerived(path, kind, blob.sha256);
    if (late) return late;
    opts.events({ kind: 'info', message: `decompressing ${opts.what} into a sparse image` });
    const tmp = await cache.tempPath(`derive-${kind}`);
    try {
      const made: SparseResult =
        kind === 'bz2-sparse' ? await decompressToSparse(blob.path, tmp, opts) : await extractZipImageToSparse(blob.path, tmp, opts);
      await mkdir(dirname(path), { recursive: true });
      // Remove a stale map first so a crash between the two renames cannot pair it with the new image.
      await rm(rangesPath(path), { force: true });
      await rename(tmp, path);
      const record: RangesFile = { from: blob.sha256, kind, size: made.size, dataRanges: made.dataRanges };
      await cache.writeAtomic(rangesPath(path), JSON.stringify(record) + '\n');
      return { path, size: made.size, dataRanges: made.dataRanges };
    } finally {
      await rm(tmp, { force: true });
    }
  });
}
