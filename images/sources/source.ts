// What `bramble flash` reads from: one interface for every kind of image source, with capability
// checks, so the writer asks "can I read at an offset?" instead of testing classes. Decompressors wrap
// another source; only an uncompressed local file offers positional reads.

export interface ImageSource {
  /** A path or URL, for messages. */
  readonly name: string;
  /** Size of the (decompressed) image in bytes, when known before reading it. */
  readonly size: number | undefined;
  /** Positional reads are possible (an uncompressed local file): only mapped ranges need be read. */
  canRead(): this is RandomAccessSource;
  /** The whole image, in order. Every source can do this once; a file can do it again. */
  stream(signal: AbortSignal): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

export interface RandomAccessSource extends ImageSource {
  /** The local file behind the source. */
  readonly path: string;
  readonly size: number;
  /** Read up to `length` bytes at `position` into `buf`; fewer only at the end of the image. */
  read(buf: Buffer, length: number, position: number): Promise<number>;
}
