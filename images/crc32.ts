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

/** Eight tables for slicing-by-8 (8 bytes per step): table k maps a byte to its CRC k bytes further on. */
function makeSlicedTables(poly: number): Uint32Array[] {
  const t0 = makeTable(poly);
  const tables = [t0];
  for (let k = 1; k < 8; k++) {
    const prev = tables[k - 1]!;
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) t[n] = (prev[n]! >>> 8) ^ t0[prev[n]! & 0xff]!;
    tables.push(t);
  }
  return tables;
}

const IEEE_TABLES = makeSlicedTables(CRC32_IEEE_POLY);
const CASTAGNOLI_TABLES = makeSlicedTables(CRC32C_POLY);

function update(tables: Uint32Array[], register: number, data: Uint8Array): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = tables as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let c = register >>> 0;
  let i = 0;
  const n = data.length;
  for (; i + 8 <= n; i += 8) {
    const lo = (c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
    c =
      t7[lo & 0xff]! ^
      t6[(lo >>> 8) & 0xff]! ^
      t5[(lo >>> 16) & 0xff]! ^
      t4[lo >>> 24]! ^
      t3[data[i + 4]!]! ^
      t2[data[i + 5]!]! ^
      t1[data[i + 6]!]! ^
      t0[data[i + 7]!]!;
  }
  for (; i < n; i++) c = t0[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** CRC-32 (IEEE) as zlib and the UEFI spec compute it: initial value and final XOR 0xFFFFFFFF. */
export function crc32(data: Uint8Array): number {
  return (update(IEEE_TABLES, 0xffffffff, data) ^ 0xffffffff) >>> 0;
}

/** CRC-32C with the conventional initial value and final XOR 0xFFFFFFFF (btrfs block checksums). */
export function crc32c(data: Uint8Array): number {
  return (update(CASTAGNOLI_TABLES, 0xffffffff, data) ^ 0xffffffff) >>> 0;
}

/**
 * The raw CRC-32C register after `data`, starting from `seed`, without the final XOR. btrfs hashes
 * directory entry names this way with seed ~1 (btrfs_name_hash in btrfs-progs kernel-shared/).
 */
export function crc32cRaw(seed: number, data: Uint8Array): number {
  return update(CASTAGNOLI_TABLES, seed, data);
}
