// A btrfs filesystem (Flatcar's OEM partition) laid out directly, byte for byte, from a list of
// files. Why not `mkfs.btrfs --rootdir`: Debian 12's btrfs-progs 6.2 takes inode numbers from the
// host's st_ino, orders directory entries and data by readdir(), stamps host ctimes and the current
// time, and draws random device, chunk-tree and subvolume UUIDs; newer releases (6.10+, nftw) still
// depend on host inode numbers and readdir order. So two builds from fresh temp dirs never match, and
// patching that afterwards means rewriting keys, backrefs and data placement. Writing the trees here
// is smaller and exact: the same inputs give the same bytes, checked with `btrfs check`.
//
// The layout is what `mkfs.btrfs --mixed -m single -d single` makes (Flatcar's disk_util recipe,
// base-images.md §3): one device; a 4 MiB SYSTEM chunk at 1 MiB holding the chunk tree; one mixed
// DATA|METADATA chunk after it holding file data, then every other tree; the rest unallocated for the
// kernel to use. Features as mkfs 6.2 sets them: mixed-bg, extref, skinny-metadata, no-holes,
// free-space-tree.
import { InputError } from '../builders/errors.ts';
import {
  BLOCK_GROUP_DATA, BLOCK_GROUP_ITEM_KEY, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM, blockGroupItem, CHUNK_ITEM_KEY, CHUNK_TREE_OBJECTID,
  chunkItem, CSUM_TREE_OBJECTID, DATA_RELOC_TREE_OBJECTID, dataExtent, DEV_EXTENT_KEY, DEV_ITEM_KEY, DEV_ITEMS_OBJECTID, DEV_TREE_OBJECTID,
  devExtent, devItem, DIR_ITEM_KEY, dirItem, DISK_KEY_SIZE, EXTENT_ITEM_KEY, EXTENT_TREE_OBJECTID, Fields, FIRST_CHUNK_TREE_OBJECTID, FIRST_FREE_OBJECTID,
  FREE_SPACE_EXTENT_KEY, FREE_SPACE_INFO_KEY, FREE_SPACE_TREE_OBJECTID, freeSpaceInfo, FS_TREE_OBJECTID, FT_DIR, INODE_ITEM_KEY, INODE_REF_KEY,
  inodeItem, inodeRef, type Item, key, LABEL_SIZE, MAX_EXTENT_SIZE, METADATA_ITEM_KEY, metadataExtent, nameHash, NODESIZE, ROOT_ITEM_KEY,
  ROOT_TREE_DIR_OBJECTID, ROOT_TREE_OBJECTID, rootItem, S_IFDIR, SECTORSIZE, STRIPE_LEN, SUPER_INFO_SIZE, SUPER_OFFSETS, superBlock, U64_MAX,
  UUID_KEY_SUBVOL, UUID_TREE_OBJECTID,
} from './btrfs-format.ts';
import { buildNamespace, csumItems, fsTreeItems, GENERATION, type BtrfsFile, type Inode } from './btrfs-files.ts';
import { buildTree, sortItems, treeShape, type TreeBlock } from './btrfs-tree.ts';
import { sourceDateEpoch } from './cpio.ts';
import { derivedUuid, uuidToBytes } from './guid.ts';

export type { BtrfsFile } from './btrfs-files.ts';

const MiB = 1024 * 1024;
/** The kernel and mkfs never allocate device space below 1 MiB (the primary superblock lives at 64 KiB). */
const SYSTEM_CHUNK_START = 1 * MiB;
/** mkfs's BTRFS_MKFS_SYSTEM_GROUP_SIZE. */
const SYSTEM_CHUNK_SIZE = 4 * MiB;
const MIXED_CHUNK_START = SYSTEM_CHUNK_START + SYSTEM_CHUNK_SIZE;
/** The mixed chunk is at least mkfs's first mixed chunk (8 MiB) and keeps 1 MiB free for the first boot's writes. */
const MIN_MIXED_CHUNK = 8 * MiB;
const MIXED_CHUNK_SLACK = 1 * MiB;
/** Smallest filesystem accepted: the two chunks. */
export const BTRFS_MIN_SIZE = MIXED_CHUNK_START + MIN_MIXED_CHUNK;

