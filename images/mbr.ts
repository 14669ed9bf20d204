// MBR (DOS) partition tables, read-only: enough to find the partitions of a Raspberry Pi image such
// as HypriotOS, whose boot config names them by the disk signature (PARTUUID=<sig>-0N).
import { open } from 'node:fs/promises';
import { InputError } from '../builders/errors.ts';

/** Sector size of the MBR scheme's LBA fields. */
export const MBR_SECTOR = 512;
/** Offset of the 32-bit disk signature (Windows NT disk signature, used by Linux as PARTUUID prefix). */
const DISK_SIGNATURE_OFFSET = 440;
/** Offset of the four 16-byte primary partition entries. */
const PARTITION_TABLE_OFFSET = 446;
const PARTITION_ENTRY_SIZE = 16;
/** Boot signature 0x55 0xAA at bytes 510-511. */
const BOOT_SIGNATURE_OFFSET = 510;
/** Type byte of the protective MBR of a GPT disk (UEFI spec §5.2.3). */
export const MBR_TYPE_GPT_PROTECTIVE = 0xee;
/** FAT type bytes: FAT12, FAT16 <32M, FAT16, FAT32 CHS, FAT32 LBA, FAT16 LBA. */
export const MBR_FAT_TYPES = new Set([0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e]);
export const MBR_LINUX_TYPE = 0x83;

export interface MbrPartition {
  /** 1-based, as Linux numbers primary partitions. */
  number: number;
  type: number;
  bootable: boolean;
  firstLba: number;
  sectors: number;
}

export interface Mbr {
  /** The disk signature as Linux prints it in PARTUUIDs: 8 lower-case hex digits. */
  diskSignature: string;
  partitions: MbrPartition[];
}

export async function readMbr(path: string): Promise<Mbr> {
  const fh = await open(path, 'r');
  const sector = Buffer.alloc(MBR_SECTOR);
  try {
    await fh.read(sector, 0, MBR_SECTOR, 0);
  } finally {
    await fh.close();
  }
  if (sector.readUInt16LE(BOOT_SIGNATURE_OFFSET) !== 0xaa55) {
    throw new InputError(`${path} has no MBR partition table (no 0x55AA boot signature)`, { hint: 'is this a disk image?' });
  }
  const partitions: MbrPartition[] = [];
  for (let i = 0; i < 4; i++) {
    const e = PARTITION_TABLE_OFFSET + i * PARTITION_ENTRY_SIZE;
    const type = sector[e + 4]!;
    const sectors = sector.readUInt32LE(e + 12);
    if (type === 0 || sectors === 0) continue;
    partitions.push({ number: i + 1, type, bootable: sector[e] === 0x80, firstLba: sector.readUInt32LE(e + 8), sectors });
  }
  return { diskSignature: sector.readUInt32LE(DISK_SIGNATURE_OFFSET).toString(16).padStart(8, '0'), partitions };
}

export function mbrPartitionBytes(p: MbrPartition): { offset: number; size: number } {
  return { offset: p.firstLba * MBR_SECTOR, size: p.sectors * MBR_SECTOR };
}
