// A btrfs filesystem image (Flatcar's OEM partition) written directly, byte for byte, from a list of
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
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import {
  BLOCK_GROUP_DATA, BLOCK_GROUP_ITEM_KEY, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM, blockGroupItem, CHUNK_ITEM_KEY, CHUNK_TREE_OBJECTID,
  chunkItem, CSUM_SIZE, CSUM_TREE_OBJECTID, DATA_RELOC_TREE_OBJECTID, dataExtent, DEV_EXTENT_KEY, DEV_ITEM_KEY, DEV_ITEMS_OBJECTID,
  DEV_TREE_OBJECTID, devExtent, devItem, DIR_INDEX_KEY, DIR_ITEM_KEY, dirItem, EXTENT_CSUM_KEY, EXTENT_CSUM_OBJECTID, EXTENT_DATA_KEY,
  EXTENT_ITEM_KEY, EXTENT_TREE_OBJECTID, Fields, fileExtentRegular, FIRST_CHUNK_TREE_OBJECTID, FIRST_FREE_OBJECTID, FREE_SPACE_EXTENT_KEY,
  FREE_SPACE_INFO_KEY, FREE_SPACE_TREE_OBJECTID, freeSpaceInfo, FS_TREE_OBJECTID, FT_DIR, FT_REG_FILE, FT_XATTR, INODE_ITEM_KEY,
  INODE_REF_KEY, inodeItem, inodeRef, type Item, key, type Key, LABEL_SIZE, MAX_EXTENT_SIZE, METADATA_ITEM_KEY, metadataExtent, nameHash,
  NODESIZE, ROOT_ITEM_KEY, ROOT_TREE_DIR_OBJECTID, ROOT_TREE_OBJECTID, rootItem, S_IFDIR, S_IFREG, SECTORSIZE, STRIPE_LEN, SUPER_INFO_SIZE,
  SUPER_OFFSETS, superBlock, U64_MAX, UUID_KEY_SUBVOL, UUID_TREE_OBJECTID, XATTR_ITEM_KEY,
} from './btrfs-format.ts';
import { buildTree, sortItems, treeShape, type TreeBlock } from './btrfs-tree.ts';
import { crc32c } from './crc32.ts';
import { derivedUuid, uuidToBytes } from './guid.ts';
import { extractPartition, type PartitionSpan } from './partition.ts';
import { sourceDateEpoch } from './cpio.ts';

const MiB = 1024 * 1024;
/** Every tree block and item carries this transaction id: the filesystem is written in one "transaction". */
const GENERATION = 1n;
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
/** Checksums per EXTENT_CSUM item: the kernel's MAX_CSUM_ITEMS for 4 KiB leaves, (3995 - 2*25) / 4 - 1. */
const CSUMS_PER_ITEM = 985;
/** Longest file name (BTRFS_NAME_LEN). */
const NAME_MAX = 255;
/** The xattr `btrfs property set <dir> compression <algo>` stores. */
const COMPRESSION_XATTR = 'btrfs.compression';

export interface BtrfsFile {
  /** Absolute path; parent directories are created (0755, root). */
  path: string;
  data: Buffer | string;
  /** Permission bits; default 0644. */
  mode?: number;
  uid?: number;
  gid?: number;
}

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

