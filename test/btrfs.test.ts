// The OEM btrfs writer, checked by btrfs-progs: `btrfs check` clean (data checksums included),
// `btrfs restore` reads every file back, two builds are byte-identical, other inputs give another
// fsid; then written into a partition of an image without touching anything around it.
import { strict as assert } from 'node:assert';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { buildBtrfs, buildBtrfsImage, listBtrfs, readBtrfsFile, writePartition, type BtrfsFile } from '../images/btrfs.ts';
import { emptyGpt, findPartition, partitionBytes, PartitionType, readGpt, writeGpt } from '../images/gpt.ts';
import { derivedUuid } from '../images/guid.ts';
import { extractPartition } from '../images/partition.ts';
import { copySparse, scanDataRanges } from '../images/sparse.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const MiB = 1024 * 1024;
const EPOCH = 1700000000;

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'btrfs');

/** Deterministic pseudo-random bytes (AES-CTR keyed by the label), so builds can be compared. */
function seeded(label: string, n: number): Buffer {
  const key = createHash('sha256').update(label).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

/** An OEM like the build writes, plus enough files for multi-level trees and a file across the 64 MiB superblock copy. */
const oemCache = new Map<string, BtrfsFile[]>();
function oemFiles(node: string): BtrfsFile[] {
  const hit = oemCache.get(node);
  if (hit) return hit;
  const files: BtrfsFile[] = [
    { path: '/config.ign', data: JSON.stringify({ ignition: { version: '3.4.0' }, node, pad: 'x'.repeat(40000) }), mode: 0o600 },
    { path: '/grub.cfg', data: `set linux_append="$linux_append flatcar.autologin bramble.node=${node}"\n` },
    { path: '/empty', data: '' },
    { path: '/sysext/kubernetes.raw', data: seeded('sysext', 66 * MiB + 12345) },
  ];
  for (let i = 0; i < 300; i++) files.push({ path: `/many/d${i % 5}/file-${i}`, data: seeded(`f${i}`, (i * 37) % 9000), mode: 0o640 });
  oemCache.set(node, files);
  return files;
}

/** The old layout's OEM size (128 MiB): the 64 MiB superblock copy lies inside it. */
const options = (node: string) => ({
  label: 'OEM',
  sizeBytes: 128 * MiB,
  files: oemFiles(node),
  fsUuid: derivedUuid('bramble', 'demo', node, 'oem-fs'),
  deviceUuid: derivedUuid('bramble', 'demo', node, 'oem-dev'),
  epoch: EPOCH,
  compression: 'zlib' as const,
});

async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(`/${relative(root, join(e.parentPath ?? e.path, e.name))}`);
  return out.sort();
}

test('builds a btrfs that btrfs check accepts and btrfs restore reads back, reproducibly', async (t) => {
  const dir = await tempDir(t);
  const a = await buildBtrfs({ ...options('node-1'), workDir: dir });
  assert.equal((await stat(a)).size, 128 * MiB);
  assert.ok((await stat(a)).blocks * 512 < 80 * MiB, 'the image file is sparse');

  const check = await run('btrfs', ['check', '--readonly', '--check-data-csum', a]);
  assert.match(check.stderr + check.stdout, /no error found/);
  assert.doesNotMatch(check.stderr + check.stdout, /ERROR:|mismatch|wanted/);

  const restored = join(dir, 'restored');
  await mkdir(restored);
  await run('btrfs', ['restore', a, restored]);
  const files = oemFiles('node-1');
  assert.deepEqual(await listTree(restored), files.map((f) => f.path).sort());
  for (const f of files) assert.ok((await readFile(join(restored, f.path))).equals(Buffer.from(f.data)), f.path);

  const fsid = derivedUuid('bramble', 'demo', 'node-1', 'oem-fs');
  const sup = (await run('btrfs', ['inspect-internal', 'dump-super', '--all', a])).stdout;
  assert.match(sup, new RegExp(`^fsid\\s+${fsid}$`, 'm'));
  assert.match(sup, /^label\s+OEM$/m);
  assert.equal(sup.match(/csum\s+0x[0-9a-f]+ \[match\]/g)?.length, 2, 'primary superblock and the 64 MiB copy');
  const tree = (await run('btrfs', ['inspect-internal', 'dump-tree', a])).stdout;
  assert.match(tree, /name: btrfs\.compression\s+data zlib/);
  assert.match(tree, /mode 100600 links 1 uid 0 gid 0/);
  assert.doesNotMatch(tree, /[acmo]time (?!1700000000\.0|0\.0)/, 'every time is the epoch (or zero)');

  // Same inputs in another order and work dir: the same bytes. Another node: another fsid and bytes.
  const again = await buildBtrfs({ ...options('node-1'), files: [...oemFiles('node-1')].reverse(), workDir: join(dir) });
  await run('cmp', [a, again]);
  const other = await buildBtrfs({ ...options('node-2'), workDir: dir });
  const otherSuper = (await run('btrfs', ['inspect-internal', 'dump-super', other])).stdout;
  assert.doesNotMatch(otherSuper, new RegExp(fsid));
  await assert.rejects(run('cmp', ['-s', a, other]));
});

