// FAT edits inside a partition of an image file with mtools: fsck.vfat clean, read-back equal,
// reproducible across runs, and nothing outside the partition touched.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, open, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { fatDataRanges, listFat, readFatFile, removeFatFile, writeFatFiles } from '../images/fat.ts';
import { mergeRanges, scanDataRanges, type ByteRange } from '../images/sparse.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const MiB = 1024 * 1024;
const PART_OFFSET = 2 * MiB;
/** Flatcar's old-layout ESP size: 128 MiB, FAT32 forced (base-images.md §2.1). */
const PART_SIZE = 128 * MiB;
const IMAGE_SIZE = 160 * MiB;
const EPOCH = 1700000000;

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'fat');

/** A GPT image with an empty FAT32 ESP, random bytes around it to prove they stay put. */
async function makeImage(path: string): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(IMAGE_SIZE);
  await fh.write(randomBytes(MiB), 0, MiB, PART_OFFSET + PART_SIZE + MiB);
  await fh.close();
  await run('sgdisk', ['-o', '-n', `1:${PART_OFFSET / 512}:+${PART_SIZE / 512 - 1}`, '-t', '1:EF00', '-c', '1:EFI-SYSTEM', path]);
  await run('mkfs.vfat', ['-F', '32', '-n', 'EFI-SYSTEM', '-i', '4e1f5a11', '--offset', String(PART_OFFSET / 512), path, String(PART_SIZE / 1024)]);
}

async function hashRange(path: string, start: number, end: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(end - start);
    await fh.read(buf, 0, buf.length, start);
    return createHash('sha256').update(buf).digest('hex');
  } finally {
    await fh.close();
  }
}

async function outside(path: string): Promise<string[]> {
  return [await hashRange(path, 0, PART_OFFSET), await hashRange(path, PART_OFFSET + PART_SIZE, IMAGE_SIZE)];
}

async function fsckPartition(image: string, dir: string): Promise<string> {
  const part = join(dir, 'esp.part');
  const src = await open(image, 'r');
  const buf = Buffer.alloc(PART_SIZE);
  await src.read(buf, 0, PART_SIZE, PART_OFFSET);
  await src.close();
  await writeFile(part, buf);
  const r = await run('fsck.vfat', ['-n', part]);
  await rm(part);
  return r.stdout + r.stderr;
}

const configTxt = 'arm_64bit=1\nenable_uart=1\narmstub=RPI_EFI.fd\n';

async function edit(image: string, dir: string): Promise<void> {
  const firmware = join(dir, 'RPI_EFI.fd');
  await writeFile(firmware, randomBytesSeeded(3 * MiB + 123));
  await utimes(firmware, 1650000000, 1650000000);
  await writeFatFiles(
    image,
    PART_OFFSET,
    [
      { path: '/overlays/upstream-pi4.dtbo', data: Buffer.from('dtbo') },
      { path: '/config.txt', data: configTxt },
      { path: 'RPI_EFI.fd', source: firmware, mtime: 1650000000 },
      { path: '/EFI/boot/bootaa64.efi', data: randomBytesSeeded(200000) },
      { path: '/flatcar/first_boot', data: 'If this file exists, Ignition will run and then delete the file.\n' },
      { path: '/A Long File Name.txt', data: '' },
    ],
    { epoch: EPOCH, workDir: dir },
  );
  // Replacing an existing file.
  await writeFatFiles(image, PART_OFFSET, [{ path: '/config.txt', data: `${configTxt}dtoverlay=upstream-pi4\n` }], { epoch: EPOCH });
}

