// bramble flash against real targets: regular files (any user) and loop devices (root), with images
// built by sgdisk plus random data, compressed by the real tools, served over HTTP on 127.0.0.1, and
// checked with cmp and sgdisk -v. Loop devices are created here and always detached.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readBmap, writeBmap } from '../images/bmap.ts';
import { checkTarget, inspectTarget, systemDisks } from '../images/devices.ts';
import { bmapCandidates } from '../images/sources/open.ts';
import { compressionOfBytes } from '../images/sources/compressed.ts';
import type { ByteRange } from '../images/sparse.ts';
import type { CommandContext } from '../builders/commands.ts';
import type { CliValues } from '../builders/cli.ts';
import { ExitCode, HostError, InputError, InterruptedError, UsageError, VerificationError, type BrambleError } from '../builders/errors.ts';
import { findTool, run } from '../builders/exec.ts';
import { flashImage, worstExitCode, type FlashOptions, type FlashResult } from '../builders/flash.ts';
import { makeFlashCommand } from '../builders/flash-command.ts';
import { UpstreamServer } from './helpers/upstream-server.ts';

const MiB = 1024 * 1024;
const SECTOR = 512;
const IMAGE_SIZE = 24 * MiB;
/** Data written into the test image besides the partition tables: inside the head, across its end, in both partitions, a partial block. */
const DATA: ByteRange[] = [
  [512 * 1024, 512 * 1024 + 8192],
  [MiB - 8192, 3 * MiB],
  [10 * MiB, 11 * MiB],
  [17 * MiB + 3 * 4096, 17 * MiB + 3 * 4096 + 70000],
];

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'bramble-flash-test-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

async function dirFor(name: string): Promise<string> {
  const d = join(work, name);
  await mkdir(d, { recursive: true });
  return d;
}

/** A GPT image (sgdisk) with random data at DATA and its bmap (bramble's own writer). */
async function makeImage(dir: string, name = 'disk.img'): Promise<{ path: string; bmap: string; raw: Buffer }> {
  const path = join(dir, name);
  await writeFile(path, '');
  await truncate(path, IMAGE_SIZE);
  await run('sgdisk', ['-o', '-n', '1:2048:+8M', '-t', '1:ef00', '-c', '1:EFI-SYSTEM', '-n', '2:0:0', '-c', '2:ROOT', path]);
  const fh = await open(path, 'r+');
  try {
    for (const [s, e] of DATA) await fh.write(randomBytes(e - s), 0, e - s, s);
  } finally {
    await fh.close();
  }
  const tables: ByteRange[] = [
    [0, 34 * SECTOR],
    [IMAGE_SIZE - 33 * SECTOR, IMAGE_SIZE],
  ];
  await writeBmap(path, [...tables, ...DATA], `${path}.bmap`);
  return { path, bmap: `${path}.bmap`, raw: await readFile(path) };
}

const options = (source: string, targets: string[], extra: Partial<FlashOptions> = {}): FlashOptions => ({
  source,
  targets,
  verify: true,
  forceNonRemovable: false,
  signal: new AbortController().signal,
  ...extra,
});

function failure(results: Map<string, FlashResult>, target: string): BrambleError {
  const r = results.get(target);
  assert.ok(r && !r.ok, `${target} should have failed: ${JSON.stringify(r)}`);
  return r.error;
}

function success(results: Map<string, FlashResult>, target: string): void {
  const r = results.get(target);
  assert.ok(r?.ok, `${target} should have succeeded: ${r && !r.ok ? r.error.message : 'no result'}`);
}

/** cmp the bytes of `ranges` in two files or devices. */
async function cmpRanges(a: string, b: string, ranges: readonly ByteRange[]): Promise<void> {
  for (const [s, e] of ranges) await run('cmp', ['-i', String(s), '-n', String(e - s), a, b]);
}

function commandContext(positionals: string[], values: CliValues) {
  const out: string[] = [];
  const err: string[] = [];
  const ctx: CommandContext = {
    values,
    positionals,
    signal: new AbortController().signal,
    events: () => {},
    interactive: false,
    stdout: (s) => out.push(s),
    stderr: (s) => err.push(s),
  };
  return { ctx, out, err };
}

