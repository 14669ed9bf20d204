// ext4 edits inside a partition of an image file with debugfs: e2fsck clean, read-back equal,
// root-owned, reproducible across runs, and nothing outside the partition touched.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { ext4DataRanges, listExt4, readExt4File, writeExt4Files, type Ext4Entry } from '../images/ext4.ts';
import { mergeRanges, scanDataRanges, type ByteRange } from '../images/sparse.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const MiB = 1024 * 1024;
const PART_OFFSET = 2 * MiB;
const PART_SIZE = 96 * MiB;
const IMAGE_SIZE = 128 * MiB;
const EPOCH = 1700000000;
const FS_UUID = '3a0c2c6e-5d6b-4f3e-9d55-2b1c0f7f6a10';

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'ext4');

/** A GPT image with an ext4 ROOT made the reproducible way (issue 3, "Known ground"), random bytes around it. */
async function makeImage(path: string): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(IMAGE_SIZE);
  await fh.write(randomBytes(MiB), 0, MiB, PART_OFFSET + PART_SIZE + MiB);
  await fh.close();
  await run('sgdisk', ['-o', '-n', `1:${PART_OFFSET / 512}:+${PART_SIZE / 512 - 1}`, '-c', '1:ROOT', path]);
  await run('mke2fs', ['-q', '-t', 'ext4', '-L', 'ROOT', '-U', FS_UUID, '-E', `root_owner=0:0,hash_seed=${FS_UUID},offset=${PART_OFFSET}`, path, `${PART_SIZE / 1024}k`], {
    env: { E2FSPROGS_FAKE_TIME: String(EPOCH), SOURCE_DATE_EPOCH: String(EPOCH) },
  });
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
const outside = async (p: string) => [await hashRange(p, 0, PART_OFFSET), await hashRange(p, PART_OFFSET + PART_SIZE, IMAGE_SIZE)];

