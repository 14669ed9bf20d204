// Page-aligned buffers for O_DIRECT. Node's Buffers come from malloc and are only 16-byte aligned, and
// O_DIRECT needs the memory address, the offset and the length aligned to the device's logical block
// size. WebAssembly memory is mapped in whole pages, so views into it at multiples of 4096 start on a
// page boundary, which satisfies every logical block size Linux supports (512 to 4096).

/** Alignment of address, offset and length for direct I/O: the largest logical block size (4Kn disks). */
export const DIRECT_IO_ALIGNMENT = 4096;
/** Size of one WebAssembly memory page (WebAssembly core spec §2.5.5 "Memories"). */
const WASM_PAGE_SIZE = 65536;

/** The one WebAssembly API used here (TypeScript's ES libs do not declare WebAssembly). */
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

/** ArrayBuffers that start on a page boundary: views into them are aligned when their offset is. */
const alignedMemory = new WeakSet<ArrayBufferLike>();

export const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** `count` zero-filled buffers of `size` bytes (rounded up to the alignment), each page-aligned. */
export function alignedBuffers(count: number, size: number): Buffer[] {
  const each = roundUp(size, DIRECT_IO_ALIGNMENT);
  const memory = new Memory({ initial: Math.max(1, Math.ceil((count * each) / WASM_PAGE_SIZE)) });
  alignedMemory.add(memory.buffer);
  return Array.from({ length: count }, (_, i) => Buffer.from(memory.buffer, i * each, each));
}

export function alignedBuffer(size: number): Buffer {
  return alignedBuffers(1, size)[0]!;
}

/** Whether `buf` starts at an address that is a multiple of `alignment` (known only for our own buffers). */
export function isAligned(buf: Buffer, alignment: number): boolean {
  return alignedMemory.has(buf.buffer) && buf.byteOffset % alignment === 0;
}

/**
 * A fixed set of aligned buffers handed out in turn. `acquire` waits while all are in use, which is
 * what bounds read-ahead: the reader cannot run further ahead than the writers release buffers.
 */
export class BufferPool {
  private readonly free: Buffer[];
  private readonly waiting: Array<(b: Buffer) => void> = [];
  constructor(
    count: number,
    readonly size: number,
  ) {
    this.free = alignedBuffers(count, size);
  }

  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(buf: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(buf);
    else this.free.push(buf);
  }
}
