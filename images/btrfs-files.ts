// The file side of the OEM btrfs: the directory tree with its inode numbers, the FS tree's items
// (inodes, names, file extents) and the data checksums. Inode numbers and directory indexes follow
// sorted names, so they depend on the files given and nothing else.
import { posix } from 'node:path';
import { InputError } from '../builders/errors.ts';
import {
  CSUM_SIZE, DIR_INDEX_KEY, DIR_ITEM_KEY, dirItem, EXTENT_CSUM_KEY, EXTENT_CSUM_OBJECTID, EXTENT_DATA_KEY, Fields, fileExtentRegular,
  FIRST_FREE_OBJECTID, FT_DIR, FT_REG_FILE, FT_XATTR, INODE_ITEM_KEY, INODE_REF_KEY, inodeItem, inodeRef, type Item, key, nameHash, NODESIZE,
  S_IFDIR, S_IFREG, SECTORSIZE, XATTR_ITEM_KEY,
} from './btrfs-format.ts';
import { sortItems } from './btrfs-tree.ts';
import { crc32c } from './crc32.ts';

/** Every tree block and item carries this transaction id: the filesystem is written in one "transaction". */
export const GENERATION = 1n;
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


export interface Inode {
  ino: bigint;
  name: Buffer;
  parent?: Inode;
  /** DIR_INDEX in the parent (2, 3, ... in name order; 0 and 1 are reserved). */
  index: number;
  children?: Inode[];
  file?: { data: Buffer; mode: number; uid: number; gid: number };
  extents: Array<{ fileOffset: number; bytenr: number; bytes: number }>;
}

const cmpBytes = (a: Buffer, b: Buffer) => Buffer.compare(a, b);

/** Directory tree with inode numbers in depth-first, name-sorted order from 257. */
export function buildNamespace(files: readonly BtrfsFile[]): Inode[] {
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


/** The FS tree: inodes, names and file extents. */
export function fsTreeItems(inodes: Inode[], epoch: number, compression: string | undefined): Item[] {
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
export function csumItems(inodes: Inode[]): Item[] {
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

