// `bramble flash` as a library: one image source, read once, written to N targets (USB sticks, SD
// cards, files). Only mapped data is written (from the .bmap, or found by scanning for zero blocks),
// each bmap range is checked against its SHA-256 while it is written, targets are read back
// afterwards, and the image's first MiB (the partition tables) is written last: until the rest is
// durable and verified, a target has no partition table at all, so an interrupted or failed flash
// never leaves a drive that looks bootable. A failing target is recorded and the others carry on.
import { createHash, type Hash } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { bmapByteRanges, readBmap, type Bmap } from '../images/bmap.ts';
import { checkTarget, inspectTarget, tooSmall, type TargetInfo } from '../images/devices.ts';
import { SECTOR_SIZE } from '../images/gpt.ts';
import { alignedBuffer, BufferPool } from '../images/sources/aligned.ts';
import { readAhead, readRanges, streamDataBlocks, streamRanges, type Piece, type StreamTally } from '../images/sources/mapped.ts';
import { isUrl, locateBmap, openImageSource } from '../images/sources/open.ts';
import type { ImageSource } from '../images/sources/source.ts';
import { scanDataRanges, type ByteRange } from '../images/sparse.ts';
import { BrambleError, ExitCode, InputError, InterruptedError, UsageError, VerificationError } from './errors.ts';
import type { EventSink } from './events.ts';
import { readPrimaryGpt, relocateGpt } from './flash-gpt.ts';
import { ProgressMeter, type FlashProgress } from './flash-progress.ts';
import { TargetRun, type Segment } from './flash-run.ts';
import { openTarget, targetIoError } from './flash-targets.ts';

export type { FlashProgress, FlashPhase } from './flash-progress.ts';

/** The image's first bytes (MBR, primary GPT, boot code) are held back and written last. */
export const HEAD_BYTES = 1024 * 1024;
/** Bytes per read and per write: large writes are what flash media are fast at. */
const CHUNK_BYTES = 8 * 1024 * 1024;
/** Aligned buffers: one being read ahead, one being hashed, writes in flight, one spare. */
const POOL_BUFFERS = 5;
const WRITES_IN_FLIGHT = 2;
/** Digest of segments the bmap does not cover as a whole (and of everything without a bmap). */
const OWN_DIGEST = 'sha256';

export type FlashResult = { ok: true; bytesWritten: number; ms: number } | { ok: false; error: BrambleError };

export interface FlashOptions {
  /** A local image (.img, .img.zst, .img.xz, .img.bz2) or an http(s) URL. */
  source: string;
  /** Block devices or regular files (created if missing, never under /dev). */
  targets: string[];
  /** The image's bmap (path or URL); by default looked for beside the image. */
  bmapPath?: string;
  /** Read every target back after writing. */
  verify: boolean;
  /** Allow drives that are not removable (and loop devices). */
  forceNonRemovable: boolean;
  signal: AbortSignal;
  onProgress?: (p: FlashProgress) => void;
  /** Warnings (no bmap found, a damaged GPT left as it is). */
  events?: EventSink;
  /**
   * Called per target once everything but the head is written and durable, before the read-back.
   * Tests use it to change a target behind bramble's back.
   */
  onWritten?: (target: string) => Promise<void>;
}

/** Which failure decides the exit code when targets fail differently: the most serious first. */
const SEVERITY: readonly number[] = [ExitCode.interrupted, ExitCode.internal, ExitCode.verification, ExitCode.hostEnvironment, ExitCode.badInput];

/** 0 when every target succeeded, else the exit code of the most serious failure. */
export function worstExitCode(results: ReadonlyMap<string, FlashResult>): number {
  let worst = 0;
  for (const r of results.values()) {
    if (r.ok) continue;
    const code = r.error.exitCode;
    if (worst === 0 || SEVERITY.indexOf(code) < SEVERITY.indexOf(worst)) worst = code;
  }
  return worst;
}

interface RangeCheck {
  start: number;
  end: number;
  first: number;
  last: number;
  chksum: string;
  hash?: Hash;
}

/**
 * Split ranges at the head boundary, so the held-back head is made of whole segments. A range with a
 * digest (from the bmap) keeps it when it is not split; the others get their own, computed while reading.
 */
