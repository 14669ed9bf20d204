// Deterministic gzip. Node's zlib (checked on Node 20, zlib 1.3.1) writes the RFC 1952 header as
// 1f 8b 08 00 | MTIME 00 00 00 00 | XFL 02 (level 9) | OS 03 (Unix): no file name, no timestamp.
// The OS byte is zlib's compile-time OS_CODE (10 on Windows builds), so we pin it to Unix; the
// deflate stream itself depends only on the input, the level and Node's bundled zlib version.
import { gunzipSync, gzipSync, constants } from 'node:zlib';

/** RFC 1952 §2.3.1: ID1 ID2 CM(8 = deflate). */
export const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);
/** RFC 1952 header offsets. */
export const GZIP_FLG_OFFSET = 3;
export const GZIP_MTIME_OFFSET = 4;
export const GZIP_XFL_OFFSET = 8;
export const GZIP_OS_OFFSET = 9;
/** RFC 1952 OS field: 3 = Unix. */
export const GZIP_OS_UNIX = 3;

/** gzip `data` at level 9 with a zero MTIME, no name and OS = Unix: same input → same bytes. */
export function gzipDeterministic(data: Buffer): Buffer {
  const out = gzipSync(data, { level: constants.Z_BEST_COMPRESSION });
  if (!out.subarray(0, 3).equals(GZIP_MAGIC) || out[GZIP_FLG_OFFSET] !== 0 || out.readUInt32LE(GZIP_MTIME_OFFSET) !== 0) {
    // zlib promised a bare header; if that ever changes the output would not be reproducible.
    throw new Error('gzip: zlib wrote an unexpected header (flags or mtime set)');
  }
  out[GZIP_OS_OFFSET] = GZIP_OS_UNIX;
  return out;
}

export function gunzip(data: Buffer): Buffer {
  return gunzipSync(data);
}
