// A pass-through stream that counts and sha256-hashes the bytes on their way (to a file, usually),
// so a writer learns the size and digest of what it wrote without reading it back.
import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';

export interface HashingPassThrough {
  stream: Transform;
  /** Size and hex sha256 of everything that passed; call once, after the pipeline finished. */
  result(): { size: number; sha256: string };
}

/** `onChunk` sees every chunk too (a scanner, say). */
export function hashingPassThrough(onChunk?: (chunk: Buffer) => void): HashingPassThrough {
  const hash = createHash('sha256');
  let size = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      onChunk?.(chunk);
      cb(null, chunk);
    },
  });
  return { stream, result: () => ({ size, sha256: hash.digest('hex') }) };
}