test('fills a 1 GiB OEM (the current layout) the same way', async (t) => {
  const dir = await tempDir(t);
  const fs = await buildBtrfs({ ...options('node-3'), sizeBytes: 1024 * MiB, files: oemFiles('node-3').slice(0, 2), workDir: dir });
  assert.match((await run('btrfs', ['check', '--readonly', '--check-data-csum', fs])).stdout, /no error found/);
  const sup = (await run('btrfs', ['inspect-internal', 'dump-super', fs])).stdout;
  assert.match(sup, /^total_bytes\s+1073741824$/m);
});

test('names whose hashes collide share one DIR_ITEM and both stay reachable', async (t) => {
  const dir = await tempDir(t);
  // crc32c(~1, name) of these two names is 2959012715 (found by search).
  const files = [
    { path: '/d/aaf9038b5201', data: 'first' },
    { path: '/d/6a07c6342dfb', data: 'second' },
  ];
  const fs = await buildBtrfs({ label: 'OEM', sizeBytes: 16 * MiB, files, fsUuid: derivedUuid('collide'), epoch: EPOCH, workDir: dir });
  await run('btrfs', ['check', '--readonly', '--check-data-csum', fs]);
  const tree = (await run('btrfs', ['inspect-internal', 'dump-tree', '-t', 'fs', fs])).stdout;
  assert.equal(tree.match(/DIR_ITEM 2959012715\)/g)?.length, 1);
  const out = join(dir, 'out');
  await mkdir(out);
  await run('btrfs', ['restore', fs, out]);
  for (const f of files) assert.equal(await readFile(join(out, f.path), 'utf8'), f.data);
});

test('rejects what cannot be built', async (t) => {
  const dir = await tempDir(t);
  const base = { label: 'OEM', fsUuid: derivedUuid('x'), epoch: EPOCH, workDir: dir };
  await assert.rejects(buildBtrfs({ ...base, sizeBytes: 8 * MiB, files: [] }), InputError);
  await assert.rejects(buildBtrfs({ ...base, sizeBytes: 16 * MiB, files: [{ path: '/big', data: Buffer.alloc(20 * MiB, 1) }] }), /do not fit/);
  await assert.rejects(buildBtrfs({ ...base, sizeBytes: 16 * MiB, files: [{ path: '/a', data: 'x' }, { path: '/a/b', data: 'y' }] }), /both a file and a directory/);
  await assert.rejects(buildBtrfs({ ...base, sizeBytes: 16 * MiB, files: [{ path: '/a/../../b', data: 'x' }, { path: 'a', data: 'y' }] }), InputError);
});

