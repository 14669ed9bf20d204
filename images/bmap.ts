// bmap 2.0 files (yoctoproject/bmaptool; flashing-and-publishing.md §2.1): which 4 KiB blocks of a
// sparse image hold data, with a SHA-256 per range, so flashing writes only those and checks them.
import { createHash } from 'node:crypto';
import { open, readFile, rename, writeFile } from 'node:fs/promises';
import { InputError, InterruptedError, VerificationError } from '../builders/errors.ts';
import { alignRanges, type ByteRange } from './sparse.ts';

/** The format version written; readers reject a higher major version. */
export const BMAP_VERSION = '2.0';
/** Bytes per block: bmaptool's default (FIGETBSZ on ext4) and the image's hole granularity. */
export const BMAP_BLOCK_SIZE = 4096;
/** ChecksumType: a hashlib algorithm name; 2.0 made sha256 the default. */
export const BMAP_CHECKSUM_TYPE = 'sha256';
/** Length of a SHA-256 hex digest: the BmapFileChecksum placeholder is this many ASCII '0's. */
const SHA256_HEX_LENGTH = 64;
const IO_CHUNK = 1024 * 1024;

export interface BmapRange {
  /** First and last block, inclusive. */
  first: number;
  last: number;
  /** Hex digest of the range's bytes (the last block only up to the image end). */
  chksum: string;
}

export interface Bmap {
  version: string;
  imageSize: number;
  blockSize: number;
  blocksCount: number;
  mappedBlocksCount: number;
  checksumType: string;
  ranges: BmapRange[];
}

function renderBmap(b: Omit<Bmap, 'version'>, fileChecksum: string): string {
  const lines = [
    '<?xml version="1.0" ?>',
    '<!-- Block map (bmap) of a sparse disk image: the blocks listed below hold data, all other',
    '     blocks are zeros and need not be written. Written by bramble. -->',
    `<bmap version="${BMAP_VERSION}">`,
    '    <!-- Image size in bytes -->',
    `    <ImageSize> ${b.imageSize} </ImageSize>`,
    '',
    '    <!-- Size of a block in bytes -->',
    `    <BlockSize> ${b.blockSize} </BlockSize>`,
    '',
    '    <!-- Count of blocks in the image -->',
    `    <BlocksCount> ${b.blocksCount} </BlocksCount>`,
    '',
    '    <!-- Count of mapped (data) blocks -->',
    `    <MappedBlocksCount> ${b.mappedBlocksCount} </MappedBlocksCount>`,
    '',
    '    <!-- Hash function of the checksums in this file -->',
    `    <ChecksumType> ${b.checksumType} </ChecksumType>`,
    '',
    '    <!-- Checksum of this file, computed with this value set to all ASCII "0" characters -->',
    `    <BmapFileChecksum> ${fileChecksum} </BmapFileChecksum>`,
    '',
    '    <!-- Mapped block ranges (first-last, inclusive, or one block) and the checksum of their bytes -->',
    '    <BlockMap>',
    ...b.ranges.map((r) => `        <Range chksum="${r.chksum}"> ${r.first === r.last ? r.first : `${r.first}-${r.last}`} </Range>`),
    '    </BlockMap>',
    '</bmap>',
    '',
  ];
  return lines.join('\n');
}

/**
 * Write `bmapPath` for `imagePath` from the byte ranges that hold data (the base image's map plus
 * what the build wrote); ranges are widened to whole blocks. Written to a temp name, then renamed.
 */
