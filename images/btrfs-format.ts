// btrfs on-disk structures, encoded field by field. Layouts and constants are those of the btrfs
// on-disk format as documented by btrfs-progs (kernel-shared/ctree.h, v6.2) and the kernel's
// include/uapi/linux/btrfs_tree.h; every structure is little-endian and packed.
import { crc32c, crc32cRaw } from './crc32.ts';

// --- Sizes ---
/** Data block size; also the tree node size, which mixed block groups require to be equal. */
export const SECTORSIZE = 4096;
export const NODESIZE = 4096;
/** btrfs_header: csum[32] fsid[16] bytenr flags chunk_tree_uuid[16] generation owner nritems(u32) level(u8). */
export const HEADER_SIZE = 101;
/** Offsets in struct btrfs_header; the checksum covers everything after its 32-byte csum field. */
const HDR_CSUM_END = 32;
const HDR_FSID = 32;
const HDR_BYTENR = 48;
const HDR_FLAGS = 56;
const HDR_CHUNK_TREE_UUID = 64;
const HDR_GENERATION = 80;
const HDR_OWNER = 88;
const HDR_NRITEMS = 96;
const HDR_LEVEL = 100;
/** struct btrfs_disk_key: objectid(u64) type(u8) offset(u64). */
export const DISK_KEY_SIZE = 17;
/** btrfs_item: disk_key, then the data's offset (from the end of the header) and size, both u32. */
export const ITEM_HEADER_SIZE = 25;
export const ITEM_DATA_OFFSET = 17;
export const ITEM_DATA_SIZE = 21;
/** btrfs_key_ptr: disk_key, blockptr(u64), generation(u64). */
export const KEY_PTR_SIZE = 33;
export const KEY_PTR_BLOCKPTR = 17;
export const KEY_PTR_GENERATION = 25;
export const LEAF_DATA_SIZE = NODESIZE - HEADER_SIZE;
export const NODE_MAX_PTRS = Math.floor(LEAF_DATA_SIZE / KEY_PTR_SIZE);
/** struct btrfs_super_block is padded to 4 KiB. */
export const SUPER_INFO_SIZE = 4096;
/** Primary superblock, then mirrors at 16 KiB << 12*i (BTRFS_SB_MIRROR_OFFSET): 64 MiB and 256 GiB. */
export const SUPER_OFFSETS = [65536, 16384 * 2 ** 12, 16384 * 2 ** 24];
/** BTRFS_STRIPE_LEN: the chunk stripe length, and the span excluded around each superblock copy. */
export const STRIPE_LEN = 65536;
/** BTRFS_MAX_EXTENT_SIZE: the largest data extent. */
export const MAX_EXTENT_SIZE = 128 * 1024 * 1024;
export const CSUM_SIZE = 4;
export const SYSTEM_CHUNK_ARRAY_SIZE = 2048;
export const LABEL_SIZE = 256;

// --- Magic and flags ---
/** "_BHRfS_M" read as a little-endian u64 (BTRFS_MAGIC). */
export const BTRFS_MAGIC = 0x4d5f53665248425fn;
export const HEADER_FLAG_WRITTEN = 1n;
/** Backref revision 1 (BTRFS_MIXED_BACKREF_REV) in the top byte of the header flags (BTRFS_BACKREF_REV_SHIFT 56). */
export const HEADER_MIXED_BACKREF = 1n << 56n;
export const INCOMPAT_MIXED_BACKREF = 1n << 0n;
export const INCOMPAT_MIXED_GROUPS = 1n << 2n;
export const INCOMPAT_EXTENDED_IREF = 1n << 6n;
export const INCOMPAT_SKINNY_METADATA = 1n << 8n;
export const INCOMPAT_NO_HOLES = 1n << 9n;
export const COMPAT_RO_FREE_SPACE_TREE = 1n << 0n;
export const COMPAT_RO_FREE_SPACE_TREE_VALID = 1n << 1n;
export const CSUM_TYPE_CRC32C = 0;