/** Deterministic pseudo-random bytes, so two runs write the same content. */
function randomBytesSeeded(n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update('seed').digest();
  for (let i = 0; i < n; i += 32) {
    block.copy(out, i, 0, Math.min(32, n - i));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

test('writes, lists, reads and removes files in a FAT32 partition, reproducibly', async (t) => {
  const dir = await tempDir(t);
  const a = join(dir, 'a.img');
  await makeImage(a);
  const b = join(dir, 'b.img');
  await copyFile(a, b);
  const before = await outside(a);

  await edit(a, dir);
  assert.deepEqual(await listFat(a, PART_OFFSET), [
    { path: '/A Long File Name.txt', type: 'file', size: 0 },
    { path: '/EFI', type: 'dir' },
    { path: '/EFI/boot', type: 'dir' },
    { path: '/EFI/boot/bootaa64.efi', type: 'file', size: 200000 },
    { path: '/RPI_EFI.fd', type: 'file', size: 3 * MiB + 123 },
    { path: '/config.txt', type: 'file', size: configTxt.length + 23 },
    { path: '/flatcar', type: 'dir' },
    { path: '/flatcar/first_boot', type: 'file', size: 65 },
    { path: '/overlays', type: 'dir' },
    { path: '/overlays/upstream-pi4.dtbo', type: 'file', size: 4 },
  ]);
  assert.equal((await readFatFile(a, PART_OFFSET, '/config.txt')).toString(), `${configTxt}dtoverlay=upstream-pi4\n`);
  assert.ok((await readFatFile(a, PART_OFFSET, 'EFI/boot/bootaa64.efi')).equals(randomBytesSeeded(200000)));
  assert.ok((await readFatFile(a, PART_OFFSET, '/RPI_EFI.fd')).equals(randomBytesSeeded(3 * MiB + 123)));
  const fsck = await fsckPartition(a, dir);
  assert.doesNotMatch(fsck, /differ|Free cluster summary wrong|Orphaned|Dirty bit/i);
  assert.deepEqual(await outside(a), before, 'bytes outside the partition are unchanged');

  // Same edits later in wall-clock time (beyond FAT's 2-second resolution): identical bytes.
  await sleep(2100);
  await edit(b, dir);
  await run('cmp', [a, b]);
  const { stdout } = await run('mdir', ['-i', `${a}@@${PART_OFFSET}`, '::/flatcar'], { env: { TZ: 'UTC' } });
  assert.match(stdout, /65 2023-11-14 +22:13 +first_boot/, 'files carry the epoch as their time');
  assert.match(stdout, /\.\s+<DIR>\s+2023-11-14 +22:13/, 'created directories carry the epoch too');

  await removeFatFile(a, PART_OFFSET, '/flatcar/first_boot', { epoch: EPOCH });
  assert.ok(!(await listFat(a, PART_OFFSET)).some((e) => e.path === '/flatcar/first_boot'));
  assert.doesNotMatch(await fsckPartition(a, dir), /differ|wrong|Orphaned/i);
  await assert.rejects(readFatFile(a, PART_OFFSET, '/flatcar/first_boot'), (e: unknown) => e instanceof InputError && /no file/.test(e.message));
  await assert.rejects(removeFatFile(a, PART_OFFSET, '/EFI'), /is a directory/);
  await assert.rejects(writeFatFiles(a, PART_OFFSET, [{ path: '/config.txt/x', data: 'x' }]), /is a file on the FAT filesystem/);
  await assert.rejects(writeFatFiles(a, PART_OFFSET, [{ path: '/bad?name', data: 'x' }]), InputError);
  assert.deepEqual(await outside(a), before);
});

/** Every range of `inner` lies inside the union of `outer`. */
function covered(inner: ByteRange[], outer: ByteRange[]): boolean {
  const union = mergeRanges(outer);
  return inner.every(([s, e]) => union.some(([us, ue]) => us <= s && e <= ue));
}

for (const variant of [
  { fat: '12', sizeKiB: 2048 },
  { fat: '16', sizeKiB: 64 * 1024 },
  { fat: '32', sizeKiB: 128 * 1024 },
]) {
  test(`fatDataRanges (FAT${variant.fat}) plus the map before the edit covers every data block after it`, async (t) => {
    const dir = await tempDir(t);
    const img = join(dir, 'fat.img');
    await run('mkfs.vfat', ['-C', '-F', variant.fat, '-i', '0badf00d', img, String(variant.sizeKiB)]);
    await writeFatFiles(img, 0, [{ path: '/old/file', data: randomBytesSeeded(50000) }, { path: '/keep', data: 'k' }], { epoch: EPOCH });
    const before = await scanDataRanges(img);
    // Replace a file (its old clusters are freed but keep their bytes) and add more.
    await writeFatFiles(
      img,
      0,
      [{ path: '/old/file', data: 'short now' }, { path: '/new/a.bin', data: randomBytesSeeded(300000) }, { path: '/new/b.txt', data: 'b' }],
      { epoch: EPOCH },
    );
    const map = await fatDataRanges(img, 0);
    const after = await scanDataRanges(img);
    assert.ok(covered(after, [...before, ...map]), 'no data block is missing');
    assert.ok(!covered(after, map), 'the stale clusters of the replaced file are only in the old map');
    const mapped = map.reduce((n, [s, e]) => n + e - s, 0);
    assert.ok(mapped < (variant.sizeKiB * 1024) / 4, `the map is far smaller than the filesystem (${mapped} bytes)`);
    await assert.rejects(fatDataRanges(img, 4096), InputError);
  });
}
