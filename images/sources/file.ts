// An uncompressed image file: read at any offset, so only its mapped ranges are ever read.
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { InputError } from '../../builders/errors.ts';
import type { RandomAccessSource } from './source.ts';

/** Read size for sequential streaming of a whole file. */
const STREAM_CHUNK = 4 * 1024 * 1024;

export class FileSource implements RandomAccessSource {
  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string): Promise<FileSource> {
    const fh = await open(path, 'r');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new InputError(`${path} is not a regular file`, { hint: 'flash from an image file or an http(s) URL' });
      return new FileSource(path, st.size, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get name(): string {
    return this.path;
  }

  canRead(): this is RandomAccessSource {
    return true;
  }

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  stream(signal: AbortSignal): AsyncIterable<Buffer> {
    return createReadStream(this.path, { highWaterMark: STREAM_CHUNK, signal });
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