describe('flash building blocks', () => {
  test('bmap candidates follow bmaptool: IMAGE.bmap, then without the compression and image suffixes', () => {
    assert.deepEqual(bmapCandidates('out/a/disk.img.zst'), ['out/a/disk.img.zst.bmap', 'out/a/disk.img.bmap', 'out/a/disk.bmap']);
    assert.deepEqual(bmapCandidates('disk.img'), ['disk.img.bmap', 'disk.bmap']);
    assert.deepEqual(bmapCandidates('http://h/x/disk.img.xz?sig=1'), ['http://h/x/disk.img.xz.bmap', 'http://h/x/disk.img.bmap', 'http://h/x/disk.bmap']);
  });

  test('compression is recognised by magic bytes', () => {
    const table: Array<[number[], string | undefined]> = [
      [[0x28, 0xb5, 0x2f, 0xfd, 0, 0], 'zstd'],
      [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], 'xz'],
      [[0x42, 0x5a, 0x68, 0x39, 0x31, 0x41], 'bzip2'],
      [[0x42, 0x5a, 0x68, 0x00, 0, 0], undefined],
      [[0xeb, 0x63, 0x90, 0, 0, 0], undefined],
    ];
    for (const [bytes, want] of table) assert.equal(compressionOfBytes(Buffer.from(bytes)), want, bytes.join(','));
  });

  test('the exit code is that of the most serious failure', () => {
    const ok: FlashResult = { ok: true, bytesWritten: 1, ms: 1 };
    const fail = (error: BrambleError): FlashResult => ({ ok: false, error });
    const verification = new VerificationError('x', 'a', 'b');
    assert.equal(worstExitCode(new Map([['a', ok]])), 0);
    assert.equal(worstExitCode(new Map([['a', ok], ['b', fail(new InputError('x'))]])), ExitCode.badInput);
    assert.equal(worstExitCode(new Map([['a', fail(new InputError('x'))], ['b', fail(verification)], ['c', fail(new HostError('x'))]])), ExitCode.verification);
    assert.equal(worstExitCode(new Map([['a', fail(new HostError('x'))], ['b', fail(new InputError('x'))]])), ExitCode.hostEnvironment);
  });
});