export interface BtrfsOptions {
  label: string;
  /** Filesystem (partition) size in bytes. */
  sizeBytes: number;
  files: readonly BtrfsFile[];
  /** Filesystem UUID; derive it from cluster and node names (derivedUuid) for reproducible builds. */
  fsUuid: string;
  /** Device UUID; default derived from fsUuid. */
  deviceUuid?: string;
  /** Every inode and subvolume time, seconds since 1970: SOURCE_DATE_EPOCH by default. */
  epoch?: number;
  /** Set the compression property on the top directory, as Flatcar's OEM has (`compression zlib`). */
  compression?: 'zlib' | 'zstd' | 'lzo';
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

type Range = [number, number];

/** Hands out space in the mixed chunk, stepping over the stripes that hold superblock copies. */
class Allocator {
  cursor: number;
  constructor(
    start: number,
    readonly excluded: Range[],
  ) {
    this.cursor = start;
  }
  take(bytes: number): number {
    for (;;) {
      const at = this.cursor;
      const hit = this.excluded.find(([s, e]) => at < e && at + bytes > s);
      if (!hit) {
        this.cursor = at + bytes;
        return at;
      }
      this.cursor = hit[1];
    }
  }
  /** Up to `bytes` at the cursor, stopping short of the next excluded stripe (data extents are split around it). */
  takeRun(bytes: number): { at: number; bytes: number } {
    for (;;) {
      const at = this.cursor;
      const inside = this.excluded.find(([s, e]) => at >= s && at < e);
      if (inside) {
        this.cursor = inside[1];
        continue;
      }
      const next = this.excluded.filter(([s]) => s > at).reduce((m, [s]) => Math.min(m, s), Infinity);
      const got = Math.min(bytes, next - at);
      this.cursor = at + got;
      return { at, bytes: got };
    }
  }
}

/** Superblock copies inside the chunk span, widened to their stripe (what the kernel excludes from allocation). */
function superStripes(chunkStart: number, deviceSize: number): Range[] {
  return SUPER_OFFSETS.filter((o) => o >= chunkStart && o + SUPER_INFO_SIZE <= deviceSize).map((o): Range => {
    const s = chunkStart + Math.floor((o - chunkStart) / STRIPE_LEN) * STRIPE_LEN;
    return [s, s + STRIPE_LEN];
  });
}

/** [start, end) minus the given ranges. */
function freeRanges(start: number, end: number, used: Range[]): Range[] {
  const sorted = [...used].sort((a, b) => a[0] - b[0]);
  const out: Range[] = [];
  let at = start;
  for (const [s, e] of sorted) {
    if (e <= at || s >= end) continue;
    if (s > at) out.push([at, s]);
    at = Math.max(at, e);
  }
  if (at < end) out.push([at, end]);
  return out;
}

const TREES = ['root', 'extent', 'dev', 'fs', 'csum', 'uuid', 'freeSpace', 'dataReloc'] as const;
type TreeName = (typeof TREES)[number] | 'chunk';
const OWNER: Record<TreeName, bigint> = {
  root: ROOT_TREE_OBJECTID,
  extent: EXTENT_TREE_OBJECTID,
  chunk: CHUNK_TREE_OBJECTID,
  dev: DEV_TREE_OBJECTID,
  fs: FS_TREE_OBJECTID,
  csum: CSUM_TREE_OBJECTID,
  uuid: UUID_TREE_OBJECTID,
  freeSpace: FREE_SPACE_TREE_OBJECTID,
  dataReloc: DATA_RELOC_TREE_OBJECTID,
};

interface Ids {
  fsid: Buffer;
  devUuid: Buffer;
  chunkTreeUuid: Buffer;
  fsTreeUuid: Buffer;
}

interface Plan {
  shapes: Record<TreeName, number[]>;
}

interface Layout {
  addresses: Record<TreeName, number[]>;
  items: Record<TreeName, Item[]>;
  systemChunk: Range;
  mixedChunk: Range;
  systemUsed: number;
  mixedUsed: number;
}

/** Items of every tree, given where each tree's blocks go (the extent and free-space trees describe them). */
function layoutFor(plan: Plan, inodes: Inode[], dataEnd: number, dataBytes: number, opts: Required<Pick<BtrfsOptions, 'label' | 'sizeBytes'>> & { epoch: number; compression?: string }, ids: Ids): Layout {
  const excluded = superStripes(MIXED_CHUNK_START, opts.sizeBytes);
  const alloc = new Allocator(dataEnd, excluded);
  const addresses = {} as Record<TreeName, number[]>;
  addresses.chunk = Array.from({ length: plan.shapes.chunk.reduce((a, b) => a + b, 0) }, (_, i) => SYSTEM_CHUNK_START + i * NODESIZE);
  for (const t of TREES) addresses[t] = Array.from({ length: plan.shapes[t].reduce((a, b) => a + b, 0) }, () => alloc.take(NODESIZE));
  const metaEnd = alloc.cursor;
  const mixedLength = Math.min(roundUp(Math.max(MIN_MIXED_CHUNK, metaEnd - MIXED_CHUNK_START + MIXED_CHUNK_SLACK), MiB), opts.sizeBytes - MIXED_CHUNK_START);
  if (metaEnd > MIXED_CHUNK_START + mixedLength) {
    throw new InputError(`btrfs: the files and metadata need ${metaEnd} bytes, more than the ${opts.sizeBytes}-byte filesystem holds`, {
      hint: 'put fewer or smaller files on this partition, or give it more space',
    });
  }
  const systemChunk: Range = [SYSTEM_CHUNK_START, SYSTEM_CHUNK_START + SYSTEM_CHUNK_SIZE];
  const mixedChunk: Range = [MIXED_CHUNK_START, MIXED_CHUNK_START + mixedLength];
  const metaBlocks = TREES.reduce((n, t) => n + addresses[t].length, 0);
  const systemUsed = addresses.chunk.length * NODESIZE;
  const mixedUsed = dataBytes + metaBlocks * NODESIZE;
  const mixedType = BLOCK_GROUP_DATA | BLOCK_GROUP_METADATA;

  const items = {} as Record<TreeName, Item[]>;
  const deviceBytesUsed = SYSTEM_CHUNK_SIZE + mixedLength;
  items.chunk = sortItems([
    { key: key(DEV_ITEMS_OBJECTID, DEV_ITEM_KEY, 1), data: devItem({ totalBytes: opts.sizeBytes, bytesUsed: deviceBytesUsed, uuid: ids.devUuid, fsid: ids.fsid }) },
    ...[systemChunk, mixedChunk].map(([s, e], i) => ({
      key: key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, s),
      data: chunkItem({ logical: s, physical: s, length: e - s, type: i === 0 ? BLOCK_GROUP_SYSTEM : mixedType, devUuid: ids.devUuid }),
    })),
  ]);
  items.dev = sortItems([systemChunk, mixedChunk].map(([s, e]) => ({ key: key(1, DEV_EXTENT_KEY, s), data: devExtent(s, e - s, ids.chunkTreeUuid) })));
  items.fs = fsTreeItems(inodes, opts.epoch, opts.compression);
  items.csum = csumItems(inodes);
  items.uuid = [{ key: key(ids.fsTreeUuid.readBigUInt64LE(0), UUID_KEY_SUBVOL, ids.fsTreeUuid.readBigUInt64LE(8)), data: new Fields(8).u64(FS_TREE_OBJECTID).buf }];
  items.dataReloc = sortItems([
    { key: key(FIRST_FREE_OBJECTID, INODE_ITEM_KEY, 0), data: inodeItem({ generation: GENERATION, size: 0, nbytes: 0, nlink: 1, uid: 0, gid: 0, mode: S_IFDIR | 0o755, time: opts.epoch }) },
    { key: key(FIRST_FREE_OBJECTID, INODE_REF_KEY, FIRST_FREE_OBJECTID), data: inodeRef(0, Buffer.from('..')) },
  ]);