interface Inode {
  ino: bigint;
  name: Buffer;
  parent?: Inode;
  /** DIR_INDEX in the parent (2, 3, ... in name order; 0 and 1 are reserved). */
  index: number;
  children?: Inode[];
  file?: { data: Buffer; mode: number; uid: number; gid: number };
  extents: Array<{ fileOffset: number; bytenr: number; bytes: number }>;
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;
const cmpBytes = (a: Buffer, b: Buffer) => Buffer.compare(a, b);

/** Directory tree with inode numbers in depth-first, name-sorted order from 257. */
function buildNamespace(files: readonly BtrfsFile[]): Inode[] {
  const root: Inode = { ino: FIRST_FREE_OBJECTID, name: Buffer.from('..'), index: 0, children: [], extents: [] };
  const dirs = new Map<string, Inode>([['/', root]]);
  const taken = new Set<string>();
  const dirFor = (path: string): Inode => {
    const hit = dirs.get(path);
    if (hit) return hit;
    if (taken.has(path)) throw new InputError(`btrfs: ${path} is both a file and a directory`);
    const parent = dirFor(posix.dirname(path));
    const dir: Inode = { ino: 0n, name: Buffer.from(posix.basename(path)), parent, index: 0, children: [], extents: [] };
    parent.children!.push(dir);
    dirs.set(path, dir);
    return dir;
  };
  for (const f of files) {
    const path = posix.normalize(`/${f.path}`);
    const parts = path.split('/').filter(Boolean);
    const given = f.path.split('/');
    if (parts.length === 0 || path.endsWith('/') || given.includes('..') || parts.some((p) => Buffer.byteLength(p) > NAME_MAX || p.includes('\0'))) {
      throw new InputError(`btrfs: bad file path ${JSON.stringify(f.path)}`);
    }
    if (taken.has(path) || dirs.has(path)) throw new InputError(`btrfs: ${path} given twice or also used as a directory`);
    taken.add(path);
    const parent = dirFor(posix.dirname(path));
    const data = typeof f.data === 'string' ? Buffer.from(f.data) : f.data;
    parent.children!.push({
      ino: 0n,
      name: Buffer.from(parts[parts.length - 1]!),
      parent,
      index: 0,
      file: { data, mode: (f.mode ?? 0o644) & 0o7777, uid: f.uid ?? 0, gid: f.gid ?? 0 },
      extents: [],
    });
  }
  const order: Inode[] = [];
  let next = FIRST_FREE_OBJECTID;
  const visit = (node: Inode) => {
    node.ino = next++;
    order.push(node);
    if (!node.children) return;
    node.children.sort((a, b) => cmpBytes(a.name, b.name));
    node.children.forEach((c, i) => {
      c.index = i + 2;
      visit(c);
    });
  };
  visit(root);
  return order;
}

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

/** The FS tree: inodes, names and file extents. */
function fsTreeItems(inodes: Inode[], epoch: number, compression: string | undefined): Item[] {
  const items: Item[] = [];
  for (const n of inodes) {
    const isDir = !!n.children;
    const size = isDir ? n.children!.reduce((s, c) => s + 2 * c.name.length, 0) : n.file!.data.length;
    items.push({
      key: key(n.ino, INODE_ITEM_KEY, 0),
      data: inodeItem({
        generation: GENERATION,
        size,
        // mkfs gives the top directory a node's worth of nbytes; other directories have none.
        nbytes: isDir ? (n.parent ? 0 : NODESIZE) : n.extents.reduce((s, e) => s + e.bytes, 0),
        nlink: 1,
        uid: n.file?.uid ?? 0,
        gid: n.file?.gid ?? 0,
        mode: isDir ? S_IFDIR | 0o755 : S_IFREG | n.file!.mode,
        time: epoch,
      }),
    });
    items.push({ key: key(n.ino, INODE_REF_KEY, n.parent?.ino ?? n.ino), data: inodeRef(n.index, n.name) });
    if (!n.parent && compression) {
      const name = Buffer.from(COMPRESSION_XATTR);
      items.push({ key: key(n.ino, XATTR_ITEM_KEY, nameHash(name)), data: dirItem(key(0, 0, 0), FT_XATTR, name, GENERATION, Buffer.from(compression)) });
    }
    if (isDir) {
      const byHash = new Map<bigint, Buffer[]>();
      for (const c of n.children!) {
        const entry = dirItem(key(c.ino, INODE_ITEM_KEY, 0), c.children ? FT_DIR : FT_REG_FILE, c.name, GENERATION);
        const h = nameHash(c.name);
        byHash.set(h, [...(byHash.get(h) ?? []), entry]);
        items.push({ key: key(n.ino, DIR_INDEX_KEY, c.index), data: entry });
      }
      // Names whose hashes collide share one DIR_ITEM.
      for (const [h, entries] of byHash) items.push({ key: key(n.ino, DIR_ITEM_KEY, h), data: Buffer.concat(entries) });
    }
    for (const e of n.extents) items.push({ key: key(n.ino, EXTENT_DATA_KEY, e.fileOffset), data: fileExtentRegular(GENERATION, e.bytenr, e.bytes) });
  }
  return sortItems(items);
}

/** EXTENT_CSUM items: one CRC-32C per data sector, runs of adjacent extents merged, split to the item limit. */
function csumItems(inodes: Inode[]): Item[] {
  const extents: Array<{ at: number; csums: number[] }> = [];
  for (const n of inodes) {
    for (const e of n.extents) {
      const data = n.file!.data;
      const csums: number[] = [];
      for (let off = 0; off < e.bytes; off += SECTORSIZE) {
        const start = e.fileOffset + off;
        let sector = data.subarray(start, start + SECTORSIZE);
        // The last sector of a file is checksummed as stored: padded with zeros.
        if (sector.length < SECTORSIZE) sector = Buffer.concat([sector, Buffer.alloc(SECTORSIZE - sector.length)]);
        csums.push(crc32c(sector));
      }
      extents.push({ at: e.bytenr, csums });
    }
  }
  extents.sort((a, b) => a.at - b.at);
  const items: Item[] = [];
  let runStart = 0;
  let run: number[] = [];
  const flush = () => {
    for (let i = 0; i < run.length; i += CSUMS_PER_ITEM) {
      const part = run.slice(i, i + CSUMS_PER_ITEM);
      const w = new Fields(part.length * CSUM_SIZE);
      for (const c of part) w.u32(c);
      items.push({ key: key(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, runStart + i * SECTORSIZE), data: w.buf });
    }
    run = [];
  };
  for (const e of extents) {
    if (run.length > 0 && runStart + run.length * SECTORSIZE !== e.at) flush();
    if (run.length === 0) runStart = e.at;
    run.push(...e.csums);
  }
  flush();
  return items;
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
  const sysChunkKey = new Fields(17).diskKey(key(FIRST_CHUNK_TREE_OBJECTID, CHUNK_ITEM_KEY, layout.systemChunk[0])).buf;
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

/**
 * Build the filesystem into a new sparse file under `workDir` (a temp dir of the run) and return
 * its path. Copy it into a partition with writePartition (images/partition.ts).
 */
export async function buildBtrfs(opts: BtrfsOptions & { workDir?: string; signal?: AbortSignal }): Promise<string> {
  const image = layoutBtrfs(opts);
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-'));
  const path = join(dir, `${opts.label || 'btrfs'}.img`);
  const fh = await open(path, 'w', 0o600);
  try {
    for (const w of image.writes) {
      let done = 0;
      while (done < w.data.length) done += (await fh.write(w.data, done, w.data.length - done, w.offset + done)).bytesWritten;
    }
    await fh.truncate(image.size);
  } finally {
    await fh.close();
  }
  return path;
}

/** Read one file of a btrfs inside an image (btrfs restore, from the partition copied to a temp file). */
export async function readBtrfsFile(image: string, partition: PartitionSpan, path: string, opts: { signal?: AbortSignal; workDir?: string } = {}): Promise<Buffer> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-read-'));
  try {
    const part = join(dir, 'partition.img');
    await extractPartition(image, partition, part, opts);
    const out = join(dir, 'restored');
    await mkdir(out);
    await run('btrfs', ['restore', part, out], { signal: opts.signal });
    const rel = posix.normalize(`/${path}`).slice(1);
    if (!rel || rel.split('/').includes('..')) throw new InputError(`bad path ${JSON.stringify(path)}`);
    try {
      return await readFile(join(out, rel));
    } catch (e) {
      throw new InputError(`no file ${path} on the btrfs at byte ${partition.offset} of ${image}`, { cause: e });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Paths of the files of a btrfs inside an image, sorted: what `btrfs restore --dry-run` would
 * restore, less the directories on the way (an empty directory cannot be told from a file here).
 */
export async function listBtrfs(image: string, partition: PartitionSpan, opts: { signal?: AbortSignal; workDir?: string } = {}): Promise<string[]> {
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'btrfs-list-'));
  try {
    const part = join(dir, 'partition.img');
    await extractPartition(image, partition, part, opts);
    const out = join(dir, 'restored');
    await mkdir(out);
    // "Restoring PATH" lines are printed from verbosity 2 on.
    const { stdout, stderr } = await run('btrfs', ['restore', '--dry-run', '-v', '-v', part, out], { signal: opts.signal });
    const prefix = `Restoring ${out}/`;
    const paths = `${stdout}\n${stderr}`
      .split('\n')
      .filter((l) => l.startsWith(prefix))
      .map((l) => `/${l.slice(prefix.length)}`);
    const dirs = new Set(paths.map((p) => posix.dirname(p)));
    return paths.filter((p) => !dirs.has(p)).sort();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export { writePartition } from './partition.ts';
