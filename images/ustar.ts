// POSIX ustar headers (IEEE Std 1003.1, pax "ustar Interchange Format") for the archives bramble
// writes itself so that they are reproducible: the per-arch OCI archives and the release tars. Owner
// 0:0 with no user or group names; the caller chooses mode and mtime.

/** ustar block size. */
export const USTAR_BLOCK = 512;
/** The largest size an 11-digit octal size field holds (8 GiB - 1). */
const USTAR_SIZE_MAX = 0o77777777777;

/** Field offsets and widths. */
const FIELD = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  typeflag: [156, 1],
  magic: [257, 6],
  version: [263, 2],
  prefix: [345, 155],
} as const;

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

/** Split a path over ustar's prefix (155) and name (100) fields at a `/`. */
function splitPath(path: string): { prefix: string; name: string } {
  if (Buffer.byteLength(path) <= 100) return { prefix: '', name: path };
  for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return { prefix, name };
  }
  throw new Error(`${path}: too long for a ustar archive`);
}

/** One header block for `path` (a directory's ends with `/`). */
export function ustarHeader(path: string, o: { size: number; mode: number; mtime: number; type: 'file' | 'dir' }): Buffer {
  if (o.size > USTAR_SIZE_MAX) throw new Error(`${path}: larger than a ustar member can be (8 GiB)`);
  const h = Buffer.alloc(USTAR_BLOCK);
  const put = (field: keyof typeof FIELD, text: string) => h.write(text, FIELD[field][0], FIELD[field][1], 'utf8');
  const { prefix, name } = splitPath(path);
  put('name', name);
  put('mode', octal(o.mode, 8));
  put('uid', octal(0, 8));
  put('gid', octal(0, 8));
  put('size', octal(o.size, 12));
  put('mtime', octal(o.mtime, 12));
  put('typeflag', o.type === 'dir' ? '5' : '0');
  put('magic', 'ustar\0');
  put('version', '00');
  put('prefix', prefix);
  // The checksum is the byte sum of the header with the checksum field read as eight spaces.
  h.fill(' ', FIELD.chksum[0], FIELD.chksum[0] + FIELD.chksum[1]);
  let sum = 0;
  for (const b of h) sum += b;
  put('chksum', sum.toString(8).padStart(6, '0') + '\0 ');
  return h;
}

/** The zero bytes that pad a member of `size` bytes to a whole block. */
export function ustarPadding(size: number): Buffer {
  return Buffer.alloc((USTAR_BLOCK - (size % USTAR_BLOCK)) % USTAR_BLOCK);
}