  // Extent tree: block groups, every tree block (skinny METADATA_ITEMs) and every data extent.
  const extent: Item[] = [
    { key: key(systemChunk[0], BLOCK_GROUP_ITEM_KEY, SYSTEM_CHUNK_SIZE), data: blockGroupItem(systemUsed, BLOCK_GROUP_SYSTEM) },
    { key: key(mixedChunk[0], BLOCK_GROUP_ITEM_KEY, mixedLength), data: blockGroupItem(mixedUsed, mixedType) },
  ];
  const used: Range[] = [];
  for (const t of ['chunk', ...TREES] as const) {
    let i = 0;
    plan.shapes[t].forEach((count, level) => {
      for (let j = 0; j < count; j++, i++) {
        const at = addresses[t][i]!;
        extent.push({ key: key(at, METADATA_ITEM_KEY, level), data: metadataExtent(GENERATION, OWNER[t]) });
        used.push([at, at + NODESIZE]);
      }
    });
  }
  for (const n of inodes) {
    for (const e of n.extents) {
      extent.push({ key: key(e.bytenr, EXTENT_ITEM_KEY, e.bytes), data: dataExtent(GENERATION, FS_TREE_OBJECTID, n.ino, e.fileOffset) });
      used.push([e.bytenr, e.bytenr + e.bytes]);
    }
  }
  items.extent = sortItems(extent);