function seeded(n: number): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update('ext4').digest();
  for (let i = 0; i < n; i += 32) {
    block.copy(out, i, 0, Math.min(32, n - i));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** Every range of `inner` lies inside the union of `outer`. */
const covered = (inner: ByteRange[], outer: ByteRange[]) => {
  const union = mergeRanges(outer);
  return inner.every(([s, e]) => union.some(([us, ue]) => us <= s && e <= ue));
};

/** The edits, in two passes; returns the filesystem's data map after each pass. */
async function edit(image: string, dir: string): Promise<ByteRange[][]> {
  const bundle = join(dir, 'kubernetes.raw');
  await writeFile(bundle, seeded(5 * MiB + 17));
  // The host file's owner and mode must not leak into the image.
  await chmod(bundle, 0o600);
  const entries: Ext4Entry[] = [
    { path: '/opt/extensions/kubernetes/kubernetes-v1.33.2-x86-64.raw', type: 'file', source: bundle, mode: 0o644 },
    { path: '/etc/extensions/kubernetes.raw', type: 'symlink', target: '/opt/extensions/kubernetes/kubernetes-v1.33.2-x86-64.raw' },
    { path: '/etc/kubernetes/pki', type: 'dir', mode: 0o700 },
    { path: '/etc/kubernetes/pki/ca.key', type: 'file', data: 'secret key\n', mode: 0o600 },
    { path: '/opt/bin/helper', type: 'file', data: '#!/bin/sh\necho hi\n', mode: 0o755, uid: 500, gid: 500 },
  ];
  await writeExt4Files(image, { offset: PART_OFFSET }, entries, { epoch: EPOCH, workDir: dir });
  const maps = [await ext4DataRanges(image, { offset: PART_OFFSET })];
  // A second pass replaces a file and adds one beside it.
  await writeExt4Files(
    image,
    { offset: PART_OFFSET },
    [
      { path: '/etc/kubernetes/pki/ca.key', type: 'file', data: 'new secret key\n', mode: 0o600 },
      { path: '/etc/kubernetes/pki/ca.crt', type: 'file', data: 'cert\n', mode: 0o644 },
    ],
    { epoch: EPOCH, workDir: dir },
  );
  maps.push(await ext4DataRanges(image, { offset: PART_OFFSET }));
  return maps;
}

test('writes files, directories and symlinks into an ext4 partition without mounting', async (t) => {
  const dir = await tempDir(t);
  const a = join(dir, 'a.img');
  await makeImage(a);
  const b = join(dir, 'b.img');
  await copyFile(a, b);
  const before = await outside(a);
  const at = { offset: PART_OFFSET };
  const baseMap = await scanDataRanges(a);

  const maps = await edit(a, dir);
  // The map before the edits plus the filesystem's map after each pass covers every data block.
  const partition = await scanDataRanges(a, { start: PART_OFFSET, end: PART_OFFSET + PART_SIZE });
  assert.ok(covered(partition, [...baseMap, ...maps.flat()]));
  assert.ok(maps[1]!.reduce((n, [s, e]) => n + e - s, 0) < PART_SIZE / 4, 'the map is far smaller than the partition');
  await run('e2fsck', ['-fn', `${a}?offset=${PART_OFFSET}`]);
  assert.deepEqual(await outside(a), before, 'bytes outside the partition are unchanged');

  const listing = (await listExt4(a, at)).filter((e) => e.path !== '/lost+found');
  assert.deepEqual(
    listing.map((e) => [e.path, e.type, e.mode.toString(8), e.uid, e.gid]),
    [
      ['/etc', 'dir', '755', 0, 0],
      ['/etc/extensions', 'dir', '755', 0, 0],
      ['/etc/extensions/kubernetes.raw', 'symlink', '777', 0, 0],
      ['/etc/kubernetes', 'dir', '755', 0, 0],
      ['/etc/kubernetes/pki', 'dir', '700', 0, 0],
      ['/etc/kubernetes/pki/ca.crt', 'file', '644', 0, 0],
      ['/etc/kubernetes/pki/ca.key', 'file', '600', 0, 0],
      ['/opt', 'dir', '755', 0, 0],
      ['/opt/bin', 'dir', '755', 0, 0],
      ['/opt/bin/helper', 'file', '755', 500, 500],
      ['/opt/extensions', 'dir', '755', 0, 0],
      ['/opt/extensions/kubernetes', 'dir', '755', 0, 0],
      ['/opt/extensions/kubernetes/kubernetes-v1.33.2-x86-64.raw', 'file', '644', 0, 0],
    ],
  );
  assert.ok((await readExt4File(a, at, '/opt/extensions/kubernetes/kubernetes-v1.33.2-x86-64.raw')).equals(seeded(5 * MiB + 17)));
  assert.equal((await readExt4File(a, at, 'etc/kubernetes/pki/ca.key')).toString(), 'new secret key\n');
  const stat = await run('debugfs', ['-R', 'stat /etc/extensions/kubernetes.raw', `${a}?offset=${PART_OFFSET}`]);
  assert.match(stat.stdout, /Fast link dest: "\/opt\/extensions\/kubernetes\/kubernetes-v1\.33\.2-x86-64\.raw"/);
  assert.match(stat.stdout, /mtime: 0x6553f100/, 'inode times are the epoch');

  // The same edits a few seconds later give the same bytes.
  await sleep(1100);
  await edit(b, dir);
  await run('cmp', [a, b]);

  await assert.rejects(readExt4File(a, at, '/nope'), (e: unknown) => e instanceof InputError && /no readable file \/nope/.test(e.message));
  await assert.rejects(writeExt4Files(a, at, [{ path: '/opt/bin/helper/x', type: 'file', data: 'x', mode: 0o644 }], { epoch: EPOCH }), /is not a directory/);
  await assert.rejects(writeExt4Files(a, at, [{ path: '/etc', type: 'file', data: 'x', mode: 0o644 }], { epoch: EPOCH }), /is a directory/);
  await assert.rejects(writeExt4Files(a, at, [{ path: '/bad"name', type: 'file', data: 'x', mode: 0o644 }], { epoch: EPOCH }), InputError);
});
