// GUID Partition Table read and write (UEFI spec 2.10 §5.2 "LBA 0 Format", §5.3 "GUID Partition
// Table (GPT) Disk Layout"). Partitions are found by name or type GUID, never by offset: Flatcar
// changed its partition sizes in 2025 and both layouts must work.
import { open, type FileHandle } from 'node:fs/promises';
import { InputError } from '../builders/errors.ts';
import { crc32 } from './crc32.ts';
import { guidFromBytes, guidToBytes, normalizeGuid } from './guid.ts';

/** Logical block size this module handles; Flatcar and HypriotOS images use 512-byte sectors. */
export const SECTOR_SIZE = 512;

// --- Protective MBR (§5.2.3, Table 5-4 "Protective MBR Partition Record") ---
/** Byte offset of the four 16-byte partition records in LBA 0. */
const MBR_PARTITION_TABLE = 446;
const MBR_RECORD_SIZE = 16;
/** Offset of the 0x55 0xAA boot signature. */
const MBR_SIGNATURE_OFFSET = 510;
const MBR_SIGNATURE = 0xaa55;
/** OSType of the protective partition record: "GPT Protective". */
const MBR_TYPE_GPT_PROTECTIVE = 0xee;
/** Largest value of the 32-bit SizeInLBA field; disks beyond it are marked with it (§5.2.3). */
const MBR_MAX_LBA_COUNT = 0xffffffff;
/** CHS geometry used to fill the legacy CHS fields, and the value for "beyond CHS" (0xFFFFFF). */
const CHS_HEADS = 255;
const CHS_SECTORS = 63;
const CHS_MAX_CYLINDER = 1023;

// --- GPT header (§5.3.2, Table 5-5 "GPT Header") ---
/** "EFI PART" as a little-endian 64-bit value. */
const GPT_SIGNATURE = Buffer.from('EFI PART', 'ascii');
const GPT_REVISION_1_0 = 0x00010000;
const GPT_HEADER_SIZE = 92;
const HDR_SIGNATURE = 0;
const HDR_REVISION = 8;
const HDR_SIZE = 12;
const HDR_CRC32 = 16;
const HDR_MY_LBA = 24;
const HDR_ALTERNATE_LBA = 32;
const HDR_FIRST_USABLE_LBA = 40;
const HDR_LAST_USABLE_LBA = 48;
const HDR_DISK_GUID = 56;
const HDR_ENTRY_LBA = 72;
const HDR_ENTRY_COUNT = 80;
const HDR_ENTRY_SIZE = 84;
const HDR_ENTRY_ARRAY_CRC32 = 88;
/** The primary header lives at LBA 1 (§5.3.1). */
const PRIMARY_HEADER_LBA = 1;
/** The entry array must reserve at least 16,384 bytes (§5.3.1): 128 entries of 128 bytes. */
const MIN_ENTRY_ARRAY_BYTES = 16384;
const DEFAULT_ENTRY_COUNT = 128;

// --- Partition entry (§5.3.3, Table 5-6 "GPT Partition Entry") ---
const ENTRY_MIN_SIZE = 128;
const ENT_TYPE_GUID = 0;
const ENT_UNIQUE_GUID = 16;
const ENT_FIRST_LBA = 32;
const ENT_LAST_LBA = 40;
const ENT_ATTRIBUTES = 48;
const ENT_NAME = 56;
/** PartitionName: 36 UTF-16LE code units. */
const ENT_NAME_UNITS = 36;
const UNUSED_TYPE_GUID = '00000000-0000-0000-0000-000000000000';

/** Partition type GUIDs Flatcar uses (cgpt names; base-images.md §2.1). */
export const PartitionType = {
  efiSystem: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  biosBoot: '21686148-6449-6E6F-744E-656564454649',
  flatcarUsr: '5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6',
  linuxData: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  flatcarReserved: 'C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0',
  /** "flatcar-resize": the ROOT partition that extend-filesystems grows on first boot. */
  flatcarResize: '3884DD41-8582-4404-B9A8-E9B84F2DF50E',
} as const;

export interface GptPartition {
  /** 1-based slot in the entry array (Flatcar leaves slots 5 and 8 empty). */
  number: number;
  name: string;
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  /** Inclusive. */
  lastLba: number;
  attributes: bigint;
}

