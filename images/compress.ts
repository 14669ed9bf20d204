// Compressed copies of disk images for publishing, with the zstd or xz command-line tool. The image
// is streamed from its data ranges (the bmap's): holes are fed as zeros from memory instead of being
// read, and every byte fed is also handed to `onInput` (hashing, the secret scan) so a published image
// is checked against the build's sha256 without a second pass.
//
// Deterministic output (docs/decisions/014-publishing-releases.md): zstd's multi-threaded encoder writes the
// same bytes for any worker count (-T1 … -Tn; only --single-thread differs), and the input always
// arrives on stdin with --stream-size (a file argument can give other bytes). xz's
// multi-threaded encoder is likewise independent of the thread count but differs from its
// single-threaded one, so xz always runs multi-threaded (-T+N). Neither tool promises the same bytes
// across versions: the tool version is recorded in the release manifest.
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { pipeline } from 'node:stream/promises';
import { InterruptedError } from '../builders/errors.ts';
import { run, runStreaming } from '../builders/exec.ts';
import { hashingPassThrough } from './hashing-stream.ts';
import { readFully, type ByteRange } from './sparse.ts';

export type Compression = 'zstd' | 'xz';

/** File name suffix per format. */
export const compressionSuffix: Record<Compression, string> = { zstd: '.zst', xz: '.xz' };

/**
 * zstd level and window (--long=27, 128 MiB): the level was chosen with scripts/bench/compress.ts
 * (README "Publishing"). 2^27 is the largest window the zstd CLI decodes without being told
 * (--memory), so a plain `zstd -d` or bmaptool can read the result.
 */
export const ZSTD_LEVEL = 19;
export const ZSTD_WINDOW_LOG = 27;
/** xz preset 6 (xz's default): -9 needs 674 MiB per thread to compress for ~1 % smaller output. */
export const XZ_PRESET = 6;

/** Bytes read per system call and fed to the compressor per chunk. */
const CHUNK = 4 * 1024 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

/** The tool's command line for a format, given the input size. */
export function compressorArgs(format: Compression, inputSize: number, threads?: number): { tool: string; args: string[] } {
  if (format === 'zstd') {
    return { tool: 'zstd', args: ['-q', '-c', `-T${threads ?? 0}`, `--long=${ZSTD_WINDOW_LOG}`, `-${ZSTD_LEVEL}`, `--stream-size=${inputSize}`] };
  }
  return { tool: 'xz', args: ['-q', '-c', `-T+${Math.max(1, threads ?? availableParallelism())}`, `-${XZ_PRESET}`] };
}

/** `zstd 1.5.4` / `xz 5.4.1`: the version of the tool that made the bytes, for the release manifest. */
export async function compressorVersion(format: Compression): Promise<string> {
  if (format === 'zstd') {
    const { stdout } = await run('zstd', ['-V']);
    const m = /v(\d+\.\d+\.\d+)/.exec(stdout);
    return `zstd ${m?.[1] ?? stdout.trim()}`;
  }
  const { stdout } = await run('xz', ['--version']);
  const m = /xz \(XZ Utils\) (\S+)/.exec(stdout);
  return `xz ${m?.[1] ?? stdout.split('\n')[0]!.trim()}`;
}

/**
 * The bytes of a file of `size` bytes as chunks: the data ranges read from `path`, everything else
 * zeros from memory (the same bytes a read of the holes would give, without the reads).
 */
export async function* readWithHoles(path: string, size: number, dataRanges: readonly ByteRange[] | undefined, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const ranges = dataRanges ?? [[0, size] as ByteRange];
  const fh = await open(path, 'r');
  try {
    let at = 0;
    const zeros = function* (end: number) {
      while (at < end) {
        const n = Math.min(CHUNK, end - at);
        at += n;
        yield n === CHUNK ? ZEROS : ZEROS.subarray(0, n);
      }
    };
    for (const [s, e] of ranges) {
      yield* zeros(Math.min(s, size));
      const end = Math.min(e, size);
      while (at < end) {
        if (signal?.aborted) throw new InterruptedError();
        // A fresh buffer per chunk: the consumer (a child's stdin) may still hold the previous one.
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, end - at));
        const n = await readFully(fh, buf, buf.length, at);
        if (n < buf.length) throw new Error(`${path}: file ended at ${at + n}, expected ${size} bytes`);
        at += n;
        yield buf;
      }
    }
    yield* zeros(size);
  } finally {
    await fh.close();
  }
}

export interface CompressOptions {
  format: Compression;
  /** Apparent size of the source. */
  size: number;
  /** Where the source holds data (from its bmap); without it the whole file is read. */
  dataRanges?: readonly ByteRange[];
  /** Sees every uncompressed byte, in order, before the compressor does. */
  onInput?: (chunk: Buffer) => void;
  /** Compressor threads (default: every CPU); the output does not depend on it. */
  threads?: number;
  signal?: AbortSignal;
}

export interface CompressResult {
  /** sha256 and size of the uncompressed stream (what the build's manifest lists for the image). */
  inputSha256: string;
  inputSize: number;
  /** sha256 and size of the compressed file. */
  sha256: string;
  size: number;
}

/** Compress `source` into `dest` (written under a temp name, renamed when complete). */
export async function compressFile(source: string, dest: string, o: CompressOptions): Promise<CompressResult> {
  const inputHash = createHash('sha256');
  let inputSize = 0;
  async function* feed() {
    for await (const chunk of readWithHoles(source, o.size, o.dataRanges, o.signal)) {
      inputHash.update(chunk);
      inputSize += chunk.length;
      o.onInput?.(chunk);
      yield chunk;
    }
  }
  const { tool, args } = compressorArgs(o.format, o.size, o.threads);
  const tmp = `${dest}.tmp-${process.pid}`;
  const output = hashingPassThrough();
  try {
    const proc = runStreaming(tool, args, { signal: o.signal, stdin: feed() });
    await Promise.all([pipeline(proc.stdout, output.stream, createWriteStream(tmp, { mode: 0o644 }), { signal: o.signal }), proc.done]);
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    if (o.signal?.aborted) throw new InterruptedError();
    throw e;
  }
  return { inputSha256: inputHash.digest('hex'), inputSize, ...output.result() };
}