// --- Object ids (u64; negative ones wrap) ---
const u64neg = (n: number) => (1n << 64n) + BigInt(n);
export const ROOT_TREE_OBJECTID = 1n;
export const EXTENT_TREE_OBJECTID = 2n;
export const CHUNK_TREE_OBJECTID = 3n;
export const DEV_TREE_OBJECTID = 4n;
export const FS_TREE_OBJECTID = 5n;
export const ROOT_TREE_DIR_OBJECTID = 6n;
export const CSUM_TREE_OBJECTID = 7n;
export const UUID_TREE_OBJECTID = 9n;
export const FREE_SPACE_TREE_OBJECTID = 10n;
export const DATA_RELOC_TREE_OBJECTID = u64neg(-9);
export const EXTENT_CSUM_OBJECTID = u64neg(-10);
export const FIRST_FREE_OBJECTID = 256n;
export const FIRST_CHUNK_TREE_OBJECTID = 256n;
export const DEV_ITEMS_OBJECTID = 1n;
export const U64_MAX = (1n << 64n) - 1n;

// --- Key types ---
export const INODE_ITEM_KEY = 1;
export const INODE_REF_KEY = 12;
export const XATTR_ITEM_KEY = 24;
export const DIR_ITEM_KEY = 84;
export const DIR_INDEX_KEY = 96;
export const EXTENT_DATA_KEY = 108;
export const EXTENT_CSUM_KEY = 128;
export const ROOT_ITEM_KEY = 132;
export const EXTENT_ITEM_KEY = 168;
export const METADATA_ITEM_KEY = 169;
export const TREE_BLOCK_REF_KEY = 176;
export const EXTENT_DATA_REF_KEY = 178;
export const BLOCK_GROUP_ITEM_KEY = 192;
export const FREE_SPACE_INFO_KEY = 198;
export const FREE_SPACE_EXTENT_KEY = 199;
export const DEV_EXTENT_KEY = 204;
export const DEV_ITEM_KEY = 216;
export const CHUNK_ITEM_KEY = 228;
export const UUID_KEY_SUBVOL = 251;

// --- Item field values ---
export const BLOCK_GROUP_DATA = 1n << 0n;
export const BLOCK_GROUP_SYSTEM = 1n << 1n;
export const BLOCK_GROUP_METADATA = 1n << 2n;
export const EXTENT_FLAG_DATA = 1n;
export const EXTENT_FLAG_TREE_BLOCK = 2n;
export const FT_REG_FILE = 1;
export const FT_DIR = 2;
export const FT_XATTR = 8;
export const FILE_EXTENT_REG = 1;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;

export interface Key {
  objectid: bigint;
  type: number;
  offset: bigint;
}
export interface Item {
  key: Key;
  data: Buffer;
}

export const key = (objectid: bigint | number, type: number, offset: bigint | number): Key => ({
  objectid: BigInt(objectid),
  type,
  offset: BigInt(offset),
});

export function compareKeys(a: Key, b: Key): number {
  if (a.objectid !== b.objectid) return a.objectid < b.objectid ? -1 : 1;
  if (a.type !== b.type) return a.type - b.type;
  if (a.offset !== b.offset) return a.offset < b.offset ? -1 : 1;
  return 0;
}

/** Sequential little-endian writer over a zeroed buffer. */
export class Fields {
  readonly buf: Buffer;
  pos = 0;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  u8(v: number): this {
    this.buf.writeUInt8(v, this.pos);
    this.pos += 1;
    return this;
  }
  u16(v: number): this {
    this.buf.writeUInt16LE(v, this.pos);
    this.pos += 2;
    return this;
  }
  u32(v: number): this {
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }
  u64(v: bigint | number): this {
    this.buf.writeBigUInt64LE(BigInt(v), this.pos);
    this.pos += 8;
    return this;
  }
  bytes(b: Uint8Array, length = b.length): this {
    this.buf.set(b.subarray(0, length), this.pos);
    this.pos += length;
    return this;
  }
  skip(n: number): this {
    this.pos += n;
    return this;
  }
  diskKey(k: Key): this {
    return this.u64(k.objectid).u8(k.type).u64(k.offset);
  }
  /** btrfs_timespec: sec(u64) nsec(u32). */
  time(sec: number): this {
    return this.u64(sec).u32(0);
  }
}