test('writePartition puts the filesystem into the OEM partition of an image and nothing else', async (t) => {
  const dir = await tempDir(t);
  const img = join(dir, 'disk.img');
  // A small GPT disk: ESP, then OEM (128 MiB, the old layout's size) holding stale bytes, then ROOT.
  const fh = await open(img, 'w');
  await fh.truncate(300 * MiB);
  await fh.close();
  const layout = emptyGpt((300 * MiB) / 512, derivedUuid('disk'));
  const part = (number: number, name: string, typeGuid: string, firstLba: number, lastLba: number) =>
    ({ number, name, typeGuid, uniqueGuid: derivedUuid(name), firstLba, lastLba, attributes: 0n });
  layout.partitions = [
    part(1, 'EFI-SYSTEM', PartitionType.efiSystem, 2048, 67583),
    part(6, 'OEM', PartitionType.linuxData, 67584, 67584 + 262143),
    part(9, 'ROOT', PartitionType.flatcarResize, 67584 + 262144, layout.lastUsableLba),
  ];
  await writeGpt(img, layout);
  const gpt = await readGpt(img);
  const oem = partitionBytes(gpt, findPartition(gpt, { label: 'OEM' }));
  const stale = randomBytes(2 * MiB);
  const w = await open(img, 'r+');
  await w.write(stale, 0, stale.length, oem.offset + 10 * MiB);
  await w.write(randomBytes(MiB), 0, MiB, oem.offset + oem.size + MiB);
  await w.close();
  const hash = async (start: number, end: number) => {
    const r = await open(img, 'r');
    const buf = Buffer.alloc(end - start);
    await r.read(buf, 0, buf.length, start);
    await r.close();
    return createHash('sha256').update(buf).digest('hex');
  };
  const outside = async () => [await hash(0, oem.offset), await hash(oem.offset + oem.size, 300 * MiB)];
  const before = await outside();

  const files: BtrfsFile[] = [
    { path: '/config.ign', data: '{"ignition":{"version":"3.4.0"}}', mode: 0o600 },
    { path: '/grub.cfg', data: 'set linux_append="$linux_append quiet"\n' },
  ];
  const fs = await buildBtrfs({ label: 'OEM', sizeBytes: oem.size, files, fsUuid: derivedUuid('w'), epoch: EPOCH, workDir: dir });
  const ranges = await writePartition(img, oem, fs);
  assert.deepEqual(await outside(), before, 'bytes outside the partition are unchanged');
  assert.deepEqual(ranges, (await scanDataRanges(fs)).map(([s, e]) => [s + oem.offset, e + oem.offset]), 'the returned ranges are the data of the new filesystem');

  const extracted = join(dir, 'oem.part');
  await extractPartition(img, oem, extracted);
  await run('cmp', [fs, extracted]);
  await run('btrfs', ['check', '--readonly', '--check-data-csum', extracted]);
  assert.deepEqual(await listBtrfs(img, oem), ['/config.ign', '/grub.cfg']);
  assert.equal((await readBtrfsFile(img, oem, 'grub.cfg')).toString(), files[1]!.data);
  await assert.rejects(readBtrfsFile(img, oem, '/missing'), /no file \/missing/);

  // Known data maps on both sides give the same result while reading only those blocks.
  const next = await buildBtrfsImage({ label: 'OEM', sizeBytes: oem.size, files: files.slice(1), fsUuid: derivedUuid('w2'), epoch: EPOCH, workDir: dir });
  const twin = join(dir, 'twin.img');
  await copySparse(img, twin, { reflink: false });
  const imageRanges = await scanDataRanges(img);
  const fast = await writePartition(img, oem, next.path, { fileRanges: next.dataRanges, imageRanges });
  const slow = await writePartition(twin, oem, next.path);
  assert.deepEqual(fast, slow);
  await run('cmp', [img, twin]);
  await writePartition(img, oem, fs, { fileRanges: await scanDataRanges(fs), imageRanges: await scanDataRanges(img) });

  // Writing the same filesystem again changes nothing and reports the same data ranges.
  const snapshot = await hash(oem.offset, oem.offset + oem.size);
  assert.deepEqual(await writePartition(img, oem, fs), ranges);
  assert.equal(await hash(oem.offset, oem.offset + oem.size), snapshot);
});
