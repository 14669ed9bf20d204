// Sparse copies, data-range scanning and bmap files, checked with bmaptool (copy and create) and cmp.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { InputError, VerificationError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { readBmap, verifyImageWithBmap, writeBmap } from '../images/bmap.ts';
import { buildBtrfs } from '../images/btrfs.ts';
import { writeExt4Files } from '../images/ext4.ts';
import { writeFatFiles } from '../images/fat.ts';
import { emptyGpt, PartitionType, writeGpt } from '../images/gpt.ts';
import { derivedUuid } from '../images/guid.ts';
import { withPartition } from '../images/partition.ts';
import { addRange, alignRanges, copySparse, mergeRanges, scanDataRanges, type ByteRange } from '../images/sparse.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const MiB = 1024 * 1024;

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'bmap');

/** Random bytes none of which is zero: a spot must be data, even the one-byte spot (a random byte is 0 once in 256). */
function nonZeroBytes(len: number): Buffer {
  const b = randomBytes(len);
  for (let i = 0; i < len; i++) if (b[i] === 0) b[i] = 1 + (i % 255);
  return b;
}

/** A sparse file of `size` bytes with random non-zero data at the given [offset, length) spots. */
async function makeImage(path: string, size: number, spots: Array<[number, number]>): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    for (const [at, len] of spots) await fh.write(nonZeroBytes(len), 0, len, at);
  } finally {
    await fh.close();
  }
}

const SPOTS: Array<[number, number]> = [
  [0, 512], // a partial first block
  [MiB - 100, 300], // crosses a 1 MiB read boundary
  [5 * MiB + 4096, 3 * 4096], // three whole blocks
  [40 * MiB + 17, 1], // one byte
];
const SPOT_BLOCKS: ByteRange[] = [
  [0, 4096],
  [MiB - 4096, MiB + 4096],
  [5 * MiB + 4096, 5 * MiB + 4 * 4096],
  [40 * MiB, 40 * MiB + 4096],
];

test('range helpers merge, add and align', () => {
  const cases: Array<[ByteRange[], ByteRange[]]> = [
    [[], []],
    [[[10, 20], [0, 5]], [[0, 5], [10, 20]]],
    [[[0, 10], [10, 20]], [[0, 20]]],
    [[[0, 10], [5, 8], [9, 30], [40, 40]], [[0, 30]]],
  ];
  for (const [input, want] of cases) assert.deepEqual(mergeRanges(input), want);
  assert.deepEqual(addRange([[0, 4096]], [8192, 9000]), [[0, 4096], [8192, 9000]]);
  assert.deepEqual(addRange([[0, 4096]], [4000, 9000]), [[0, 9000]]);
  assert.deepEqual(alignRanges([[1, 2], [8200, 8201]], 10050), [[0, 4096], [8192, 10050]]);
  assert.deepEqual(alignRanges([[1, 2], [4097, 4098]], 10050), [[0, 8192]]);
});

test('scanDataRanges finds the non-zero 4 KiB blocks', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'a.img');
  await makeImage(img, 64 * MiB + 1000, [...SPOTS, [64 * MiB + 10, 5]]);
  assert.deepEqual(await scanDataRanges(img), [...SPOT_BLOCKS, [64 * MiB, 64 * MiB + 1000]]);
  assert.deepEqual(await scanDataRanges(img, { start: MiB, end: 6 * MiB }), [[MiB, MiB + 4096], [5 * MiB + 4096, 5 * MiB + 4 * 4096]]);
});