/** btrfs_name_hash: CRC-32C of the name seeded with ~1, without the final inversion. */
export const nameHash = (name: Buffer) => BigInt(crc32cRaw(0xfffffffe, name));

export interface InodeFields {
  generation: bigint;
  size: number;
  nbytes: number;
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  time: number;
}

/** btrfs_inode_item (160 bytes). */
export function inodeItem(f: InodeFields): Buffer {
  return new Fields(160)
    .u64(f.generation)
    .u64(f.generation) // transid
    .u64(f.size)
    .u64(f.nbytes)
    .u64(0) // block_group
    .u32(f.nlink)
    .u32(f.uid)
    .u32(f.gid)
    .u32(f.mode)
    .u64(0) // rdev
    .u64(0) // flags
    .u64(0) // sequence
    .skip(32) // reserved[4]
    .time(f.time) // atime
    .time(f.time) // ctime
    .time(f.time) // mtime
    .time(f.time).buf; // otime
}

export interface RootItemFields {
  generation: bigint;
  rootDirid: bigint;
  bytenr: number;
  bytesUsed: number;
  level: number;
  uuid?: Buffer;
  time?: number;
}

/** btrfs_root_item (439 bytes); the embedded inode is the one mkfs writes for every root. */
export function rootItem(f: RootItemFields): Buffer {
  const embedded = inodeItem({ generation: 1n, size: 3, nbytes: NODESIZE, nlink: 1, uid: 0, gid: 0, mode: S_IFDIR | 0o755, time: 0 });
  embedded.writeBigUInt64LE(0n, 8); // transid
  const w = new Fields(439)
    .bytes(embedded)
    .u64(f.generation)
    .u64(f.rootDirid)
    .u64(f.bytenr)
    .u64(0) // byte_limit
    .u64(f.bytesUsed)
    .u64(0) // last_snapshot
    .u64(0) // flags
    .u32(1) // refs
    .diskKey(key(0, 0, 0)) // drop_progress
    .u8(0) // drop_level
    .u8(f.level)
    .u64(f.generation) // generation_v2: equal to generation marks the extended fields valid
    .bytes(f.uuid ?? Buffer.alloc(16), 16)
    .skip(32) // parent_uuid, received_uuid
    .skip(32) // ctransid, otransid, stransid, rtransid
    .time(f.time ?? 0) // ctime
    .time(f.time ?? 0); // otime
  return w.buf;
}

/** btrfs_dir_item followed by the name and (for xattrs) the value; several may share one key on a hash collision. */
export function dirItem(location: Key, type: number, name: Buffer, transid: bigint, value: Buffer = Buffer.alloc(0)): Buffer {
  return new Fields(30 + name.length + value.length).diskKey(location).u64(transid).u16(value.length).u16(name.length).u8(type).bytes(name).bytes(value).buf;
}

/** btrfs_inode_ref: index(u64) name_len(u16) name. */
export function inodeRef(index: bigint | number, name: Buffer): Buffer {
  return new Fields(10 + name.length).u64(index).u16(name.length).bytes(name).buf;
}

/** btrfs_file_extent_item for an uncompressed regular extent (53 bytes). */
export function fileExtentRegular(generation: bigint, diskBytenr: number, numBytes: number): Buffer {
  return new Fields(53)
    .u64(generation)
    .u64(numBytes) // ram_bytes
    .u8(0) // compression
    .u8(0) // encryption
    .u16(0) // other_encoding
    .u8(FILE_EXTENT_REG)
    .u64(diskBytenr)
    .u64(numBytes) // disk_num_bytes
    .u64(0) // offset into the extent
    .u64(numBytes).buf;
}

/** A skinny METADATA_ITEM: btrfs_extent_item (refs, generation, flags) plus one inline TREE_BLOCK_REF. */
export function metadataExtent(generation: bigint, owner: bigint): Buffer {
  return new Fields(33).u64(1).u64(generation).u64(EXTENT_FLAG_TREE_BLOCK).u8(TREE_BLOCK_REF_KEY).u64(owner).buf;
}