export async function writeBmap(
  imagePath: string,
  dataRanges: readonly ByteRange[],
  bmapPath: string,
  opts: { signal?: AbortSignal } = {},
): Promise<Bmap> {
  const fh = await open(imagePath, 'r');
  const ranges: BmapRange[] = [];
  let imageSize: number;
  try {
    imageSize = (await fh.stat()).size;
    const buf = Buffer.alloc(IO_CHUNK);
    for (const [start, end] of alignRanges(dataRanges, imageSize, BMAP_BLOCK_SIZE)) {
      if (start >= imageSize) break;
      const hash = createHash(BMAP_CHECKSUM_TYPE);
      for (let pos = start; pos < end; pos += IO_CHUNK) {
        if (opts.signal?.aborted) throw new InterruptedError();
        const want = Math.min(IO_CHUNK, end - pos);
        let got = 0;
        while (got < want) {
          const { bytesRead } = await fh.read(buf, got, want - got, pos + got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        hash.update(buf.subarray(0, got));
      }
      ranges.push({ first: start / BMAP_BLOCK_SIZE, last: Math.ceil(end / BMAP_BLOCK_SIZE) - 1, chksum: hash.digest('hex') });
    }
  } finally {
    await fh.close();
  }
  const bmap: Bmap = {
    version: BMAP_VERSION,
    imageSize,
    blockSize: BMAP_BLOCK_SIZE,
    blocksCount: Math.ceil(imageSize / BMAP_BLOCK_SIZE),
    mappedBlocksCount: ranges.reduce((n, r) => n + r.last - r.first + 1, 0),
    checksumType: BMAP_CHECKSUM_TYPE,
    ranges,
  };
  const unsigned = renderBmap(bmap, '0'.repeat(SHA256_HEX_LENGTH));
  const text = renderBmap(bmap, createHash(BMAP_CHECKSUM_TYPE).update(unsigned).digest('hex'));
  const tmp = `${bmapPath}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, bmapPath);
  return bmap;
}

function element(xml: string, name: string, file: string): string {
  const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
  if (!m) throw new InputError(`${file}: not a bmap file: no <${name}> element`);
  return m[1]!.trim();
}

function integer(xml: string, name: string, file: string): number {
  const text = element(xml, name, file);
  if (!/^\d+$/.test(text)) throw new InputError(`${file}: <${name}> is not a number: ${JSON.stringify(text)}`);
  return Number(text);
}

/** Parse and check a bmap 2.x file: its own checksum, the counts, and that ranges are ordered and in bounds. */
/** The image byte ranges a bmap maps (its last block cut at the image size). */
export function bmapByteRanges(bmap: Bmap): ByteRange[] {
  return bmap.ranges.map((r): ByteRange => [r.first * bmap.blockSize, Math.min((r.last + 1) * bmap.blockSize, bmap.imageSize)]);
}

export async function readBmap(path: string): Promise<Bmap> {
  const raw = await readFile(path);
  const xml = raw.toString('utf8').replace(/<!--[\s\S]*?-->/g, '');
  const version = /<bmap\s+version="(\d+)\.(\d+)"\s*>/.exec(xml);
  if (!version) throw new InputError(`${path}: not a bmap file (no <bmap version="...">)`);
  if (Number(version[1]) !== 2) throw new InputError(`${path}: bmap format ${version[1]}.${version[2]} is not supported (only 2.x)`);
  const checksumType = element(xml, 'ChecksumType', path);
  if (checksumType !== 'sha256' && checksumType !== 'sha512') throw new InputError(`${path}: unsupported ChecksumType ${checksumType}`);
  const stored = element(xml, 'BmapFileChecksum', path);
  const at = raw.indexOf(stored);
  const zeroed = Buffer.from(raw);
  zeroed.fill('0', at, at + stored.length);
  const actual = createHash(checksumType).update(zeroed).digest('hex');
  if (actual !== stored) {
    throw new VerificationError(`${path} (BmapFileChecksum)`, stored, actual, { hint: 'the bmap file was changed or damaged; rebuild or download it again' });
  }
  const bmap: Bmap = {
    version: `${version[1]}.${version[2]}`,
    imageSize: integer(xml, 'ImageSize', path),
    blockSize: integer(xml, 'BlockSize', path),
    blocksCount: integer(xml, 'BlocksCount', path),
    mappedBlocksCount: integer(xml, 'MappedBlocksCount', path),
    checksumType,
    ranges: [],
  };
  if (bmap.blockSize === 0 || bmap.blocksCount !== Math.ceil(bmap.imageSize / bmap.blockSize)) {
    throw new InputError(`${path}: BlocksCount ${bmap.blocksCount} does not match ImageSize ${bmap.imageSize} / BlockSize ${bmap.blockSize}`);
  }
  const rangePattern = /<Range(?:\s+chksum="([0-9a-f]+)")?\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*<\/Range>/g;
  let mapped = 0;
  for (const m of xml.matchAll(rangePattern)) {
    const first = Number(m[2]);
    const last = m[3] === undefined ? first : Number(m[3]);
    const prev = bmap.ranges[bmap.ranges.length - 1];
    if (last < first || last >= bmap.blocksCount || (prev && first <= prev.last)) {
      throw new InputError(`${path}: block range ${first}-${last} is out of order or out of bounds`);
    }
    if (!m[1]) throw new InputError(`${path}: block range ${first}-${last} has no checksum`);
    bmap.ranges.push({ first, last, chksum: m[1] });
    mapped += last - first + 1;
  }
  if (mapped !== bmap.mappedBlocksCount) throw new InputError(`${path}: MappedBlocksCount ${bmap.mappedBlocksCount} but the ranges hold ${mapped} blocks`);
  return bmap;
}

/** Check an image's mapped ranges against a bmap's checksums (what bmaptool checks while copying). */
export async function verifyImageWithBmap(imagePath: string, bmap: Bmap, opts: { signal?: AbortSignal } = {}): Promise<void> {
  const fh = await open(imagePath, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size !== bmap.imageSize) throw new VerificationError(`${imagePath} (size)`, String(bmap.imageSize), String(size));
    const buf = Buffer.alloc(IO_CHUNK);
    for (const r of bmap.ranges) {
      const hash = createHash(bmap.checksumType);
      const end = Math.min((r.last + 1) * bmap.blockSize, size);
      for (let pos = r.first * bmap.blockSize; pos < end; pos += IO_CHUNK) {
        if (opts.signal?.aborted) throw new InterruptedError();
        const { bytesRead } = await fh.read(buf, 0, Math.min(IO_CHUNK, end - pos), pos);
        hash.update(buf.subarray(0, bytesRead));
      }
      const actual = hash.digest('hex');
      if (actual !== r.chksum) throw new VerificationError(`${imagePath} blocks ${r.first}-${r.last}`, r.chksum, actual);
    }
  } finally {
    await fh.close();
  }
}