function segmentsOf(ranges: readonly ByteRange[], digestOf: (i: number) => string | undefined, algorithm: string): Segment[] {
  const out: Segment[] = [];
  ranges.forEach(([start, end], i) => {
    const digest = digestOf(i);
    if (start < HEAD_BYTES && end > HEAD_BYTES) {
      out.push({ start, end: HEAD_BYTES, algorithm: OWN_DIGEST }, { start: HEAD_BYTES, end, algorithm: OWN_DIGEST });
    } else if (digest === undefined) out.push({ start, end, algorithm: OWN_DIGEST });
    else out.push({ start, end, digest, algorithm });
  });
  return out;
}

function checkArguments(opts: FlashOptions): void {
  if (/\.bmap$/i.test(opts.source)) {
    throw new UsageError(`${opts.source} is a bmap file, not an image`, { hint: 'pass the image; its .bmap beside it is found by itself (or name it with --bmap)' });
  }
  if (opts.targets.length === 0) throw new UsageError('no target given', { hint: 'name one or more drives (or files) to write, e.g. /dev/sdb' });
}

/** Identity of a target, so two names for one drive are not written at once. */
const identity = (t: TargetInfo) => (t.kind === 'block-device' ? t.devicePath : resolve(t.path));

async function sameFile(a: string, b: string | undefined): Promise<boolean> {
  if (b === undefined || isUrl(b)) return false;
  const [x, y] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return !!x && !!y && x.dev === y.dev && x.ino === y.ino;
}

/** Inspect, check and open every target; refusals go straight into `results`. */
async function openTargets(opts: FlashOptions, imageSize: number | undefined, bmapFile: string | undefined, results: Map<string, FlashResult>): Promise<TargetRun[]> {
  const runs: TargetRun[] = [];
  const seen = new Map<string, string>();
  for (const path of new Set(opts.targets)) {
    try {
      const info = await inspectTarget(path);
      const id = identity(info);
      const twin = seen.get(id);
      if (twin !== undefined) throw new UsageError(`${path} is the same target as ${twin}`, { hint: 'name each drive once' });
      seen.set(id, path);
      if (info.kind === 'file' && info.exists && ((await sameFile(path, opts.source)) || (await sameFile(path, bmapFile)))) {
        throw new UsageError(`${path} is the image (or its bmap) itself`, { hint: 'write to another file or a drive' });
      }
      await checkTarget(info, { forceNonRemovable: opts.forceNonRemovable, imageSize });
      const run = new TargetRun(await openTarget(info), CHUNK_BYTES);
      run.imageSize = imageSize;
      runs.push(run);
    } catch (e) {
      // A failed system call (a device that vanished, an odd sysfs entry) fails this target only.
      if (!(e instanceof BrambleError) && !(e as NodeJS.ErrnoException).code) throw e;
      results.set(path, { ok: false, error: e instanceof BrambleError ? e : targetIoError(path, 'inspect', e) });
    }
  }
  return runs;
}

interface Streamed {
  head: Buffer;
  segments: Segment[];
  length: number;
}

class ImageWriter {
  private readonly pool = new BufferPool(POOL_BUFFERS, CHUNK_BYTES);
  private readonly head = alignedBuffer(HEAD_BYTES);
  private laidOut = false;

  constructor(
    private readonly source: ImageSource,
    private readonly bmap: Bmap | undefined,
    /** Known before reading (bmap, or a scan of a local file); undefined: found while streaming. */
    private readonly known: Segment[] | undefined,
    private readonly runs: TargetRun[],
    private readonly meter: ProgressMeter,
    private readonly opts: FlashOptions,
  ) {}

  private pieces(tally: StreamTally): AsyncGenerator<Piece> {
    const { signal } = this.opts;
    if (!this.known) return streamDataBlocks(this.source.stream(signal), this.pool, signal, tally, HEAD_BYTES);
    const ranges = this.known.map((s): ByteRange => [s.start, s.end]);
    if (this.source.canRead()) return readRanges(this.source, ranges, this.pool, signal);
    return streamRanges(this.source.stream(signal), ranges, this.pool, signal, tally, this.source.name);
  }

  private rangeChecks(): RangeCheck[] {
    if (!this.bmap) return [];
    const bytes = bmapByteRanges(this.bmap);
    return this.bmap.ranges.map((r, i) => ({ start: bytes[i]![0], end: bytes[i]![1], first: r.first, last: r.last, chksum: r.chksum }));
  }

