// What `bramble flash` writes to: one interface for a block device and a regular file. A device is
// claimed with O_EXCL for the whole run and written with O_DIRECT where the kernel allows it (large
// aligned writes straight to the drive, no page cache to flush later); a file stays sparse.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { alignedBuffer, isAligned } from '../images/sources/aligned.ts';
import { readFully, writeFully } from '../images/sparse.ts';
import type { BlockDeviceInfo, FileInfo, TargetInfo } from '../images/devices.ts';
import { HostError, InputError, type BrambleError } from './errors.ts';

/** O_DIRECT is Linux-only; where Node does not define it, direct I/O is simply not used. */
const O_DIRECT = constants.O_DIRECT ?? 0;
/** The smallest logical block size: files and most drives use 512-byte sectors. */
const MIN_BLOCK = 512;

export interface FlashTarget {
  readonly info: TargetInfo;
  readonly path: string;
  /** Bytes it can hold; undefined for a regular file, which grows. */
  readonly capacity: number | undefined;
  /** Make it ready for the image: a device loses its partition tables, a file its contents. */
  prepare(headBytes: number, imageSize: number | undefined): Promise<void>;
  write(data: Buffer, position: number): Promise<void>;
  /** Read up to `length` bytes at `position`, bypassing the page cache where possible. */
  read(buf: Buffer, length: number, position: number): Promise<number>;
  /** Make everything written durable (fsync: for a device, also a drive cache flush). */
  sync(): Promise<void>;
  /** The image's final length (a file's size; nothing for a device). */
  finish(length: number): Promise<void>;
  close(): Promise<void>;
}

/** A failed system call on a target, as a typed error that names the target and what to do. */
export function targetIoError(path: string, what: string, e: unknown): BrambleError {
  const code = (e as NodeJS.ErrnoException).code;
  const opts = { cause: e };
  switch (code) {
    case 'EBUSY':
      return new InputError(`${path} is in use by another program or a mounted filesystem`, { ...opts, hint: 'unmount it and close what uses it, then try again' });
    case 'EACCES':
    case 'EPERM':
      return new HostError(`no permission to ${what} ${path}`, { ...opts, hint: 'run bramble flash as root (sudo) or as a member of the disk group' });
    case 'EROFS':
      return new InputError(`${path} is read-only`, { ...opts, hint: "is the SD card's write-protect switch on?" });
    case 'ENOMEDIUM':
    case 'ENXIO':
    case 'ENODEV':
      return new HostError(`${path} went away (${code}) during ${what}`, { ...opts, hint: 'was the drive unplugged? plug it in again and repeat the flash' });
    case 'ENOSPC':
      return new HostError(`no space left to ${what} ${path}`, { ...opts, hint: 'free some space or write to another filesystem' });
    case 'EIO':
      return new HostError(`I/O error during ${what} ${path}`, { ...opts, hint: 'the drive may be failing or was unplugged; try another one' });
    default:
      return new HostError(`cannot ${what} ${path}: ${(e as Error).message}`, opts);
  }
}


/**
 * Two handles on one target: `direct` (O_DIRECT) for aligned I/O, `plain` for the rest (a partial last
 * block, a misaligned GPT backup on a 4Kn drive). Direct I/O the kernel rejects (EINVAL) is given up.
 */
abstract class TwoHandleTarget {
  constructor(
    readonly path: string,
    protected direct: FileHandle | undefined,
    protected readonly plain: FileHandle,
    private readonly block: number,
    private readonly directWrites: boolean,
  ) {}

  private canDirect(buf: Buffer, length: number, position: number): boolean {
    return this.direct !== undefined && isAligned(buf, this.block) && position % this.block === 0 && length % this.block === 0;
  }

  private async dropDirect(): Promise<void> {
    await this.direct?.close().catch(() => {});
    this.direct = undefined;
  }

