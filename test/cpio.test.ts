// The newc cpio writer and deterministic gzip, checked by GNU cpio, busybox cpio and gzip itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import {
  CPIO_NEWC_HEADER_SIZE,
  CPIO_NEWC_MAGIC,
  readCpio,
  sourceDateEpoch,
  writeCpio,
  type CpioEntry,
} from '../images/cpio.ts';
import { GZIP_OS_OFFSET, GZIP_OS_UNIX, gunzip, gzipDeterministic } from '../images/gzip.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const binary = Buffer.from([0, 1, 2, 0xff, 0xfe, 10, 13]);
const entries: CpioEntry[] = [
  { path: 'usr/share/oem/config.ign', type: 'file', mode: 0o600, data: '{"ignition":{"version":"3.4.0"}}\n' },
  { path: 'oem/config.ign', type: 'file', mode: 0o600, data: '{"ignition":{"version":"3.4.0"}}\n' },
  { path: 'etc/odd name.bin', type: 'file', mode: 0o644, data: binary },
  { path: 'etc/empty', type: 'file', mode: 0o640 },
  { path: 'etc/link', type: 'symlink', mode: 0o777, target: '../oem/config.ign' },
  { path: 'var', type: 'dir', mode: 0o700 },
  { path: './etc/abc', type: 'file', mode: 0o755, data: 'abc' }, // 3 bytes: exercises data padding
];
const expectedNames = [
  'etc',
  'etc/abc',
  'etc/empty',
  'etc/link',
  'etc/odd name.bin',
  'oem',
  'oem/config.ign',
  'usr',
  'usr/share',
  'usr/share/oem',
  'usr/share/oem/config.ign',
  'var',
];
const MTIME = 1_700_000_000;

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'cpio');

test('newc layout: magic, 110-byte headers, 4-byte alignment, sequential inodes, parents first, trailer', () => {
  const archive = writeCpio(entries, { mtime: MTIME });
  assert.equal(archive.toString('ascii', 0, 6), CPIO_NEWC_MAGIC);
  assert.equal(archive.length % 4, 0);
  const records = readCpio(archive);
  assert.deepEqual(records.map((r) => r.path), expectedNames);
  assert.ok(records.every((r) => r.mtime === MTIME));
  const byPath = new Map(records.map((r) => [r.path, r]));
  assert.equal(byPath.get('usr')!.nlink, 3, 'usr holds one subdirectory');
  assert.equal(byPath.get('usr/share/oem')!.nlink, 2);
  assert.equal(byPath.get('etc/abc')!.nlink, 1);
  assert.equal(byPath.get('usr/share')!.mode, 0o755, 'implicit parents are 0755');
  assert.equal(byPath.get('var')!.mode, 0o700);
  assert.equal(byPath.get('etc/link')!.data.toString(), '../oem/config.ign');
  assert.deepEqual(byPath.get('etc/odd name.bin')!.data, binary);
  // Inodes count up from 1 in archive order; uid, gid, dev fields are 0.
  let off = 0;
  for (let i = 0; i < records.length; i++) {
    const field = (n: number) => parseInt(archive.toString('ascii', off + 6 + n * 8, off + 14 + n * 8), 16);
    assert.equal(field(0), i + 1);
    assert.deepEqual([field(2), field(3), field(7), field(8), field(9), field(10), field(12)], [0, 0, 0, 0, 0, 0, 0]);
    const nameEnd = off + CPIO_NEWC_HEADER_SIZE + field(11);
    const dataStart = nameEnd + ((4 - (nameEnd % 4)) % 4);
    off = dataStart + field(6) + ((4 - (field(6) % 4)) % 4);
  }
  assert.match(archive.toString('ascii', off + CPIO_NEWC_HEADER_SIZE, off + CPIO_NEWC_HEADER_SIZE + 10), /^TRAILER!!!$/);
});