/** A data EXTENT_ITEM with one inline EXTENT_DATA_REF (root, inode, file offset, count). */
export function dataExtent(generation: bigint, root: bigint, inode: bigint, fileOffset: number): Buffer {
  return new Fields(53).u64(1).u64(generation).u64(EXTENT_FLAG_DATA).u8(EXTENT_DATA_REF_KEY).u64(root).u64(inode).u64(fileOffset).u32(1).buf;
}

/** btrfs_block_group_item: used, chunk_objectid, flags. */
export function blockGroupItem(used: number, flags: bigint): Buffer {
  return new Fields(24).u64(used).u64(FIRST_CHUNK_TREE_OBJECTID).u64(flags).buf;
}

export interface DeviceFields {
  totalBytes: number;
  bytesUsed: number;
  uuid: Buffer;
  fsid: Buffer;
}

/** btrfs_dev_item (98 bytes), devid 1. */
export function devItem(d: DeviceFields): Buffer {
  return new Fields(98)
    .u64(1) // devid
    .u64(d.totalBytes)
    .u64(d.bytesUsed)
    .u32(SECTORSIZE) // io_align
    .u32(SECTORSIZE) // io_width
    .u32(SECTORSIZE) // sector_size
    .u64(0) // type
    .u64(0) // generation
    .u64(0) // start_offset
    .u32(0) // dev_group
    .u8(0) // seek_speed
    .u8(0) // bandwidth
    .bytes(d.uuid, 16)
    .bytes(d.fsid, 16).buf;
}

export interface ChunkFields {
  logical: number;
  physical: number;
  length: number;
  type: bigint;
  devUuid: Buffer;
}

/** btrfs_chunk with one stripe (80 bytes); io_align/width and sub_stripes as mkfs writes them. */
export function chunkItem(c: ChunkFields): Buffer {
  const system = c.type === BLOCK_GROUP_SYSTEM;
  return new Fields(80)
    .u64(c.length)
    .u64(EXTENT_TREE_OBJECTID) // owner
    .u64(STRIPE_LEN)
    .u64(c.type)
    .u32(system ? SECTORSIZE : STRIPE_LEN) // io_align
    .u32(system ? SECTORSIZE : STRIPE_LEN) // io_width
    .u32(SECTORSIZE)
    .u16(1) // num_stripes
    .u16(system ? 0 : 1) // sub_stripes
    .u64(1) // stripe devid
    .u64(c.physical)
    .bytes(c.devUuid, 16).buf;
}

/** btrfs_dev_extent: chunk_tree, chunk_objectid, chunk_offset, length, chunk_tree_uuid. */
export function devExtent(logical: number, length: number, chunkTreeUuid: Buffer): Buffer {
  return new Fields(48).u64(CHUNK_TREE_OBJECTID).u64(FIRST_CHUNK_TREE_OBJECTID).u64(logical).u64(length).bytes(chunkTreeUuid, 16).buf;
}

/** btrfs_free_space_info: extent_count, flags (0: extents, not bitmaps). */
export function freeSpaceInfo(extentCount: number): Buffer {
  return new Fields(8).u32(extentCount).u32(0).buf;
}

export interface HeaderFields {
  fsid: Buffer;
  chunkTreeUuid: Buffer;
  generation: bigint;
  owner: bigint;
}

/** Write the btrfs_header of a tree block (csum last) into `block`. */
export function sealTreeBlock(block: Buffer, bytenr: number, nritems: number, level: number, h: HeaderFields): void {
  block.set(h.fsid.subarray(0, 16), HDR_FSID);
  block.writeBigUInt64LE(BigInt(bytenr), HDR_BYTENR);
  block.writeBigUInt64LE(HEADER_FLAG_WRITTEN | HEADER_MIXED_BACKREF, HDR_FLAGS);
  block.set(h.chunkTreeUuid.subarray(0, 16), HDR_CHUNK_TREE_UUID);
  block.writeBigUInt64LE(h.generation, HDR_GENERATION);
  block.writeBigUInt64LE(h.owner, HDR_OWNER);
  block.writeUInt32LE(nritems, HDR_NRITEMS);
  block.writeUInt8(level, HDR_LEVEL);
  block.fill(0, 0, HDR_CSUM_END);
  block.writeUInt32LE(crc32c(block.subarray(HDR_CSUM_END)), 0);
}