describe('flash to regular files', () => {
  let img: Awaited<ReturnType<typeof makeImage>>;
  let dir: string;
  const server = new UpstreamServer();
  before(async () => {
    dir = await dirFor('files');
    img = await makeImage(dir);
    await run('zstd', ['-q', '-k', img.path]);
    await run('xz', ['-0', '-k', '-T1', img.path]);
    await run('bzip2', ['-1', '-k', img.path]);
    await server.start();
    server.files.set('/images/disk.img', img.raw);
    server.files.set('/images/disk.img.bmap', await readFile(img.bmap));
    server.files.set('/nobmap/disk.img.zst', await readFile(`${img.path}.zst`));
    server.files.set('/broken/disk.img', img.raw);
    server.misbehave.set('/broken/disk.img', { truncateAt: 2 * MiB });
  });
  after(() => server.close());

  const sources = (): Array<[string, string, boolean]> => [
    ['a local .img with its bmap', img.path, true],
    ['.img.zst, bmap found without the suffix', `${img.path}.zst`, true],
    ['.img.xz', `${img.path}.xz`, true],
    ['.img.bz2', `${img.path}.bz2`, true],
    ['an http URL with a bmap beside it', server.url('/images/disk.img'), true],
    ['an http .img.zst with no bmap (zero-block scan of the stream)', server.url('/nobmap/disk.img.zst'), false],
  ];

  test('every kind of source gives a sparse copy equal to the image', async () => {
    for (const [what, source, withBmap] of sources()) {
      const target = join(dir, `out-${createHash('sha1').update(what).digest('hex').slice(0, 8)}.img`);
      const warnings: string[] = [];
      const results = await flashImage(options(source, [target], { events: (e) => e.kind === 'warning' && warnings.push(e.message) }));
      success(results, target);
      assert.ok((await readFile(target)).equals(img.raw), `${what}: the copy differs from the image`);
      const st = await stat(target);
      assert.equal(st.size, IMAGE_SIZE, what);
      assert.ok(st.blocks * 512 < IMAGE_SIZE / 2, `${what}: the copy is not sparse (${st.blocks * 512} bytes allocated)`);
      assert.equal(warnings.some((w) => w.includes('no bmap found')), !withBmap, `${what}: ${warnings.join('; ')}`);
    }
  });

  test('a local image without a bmap is scanned for its data blocks', async () => {
    const d = await dirFor('files-nobmap');
    const plain = join(d, 'plain.img');
    await writeFile(plain, img.raw);
    const target = join(d, 'copy.img');
    const results = await flashImage(options(plain, [target]));
    success(results, target);
    assert.ok((await readFile(target)).equals(img.raw));
  });

  test('an existing file is replaced, not merged with its old contents', async () => {
    const target = join(dir, 'old.img');
    await writeFile(target, Buffer.alloc(IMAGE_SIZE + MiB, 0xa5));
    const results = await flashImage(options(img.path, [target]));
    success(results, target);
    assert.ok((await readFile(target)).equals(img.raw));
  });

  test('a download that breaks off fails every target with a host error', async () => {
    const target = join(dir, 'broken.img');
    const results = await flashImage(options(server.url('/broken/disk.img'), [target], { bmapPath: img.bmap }));
    const e = failure(results, target);
    assert.ok(e instanceof HostError, e.message);
    assert.match(e.message, /download/);
  });

  test('--json: progress events carry phase, bytes, speed and eta, and one result event per target', async () => {
    const target = join(dir, 'json.img');
    const { ctx, out } = commandContext([img.path, target], { json: true });
    const events: Array<Record<string, unknown>> = [];
    ctx.events = (e) => events.push({ ...e });
    assert.equal(await makeFlashCommand()(ctx), 0);
    assert.equal(out.join(''), '', 'with --json nothing but events is printed');
    const progress = events.filter((e) => e.kind === 'progress' && e.stage === 'flash');
    assert.deepEqual([...new Set(progress.map((e) => e.what))], ['flashing', 'syncing', 'verifying']);
    const last = progress.filter((e) => e.what === 'flashing').pop()!;
    assert.equal(last.done, last.total);
    assert.equal(typeof last.speed, 'number');
    assert.ok(events.some((e) => e.kind === 'info' && e.target === target && e.ok === true && typeof e.bytesWritten === 'number'));
  });

  test('writing the image onto itself is refused', async () => {
    const results = await flashImage(options(img.path, [img.path]));
    assert.match(failure(results, img.path).message, /is the image \(or its bmap\) itself/);
    assert.ok((await readFile(img.path)).equals(img.raw));
  });

  test('a regular file under /dev is refused: it is what dd leaves behind for a mistyped device', async () => {
    // Only inspected, so no root and no file under /dev needed: /dev/null is a character device.
    await assert.rejects(inspectTarget('/dev/null'), /neither a block device nor a regular file/);
  });

  test('the disk holding the running system is refused', async (t) => {
    const disks = await systemDisks();
    const name = [...disks.keys()][0];
    if (!name) return t.skip('no local disk backs / here (container or network root)');
    const info = await inspectTarget(`/dev/${name}`);
    // checkTarget only reads; it must refuse before anything could be opened for writing.
    await assert.rejects(checkTarget(info, { forceNonRemovable: false }), (e: Error) => e instanceof InputError && /is mounted|running system/.test(e.message));
    await assert.rejects(checkTarget(info, { forceNonRemovable: true }), InputError);
  });
});

const rootSkip = (() => {
  if (process.getuid?.() !== 0) return 'needs root for loop devices (run npm test as root)';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control: this kernel or container has no loop devices';
  if (!findTool('losetup')) return 'losetup is not installed (apt-get install mount)';
  return false;
})();