test('GNU cpio lists exactly the entries and extracts equal contents, modes and link targets', async (t) => {
  const dir = await tempDir(t);
  const archive = writeCpio(entries, { mtime: MTIME });
  const names = (await run('cpio', ['-it', '--quiet'], { input: archive })).stdout.trim().split('\n');
  assert.deepEqual(names, expectedNames);
  const long = (await run('cpio', ['-itv', '--quiet'], { input: archive })).stdout.trim().split('\n');
  assert.equal(long.length, expectedNames.length);
  assert.match(long.find((l) => l.endsWith(' oem/config.ign'))!, /^-rw------- +1 root +root +33 /);
  assert.match(long.find((l) => l.includes(' etc/link'))!, /^lrwxrwxrwx .* etc\/link -> \.\.\/oem\/config\.ign$/);
  assert.match(long.find((l) => l.endsWith(' var'))!, /^drwx------ +2 root +root /);

  await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { input: archive, cwd: dir });
  for (const e of entries) {
    const path = join(dir, e.path);
    const st = await lstat(path);
    if (e.type === 'file') {
      const want = typeof e.data === 'string' ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0));
      assert.deepEqual(await readFile(path), want, e.path);
      assert.equal(st.mode & 0o7777, e.mode, e.path);
      assert.equal(Math.floor(st.mtimeMs / 1000), MTIME, `${e.path} keeps the fixed mtime`);
    } else if (e.type === 'symlink') {
      assert.equal(await readlink(path), e.target);
    } else {
      assert.ok(st.isDirectory());
    }
  }
});

test('busybox cpio (the initramfs-style unpacker) lists and extracts the archive', async (t) => {
  const dir = await tempDir(t);
  const archive = writeCpio(entries, { mtime: MTIME });
  const names = (await run('busybox', ['cpio', '-t'], { input: archive })).stdout.trim().split('\n');
  assert.deepEqual(names, expectedNames);
  await run('busybox', ['cpio', '-i', '-d', '-m'], { input: archive, cwd: dir });
  assert.equal(await readFile(join(dir, 'usr/share/oem/config.ign'), 'utf8'), entries[0].data);
  assert.deepEqual(await readFile(join(dir, 'etc/odd name.bin')), binary);
});

test('deterministic: input order does not matter, two runs are byte-identical, SOURCE_DATE_EPOCH sets mtime', () => {
  const a = writeCpio(entries, { mtime: MTIME });
  const b = writeCpio([...entries].reverse(), { mtime: MTIME });
  assert.ok(a.equals(b));
  assert.ok(gzipDeterministic(a).equals(gzipDeterministic(b)));
  assert.equal(sourceDateEpoch({ SOURCE_DATE_EPOCH: '1234' }), 1234);
  assert.equal(sourceDateEpoch({}), 0);
  assert.throws(() => sourceDateEpoch({ SOURCE_DATE_EPOCH: 'yesterday' }), InputError);
});

test('invalid entries are refused', () => {
  const cases: Array<[string, CpioEntry[], RegExp]> = [
    ['duplicate', [{ path: 'a', type: 'file', mode: 0o644 }, { path: './a', type: 'file', mode: 0o644 }], /duplicate path a/],
    ['dot-dot', [{ path: 'a/../b', type: 'file', mode: 0o644 }], /not a normalised relative path/],
    ['file as parent', [{ path: 'a', type: 'file', mode: 0o644 }, { path: 'a/b', type: 'file', mode: 0o644 }], /a is a file but a\/b is inside it/],
    ['mode', [{ path: 'a', type: 'file', mode: 0o10000 }], /outside 0\.\.0o7777/],
    ['symlink without target', [{ path: 'a', type: 'symlink', mode: 0o777 }], /has no target/],
    ['empty', [{ path: './', type: 'dir', mode: 0o755 }], /empty path/],
  ];
  for (const [name, list, message] of cases) assert.throws(() => writeCpio(list, { mtime: 0 }), message, name);
});

test('gzip: fixed header (no mtime, OS Unix), gzip -t accepts it, round-trips, identical on repeat', async (t) => {
  const dir = await tempDir(t);
  const data = writeCpio(entries, { mtime: MTIME });
  const gz = gzipDeterministic(data);
  assert.deepEqual([...gz.subarray(0, 10)], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, GZIP_OS_UNIX]);
  assert.equal(gz[GZIP_OS_OFFSET], GZIP_OS_UNIX);
  assert.ok(gunzip(gz).equals(data));
  assert.ok(gzipDeterministic(data).equals(gz));
  await run('gzip', ['-t'], { input: gz });
  const viaGzip = (await run('sh', ['-c', 'gzip -dc | cpio -it --quiet'], { input: gz, cwd: dir })).stdout.trim().split('\n');
  assert.deepEqual(viaGzip, expectedNames);
});