test('copySparse copies data and keeps holes, with and without known ranges', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'a.img');
  await makeImage(img, 48 * MiB, SPOTS);
  const original = await readFile(img);
  for (const variant of ['scan', 'ranges', 'default'] as const) {
    const dest = join(dir, `copy-${variant}.img`);
    const result =
      variant === 'default'
        ? await copySparse(img, dest)
        : await copySparse(img, dest, { reflink: false, dataRanges: variant === 'ranges' ? SPOT_BLOCKS : undefined });
    assert.ok((await readFile(dest)).equals(original), variant);
    if (variant !== 'default') {
      assert.equal(result.method, 'ranges');
      assert.deepEqual(result.dataRanges, SPOT_BLOCKS);
      // Allocated size stays near the data size (ext4 may add a block of metadata per extent).
      assert.ok((await stat(dest)).blocks * 512 < 1 * MiB, `${variant} copy is sparse`);
    } else {
      assert.ok(result.method === 'reflink' || result.method === 'ranges');
    }
  }
  const aborted = AbortSignal.abort();
  await assert.rejects(copySparse(img, join(dir, 'x.img'), { reflink: false, signal: aborted }), { name: 'InterruptedError' });
});

test('writeBmap: bmaptool copy reproduces the image and rejects wrong checksums', async (t) => {
  const dir = await tempDir(t);
  const raw = join(dir, 'raw.img');
  await makeImage(raw, 64 * MiB, SPOTS.slice(1));
  await run('sgdisk', ['-o', '-n', '1:2048:+16M', '-c', '1:DATA', raw]);
  // Copied sparsely, the zero blocks sgdisk wrote become holes: allocated blocks = data blocks,
  // so bmaptool's FIEMAP-based map and ours must agree.
  const img = join(dir, 'disk.img');
  const { dataRanges } = await copySparse(raw, img, { reflink: false });
  const ranges = await scanDataRanges(img);
  assert.deepEqual(ranges, dataRanges);
  const bmapPath = join(dir, 'disk.img.bmap');
  const bmap = await writeBmap(img, ranges, bmapPath);
  assert.equal(bmap.blocksCount, 16384);
  assert.equal(bmap.mappedBlocksCount, ranges.reduce((n, [s, e]) => n + (e - s) / 4096, 0));

  // Deterministic: the same image and ranges give the same bytes.
  const text = await readFile(bmapPath, 'utf8');
  await writeBmap(img, ranges, join(dir, 'again.bmap'));
  assert.equal(await readFile(join(dir, 'again.bmap'), 'utf8'), text);
  assert.deepEqual(await readBmap(bmapPath), bmap);
  await verifyImageWithBmap(img, bmap);

  const out = join(dir, 'out.img');
  await run('bmaptool', ['copy', '--bmap', bmapPath, img, out]);
  await run('cmp', [img, out]);

  // bmaptool's own map of the same file lists the same blocks and checksums, and readBmap accepts it.
  await run('bmaptool', ['create', '-o', join(dir, 'theirs.bmap'), img]);
  const theirs = await readBmap(join(dir, 'theirs.bmap'));
  assert.deepEqual(theirs.ranges, bmap.ranges);

  // A range checksum that does not match the data: bmaptool refuses (the file checksum is re-done,
  // so it is the range checksum that fails).
  const wrongRange = text.replace(bmap.ranges[1]!.chksum, 'f'.repeat(64));
  const resigned = await resign(wrongRange);
  await writeFile(join(dir, 'bad-range.bmap'), resigned);
  await readBmap(join(dir, 'bad-range.bmap'));
  await assert.rejects(run('bmaptool', ['copy', '--bmap', join(dir, 'bad-range.bmap'), img, join(dir, 'out2.img')]), /checksum mismatch/);
  // Changed image bytes are caught the same way, by bmaptool and by verifyImageWithBmap.
  const fh = await open(img, 'r+');
  await fh.write(Buffer.from([0x42]), 0, 1, 5 * MiB + 4096 + 7);
  await fh.close();
  await assert.rejects(run('bmaptool', ['copy', '--bmap', bmapPath, img, join(dir, 'out3.img')]), /checksum mismatch/);
  await assert.rejects(verifyImageWithBmap(img, bmap), VerificationError);

  // An edited bmap without a new file checksum fails readBmap and bmaptool alike.
  await writeFile(join(dir, 'edited.bmap'), wrongRange);
  await assert.rejects(readBmap(join(dir, 'edited.bmap')), (e: unknown) => e instanceof VerificationError && /BmapFileChecksum/.test(e.message));
  await assert.rejects(run('bmaptool', ['copy', '--bmap', join(dir, 'edited.bmap'), img, join(dir, 'out4.img')]), /checksum mismatch for bmap file/);
  await writeFile(join(dir, 'junk.bmap'), '<xml/>');
  await assert.rejects(readBmap(join(dir, 'junk.bmap')), InputError);
});

