// Turn what the user typed (a path or an http(s) URL) into an ImageSource, recognising compression by
// its magic bytes (local files) or by the name (URLs), and find the image's .bmap beside it.
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { HostError, InputError } from '../../builders/errors.ts';
import { compressionOfBytes, compressionOfName, DecompressedSource, MAGIC_BYTES, recordedSize } from './compressed.ts';
import { FileSource } from './file.ts';
import { downloadSmallFile, HttpSource, isUrl } from './http.ts';
import type { ImageSource } from './source.ts';

export { isUrl } from './http.ts';

function openError(spec: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new InputError(`${spec}: no such image file`, { hint: 'check the path; images are written to out/<cluster>/' });
  if (code === 'EISDIR') return new InputError(`${spec} is a directory, not an image file`);
  if (code === 'EACCES' || code === 'EPERM') return new HostError(`${spec}: permission denied`, { hint: 'check the file permissions', cause: e });
  return e as Error;
}

export async function openImageSource(spec: string, signal: AbortSignal): Promise<ImageSource> {
  if (isUrl(spec)) {
    const http = await HttpSource.open(spec, signal);
    const format = compressionOfName(new URL(spec).pathname);
    return format ? new DecompressedSource(http, format, undefined) : http;
  }
  let file: FileSource;
  try {
    file = await FileSource.open(spec);
  } catch (e) {
    throw openError(spec, e);
  }
  try {
    const head = Buffer.alloc(MAGIC_BYTES);
    const n = await file.read(head, MAGIC_BYTES, 0);
    const format = compressionOfBytes(head.subarray(0, n));
    if (!format) return file;
    return new DecompressedSource(file, format, await recordedSize(format, spec, signal));
  } catch (e) {
    await file.close();
    throw e;
  }
}

/** Suffixes a compressed image carries after its .img name. */
const COMPRESSION_SUFFIXES = ['.zst', '.zstd', '.xz', '.bz2', '.gz'];

/**
 * Where an image's bmap may be, in bmaptool's order: IMAGE.bmap, then without the compression suffix,
 * then without the image suffix too (disk.img.xz → disk.img.xz.bmap, disk.img.bmap, disk.bmap).
 */
export function bmapCandidates(spec: string): string[] {
  const base = isUrl(spec) ? spec.replace(/[?#].*$/, '') : spec;
  const out = [`${base}.bmap`];
  let stem = base;
  const comp = COMPRESSION_SUFFIXES.find((s) => stem.toLowerCase().endsWith(s));
  if (comp) {
    stem = stem.slice(0, -comp.length);
    out.push(`${stem}.bmap`);
  }
  const dot = stem.lastIndexOf('.');
  if (dot > stem.lastIndexOf('/') + 1) out.push(`${stem.slice(0, dot)}.bmap`);
  return [...new Set(out)];
}

const exists = (p: string) => access(p).then(() => true, () => false);

/**
 * A local path to the bmap for `spec`: `explicit` if given (a path or URL; it must exist), else the
 * first candidate found beside the image. A remote bmap is downloaded into `tmpDir()`.
 */
export async function locateBmap(
  spec: string,
  opts: { explicit?: string; tmpDir: () => Promise<string>; signal: AbortSignal },
): Promise<string | undefined> {
  const fetchTo = async (url: string) => {
    const dest = join(await opts.tmpDir(), 'image.bmap');
    return (await downloadSmallFile(url, dest, opts.signal)) ? dest : undefined;
  };
  if (opts.explicit !== undefined) {
    const found = isUrl(opts.explicit) ? await fetchTo(opts.explicit) : (await exists(opts.explicit)) ? opts.explicit : undefined;
    if (!found) throw new InputError(`${opts.explicit}: no such bmap file`, { hint: 'check the --bmap path, or leave --bmap out to look beside the image' });
    return found;
  }
  for (const candidate of bmapCandidates(spec)) {
    const found = isUrl(candidate) ? await fetchTo(candidate) : (await exists(candidate)) ? candidate : undefined;
    if (found) return found;
  }
  return undefined;
}