describe('flash to loop devices', { skip: rootSkip }, () => {
  const loops: string[] = [];
  const mounts: string[] = [];
  let img: Awaited<ReturnType<typeof makeImage>>;
  let dir: string;

  /** A loop device over a new file of `size` bytes, optionally filled with `fill`. */
  async function loopDevice(name: string, size: number, fill?: number): Promise<string> {
    const backing = join(dir, `${name}.backing`);
    await writeFile(backing, fill === undefined ? Buffer.alloc(0) : Buffer.alloc(size, fill));
    await truncate(backing, size);
    const dev = (await run('losetup', ['-f', '--show', backing])).stdout.trim();
    loops.push(dev);
    return dev;
  }

  before(async () => {
    dir = await dirFor('loops');
    img = await makeImage(dir);
  });
  after(async () => {
    for (const m of mounts) await run('umount', [m]).catch(() => {});
    for (const l of loops) await run('losetup', ['-d', l]).catch(() => {});
  });

  const readAt = async (dev: string, pos: number, len: number) => {
    const fh = await open(dev, 'r');
    try {
      const b = Buffer.alloc(len);
      await fh.read(b, 0, len, pos);
      return b;
    } finally {
      await fh.close();
    }
  };

  test('flashes a loop device and a file at once; the mapped ranges match and unmapped bytes are left alone', async () => {
    const dev = await loopDevice('same-size', IMAGE_SIZE, 0x5a);
    const file = join(dir, 'copy.img');
    const progress = new Set<string>();
    const results = await flashImage(options(img.path, [dev, file], { forceNonRemovable: true, onProgress: (p) => progress.add(p.phase) }));
    success(results, dev);
    success(results, file);
    await cmpRanges(img.path, dev, [[0, 34 * SECTOR], [IMAGE_SIZE - 33 * SECTOR, IMAGE_SIZE], ...DATA]);
    await cmpRanges(img.path, file, [[0, IMAGE_SIZE]]);
    // A hole of the image was not written: the device keeps its old bytes there.
    assert.ok((await readAt(dev, 5 * MiB, 4096)).equals(Buffer.alloc(4096, 0x5a)));
    assert.deepEqual([...progress], ['flashing', 'syncing', 'verifying']);
    assert.match((await run('sgdisk', ['-v', dev])).stdout, /No problems found/);
  });

  test('a larger drive gets the backup GPT at its end, and sgdisk -v finds no problem', async () => {
    const size = 40 * MiB;
    const dev = await loopDevice('larger', size);
    const results = await flashImage(options(img.path, [dev], { forceNonRemovable: true }));
    success(results, dev);
    const verify = await run('sgdisk', ['-v', dev]);
    assert.match(verify.stdout, /No problems found/, verify.stdout);
    const print = (await run('sgdisk', ['-p', dev])).stdout;
    assert.match(print, new RegExp(`last usable sector is ${size / SECTOR - 34}\\b`), print);
    await cmpRanges(img.path, dev, DATA);
    // The image's old backup header is cleared, so nothing mistakes it for a table.
    assert.ok((await readAt(dev, IMAGE_SIZE - SECTOR, SECTOR)).equals(Buffer.alloc(SECTOR)));
  });

  test('data changed behind bramble before the read-back fails with exit code 3, and the partition table is never written', async () => {
    const dev = await loopDevice('tampered', IMAGE_SIZE);
    const results = await flashImage(
      options(img.path, [dev], {
        forceNonRemovable: true,
        onWritten: async (target) => {
          const fh = await open(target, 'r+');
          await fh.write(Buffer.from('not the image'), 0, 13, 10 * MiB + 100);
          await fh.sync();
          await fh.close();
        },
      }),
    );
    const e = failure(results, dev);
    assert.ok(e instanceof VerificationError, e.message);
    assert.equal(e.exitCode, ExitCode.verification);
    assert.match(e.message, new RegExp(`${dev}: read-back of bytes ${10 * MiB}-${11 * MiB - 1}`));
    assert.ok((await readAt(dev, 0, 2 * SECTOR)).equals(Buffer.alloc(2 * SECTOR)), 'the MBR and GPT header must not be written');
  });

  test('a bmap with a wrong range checksum: the CLI exits 3 and says the image does not match', async () => {
    const dev = await loopDevice('bad-bmap', IMAGE_SIZE);
    const bad = join(dir, 'bad.bmap');
    const text = await readFile(img.bmap, 'utf8');
    const bmap = await readBmap(img.bmap);
    const victim = bmap.ranges[2]!.chksum;
    let edited = text.replace(victim, victim.replace(/^./, (c) => (c === '0' ? '1' : '0')));
    // Re-seal the file's own checksum so only the range checksum is wrong (bmap 2.0 BmapFileChecksum).
    const own = /<BmapFileChecksum>\s*([0-9a-f]+)\s*<\/BmapFileChecksum>/.exec(edited)![1]!;
    const zeroed = edited.replace(own, '0'.repeat(own.length));
    edited = edited.replace(own, createHash('sha256').update(zeroed).digest('hex'));
    await writeFile(bad, edited);
    const { ctx, out } = commandContext([img.path, dev], { bmap: bad, yes: true, 'force-non-removable': true });
    const code = await makeFlashCommand()(ctx);
    assert.equal(code, ExitCode.verification);
    const text2 = out.join('');
    assert.match(text2, /✗ \/dev\/loop\d+: .*verification failed/);
    assert.match(text2, /does not match its bmap/);
    assert.match(text2, /0 of 1 targets written, 1 failed/);
    assert.ok((await readAt(dev, 0, 2 * SECTOR)).equals(Buffer.alloc(2 * SECTOR)), 'no partition table after a failed flash');
  });

  test('an interrupted flash stops with InterruptedError before the partition table is written', async () => {
    const dev = await loopDevice('interrupted', IMAGE_SIZE);
    const controller = new AbortController();
    await assert.rejects(
      flashImage(options(img.path, [dev], { forceNonRemovable: true, signal: controller.signal, onWritten: async () => controller.abort() })),
      InterruptedError,
    );
    assert.ok((await readAt(dev, 0, 2 * SECTOR)).equals(Buffer.alloc(2 * SECTOR)));
  });

  test('refusals: mounted, missing, too small, not removable, and no confirmation without a terminal', async () => {
    const mountedDev = await loopDevice('mounted', 16 * MiB);
    await run('mke2fs', ['-q', '-t', 'ext4', mountedDev]);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt, { recursive: true });
    await run('mount', [mountedDev, mnt]);
    mounts.push(mnt);
    const small = await loopDevice('small', 8 * MiB);
    const plainLoop = await loopDevice('plain', IMAGE_SIZE);
    const missing = `/dev/bramble-test-missing-${process.pid}`;

    const forced = await flashImage(options(img.path, [mountedDev, missing, small], { forceNonRemovable: true }));
    assert.match(failure(forced, mountedDev).message, new RegExp(`^${mountedDev} is mounted \\(${mnt}\\)$`));
    assert.match(failure(forced, mountedDev).hint ?? '', /umount/);
    assert.equal(failure(forced, missing).message, `${missing}: no such device`);
    assert.match(failure(forced, missing).hint ?? '', /never creates files under \/dev/);
    assert.ok(!existsSync(missing), 'nothing may be created under /dev');
    assert.equal(failure(forced, small).message, `${small} (8.0 MiB) is smaller than the image (24.0 MiB)`);

    const unforced = await flashImage(options(img.path, [plainLoop]));
    assert.equal(failure(unforced, plainLoop).message, `${plainLoop} is not a removable drive (virtual)`);
    assert.match(failure(unforced, plainLoop).hint ?? '', /--force-non-removable/);

    const { ctx } = commandContext([img.path, plainLoop], { 'force-non-removable': true });
    await assert.rejects(makeFlashCommand(async () => true, false)(ctx), (e: Error) => e instanceof UsageError && /--yes/.test((e as UsageError).hint ?? ''));
    await assert.rejects(makeFlashCommand(async () => false, true)(ctx), /not confirmed: nothing was written/);
    assert.ok((await readAt(plainLoop, 0, 2 * SECTOR)).equals(Buffer.alloc(2 * SECTOR)));
  });

  test('several drives: one missing target fails, the two others are written, and the summary says so', async () => {
    const a = await loopDevice('multi-a', IMAGE_SIZE);
    const b = await loopDevice('multi-b', 32 * MiB);
    const missing = `/dev/bramble-test-gone-${process.pid}`;
    const { ctx, out } = commandContext([img.path, a, missing, b], { yes: true, 'force-non-removable': true });
    const code = await makeFlashCommand()(ctx);
    assert.equal(code, ExitCode.badInput);
    const text = out.join('');
    assert.match(text, new RegExp(`✓ ${a}: \\d+\\.\\d MiB written and verified`));
    assert.match(text, new RegExp(`✓ ${b}: \\d+\\.\\d MiB written and verified`));
    assert.match(text, new RegExp(`✗ ${missing}: ${missing}: no such device`));
    assert.match(text, /2 of 3 targets written, 1 failed/);
    await cmpRanges(img.path, a, [[0, IMAGE_SIZE]]);
    await cmpRanges(img.path, b, DATA);
    assert.match((await run('sgdisk', ['-v', b])).stdout, /No problems found/);
  });

});