/** Recompute BmapFileChecksum the way bmaptool verifies it: over the file with the value zeroed. */
async function resign(text: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  const m = /<BmapFileChecksum> ([0-9a-f]{64}) </.exec(text)!;
  const zeroed = text.replace(m[1]!, '0'.repeat(64));
  return zeroed.replace('0'.repeat(64), createHash('sha256').update(zeroed).digest('hex'));
}

test('partition edits report what they wrote: base map plus those ranges make a bmap that reproduces the image', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'base.img');
  // A small disk laid out like Flatcar's: ESP (FAT32), OEM (btrfs), ROOT (ext4), each found by name.
  const ESP = { first: 2048, sectors: 262144 };
  const OEM = { first: 264192, sectors: 65536 };
  const ROOT = { first: 329728, sectors: 131072 };
  await makeImage(img, 240 * MiB, []);
  const gpt = emptyGpt((240 * MiB) / 512, derivedUuid('disk'));
  const part = (number: number, name: string, typeGuid: string, p: { first: number; sectors: number }) =>
    ({ number, name, typeGuid, uniqueGuid: derivedUuid(name), firstLba: p.first, lastLba: p.first + p.sectors - 1, attributes: 0n });
  gpt.partitions = [part(1, 'EFI-SYSTEM', PartitionType.efiSystem, ESP), part(6, 'OEM', PartitionType.linuxData, OEM), part(9, 'ROOT', PartitionType.flatcarResize, ROOT)];
  await writeGpt(img, gpt);
  await run('mkfs.vfat', ['-F', '32', '-n', 'EFI-SYSTEM', '-i', '12345678', '--offset', String(ESP.first), img, String(ESP.sectors / 2)]);
  await run('mke2fs', ['-q', '-t', 'ext4', '-L', 'ROOT', '-E', `offset=${ROOT.first * 512}`, img, `${ROOT.sectors / 2}k`]);
  const base = await scanDataRanges(img);

  const copy = join(dir, 'node.img');
  const { dataRanges } = await copySparse(img, copy, { dataRanges: base });
  let ranges = mergeRanges(dataRanges!);
  const oem = await withPartition(copy, { label: 'OEM' }, async (p) => {
    const fs = await buildBtrfs({ label: 'OEM', sizeBytes: p.size, files: [{ path: '/config.ign', data: '{}' }], fsUuid: derivedUuid('oem'), epoch: 1, workDir: dir });
    return p.writeFile(fs);
  });
  assert.deepEqual(oem.written, oem.value);
  const esp = await withPartition(copy, { typeGuid: PartitionType.efiSystem }, async (p) => {
    await writeFatFiles(copy, p.offset, [{ path: '/config.txt', data: 'arm_64bit=1\n' }], { epoch: 1700000000, workDir: dir });
    await p.rescan();
  });
  const root = await withPartition(copy, { label: 'ROOT' }, async (p) => {
    await writeExt4Files(copy, { offset: p.offset }, [{ path: '/opt/x', type: 'file', data: 'x', mode: 0o644 }], { epoch: 1, workDir: dir });
    await p.rescan();
  });
  for (const edit of [oem, esp, root]) ranges = mergeRanges([...ranges, ...edit.written]);
  await assert.rejects(withPartition(copy, { label: 'OEM' }, async (p) => p.wrote([[0, 512]])), /outside its span/);

  // Every data block of the edited image is in the map, so bmaptool reproduces it exactly.
  const bmapPath = join(dir, 'node.img.bmap');
  await writeBmap(copy, ranges, bmapPath);
  const out = join(dir, 'flashed.img');
  await run('bmaptool', ['copy', '--bmap', bmapPath, copy, out]);
  await run('cmp', [copy, out]);
  assert.match((await run('sgdisk', ['-v', copy])).stdout, /No problems found/);
});