  async write(data: Buffer, position: number): Promise<void> {
    try {
      if (this.directWrites && this.canDirect(data, data.length, position)) {
        try {
          return await writeFully(this.direct!, data, position);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
          await this.dropDirect();
        }
      }
      await writeFully(this.plain, data, position);
    } catch (e) {
      throw targetIoError(this.path, 'write to', e);
    }
  }

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    try {
      if (this.canDirect(buf, length, position)) {
        try {
          return await readFully(this.direct!, buf, length, position);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
          await this.dropDirect();
        }
      }
      return await readFully(this.plain, buf, length, position);
    } catch (e) {
      throw targetIoError(this.path, 'read back', e);
    }
  }

  async sync(): Promise<void> {
    try {
      await this.plain.sync();
    } catch (e) {
      throw targetIoError(this.path, 'flush', e);
    }
  }

  async close(): Promise<void> {
    await this.dropDirect();
    await this.plain.close().catch(() => {});
  }
}

export class BlockDeviceTarget extends TwoHandleTarget implements FlashTarget {
  private constructor(
    readonly info: BlockDeviceInfo,
    direct: FileHandle | undefined,
    plain: FileHandle,
  ) {
    super(info.path, direct, plain, Math.max(MIN_BLOCK, info.logicalBlockSize), true);
  }

  /** Claim the device: the first handle is opened O_EXCL and held until close. */
  static async open(info: BlockDeviceInfo): Promise<BlockDeviceTarget> {
    let direct: FileHandle | undefined;
    try {
      if (O_DIRECT) {
        try {
          direct = await open(info.devicePath, constants.O_RDWR | constants.O_EXCL | O_DIRECT);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        }
      }
      const plain = await open(info.devicePath, constants.O_RDWR | (direct ? 0 : constants.O_EXCL));
      return new BlockDeviceTarget(info, direct, plain);
    } catch (e) {
      await direct?.close();
      throw targetIoError(info.path, 'open', e);
    }
  }

  get capacity(): number {
    return this.info.size;
  }

  /**
   * Zero the first and last `headBytes` before anything else: until the image's own tables are
   * written last, the drive carries no partition table at all, neither the old primary nor an old
   * backup GPT at its end that firmware could fall back to.
   */
  async prepare(headBytes: number): Promise<void> {
    const zeros = alignedBuffer(headBytes);
    const size = this.info.size;
    const span = Math.min(headBytes, size);
    await this.write(zeros.subarray(0, span), 0);
    const tail = Math.max(span, size - headBytes);
    const tailStart = tail - (tail % MIN_BLOCK);
    if (tailStart < size) await this.write(zeros.subarray(0, size - tailStart), tailStart);
    await this.sync();
  }

  async finish(): Promise<void> {}
}

export class FileTarget extends TwoHandleTarget implements FlashTarget {
  readonly capacity = undefined;
  private constructor(
    readonly info: FileInfo,
    direct: FileHandle | undefined,
    plain: FileHandle,
  ) {
    // Written through the page cache (it keeps holes and suits any filesystem); read back direct.
    super(info.path, direct, plain, MIN_BLOCK, false);
  }

  static async open(info: FileInfo): Promise<FileTarget> {
    let plain: FileHandle | undefined;
    try {
      plain = await open(info.path, constants.O_RDWR | constants.O_CREAT, 0o644);
      const direct = O_DIRECT ? await open(info.path, constants.O_RDONLY | O_DIRECT).catch(() => undefined) : undefined;
      return new FileTarget(info, direct, plain);
    } catch (e) {
      await plain?.close();
      throw targetIoError(info.path, 'open', e);
    }
  }

  /** Empty it, then give it the image's length: everything not written stays a hole. */
  async prepare(_headBytes: number, imageSize: number | undefined): Promise<void> {
    try {
      await this.plain.truncate(0);
      if (imageSize !== undefined) await this.plain.truncate(imageSize);
    } catch (e) {
      throw targetIoError(this.path, 'truncate', e);
    }
  }

  async finish(length: number): Promise<void> {
    try {
      await this.plain.truncate(length);
    } catch (e) {
      throw targetIoError(this.path, 'truncate', e);
    }
  }
}

export async function openTarget(info: TargetInfo): Promise<FlashTarget> {
  return info.kind === 'block-device' ? BlockDeviceTarget.open(info) : FileTarget.open(info);
}
