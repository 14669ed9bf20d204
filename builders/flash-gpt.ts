// Moving an image's backup GPT to the end of a larger drive while flashing (UEFI 2.10 §5.3.2: the
// backup header must be the disk's last LBA). images/gpt.ts works on whole image files by path; a
// flash only has the image's first MiB in memory and a drive that is not a file, so this computes
// the changed sectors from that buffer: the primary header (AlternateLBA, LastUsableLBA, CRC32), the
// protective MBR's size, the new backup entries and header, and zeros over the old backup.
import { crc32 } from '../images/crc32.ts';
import { SECTOR_SIZE } from '../images/gpt.ts';

/** "EFI PART" (UEFI 2.10 Table 5-5, Signature). */
const GPT_SIGNATURE = Buffer.from('EFI PART', 'ascii');
/** GPT header field offsets (UEFI 2.10 Table 5-5 "GPT Header"). */
const HDR_SIZE = 12;
const HDR_CRC32 = 16;
const HDR_MY_LBA = 24;
const HDR_ALTERNATE_LBA = 32;
const HDR_LAST_USABLE_LBA = 48;
const HDR_ENTRY_LBA = 72;
const HDR_ENTRY_COUNT = 80;
const HDR_ENTRY_SIZE = 84;
const HDR_ENTRY_ARRAY_CRC32 = 88;
/** The smallest valid HeaderSize (the defined fields). */
const GPT_HEADER_MIN_SIZE = 92;
const PRIMARY_HEADER_LBA = 1;
/** Protective MBR (UEFI 2.10 §5.2.3, Table 5-4): records at 446, 16 bytes each, signature 0xAA55 at 510. */
const MBR_PARTITION_TABLE = 446;
const MBR_RECORD_SIZE = 16;
const MBR_SIGNATURE_OFFSET = 510;
const MBR_SIGNATURE = 0xaa55;
const MBR_TYPE_GPT_PROTECTIVE = 0xee;
/** Record fields: OSType at 4, EndingCHS at 5 (3 bytes), StartingLBA at 8, SizeInLBA at 12. */
const REC_OS_TYPE = 4;
const REC_ENDING_CHS = 5;
const REC_STARTING_LBA = 8;
const REC_SIZE_IN_LBA = 12;
const MBR_MAX_LBA_COUNT = 0xffffffff;
/** Legacy CHS geometry for the EndingCHS field; 0xFFFFFF once beyond CHS reach. */
const CHS_HEADS = 255;
const CHS_SECTORS = 63;
const CHS_MAX_CYLINDER = 1023;

export interface ImageGpt {
  headerSize: number;
  alternateLba: number;
  lastUsableLba: number;
  entryLba: number;
  entrySectors: number;
}

/** Bytes to put at `pos` instead of what the image has there (or beyond the image's end). */
export interface Patch {
  pos: number;
  data: Buffer;
}

export interface GptRelocation {
  /** Changes inside the image's extent: protective MBR, primary header, the old backup zeroed. */
  patches: Patch[];
  /** The new backup entry array and header at the drive's end. */
  extra: Patch;
}

const u64 = (b: Buffer, at: number) => Number(b.readBigUInt64LE(at));
const setU64 = (b: Buffer, at: number, v: number) => b.writeBigUInt64LE(BigInt(v), at);

function sealHeader(h: Buffer, size: number): void {
  h.writeUInt32LE(0, HDR_CRC32);
  h.writeUInt32LE(crc32(h.subarray(0, size)), HDR_CRC32);
}

/**
 * The primary GPT of an image from its first bytes; undefined when there is none, a string saying
 * what is wrong when there is a damaged one (the image is then flashed as it is).
 */
export function readPrimaryGpt(head: Buffer): ImageGpt | string | undefined {
  const h = head.subarray(PRIMARY_HEADER_LBA * SECTOR_SIZE, (PRIMARY_HEADER_LBA + 1) * SECTOR_SIZE);
  if (h.length < SECTOR_SIZE || !h.subarray(0, GPT_SIGNATURE.length).equals(GPT_SIGNATURE)) return undefined;
  const headerSize = h.readUInt32LE(HDR_SIZE);
  if (headerSize < GPT_HEADER_MIN_SIZE || headerSize > SECTOR_SIZE) return `header size ${headerSize}`;
  const copy = Buffer.from(h);
  sealHeader(copy, headerSize);
  if (copy.readUInt32LE(HDR_CRC32) !== h.readUInt32LE(HDR_CRC32)) return 'header CRC32 mismatch';
  if (u64(h, HDR_MY_LBA) !== PRIMARY_HEADER_LBA) return 'MyLBA is not 1';
  const entryLba = u64(h, HDR_ENTRY_LBA);
  const arrayBytes = h.readUInt32LE(HDR_ENTRY_COUNT) * h.readUInt32LE(HDR_ENTRY_SIZE);
  const entrySectors = Math.ceil(arrayBytes / SECTOR_SIZE);
  if ((entryLba + entrySectors) * SECTOR_SIZE > head.length) return 'entry array beyond the first MiB';
  const array = head.subarray(entryLba * SECTOR_SIZE, entryLba * SECTOR_SIZE + arrayBytes);
  if (crc32(array) !== h.readUInt32LE(HDR_ENTRY_ARRAY_CRC32)) return 'entry array CRC32 mismatch';
  return { headerSize, alternateLba: u64(h, HDR_ALTERNATE_LBA), lastUsableLba: u64(h, HDR_LAST_USABLE_LBA), entryLba, entrySectors };
}

