// Table-driven CRC-32 variants used by on-disk formats: the IEEE one (GPT headers and entry arrays)
// and Castagnoli's (btrfs tree blocks, superblocks, data checksums and directory name hashes).

/** Reflected IEEE 802.3 polynomial; UEFI spec §5.3.2 names it for the GPT header and entry CRC32. */
const CRC32_IEEE_POLY = 0xedb88320;
/** Reflected Castagnoli polynomial (iSCSI, RFC 3720 §B.4); btrfs csum_type 0 "crc32c". */
const CRC32C_POLY = 0x82f63b78;

function makeTable(poly: number): Uint32Array {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
}

const IEEE_TABLE = makeTable(CRC32_IEEE_POLY);
const CASTAGNOLI_TABLE = makeTable(CRC32C_POLY);

function update(table: Uint32Array, register: number, data: Uint8Array): number {
  let c = register >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** CRC-32 (IEEE) as zlib and the UEFI spec compute it: initial value and final XOR 0xFFFFFFFF. */
export function crc32(data: Uint8Array): number {
  return (update(IEEE_TABLE, 0xffffffff, data) ^ 0xffffffff) >>> 0;
}

/** CRC-32C with the conventional initial value and final XOR 0xFFFFFFFF (btrfs block checksums). */
export function crc32c(data: Uint8Array): number {
  return (update(CASTAGNOLI_TABLE, 0xffffffff, data) ^ 0xffffffff) >>> 0;
}

/**
 * The raw CRC-32C register after `data`, starting from `seed`, without the final XOR. btrfs hashes
 * directory entry names this way with seed ~1 (btrfs_name_hash in btrfs-progs kernel-shared/).
 */
export function crc32cRaw(seed: number, data: Uint8Array): number {
  return update(CASTAGNOLI_TABLE, seed, data);
}
