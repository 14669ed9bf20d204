// Per-arch OCI image layout archives for `ctr -n k8s.io images import` (kubernetes-and-registry.md §5):
// a tar holding `oci-layout`, `index.json` and `blobs/sha256/<hex>`, with one index.json descriptor
// per image naming the full upstream reference in `io.containerd.image.name` (what containerd names
// the image) and `org.opencontainers.image.ref.name`. The descriptor points at the arch's own
// manifest, not at the (sparse) upstream index, so an import needs no `--all-platforms`.
//
// The tar is written here (POSIX ustar, a few dozen lines) so that it is reproducible: entries
// sorted by name, every mtime the build's epoch, uid/gid 0 with no owner names.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { blobPath, type Descriptor, type PulledImage, type PulledPlatform } from './types.ts';
import { USTAR_BLOCK as BLOCK, ustarHeader, ustarPadding as padding } from '../ustar.ts';

/** image-spec image-layout.md: the `oci-layout` file's content. */
export const OCI_LAYOUT_FILE = JSON.stringify({ imageLayoutVersion: '1.0.0' });
export const OCI_INDEX_MEDIA_TYPE = 'application/vnd.oci.image.index.v1+json';
/** containerd's image name annotation (images.AnnotationImageName), read by `ctr images import`. */
export const CONTAINERD_IMAGE_NAME = 'io.containerd.image.name';
/** image-spec annotations.md. */
export const OCI_REF_NAME = 'org.opencontainers.image.ref.name';

/** The platform an archive for `arch` carries of an image, or undefined when the image has none for it. */
export function platformFor(image: PulledImage, arch: string): PulledPlatform | undefined {
  return image.platforms.find((p) => p.os === 'linux' && p.architecture === arch);
}

export interface OciArchiveContent {
  /** index.json's exact bytes. */
  index: Buffer;
  /** Every blob, each once, sorted by digest. */
  blobs: Descriptor[];
  /** The references the archive names, in index.json order. */
  refs: string[];
}

/** What the archive for `arch` holds: images without that arch are left out. */
export function ociArchiveContent(images: readonly PulledImage[], arch: string): OciArchiveContent {
  const chosen = [...images]
    .map((image) => ({ image, platform: platformFor(image, arch) }))
    .filter((x): x is { image: PulledImage; platform: PulledPlatform } => x.platform !== undefined)
    .sort((a, b) => (a.image.ref < b.image.ref ? -1 : a.image.ref > b.image.ref ? 1 : 0));
  const seenRefs = new Set<string>();
  const manifests: object[] = [];
  const blobs = new Map<string, Descriptor>();
  for (const { image, platform: p } of chosen) {
    if (seenRefs.has(image.ref)) continue;
    seenRefs.add(image.ref);
    manifests.push({
      mediaType: p.mediaType,
      digest: p.digest,
      size: p.size,
      annotations: { [CONTAINERD_IMAGE_NAME]: image.ref, [OCI_REF_NAME]: image.ref },
      platform: { architecture: p.architecture, os: p.os, ...(p.variant ? { variant: p.variant } : {}) },
    });
    for (const d of [p, p.config, ...p.layers]) blobs.set(d.digest, { mediaType: d.mediaType, digest: d.digest, size: d.size });
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX_MEDIA_TYPE, manifests }));
  return { index, blobs: [...blobs.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1)), refs: [...seenRefs] };
}

export interface WrittenArchive {
  size: number;
  sha256: string;
}

/** The archive's size in bytes, known from the content alone: what writeOciArchive will write. */
export function ociArchiveSize(content: OciArchiveContent): number {
  const entry = (size: number) => BLOCK + size + padding(size).length;
  const dirs = 2 * BLOCK;
  const blobs = content.blobs.reduce((n, b) => n + entry(b.size), 0);
  return dirs + blobs + entry(content.index.length) + entry(Buffer.byteLength(OCI_LAYOUT_FILE)) + 2 * BLOCK;
}

/**
 * Write the archive for `content` to `dest` (a temp path the caller renames), reading blobs from
 * the store. Returns its size and sha256, computed while writing. Without `dest` the archive is
 * only hashed, nothing is written.
 */
export async function writeOciArchive(content: OciArchiveContent, o: { storeRoot: string; dest?: string; epoch: number; signal?: AbortSignal }): Promise<WrittenArchive> {
  const hash = createHash('sha256');
  let size = 0;
  async function* tar(): AsyncGenerator<Buffer> {
    const emit = (b: Buffer) => {
      hash.update(b);
      size += b.length;
      return b;
    };
    const file = (name: string, data: Buffer) => [emit(ustarHeader(name, { size: data.length, mode: 0o644, mtime: o.epoch, type: 'file' })), emit(data), emit(padding(data.length))];
    // Sorted by name: blobs/, blobs/sha256/, blobs/sha256/<hex>…, index.json, oci-layout.
    yield emit(ustarHeader('blobs/', { size: 0, mode: 0o755, mtime: o.epoch, type: 'dir' }));
    yield emit(ustarHeader('blobs/sha256/', { size: 0, mode: 0o755, mtime: o.epoch, type: 'dir' }));
    for (const b of content.blobs) {
      const path = blobPath(o.storeRoot, b.digest);
      const actual = (await stat(path)).size;
      if (actual !== b.size) throw new Error(`blob store ${path}: ${actual} bytes, the manifest says ${b.size}`);
      yield emit(ustarHeader(`blobs/sha256/${b.digest.slice('sha256:'.length)}`, { size: b.size, mode: 0o644, mtime: o.epoch, type: 'file' }));
      let read = 0;
      if (b.size > 0) {
        for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20, end: b.size - 1 })) {
          read += (chunk as Buffer).length;
          yield emit(chunk as Buffer);
        }
      }
      if (read !== b.size) throw new Error(`blob store ${path}: read ${read} bytes, expected ${b.size}`);
      yield emit(padding(b.size));
    }
    yield* file('index.json', content.index);
    yield* file('oci-layout', Buffer.from(OCI_LAYOUT_FILE));
    // End of archive: two zero blocks.
    yield emit(Buffer.alloc(2 * BLOCK));
  }
  const sink = o.dest ? createWriteStream(o.dest, { mode: 0o644 }) : new Writable({ write: (_chunk, _enc, done) => done() });
  await pipeline(Readable.from(tar()), sink, { signal: o.signal });
  return { size, sha256: hash.digest('hex') };
}
