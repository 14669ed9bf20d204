// An image (or its .bmap) on an http(s) server, read with Node's built-in fetch. The body is streamed
// once, in order; nothing is stored on disk.
import { writeFile } from 'node:fs/promises';
import { HostError, InputError, InterruptedError } from '../../builders/errors.ts';
import type { ImageSource, RandomAccessSource } from './source.ts';

export function isUrl(spec: string): boolean {
  return /^https?:\/\//i.test(spec);
}

async function get(url: string, signal: AbortSignal): Promise<Response> {
  try {
    return await fetch(url, { signal, redirect: 'follow' });
  } catch (e) {
    if (signal.aborted) throw new InterruptedError();
    const why = e instanceof Error ? ((e.cause as Error | undefined)?.message ?? e.message) : String(e);
    throw new HostError(`${url}: cannot download it: ${why}`, { hint: 'check the URL and that the server is reachable', cause: e });
  }
}

function httpError(url: string, res: Response): InputError {
  return new InputError(`${url}: the server answered HTTP ${res.status} ${res.statusText}`.trimEnd(), {
    hint: 'check the URL; the image may have been moved or removed',
  });
}

export class HttpSource implements ImageSource {
  private consumed = false;
  private constructor(
    readonly name: string,
    readonly size: number | undefined,
    private readonly res: Response,
  ) {}

  static async open(url: string, signal: AbortSignal): Promise<HttpSource> {
    const res = await get(url, signal);
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw httpError(url, res);
    }
    const length = res.headers.get('content-length');
    // With a content-encoding the length counts encoded bytes, not the image's.
    const size = length && /^\d+$/.test(length) && !res.headers.get('content-encoding') ? Number(length) : undefined;
    return new HttpSource(url, size, res);
  }

  canRead(): this is RandomAccessSource {
    return false;
  }

  async *stream(signal: AbortSignal): AsyncIterable<Buffer> {
    if (this.consumed) throw new Error(`${this.name}: a download can be read only once`);
    this.consumed = true;
    let got = 0;
    try {
      for await (const chunk of this.res.body as unknown as AsyncIterable<Uint8Array>) {
        got += chunk.byteLength;
        yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      }
    } catch (e) {
      if (signal.aborted) throw new InterruptedError();
      throw new HostError(`${this.name}: the download broke off after ${got} bytes`, { hint: 'try again', cause: e });
    }
    if (this.size !== undefined && got !== this.size) {
      throw new HostError(`${this.name}: the download ended after ${got} of ${this.size} bytes`, { hint: 'try again' });
    }
  }

  async close(): Promise<void> {
    if (!this.consumed) await this.res.body?.cancel().catch(() => {});
  }
}

/** Download a small file (a .bmap) to `dest`; false when the server says it does not exist (404/410). */
export async function downloadSmallFile(url: string, dest: string, signal: AbortSignal): Promise<boolean> {
  const res = await get(url, signal);
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel();
    return false;
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(url, res);
  }
  await writeFile(dest, Buffer.from(await res.arrayBuffer()));
  return true;
}