/** A btrfs_disk_key at `at`. */
export function writeDiskKey(block: Buffer, at: number, k: Key): void {
  block.writeBigUInt64LE(k.objectid, at);
  block.writeUInt8(k.type, at + 8);
  block.writeBigUInt64LE(k.offset, at + 9);
}

export interface BackupRoot {
  bytenr: number;
  level: number;
}

export interface SuperFields {
  fsid: Buffer;
  generation: bigint;
  root: BackupRoot;
  chunkRoot: BackupRoot;
  extentRoot: BackupRoot;
  fsRoot: BackupRoot;
  devRoot: BackupRoot;
  csumRoot: BackupRoot;
  totalBytes: number;
  bytesUsed: number;
  label: string;
  device: Buffer;
  sysChunkArray: Buffer;
}

/** struct btrfs_super_block for the copy at `bytenr` (offsets per ctree.h; the tail is padding). */
export function superBlock(s: SuperFields, bytenr: number): Buffer {
  const w = new Fields(SUPER_INFO_SIZE)
    .skip(HDR_CSUM_END) // csum, below
    .bytes(s.fsid, 16)
    .u64(bytenr)
    .u64(HEADER_FLAG_WRITTEN) // flags, as mkfs leaves them
    .u64(BTRFS_MAGIC)
    .u64(s.generation)
    .u64(s.root.bytenr)
    .u64(s.chunkRoot.bytenr)
    .u64(0) // log_root
    .u64(0) // __unused_log_root_transid
    .u64(s.totalBytes)
    .u64(s.bytesUsed)
    .u64(ROOT_TREE_DIR_OBJECTID)
    .u64(1) // num_devices
    .u32(SECTORSIZE)
    .u32(NODESIZE)
    .u32(NODESIZE) // __unused_leafsize
    .u32(SECTORSIZE) // stripesize
    .u32(s.sysChunkArray.length)
    .u64(s.generation) // chunk_root_generation
    .u64(0) // compat_flags
    .u64(COMPAT_RO_FREE_SPACE_TREE | COMPAT_RO_FREE_SPACE_TREE_VALID)
    .u64(INCOMPAT_MIXED_BACKREF | INCOMPAT_MIXED_GROUPS | INCOMPAT_EXTENDED_IREF | INCOMPAT_SKINNY_METADATA | INCOMPAT_NO_HOLES)
    .u16(CSUM_TYPE_CRC32C)
    .u8(s.root.level)
    .u8(s.chunkRoot.level)
    .u8(0) // log_root_level
    .bytes(s.device, 98);
  const label = Buffer.from(s.label, 'utf8');
  w.bytes(label, Math.min(label.length, LABEL_SIZE - 1)).skip(LABEL_SIZE - Math.min(label.length, LABEL_SIZE - 1));
  w.u64(0) // cache_generation: no v1 space cache
    .u64(s.generation) // uuid_tree_generation: the UUID tree is complete
    .skip(16) // metadata_uuid: unused without the METADATA_UUID feature
    .u64(0) // nr_global_roots
    .skip(27 * 8); // reserved
  w.bytes(s.sysChunkArray).skip(SYSTEM_CHUNK_ARRAY_SIZE - s.sysChunkArray.length);
  // super_roots[0]: the current roots, so a mount with -o usebackuproot finds them.
  const roots = [s.root, s.chunkRoot, s.extentRoot, s.fsRoot, s.devRoot, s.csumRoot];
  for (const r of roots) w.u64(r.bytenr).u64(s.generation);
  w.u64(s.totalBytes).u64(s.bytesUsed).u64(1).skip(32);
  for (const r of roots) w.u8(r.level);
  const buf = w.buf;
  buf.writeUInt32LE(crc32c(buf.subarray(HDR_CSUM_END)), 0);
  return buf;
}