  // Free-space tree: per block group, the space neither used nor holding a superblock copy.
  const freeSpace: Item[] = [];
  for (const [s, e] of [systemChunk, mixedChunk]) {
    const free = freeRanges(s, e, [...used, ...superStripes(s, opts.sizeBytes)]);
    freeSpace.push({ key: key(s, FREE_SPACE_INFO_KEY, e - s), data: freeSpaceInfo(free.length) });
    for (const [fs, fe] of free) freeSpace.push({ key: key(fs, FREE_SPACE_EXTENT_KEY, fe - fs), data: Buffer.alloc(0) });
  }
  items.freeSpace = sortItems(freeSpace);

  // Root tree: where every other tree's root is, plus the "default" subvolume link.
  const rootOf = (t: TreeName) => ({ bytenr: addresses[t][addresses[t].length - 1]!, level: plan.shapes[t].length - 1, bytesUsed: addresses[t].length * NODESIZE });
  const treeRoot = (t: TreeName, extra: { rootDirid?: bigint; uuid?: Buffer; time?: number } = {}) =>
    rootItem({ generation: GENERATION, rootDirid: extra.rootDirid ?? 0n, ...rootOf(t), uuid: extra.uuid, time: extra.time });
  const defaultName = Buffer.from('default');
  items.root = sortItems([
    { key: key(EXTENT_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('extent') },
    { key: key(DEV_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('dev') },
    { key: key(FS_TREE_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), data: inodeRef(0, defaultName) },
    { key: key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('fs', { rootDirid: FIRST_FREE_OBJECTID, uuid: ids.fsTreeUuid, time: opts.epoch }) },
    {
      key: key(ROOT_TREE_DIR_OBJECTID, INODE_ITEM_KEY, 0),
      data: inodeItem({ generation: GENERATION, size: 0, nbytes: NODESIZE, nlink: 1, uid: 0, gid: 0, mode: S_IFDIR | 0o755, time: opts.epoch }),
    },
    { key: key(ROOT_TREE_DIR_OBJECTID, INODE_REF_KEY, ROOT_TREE_DIR_OBJECTID), data: inodeRef(0, Buffer.from('..')) },
    { key: key(ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, nameHash(defaultName)), data: dirItem(key(FS_TREE_OBJECTID, ROOT_ITEM_KEY, U64_MAX), FT_DIR, defaultName, GENERATION) },
    { key: key(CSUM_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('csum') },
    { key: key(UUID_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('uuid') },
    { key: key(FREE_SPACE_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('freeSpace') },
    { key: key(DATA_RELOC_TREE_OBJECTID, ROOT_ITEM_KEY, 0), data: treeRoot('dataReloc', { rootDirid: FIRST_FREE_OBJECTID }) },
  ]);
  return { addresses, items, systemChunk, mixedChunk, systemUsed, mixedUsed };
}

export interface BtrfsImage {
  size: number;
  /** Non-overlapping writes that make up the image; everything else is zero. */
  writes: Array<{ offset: number; data: Buffer }>;
  fsUuid: string;
}

/** The filesystem as a list of writes, computed in memory. */
export function layoutBtrfs(opts: BtrfsOptions): BtrfsImage {
  const size = Math.floor(opts.sizeBytes / SECTORSIZE) * SECTORSIZE;
  if (!Number.isSafeInteger(size) || size < BTRFS_MIN_SIZE) throw new InputError(`btrfs: a filesystem needs at least ${BTRFS_MIN_SIZE} bytes, got ${opts.sizeBytes}`);
  if (Buffer.byteLength(opts.label) >= LABEL_SIZE || opts.label.includes('\n')) throw new InputError(`btrfs: bad label ${JSON.stringify(opts.label)}`);
  const epoch = opts.epoch ?? sourceDateEpoch();
  const fsid = uuidToBytes(opts.fsUuid);
  const ids: Ids = {
    fsid,
    devUuid: uuidToBytes(opts.deviceUuid ?? derivedUuid('btrfs-device', opts.fsUuid)),
    chunkTreeUuid: uuidToBytes(derivedUuid('btrfs-chunk-tree', opts.fsUuid)),
    fsTreeUuid: uuidToBytes(derivedUuid('btrfs-fs-tree', opts.fsUuid)),
  };
  const inodes = buildNamespace(opts.files);

  // File data first, at the start of the mixed chunk, in inode order.
  const dataAlloc = new Allocator(MIXED_CHUNK_START, superStripes(MIXED_CHUNK_START, size));
  let dataBytes = 0;
  for (const n of inodes) {
    const data = n.file?.data;
    if (!data) continue;
    for (let off = 0; off < data.length; ) {
      const { at, bytes } = dataAlloc.takeRun(roundUp(Math.min(MAX_EXTENT_SIZE, data.length - off), SECTORSIZE));
      n.extents.push({ fileOffset: off, bytenr: at, bytes });
      dataBytes += bytes;
      off += bytes;
    }
  }
  if (dataAlloc.cursor > size) throw new InputError(`btrfs: ${dataBytes} bytes of files do not fit a ${size}-byte filesystem`, { hint: 'give the partition more space or put less on it' });

  // Tree sizes depend on the extent tree, which lists every tree block: iterate to the fixed point.
  const layoutOpts = { label: opts.label, sizeBytes: size, epoch, compression: opts.compression };
  let plan: Plan = { shapes: Object.fromEntries([...TREES, 'chunk'].map((t) => [t, [1]])) as Record<TreeName, number[]> };
  let layout: Layout | undefined;
  for (let round = 0; round < 32 && !layout; round++) {
    const attempt = layoutFor(plan, inodes, dataAlloc.cursor, dataBytes, layoutOpts, ids);
    const shapes = Object.fromEntries(Object.entries(attempt.items).map(([t, items]) => [t, treeShape(items)])) as Record<TreeName, number[]>;
    if (Object.keys(shapes).every((t) => shapes[t as TreeName].join() === plan.shapes[t as TreeName].join())) layout = attempt;
    else plan = { shapes };
  }
  if (!layout) throw new Error('btrfs layout did not converge');

  const header = (t: TreeName) => ({ fsid, chunkTreeUuid: ids.chunkTreeUuid, generation: GENERATION, owner: OWNER[t] });
  const built = Object.fromEntries((['chunk', ...TREES] as const).map((t) => [t, buildTree(layout!.items[t], layout!.addresses[t], header(t))])) as Record<
    TreeName,
    ReturnType<typeof buildTree>
  >;
  const sysChunkKey = new Fields(DISK_KEY_SIZE).diskKey(key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, layout.systemChunk[0])).buf;
  const sysChunk = layout.items.chunk.find((i) => i.key.type === CHUNK_ITEM_KEY && i.key.offset === BigInt(layout!.systemChunk[0]))!.data;
  const superFields = {
    fsid,
    generation: GENERATION,
    root: built.root.root,
    chunkRoot: built.chunk.root,
    extentRoot: built.extent.root,
    fsRoot: built.fs.root,
    devRoot: built.dev.root,
    csumRoot: built.csum.root,
    totalBytes: size,
    bytesUsed: layout.systemUsed + layout.mixedUsed,
    label: opts.label,
    device: devItem({ totalBytes: size, bytesUsed: SYSTEM_CHUNK_SIZE + (layout.mixedChunk[1] - layout.mixedChunk[0]), uuid: ids.devUuid, fsid }),
    sysChunkArray: Buffer.concat([sysChunkKey, sysChunk]),
  };
  const writes: BtrfsImage['writes'] = SUPER_OFFSETS.filter((o) => o + SUPER_INFO_SIZE <= size).map((o) => ({ offset: o, data: superBlock(superFields, o) }));
  const blocks: TreeBlock[] = Object.values(built).flatMap((t) => t.blocks);
  for (const b of blocks) writes.push({ offset: b.bytenr, data: b.data });
  for (const n of inodes) for (const e of n.extents) writes.push({ offset: e.bytenr, data: n.file!.data.subarray(e.fileOffset, e.fileOffset + Math.min(e.bytes, n.file!.data.length - e.fileOffset)) });
  writes.sort((a, b) => a.offset - b.offset);
  return { size, writes, fsUuid: opts.fsUuid.toLowerCase() };
}