export interface Gpt {
  sectorSize: typeof SECTOR_SIZE;
  diskGuid: string;
  firstUsableLba: number;
  lastUsableLba: number;
  primaryHeaderLba: number;
  backupHeaderLba: number;
  primaryEntriesLba: number;
  backupEntriesLba: number;
  entryCount: number;
  entrySize: number;
  partitions: GptPartition[];
}

type Source = string | FileHandle;

async function withHandle<T>(source: Source, flags: string, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
  if (typeof source !== 'string') return fn(source);
  const fh = await open(source, flags);
  try {
    return await fn(fh);
  } finally {
    await fh.close();
  }
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === length ? buf : buf.subarray(0, done);
}

async function writeAt(fh: FileHandle, offset: number, data: Buffer): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}

const u64 = (b: Buffer, at: number) => Number(b.readBigUInt64LE(at));
const entrySectors = (count: number, size: number) => Math.ceil((count * size) / SECTOR_SIZE);

interface Header {
  myLba: number;
  alternateLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  diskGuid: string;
  entryLba: number;
  entryCount: number;
  entrySize: number;
  entryArrayCrc: number;
}

function parseHeader(sector: Buffer, lba: number, what: string, file: string): Header {
  const fail = (problem: string) =>
    new InputError(`${file}: ${what} GPT header at LBA ${lba}: ${problem}`, {
      hint: 'the image is damaged or not a GPT disk; fetch it again (or check it with: sgdisk -v IMAGE)',
    });
  if (sector.length < SECTOR_SIZE || !sector.subarray(HDR_SIGNATURE, HDR_SIGNATURE + 8).equals(GPT_SIGNATURE)) {
    throw fail('no "EFI PART" signature');
  }
  const size = sector.readUInt32LE(HDR_SIZE);
  if (size < GPT_HEADER_SIZE || size > SECTOR_SIZE) throw fail(`header size ${size} out of range`);
  const copy = Buffer.from(sector.subarray(0, size));
  const stored = copy.readUInt32LE(HDR_CRC32);
  copy.writeUInt32LE(0, HDR_CRC32);
  const actual = crc32(copy);
  if (stored !== actual) throw fail(`header CRC32 mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})`);
  const h: Header = {
    myLba: u64(sector, HDR_MY_LBA),
    alternateLba: u64(sector, HDR_ALTERNATE_LBA),
    firstUsableLba: u64(sector, HDR_FIRST_USABLE_LBA),
    lastUsableLba: u64(sector, HDR_LAST_USABLE_LBA),
    diskGuid: guidFromBytes(sector.subarray(HDR_DISK_GUID, HDR_DISK_GUID + 16)),
    entryLba: u64(sector, HDR_ENTRY_LBA),
    entryCount: sector.readUInt32LE(HDR_ENTRY_COUNT),
    entrySize: sector.readUInt32LE(HDR_ENTRY_SIZE),
    entryArrayCrc: sector.readUInt32LE(HDR_ENTRY_ARRAY_CRC32),
  };
  if (h.myLba !== lba) throw fail(`MyLBA is ${h.myLba}`);
  if (h.entrySize < ENTRY_MIN_SIZE || h.entrySize % ENTRY_MIN_SIZE !== 0) throw fail(`entry size ${h.entrySize}`);
  if (h.entryCount === 0 || h.entryCount * h.entrySize > 1024 * 1024) throw fail(`entry count ${h.entryCount}`);
  if (h.firstUsableLba > h.lastUsableLba) throw fail('first usable LBA is after the last usable LBA');
  return h;
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

function parseEntries(array: Buffer, h: Header): GptPartition[] {
  const parts: GptPartition[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const e = array.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    const typeGuid = guidFromBytes(e.subarray(ENT_TYPE_GUID, ENT_TYPE_GUID + 16));
    if (typeGuid === UNUSED_TYPE_GUID) continue;
    const nameRaw = e.subarray(ENT_NAME, ENT_NAME + ENT_NAME_UNITS * 2).toString('utf16le');
    const nul = nameRaw.indexOf('\0');
    parts.push({
      number: i + 1,
      name: nul >= 0 ? nameRaw.slice(0, nul) : nameRaw,
      typeGuid,
      uniqueGuid: guidFromBytes(e.subarray(ENT_UNIQUE_GUID, ENT_UNIQUE_GUID + 16)),
      firstLba: u64(e, ENT_FIRST_LBA),
      lastLba: u64(e, ENT_LAST_LBA),
      attributes: e.readBigUInt64LE(ENT_ATTRIBUTES),
    });
  }
  return parts;
}

/** Read and validate a GPT: both headers, both entry arrays, their CRC32s and the partitions' bounds. */
export async function readGpt(source: Source): Promise<Gpt> {
  const file = typeof source === 'string' ? source : 'image';
  return withHandle(source, 'r', async (fh) => {
    const { size } = await fh.stat();
    const lbaCount = Math.floor(size / SECTOR_SIZE);
    const primary = parseHeader(await readAt(fh, PRIMARY_HEADER_LBA * SECTOR_SIZE, SECTOR_SIZE), PRIMARY_HEADER_LBA, 'primary', file);
    const hint = 'the image is damaged or truncated; fetch it again (or check it with: sgdisk -v IMAGE)';
    const arrayBytes = primary.entryCount * primary.entrySize;
    const readArray = async (lba: number, what: string) => {
      if ((lba + entrySectors(primary.entryCount, primary.entrySize)) * SECTOR_SIZE > size) {
        throw new InputError(`${file}: ${what} GPT entry array at LBA ${lba} lies beyond the end of the file`, { hint });
      }
      const array = await readAt(fh, lba * SECTOR_SIZE, arrayBytes);
      const actual = crc32(array);
      if (actual !== primary.entryArrayCrc) {
        throw new InputError(
          `${file}: ${what} GPT entry array CRC32 mismatch (header says ${hex32(primary.entryArrayCrc)}, computed ${hex32(actual)})`,
          { hint },
        );
      }
      return array;
    };
    const array = await readArray(primary.entryLba, 'primary');
    if (primary.alternateLba >= lbaCount) {
      throw new InputError(`${file}: backup GPT header LBA ${primary.alternateLba} lies beyond the end of the file (${lbaCount} sectors)`, { hint });
    }
    const backup = parseHeader(await readAt(fh, primary.alternateLba * SECTOR_SIZE, SECTOR_SIZE), primary.alternateLba, 'backup', file);
    const same =
      backup.alternateLba === PRIMARY_HEADER_LBA &&
      backup.diskGuid === primary.diskGuid &&
      backup.firstUsableLba === primary.firstUsableLba &&
      backup.lastUsableLba === primary.lastUsableLba &&
      backup.entryCount === primary.entryCount &&
      backup.entrySize === primary.entrySize &&
      backup.entryArrayCrc === primary.entryArrayCrc;
    if (!same) throw new InputError(`${file}: the backup GPT header does not match the primary`, { hint });
    await readArray(backup.entryLba, 'backup');

    const gpt: Gpt = {
      sectorSize: SECTOR_SIZE,
      diskGuid: primary.diskGuid,
      firstUsableLba: primary.firstUsableLba,
      lastUsableLba: primary.lastUsableLba,
      primaryHeaderLba: PRIMARY_HEADER_LBA,
      backupHeaderLba: primary.alternateLba,
      primaryEntriesLba: primary.entryLba,
      backupEntriesLba: backup.entryLba,
      entryCount: primary.entryCount,
      entrySize: primary.entrySize,
      partitions: parseEntries(array, primary),
    };
    checkPartitions(gpt, file);
    return gpt;
  });
}

function checkPartitions(gpt: Gpt, file: string): void {
  const sorted = [...gpt.partitions].sort((a, b) => a.firstLba - b.firstLba);
  sorted.forEach((p, i) => {
    const where = `${file}: partition ${p.number} (${p.name || 'unnamed'})`;
    if (p.firstLba > p.lastLba) throw new InputError(`${where} ends before it starts`);
    if (p.firstLba < gpt.firstUsableLba || p.lastLba > gpt.lastUsableLba) {
      throw new InputError(`${where} lies outside the usable LBAs ${gpt.firstUsableLba}-${gpt.lastUsableLba}`);
    }
    const next = sorted[i + 1];
    if (next && next.firstLba <= p.lastLba) throw new InputError(`${where} overlaps partition ${next.number}`);
  });
}

export interface PartitionQuery {
  /** The GPT partition name (Flatcar: EFI-SYSTEM, USR-A, OEM, ROOT, ...). */
  label?: string;
  typeGuid?: string;
}

/** The one partition matching every given field; an InputError when none or several match. */
export function findPartition(gpt: Gpt, query: PartitionQuery): GptPartition {
  if (query.label === undefined && query.typeGuid === undefined) throw new InputError('findPartition needs a label or a type GUID');
  const type = query.typeGuid === undefined ? undefined : normalizeGuid(query.typeGuid);
  const hits = gpt.partitions.filter((p) => (query.label === undefined || p.name === query.label) && (type === undefined || p.typeGuid === type));
  const what = [query.label && `name ${query.label}`, type && `type ${type}`].filter(Boolean).join(' and ');
  if (hits.length === 0) {
    throw new InputError(`no GPT partition with ${what}`, {
      hint: `the image has: ${gpt.partitions.map((p) => `${p.number}:${p.name || '-'}`).join(', ')}`,
    });
  }
  if (hits.length > 1) throw new InputError(`${hits.length} GPT partitions have ${what}; name one by label as well`);
  return hits[0]!;
}

/** Byte offset and length of a partition inside the image. */
export function partitionBytes(gpt: Gpt, p: GptPartition): { offset: number; size: number } {
  return { offset: p.firstLba * gpt.sectorSize, size: (p.lastLba - p.firstLba + 1) * gpt.sectorSize };
}

function encodeEntries(gpt: Gpt): Buffer {
  const array = Buffer.alloc(gpt.entryCount * gpt.entrySize);
  for (const p of gpt.partitions) {
    if (!Number.isInteger(p.number) || p.number < 1 || p.number > gpt.entryCount) {
      throw new InputError(`partition number ${p.number} does not fit a table of ${gpt.entryCount} entries`);
    }
    if (p.name.length > ENT_NAME_UNITS) throw new InputError(`partition name ${JSON.stringify(p.name)} is longer than ${ENT_NAME_UNITS} characters`);
    const e = array.subarray((p.number - 1) * gpt.entrySize);
    if (e.readUInt32LE(0) !== 0) throw new InputError(`two partitions use slot ${p.number}`);
    guidToBytes(p.typeGuid).copy(e, ENT_TYPE_GUID);
    guidToBytes(p.uniqueGuid).copy(e, ENT_UNIQUE_GUID);
    e.writeBigUInt64LE(BigInt(p.firstLba), ENT_FIRST_LBA);
    e.writeBigUInt64LE(BigInt(p.lastLba), ENT_LAST_LBA);
    e.writeBigUInt64LE(p.attributes, ENT_ATTRIBUTES);
    e.write(p.name, ENT_NAME, ENT_NAME_UNITS * 2, 'utf16le');
  }
  return array;
}

function encodeHeader(gpt: Gpt, myLba: number, alternateLba: number, entryLba: number, arrayCrc: number): Buffer {
  const h = Buffer.alloc(SECTOR_SIZE);
  GPT_SIGNATURE.copy(h, HDR_SIGNATURE);
  h.writeUInt32LE(GPT_REVISION_1_0, HDR_REVISION);
  h.writeUInt32LE(GPT_HEADER_SIZE, HDR_SIZE);
  h.writeBigUInt64LE(BigInt(myLba), HDR_MY_LBA);
  h.writeBigUInt64LE(BigInt(alternateLba), HDR_ALTERNATE_LBA);
  h.writeBigUInt64LE(BigInt(gpt.firstUsableLba), HDR_FIRST_USABLE_LBA);
  h.writeBigUInt64LE(BigInt(gpt.lastUsableLba), HDR_LAST_USABLE_LBA);
  guidToBytes(gpt.diskGuid).copy(h, HDR_DISK_GUID);
  h.writeBigUInt64LE(BigInt(entryLba), HDR_ENTRY_LBA);
  h.writeUInt32LE(gpt.entryCount, HDR_ENTRY_COUNT);
  h.writeUInt32LE(gpt.entrySize, HDR_ENTRY_SIZE);
  h.writeUInt32LE(arrayCrc, HDR_ENTRY_ARRAY_CRC32);
  h.writeUInt32LE(crc32(h.subarray(0, GPT_HEADER_SIZE)), HDR_CRC32);
  return h;
}

/** Legacy CHS address of an LBA for the 0xEE record; 0xFFFFFF once it is beyond CHS reach. */
function chsOf(lba: number): [number, number, number] {
  const cylinder = Math.floor(lba / (CHS_HEADS * CHS_SECTORS));
  if (cylinder > CHS_MAX_CYLINDER) return [0xff, 0xff, 0xff];
  const rest = lba % (CHS_HEADS * CHS_SECTORS);
  const head = Math.floor(rest / CHS_SECTORS);
  const sector = (rest % CHS_SECTORS) + 1;
  return [head, sector | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

/**
 * LBA 0: keep the boot code and any hybrid records (Flatcar's amd64 image carries GRUB's boot.img
 * there); make sure one 0xEE record covers the disk. A sector without the 0x55AA signature gets a
 * fresh protective MBR.
 */
function protectiveMbr(old: Buffer, oldLbaCount: number, lbaCount: number): Buffer {
  const mbr = Buffer.alloc(SECTOR_SIZE);
  const valid = old.length === SECTOR_SIZE && old.readUInt16LE(MBR_SIGNATURE_OFFSET) === MBR_SIGNATURE;
  if (valid) old.copy(mbr);
  const wanted = Math.min(lbaCount - 1, MBR_MAX_LBA_COUNT);
  const oldFull = Math.min(oldLbaCount - 1, MBR_MAX_LBA_COUNT);
  let record = -1;
  for (let i = 0; i < 4 && valid; i++) {
    const r = MBR_PARTITION_TABLE + i * MBR_RECORD_SIZE;
    if (mbr[r + 4] !== MBR_TYPE_GPT_PROTECTIVE) continue;
    // Only a record spanning the whole (old) disk is resized; a hybrid MBR's small 0xEE stays.
    if (mbr.readUInt32LE(r + 8) === 1 && mbr.readUInt32LE(r + 12) === oldFull) record = i;
    else return mbr;
  }
  if (record < 0) {
    mbr.fill(0, MBR_PARTITION_TABLE, MBR_SIGNATURE_OFFSET);
    record = 0;
  }
  const r = MBR_PARTITION_TABLE + record * MBR_RECORD_SIZE;
  mbr[r] = 0; // not bootable
  mbr.set(chsOf(1), r + 1);
  mbr[r + 4] = MBR_TYPE_GPT_PROTECTIVE;
  mbr.set(chsOf(wanted), r + 5);
  mbr.writeUInt32LE(1, r + 8);
  mbr.writeUInt32LE(wanted, r + 12);
  mbr.writeUInt16LE(MBR_SIGNATURE, MBR_SIGNATURE_OFFSET);
  return mbr;
}

/**
 * Write the protective MBR, the primary header and entries, and the backup entries and header, with
 * their CRC32s. The file must already be large enough to hold the backup header.
 */
export async function writeGpt(path: string, gpt: Gpt, opts: { previousLbaCount?: number } = {}): Promise<void> {
  checkPartitions(gpt, path);
  const sectors = entrySectors(gpt.entryCount, gpt.entrySize);
  if (gpt.entryCount * gpt.entrySize < MIN_ENTRY_ARRAY_BYTES) throw new InputError(`GPT entry array smaller than ${MIN_ENTRY_ARRAY_BYTES} bytes`);
  if (gpt.primaryEntriesLba + sectors > gpt.firstUsableLba) throw new InputError('GPT entry array overlaps the first usable LBA');
  if (gpt.backupEntriesLba <= gpt.lastUsableLba || gpt.backupEntriesLba + sectors > gpt.backupHeaderLba) {
    throw new InputError('backup GPT entry array must lie between the last usable LBA and the backup header');
  }
  const array = encodeEntries(gpt);
  const arrayCrc = crc32(array);
  await withHandle(path, 'r+', async (fh) => {
    const { size } = await fh.stat();
    const lbaCount = Math.floor(size / SECTOR_SIZE);
    if (gpt.backupHeaderLba >= lbaCount) throw new InputError(`${path}: backup GPT header LBA ${gpt.backupHeaderLba} is beyond the end of the file`);
    const oldMbr = await readAt(fh, 0, SECTOR_SIZE);
    await writeAt(fh, 0, protectiveMbr(oldMbr, opts.previousLbaCount ?? lbaCount, lbaCount));
    await writeAt(fh, PRIMARY_HEADER_LBA * SECTOR_SIZE, encodeHeader(gpt, PRIMARY_HEADER_LBA, gpt.backupHeaderLba, gpt.primaryEntriesLba, arrayCrc));
    await writeAt(fh, gpt.primaryEntriesLba * SECTOR_SIZE, array);
    await writeAt(fh, gpt.backupEntriesLba * SECTOR_SIZE, array);
    await writeAt(fh, gpt.backupHeaderLba * SECTOR_SIZE, encodeHeader(gpt, gpt.backupHeaderLba, PRIMARY_HEADER_LBA, gpt.backupEntriesLba, arrayCrc));
  });
}

/** A new, empty table for a disk of `lbaCount` sectors (as `sgdisk -o` lays it out). */
export function emptyGpt(lbaCount: number, diskGuid: string): Gpt {
  const sectors = entrySectors(DEFAULT_ENTRY_COUNT, ENTRY_MIN_SIZE);
  return {
    sectorSize: SECTOR_SIZE,
    diskGuid: normalizeGuid(diskGuid),
    firstUsableLba: PRIMARY_HEADER_LBA + 1 + sectors,
    lastUsableLba: lbaCount - 2 - sectors,
    primaryHeaderLba: PRIMARY_HEADER_LBA,
    backupHeaderLba: lbaCount - 1,
    primaryEntriesLba: PRIMARY_HEADER_LBA + 1,
    backupEntriesLba: lbaCount - 1 - sectors,
    entryCount: DEFAULT_ENTRY_COUNT,
    entrySize: ENTRY_MIN_SIZE,
    partitions: [],
  };
}

export interface GrowResult {
  gpt: Gpt;
  /** Byte ranges of the image this wrote (tables, the zeroed old backup), for the bmap. */
  written: Array<[start: number, end: number]>;
}

/**
 * Make the image `newSizeBytes` long (sparse), move the backup GPT to the new end and extend the
 * named partition, which must be the last one, to the new last usable LBA. Only the partition
 * grows: the filesystem inside keeps its size until first boot, when Flatcar's extend-filesystems
 * grows ROOT (type flatcar-resize) to fill its partition.
 */
export async function growImage(path: string, newSizeBytes: number, opts: { growPartition: string }): Promise<GrowResult> {
  if (!Number.isSafeInteger(newSizeBytes) || newSizeBytes % SECTOR_SIZE !== 0) {
    throw new InputError(`image size ${newSizeBytes} is not a multiple of ${SECTOR_SIZE} bytes`);
  }
  const old = await readGpt(path);
  const fh = await open(path, 'r+');
  const written: Array<[number, number]> = [];
  let gpt: Gpt;
  try {
    const { size } = await fh.stat();
    if (newSizeBytes < size) throw new InputError(`${path}: cannot shrink the image from ${size} to ${newSizeBytes} bytes`);
    const target = findPartition(old, { label: opts.growPartition });
    const last = old.partitions.reduce((a, b) => (b.lastLba > a.lastLba ? b : a));
    if (last !== target) {
      throw new InputError(`${path}: partition ${target.name} is not the last partition (${last.name} follows it), so it cannot grow`);
    }
    const lbaCount = newSizeBytes / SECTOR_SIZE;
    const sectors = entrySectors(old.entryCount, old.entrySize);
    gpt = {
      ...old,
      backupHeaderLba: lbaCount - 1,
      backupEntriesLba: lbaCount - 1 - sectors,
      lastUsableLba: lbaCount - 2 - sectors,
      partitions: old.partitions.map((p) => (p === target ? { ...p, lastLba: lbaCount - 2 - sectors } : p)),
    };
    await fh.truncate(newSizeBytes);
    // The old backup table now sits inside the grown partition: clear it so nothing mistakes it for a table.
    const oldStart = old.backupEntriesLba * SECTOR_SIZE;
    const oldEnd = (old.backupHeaderLba + 1) * SECTOR_SIZE;
    if (newSizeBytes > size) {
      await writeAt(fh, oldStart, Buffer.alloc(oldEnd - oldStart));
      written.push([oldStart, oldEnd]);
    }
  } finally {
    await fh.close();
  }
  await writeGpt(path, gpt, { previousLbaCount: (old.backupHeaderLba + 1) });
  const sectors = entrySectors(gpt.entryCount, gpt.entrySize);
  written.push([0, (gpt.primaryEntriesLba + sectors) * SECTOR_SIZE]);
  written.push([gpt.backupEntriesLba * SECTOR_SIZE, (gpt.backupHeaderLba + 1) * SECTOR_SIZE]);
  written.sort((a, b) => a[0] - b[0]);
  return { gpt, written };
}
