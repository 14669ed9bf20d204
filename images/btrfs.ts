// The OEM btrfs: built from a list of files into a sparse file, written into its partition, and read
// back with btrfs-progs. The bytes come from btrfs-layout.ts (why it does not use mkfs.btrfs is
// explained there and in docs/decisions/007-oem-btrfs-written-directly.md).
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { InputError, InterruptedError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { layoutBtrfs, type BtrfsOptions } from './btrfs-layout.ts';
import { extractPartition, type PartitionSpan } from './partition.ts';
import { alignRanges, type ByteRange } from './sparse.ts';

export { BTRFS_MIN_SIZE, layoutBtrfs, type BtrfsFile, type BtrfsImage, type BtrfsOptions } from './btrfs-layout.ts';

/**
 * Build the filesystem into a new sparse file under `workDir` (a temp dir of the run); returns its
 * path and its data ranges (for writePartition's fileRanges, so it need not read the holes).
 */
export async function buildBtrfsImage(opts: BtrfsOptions & { workDir?: string; signal?: AbortSignal }): Promise<{ path: string; dataRanges: ByteRange[] }> {
  if (opts.signal?.aborted) throw new InterruptedError();
  const image = layoutBtrfs(opts);
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-'));
  const path = join(dir, `${opts.label || 'btrfs'}.img`);
  const fh = await open(path, 'w', 0o600);
  try {
    for (const w of image.writes) {
      let done = 0;
      while (done < w.data.length) done += (await fh.write(w.data, done, w.data.length - done, w.offset + done)).bytesWritten;
    }
    await fh.truncate(image.size);
  } finally {
    await fh.close();
  }
  return { path, dataRanges: alignRanges(image.writes.map((w): ByteRange => [w.offset, w.offset + w.data.length]), image.size) };
}

/** Build the filesystem into a new sparse file under `workDir` and return its path (see writePartition). */
export async function buildBtrfs(opts: BtrfsOptions & { workDir?: string; signal?: AbortSignal }): Promise<string> {
  return (await buildBtrfsImage(opts)).path;
}

/** Read one file of a btrfs inside an image (btrfs restore, from the partition copied to a temp file). */
export async function readBtrfsFile(image: string, partition: PartitionSpan, path: string, opts: { signal?: AbortSignal; workDir?: string } = {}): Promise<Buffer> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-read-'));
  try {
    const part = join(dir, 'partition.img');
    await extractPartition(image, partition, part, opts);
    const out = join(dir, 'restored');
    await mkdir(out);
    await run('btrfs', ['restore', part, out], { signal: opts.signal });
    const rel = posix.normalize(`/${path}`).slice(1);
    if (!rel || rel.split('/').includes('..')) throw new InputError(`bad path ${JSON.stringify(path)}`);
    try {
      return await readFile(join(out, rel));
    } catch (e) {
      throw new InputError(`no file ${path} on the btrfs at byte ${partition.offset} of ${image}`, { cause: e });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Paths of the files of a btrfs inside an image, sorted: what `btrfs restore --dry-run` would
 * restore, less the directories on the way (an empty directory cannot be told from a file here).
 */
export async function listBtrfs(image: string, partition: PartitionSpan, opts: { signal?: AbortSignal; workDir?: string } = {}): Promise<string[]> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-list-'));
  try {
    const part = join(dir, 'partition.img');
    await extractPartition(image, partition, part, opts);
    const out = join(dir, 'restored');
    await mkdir(out);
    // "Restoring PATH" lines are printed from verbosity 2 on.
    const { stdout, stderr } = await run('btrfs', ['restore', '--dry-run', '-v', '-v', part, out], { signal: opts.signal });
    const prefix = `Restoring ${out}/`;
    const paths = `${stdout}\n${stderr}`
      .split('\n')
      .filter((l) => l.startsWith(prefix))
      .map((l) => `/${l.slice(prefix.length)}`);
    const dirs = new Set(paths.map((p) => posix.dirname(p)));
    return paths.filter((p) => !dirs.has(p)).sort();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export { writePartition } from './partition.ts';
