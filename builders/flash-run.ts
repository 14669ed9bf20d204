// One target's side of a flash: the writes it still takes, the GPT changes that apply to it alone (its
// size decides where the backup GPT goes), what it wrote, and the read-back that checks it. A target
// that fails records its error and is skipped from then on; the others carry on.
import { createHash } from 'node:crypto';
import { alignedBuffer, alignedBuffers } from '../images/sources/aligned.ts';
import { tooSmall } from '../images/devices.ts';
import { BrambleError, InterruptedError, VerificationError } from './errors.ts';
import type { GptRelocation, Patch } from './flash-gpt.ts';
import type { FlashTarget } from './flash-targets.ts';

/** A stretch of the image that is written, with the digest its bytes must have. */
export interface Segment {
  start: number;
  end: number;
  /** Hex digest of the image's bytes here: the bmap's range checksum, or computed while reading. */
  digest?: string;
  algorithm: string;
}

/** A patch, with the image's bytes it replaced (what the read-back hashes in their place). */
interface AppliedPatch extends Patch {
  original: Buffer;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const overlap = (a: number, b: number, p: Patch) => [Math.max(a, p.pos), Math.min(b, p.pos + p.data.length)] as const;

export class TargetRun {
  error?: BrambleError;
  bytesWritten = 0;
  ms = 0;
  /** The image's size once known, for the too-small message. */
  imageSize?: number;
  private patches: AppliedPatch[] = [];
  private extra?: Patch;

  constructor(
    readonly target: FlashTarget,
    private readonly chunkBytes: number,
  ) {}

  get path(): string {
    return this.target.path;
  }

  get live(): boolean {
    return this.error === undefined;
  }

  /** Record the first failure; anything that is not a BrambleError is a bug and is rethrown. */
  fail(e: unknown): void {
    if (!(e instanceof BrambleError)) throw e;
    this.error ??= e;
  }

  relocate(r: GptRelocation): void {
    this.patches = r.patches.map((p) => ({ ...p, original: Buffer.alloc(p.data.length) }));
    this.extra = r.extra;
  }

  /** `data` as this target gets it at `pos`: the image's bytes, or a copy with this target's patches. */
  private patched(data: Buffer, pos: number): Buffer {
    const end = pos + data.length;
    const hits = this.patches.filter((p) => p.pos < end && p.pos + p.data.length > pos);
    if (hits.length === 0) return data;
    const copy = alignedBuffer(data.length).subarray(0, data.length);
    data.copy(copy);
    for (const p of hits) {
      const [a, b] = overlap(pos, end, p);
      data.copy(p.original, a - p.pos, a - pos, b - pos);
      p.data.copy(copy, a - pos, a - p.pos, b - p.pos);
    }
    return copy;
  }

  async write(data: Buffer, pos: number): Promise<void> {
    if (!this.live) return;
    const { capacity, info } = this.target;
    if (capacity !== undefined && info.kind === 'block-device' && pos + data.length > capacity) {
      return this.fail(tooSmall(info, this.imageSize ?? pos + data.length));
    }
    try {
      await this.target.write(this.patched(data, pos), pos);
      this.bytesWritten += data.length;
    } catch (e) {
      this.fail(e);
    }
  }

  /** The new backup GPT at the drive's end, when this target got one. */
  async writeExtra(): Promise<void> {
    if (this.extra) await this.write(this.extra.data, this.extra.pos);
  }

  async sync(): Promise<void> {
    if (!this.live) return;
    try {
      await this.target.sync();
    } catch (e) {
      this.fail(e);
    }
  }

  /**
   * Read the segments back (and the new backup GPT) and compare: this target's patches must hold
   * their new bytes; in their place the image's bytes are hashed, so the digest is the image's.
   */
  async verify(segments: readonly Segment[], withExtra: boolean, signal: AbortSignal, onBytes: (n: number) => void): Promise<void> {
    if (!this.live) return;
    try {
      if (withExtra && this.extra) await this.verifyBytes(this.extra);
      await this.verifySegments(segments, signal, onBytes);
    } catch (e) {
      this.fail(e);
    }
  }

  private async verifyBytes(p: Patch): Promise<void> {
    const buf = alignedBuffer(p.data.length);
    const n = await this.target.read(buf, p.data.length, p.pos);
    const got = buf.subarray(0, n);
    if (!got.equals(p.data)) {
      throw new VerificationError(`${this.path}: read-back of the backup GPT at byte ${p.pos}`, sha256(p.data), sha256(got), {
        hint: 'the drive did not keep what was written; it may be failing or smaller than it claims',
      });
    }
  }

  private async verifySegments(segments: readonly Segment[], signal: AbortSignal, onBytes: (n: number) => void): Promise<void> {
    const reads: Array<{ seg: Segment; pos: number; len: number }> = [];
    for (const seg of segments) {
      for (let pos = seg.start; pos < seg.end; pos += this.chunkBytes) reads.push({ seg, pos, len: Math.min(this.chunkBytes, seg.end - pos) });
    }
    const bufs = alignedBuffers(2, this.chunkBytes);
    const start = (i: number) => this.target.read(bufs[i % 2]!, reads[i]!.len, reads[i]!.pos);
    let pending = reads.length > 0 ? start(0) : undefined;
    let hash = createHash(segments[0]?.algorithm ?? 'sha256');
    try {
      for (let i = 0; i < reads.length; i++) {
        const { seg, pos, len } = reads[i]!;
        const n = await pending!;
        // Keep the drive busy reading the next chunk while this one is hashed.
        pending = i + 1 < reads.length ? start(i + 1) : undefined;
        if (signal.aborted) throw new InterruptedError();
        const buf = bufs[i % 2]!.subarray(0, n);
        if (n < len) throw new VerificationError(`${this.path}: read-back at byte ${pos}`, `${len} bytes`, `${n} bytes`);
        this.checkPatches(buf, pos);
        hash.update(buf);
        onBytes(len);
        if (pos + len === seg.end) {
          const actual = hash.digest('hex');
          if (actual !== seg.digest) {
            throw new VerificationError(`${this.path}: read-back of bytes ${seg.start}-${seg.end - 1}`, seg.digest ?? '?', actual, {
              hint: 'the drive did not keep what was written; it may be failing or smaller than it claims; try another one',
            });
          }
          hash = createHash(reads[i + 1]?.seg.algorithm ?? 'sha256');
        }
      }
    } finally {
      // Never leave a read running into a buffer after leaving (the handle is closed next).
      await pending?.catch(() => {});
    }
  }

  /** Patched bytes must read back as written; then the image's bytes take their place for hashing. */
  private checkPatches(buf: Buffer, pos: number): void {
    const end = pos + buf.length;
    for (const p of this.patches) {
      if (p.pos >= end || p.pos + p.data.length <= pos) continue;
      const [a, b] = overlap(pos, end, p);
      const got = buf.subarray(a - pos, b - pos);
      const want = p.data.subarray(a - p.pos, b - p.pos);
      if (!got.equals(want)) {
        throw new VerificationError(`${this.path}: read-back of the relocated GPT at bytes ${a}-${b - 1}`, sha256(want), sha256(got), {
          hint: 'the drive did not keep what was written; it may be failing',
        });
      }
      p.original.copy(buf, a - pos, a - p.pos, b - p.pos);
    }
  }
}