function chsOf(lba: number): [number, number, number] {
  const cylinder = Math.floor(lba / (CHS_HEADS * CHS_SECTORS));
  if (cylinder > CHS_MAX_CYLINDER) return [0xff, 0xff, 0xff];
  const rest = lba % (CHS_HEADS * CHS_SECTORS);
  return [Math.floor(rest / CHS_SECTORS), ((rest % CHS_SECTORS) + 1) | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

/** The protective MBR resized to the drive, if its 0xEE record covered exactly the image (not a hybrid MBR). */
function resizedMbr(head: Buffer, imageLastLba: number, driveLastLba: number): Buffer | undefined {
  const mbr = Buffer.from(head.subarray(0, SECTOR_SIZE));
  if (mbr.readUInt16LE(MBR_SIGNATURE_OFFSET) !== MBR_SIGNATURE) return undefined;
  for (let i = 0; i < 4; i++) {
    const r = MBR_PARTITION_TABLE + i * MBR_RECORD_SIZE;
    if (mbr[r + REC_OS_TYPE] !== MBR_TYPE_GPT_PROTECTIVE) continue;
    const whole = mbr.readUInt32LE(r + REC_STARTING_LBA) === PRIMARY_HEADER_LBA && mbr.readUInt32LE(r + REC_SIZE_IN_LBA) === Math.min(imageLastLba, MBR_MAX_LBA_COUNT);
    if (!whole) return undefined;
    const size = Math.min(driveLastLba, MBR_MAX_LBA_COUNT);
    mbr.set(chsOf(size), r + REC_ENDING_CHS);
    mbr.writeUInt32LE(size, r + REC_SIZE_IN_LBA);
    return mbr;
  }
  return undefined;
}

/**
 * What to write so a drive of `driveBytes` gets a valid GPT over its whole size; undefined when the
 * image's backup already sits on the drive's last sector (or the image's backup is not at its end).
 */
export function relocateGpt(head: Buffer, gpt: ImageGpt, imageSize: number | undefined, driveBytes: number): GptRelocation | undefined {
  const driveLastLba = Math.floor(driveBytes / SECTOR_SIZE) - 1;
  if (driveLastLba <= gpt.alternateLba) return undefined;
  if (imageSize !== undefined && imageSize !== (gpt.alternateLba + 1) * SECTOR_SIZE) return undefined;
  const newEntryLba = driveLastLba - gpt.entrySectors;
  const lastUsable = newEntryLba - 1;
  const primary = Buffer.from(head.subarray(PRIMARY_HEADER_LBA * SECTOR_SIZE, (PRIMARY_HEADER_LBA + 1) * SECTOR_SIZE));
  setU64(primary, HDR_ALTERNATE_LBA, driveLastLba);
  setU64(primary, HDR_LAST_USABLE_LBA, lastUsable);
  sealHeader(primary, gpt.headerSize);
  const backup = Buffer.from(primary);
  setU64(backup, HDR_MY_LBA, driveLastLba);
  setU64(backup, HDR_ALTERNATE_LBA, PRIMARY_HEADER_LBA);
  setU64(backup, HDR_ENTRY_LBA, newEntryLba);
  sealHeader(backup, gpt.headerSize);
  const array = head.subarray(gpt.entryLba * SECTOR_SIZE, (gpt.entryLba + gpt.entrySectors) * SECTOR_SIZE);

  const patches: Patch[] = [];
  const mbr = resizedMbr(head, gpt.alternateLba, driveLastLba);
  if (mbr) patches.push({ pos: 0, data: mbr });
  patches.push({ pos: PRIMARY_HEADER_LBA * SECTOR_SIZE, data: primary });
  // The old backup now lies inside the drive's free space: clear it so nothing takes it for a table.
  const oldStart = gpt.alternateLba - gpt.entrySectors;
  if (oldStart > gpt.lastUsableLba) patches.push({ pos: oldStart * SECTOR_SIZE, data: Buffer.alloc((gpt.entrySectors + 1) * SECTOR_SIZE) });
  return { patches, extra: { pos: newEntryLba * SECTOR_SIZE, data: Buffer.concat([array, backup]) } };
}