  /** Once the head is complete: move each larger drive's backup GPT, refuse drives too small for it. */
  private layOut(imageSize: number | undefined): void {
    if (this.laidOut) return;
    this.laidOut = true;
    const gpt = readPrimaryGpt(this.head);
    if (typeof gpt === 'string') {
      this.opts.events?.({ kind: 'warning', message: `${this.source.name}: its GPT is damaged (${gpt}); it is written as it is` });
      return;
    }
    if (!gpt) return;
    const size = imageSize ?? (gpt.alternateLba + 1) * SECTOR_SIZE;
    for (const run of this.runs) {
      const { info } = run.target;
      if (!run.live || info.kind !== 'block-device') continue;
      run.imageSize ??= size;
      if (info.size < size) run.fail(tooSmall(info, size));
      else {
        const moved = relocateGpt(this.head, gpt, imageSize, info.size);
        if (moved) run.relocate(moved);
      }
    }
  }

  /** Read the image once and write everything but the head to every live target. */
  async write(imageSize: number | undefined): Promise<Streamed> {
    const tally: StreamTally = { length: 0 };
    const segments: Segment[] = this.known ?? [];
    const checks = this.rangeChecks();
    let si = 0;
    let ci = 0;
    let own: Hash | undefined;
    const inflight: Array<Promise<unknown>> = [];
    this.meter.start('flashing', this.known?.reduce((n, s) => n + s.end - s.start, 0));
    try {
      for await (const piece of readAhead(this.pieces(tally))) {
        const { pos, data } = piece;
        const end = pos + data.length;
        let seg: Segment;
        if (this.known) {
          while (segments[si]!.end <= pos) si++;
          seg = segments[si]!;
        } else {
          seg = { start: pos, end, algorithm: OWN_DIGEST };
          segments.push(seg);
        }
        if (checks.length > 0) {
          while (checks[ci]!.end <= pos) ci++;
          const c = checks[ci]!;
          (c.hash ??= createHash(this.bmap!.checksumType)).update(data);
          if (end === c.end) {
            const actual = c.hash.digest('hex');
            if (actual !== c.chksum) {
              throw new VerificationError(`${this.source.name}: blocks ${c.first}-${c.last} (bytes ${c.start}-${c.end - 1})`, c.chksum, actual, {
                hint: 'the image does not match its bmap: it is damaged, or the bmap belongs to another build; rebuild or fetch both again',
              });
            }
          }
        }
        if (seg.digest === undefined) {
          (own ??= createHash(seg.algorithm)).update(data);
          if (end === seg.end) {
            seg.digest = own.digest('hex');
            own = undefined;
          }
        }
        this.meter.add(data.length);
        if (pos < HEAD_BYTES) {
          data.copy(this.head, pos);
          this.pool.release(piece.buffer);
          continue;
        }
        this.layOut(imageSize);
        const writes = Promise.all(this.runs.map((r) => r.write(data, pos))).finally(() => this.pool.release(piece.buffer));
        inflight.push(writes);
        if (inflight.length >= WRITES_IN_FLIGHT) await inflight.shift();
        if (!this.runs.some((r) => r.live)) break;
      }
    } finally {
      await Promise.allSettled(inflight);
    }
    this.meter.finish();
    const length = this.source.canRead() ? this.source.size : tally.length;
    if (this.bmap && length !== this.bmap.imageSize && this.runs.some((r) => r.live)) {
      throw new InputError(`${this.source.name} holds ${length} bytes, but its bmap describes ${this.bmap.imageSize}`, {
        hint: 'the bmap belongs to another image; rebuild or fetch both again, or name the right one with --bmap',
      });
    }
    this.layOut(imageSize ?? length);
    return { head: this.head, segments, length };
  }
}

/** Flash `opts.source` to every target. Refused and failed targets are in the result with their error. */
export async function flashImage(opts: FlashOptions): Promise<Map<string, FlashResult>> {
  const { signal } = opts;
  const started = performance.now();
  const results = new Map<string, FlashResult>();
  let runs: TargetRun[] = [];
  let workspace: string | undefined;
  let source: ImageSource | undefined;
  try {
    checkArguments(opts);
    source = await openImageSource(opts.source, signal);
    const tmpDir = async () => (workspace ??= await mkdtemp(join(tmpdir(), 'bramble-flash-')));
    const bmapFile = await locateBmap(opts.source, { explicit: opts.bmapPath, tmpDir, signal });
    const bmap = bmapFile ? await readBmap(bmapFile) : undefined;
    if (bmap && source.size !== undefined && source.size !== bmap.imageSize) {
      throw new InputError(`${bmapFile} describes an image of ${bmap.imageSize} bytes, but ${source.name} holds ${source.size}`, {
        hint: 'the bmap belongs to another image; rebuild or fetch both again, or name the right one with --bmap',
      });
    }
    const imageSize = bmap?.imageSize ?? source.size;
    runs = await openTargets(opts, imageSize, bmapFile, results);
    const meter = new ProgressMeter(opts.onProgress, () => ({
      active: runs.filter((r) => r.live).length,
      failed: runs.filter((r) => !r.live).length + results.size,
    }));
    if (runs.length === 0) return results;

    let known: Segment[] | undefined;
    if (bmap) {
      known = segmentsOf(bmapByteRanges(bmap), (i) => bmap.ranges[i]!.chksum, bmap.checksumType);
    } else {
      opts.events?.({ kind: 'warning', message: `no bmap found for ${opts.source}: writing its non-zero blocks, without checksums from a bmap` });
      if (source.canRead()) {
        meter.start('mapping', source.size);
        const ranges = await scanDataRanges(source.path, { signal });
        meter.add(source.size);
        meter.finish();
        known = segmentsOf(ranges, () => undefined, OWN_DIGEST);
      }
    }

    await Promise.all(runs.map((r) => r.target.prepare(HEAD_BYTES, imageSize).catch((e) => r.fail(e))));
    const writer = new ImageWriter(source, bmap, known, runs, meter, opts);
    let streamed: Streamed;
    try {
      streamed = await writer.write(imageSize);
    } catch (e) {
      if (!(e instanceof BrambleError) || e instanceof InterruptedError) throw e;
      // The source failed (damaged, wrong bmap, broken download): every target fails with it.
      for (const r of runs) r.fail(e);
      return results;
    }
    await finishTargets(streamed, runs, meter, opts);
    return results;
  } catch (e) {
    if (signal.aborted && !(e instanceof InterruptedError)) throw new InterruptedError();
    throw e;
  } finally {
    await Promise.all(runs.map((r) => r.target.close()));
    for (const r of runs) {
      r.ms = Math.round(performance.now() - started);
      results.set(r.path, r.live ? { ok: true, bytesWritten: r.bytesWritten, ms: r.ms } : { ok: false, error: r.error! });
    }
    await source?.close().catch(() => {});
    if (workspace) await rm(workspace, { recursive: true, force: true });
  }
}

/**
 * After the stream: the new backup GPTs, the final length, fsync; the read-back of everything but
 * the head; then the head itself, fsync, and its read-back.
 */
async function finishTargets({ head, segments, length }: Streamed, runs: TargetRun[], meter: ProgressMeter, opts: FlashOptions): Promise<void> {
  const { signal } = opts;
  const live = () => runs.filter((r) => r.live);
  const body = segments.filter((s) => s.start >= HEAD_BYTES);
  const headSegments = segments.filter((s) => s.start < HEAD_BYTES);
  const bytesOf = (list: Segment[]) => list.reduce((n, s) => n + s.end - s.start, 0);

  meter.start('syncing');
  await Promise.all(
    live().map(async (r) => {
      await r.writeExtra();
      await r.target.finish(length).catch((e) => r.fail(e));
      await r.sync();
    }),
  );
  meter.finish();
  if (signal.aborted) throw new InterruptedError();
  for (const r of live()) await opts.onWritten?.(r.path);

  if (opts.verify) {
    meter.start('verifying', bytesOf(body) * live().length);
    await Promise.all(live().map((r) => r.verify(body, true, signal, (n) => meter.add(n))));
    meter.finish();
  }
  if (signal.aborted) throw new InterruptedError();
  await Promise.all(
    live().map(async (r) => {
      for (const s of headSegments) await r.write(head.subarray(s.start, s.end), s.start);
      await r.sync();
      if (opts.verify) await r.verify(headSegments, false, signal, () => {});
    }),
  );
}
