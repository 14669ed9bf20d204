// `node --import tsx scripts/bench/compose.ts [--runs N]`: one rpi4 node image from a warm cache, the
// bramble way (sparse copy, OEM btrfs written directly, ESP edited with mtools, bmap, manifest) against
// the naive way (full `cp --sparse=never` of the decompressed image, `losetup -P`, mount the OEM and ESP,
// write the same files, unmount, detach), for both Flatcar layouts of the fixture upstream. Both ways
// end with an fsync of the image, so both times are "bytes on disk". As root the page cache is dropped
// before every timed run; the naive way needs root (loop devices, mounts) and is skipped otherwise.
// A kernel without FAT support (some VMs) gets the ESP written through its loop device with mtools, and
// where loop devices get no partition nodes (no udev) each partition gets its own loop device at its offset.
import { cp, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildCluster } from '../../builders/build.ts';
import { discardEvents } from '../../builders/events.ts';
import { run } from '../../builders/exec.ts';
import { fetchInputs } from '../../builders/fetch.ts';
import { loadClusterFile } from '../../builders/load.ts';
import { sha256Sparse } from '../../builders/output.ts';
import { readLock } from '../../builders/lockfile.ts';
import { RPI4_CONFIG_TXT } from '../../builders/rpi4-firmware.ts';
import { bmapByteRanges, readBmap } from '../../images/bmap.ts';
import { readBtrfsFile } from '../../images/btrfs.ts';
import { RPI4_FIRMWARE_ID } from '../../images/catalog/boot-firmware.ts';
import { findPartition, partitionBytes, readGpt } from '../../images/gpt.ts';
import { ensureFixture } from '../fixtures/build.ts';
import { testCacheRoot } from '../fixtures/cache.ts';
import { startFixtureServer } from '../fixtures/server.ts';
import { runMain } from '../run-main.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const NODE = 'pi-1';
const log = (line: string) => process.stderr.write(`${line}\n`);

const args = parseArgs({ options: { runs: { type: 'string' } } }).values;
const runs = Math.max(1, Number(args.runs ?? '1'));
const isRoot = process.getuid?.() === 0;

interface Measure {
  seconds: number;
  apparent: number;
  allocated: number;
}

const layouts = [
  { label: '2025 layout (stable 4593.2.5)', version: 'current' },
  { label: 'old layout (stable 4459.2.4)', version: '4459.2.4' },
];

async function dropCaches() {
  if (!isRoot) return;
  await run('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3\n').catch(() => log('bench: could not drop the page cache (read-only /proc/sys?)'));
}

async function fsyncFile(path: string) {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function sizes(path: string): Promise<{ apparent: number; allocated: number }> {
  const s = await stat(path);
  return { apparent: s.size, allocated: s.blocks * 512 };
}

async function timed(fn: () => Promise<string>): Promise<Measure> {
  await dropCaches();
  const t0 = process.hrtime.bigint();
  const image = await fn();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, ...(await sizes(image)) };
}

/**
 * Block devices for the OEM and ESP of `image`: partitions of one `losetup -P` device, or, where the
 * kernel makes no partition nodes for loop devices (containers without udev), one loop device per
 * partition at its offset. Returns the devices and how to detach them.
 */
async function attachPartitions(image: string, labels: string[]): Promise<{ devices: Record<string, string>; detach: () => Promise<void>; how: string }> {
  const gpt = await readGpt(image);
  const loop = (await run('losetup', ['-P', '--show', '-f', image])).stdout.trim();
  const parts = Object.fromEntries(labels.map((l) => [l, `${loop}p${findPartition(gpt, { label: l }).number}`]));
  for (let i = 0; i < 20 && !Object.values(parts).every((p) => existsSync(p)); i++) await sleep(50);
  if (Object.values(parts).every((p) => existsSync(p))) {
    return { devices: parts, detach: async () => void (await run('losetup', ['-d', loop])), how: 'losetup -P' };
  }
  await run('losetup', ['-d', loop]);
  const devices: Record<string, string> = {};
  for (const l of labels) {
    const { offset, size } = partitionBytes(gpt, findPartition(gpt, { label: l }));
    devices[l] = (await run('losetup', ['--show', '-f', '-o', String(offset), '--sizelimit', String(size), image])).stdout.trim();
  }
  return { devices, detach: async () => void (await Promise.all(Object.values(devices).map((d) => run('losetup', ['-d', d])))), how: 'losetup -o' };
}

/** The naive way: full copy, loop devices, mount, write, unmount, detach. Returns the image path. */
async function naiveCompose(base: string, dir: string, oemFiles: Record<string, Buffer>, espStage: string, kernelFat: boolean): Promise<{ image: string; how: string }> {
  const image = join(dir, 'naive.img');
  await run('cp', ['--sparse=never', base, image]);
  const { devices, detach, how } = await attachPartitions(image, ['OEM', 'EFI-SYSTEM']);
  const mnt = join(dir, 'mnt');
  await mkdir(mnt, { recursive: true });
  try {
    await run('mount', ['-t', 'btrfs', devices.OEM!, mnt]);
    try {
      for (const [name, data] of Object.entries(oemFiles)) await writeFile(join(mnt, name), data, { mode: name.endsWith('.ign') ? 0o600 : 0o644 });
    } finally {
      await run('umount', [mnt]);
    }
    if (kernelFat) {
      await run('mount', ['-t', 'vfat', devices['EFI-SYSTEM']!, mnt]);
      try {
        await cp(espStage, mnt, { recursive: true });
      } finally {
        await run('umount', [mnt]);
      }
    } else {
      await run('mcopy', ['-s', '-o', '-i', devices['EFI-SYSTEM']!, ...(await stagedEntries(espStage)), '::/'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    }
  } finally {
    await detach();
  }
  await fsyncFile(image);
  return { image, how: `${how}, mount OEM${kernelFat ? ' and ESP' : ', mtools ESP'}` };
}

async function stagedEntries(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort().map((n) => join(dir, n));
}

async function kernelHasFat(): Promise<boolean> {
  const fs = await readFile('/proc/filesystems', 'utf8');
  return /\tvfat$/m.test(fs);
}

async function main(): Promise<number> {
  const tree = await ensureFixture({ log: (l) => log(l) });
  const server = await startFixtureServer({ root: tree.root });
  const work = await mkdtemp(join(tmpdir(), 'bramble-bench-compose-'));
  const cacheDir = join(testCacheRoot(), 'build-cache');
  const kernelFat = await kernelHasFat();
  const rows: Array<{ layout: string; way: string; m: Measure }> = [];
  const hashSeconds: Array<{ layout: string; seconds: number }> = [];
  try {
    const sources = join(work, 'sources.toml');
    await writeFile(sources, server.sourcesToml);
    for (const L of layouts) {
      const dir = join(work, L.version);
      await mkdir(dir, { recursive: true });
      const config = join(dir, 'cluster.toml');
      await writeFile(
        config,
        [
          'name = "bench"',
          `[os]\nbase = "flatcar"\nchannel = "stable"\nversion = "${L.version}"`,
          '[provision]\nkernel_args = ["bramble.test=yes"]',
          `[[nodes]]\nname = "${NODE}"\nrole = "control-plane"\nhardware = "rpi4"\nkernel_args = ["bramble.node=${NODE}"]`,
          '',
        ].join('\n\n'),
      );
      const spec = await loadClusterFile(config, { sourcesFile: sources });
      const lockPath = join(dir, 'bramble.lock');
      const build = (outDir: string) =>
        buildCluster({ spec, targets: ['rpi4'], outDir, cacheDir, lockPath, offline: false, signal: new AbortController().signal, events: discardEvents });

      log(`bench: ${L.label}: warming the cache (download and decompress once, not timed)`);
      const warm = await build(join(dir, 'warm'));
      const warmImage = join(warm.clusterDir, 'images', `${NODE}.img`);
      // The naive way writes the same bytes: the OEM files bramble wrote and the ESP files it added.
      const gpt = await readGpt(warmImage);
      const oemSpan = partitionBytes(gpt, findPartition(gpt, { label: 'OEM' }));
      const oemFiles = {
        'config.ign': await readBtrfsFile(warmImage, oemSpan, 'config.ign'),
        'grub.cfg': await readBtrfsFile(warmImage, oemSpan, 'grub.cfg'),
      };
      const lock = await readLock(lockPath);
      const fetched = await fetchInputs(spec, { cacheDir, lock, offline: true, targets: ['rpi4'], signal: new AbortController().signal, events: discardEvents });
      const base = fetched.inputs.get('flatcar-image-arm64')!.derivedPath!;
      const espStage = join(dir, 'esp');
      await mkdir(espStage);
      await run('unzip', ['-q', fetched.inputs.get(RPI4_FIRMWARE_ID)!.path, '-d', espStage]);
      await rm(join(espStage, 'Readme.md'), { force: true });
      await writeFile(join(espStage, 'config.txt'), RPI4_CONFIG_TXT);
      await rm(join(dir, 'warm'), { recursive: true, force: true });

      for (let i = 0; i < runs; i++) {
        const out = join(dir, `out-${i}`);
        const m = await timed(async () => {
          const r = await build(out);
          const image = join(r.clusterDir, 'images', `${NODE}.img`);
          await fsyncFile(image);
          return image;
        });
        rows.push({ layout: L.label, way: 'bramble (sparse, no root)', m });
        // How much of that is the image's SHA-256 for SHA256SUMS, which covers the apparent size (holes hashed as zeros).
        const image = join(out, 'bench', 'images', `${NODE}.img`);
        const bmap = await readBmap(`${image}.bmap`);
        const t0 = process.hrtime.bigint();
        await sha256Sparse(image, bmapByteRanges(bmap));
        hashSeconds.push({ layout: L.label, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
        await rm(out, { recursive: true, force: true });

        if (!isRoot) continue;
        const naiveDir = join(dir, `naive-${i}`);
        await mkdir(naiveDir);
        let how = '';
        const n = await timed(async () => {
          const r = await naiveCompose(base, naiveDir, oemFiles, espStage, kernelFat);
          how = r.how;
          return r.image;
        });
        rows.push({ layout: L.label, way: `naive (cp, ${how})`, m: n });
        await rm(naiveDir, { recursive: true, force: true });
      }
    }
  } finally {
    await server.close();
    await rm(work, { recursive: true, force: true });
  }

  const fmt = (n: number) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / MiB).toFixed(1)} MiB`);
  console.log(`\none rpi4 node image from a warm cache (${runs} run${runs > 1 ? 's' : ''} each; page cache ${isRoot ? 'dropped' : 'NOT dropped (not root)'} before each)\n`);
  console.log(`${'layout'.padEnd(32)} ${'way'.padEnd(48)} ${'seconds'.padStart(8)} ${'apparent'.padStart(10)} ${'allocated'.padStart(10)}`);
  for (const r of rows) {
    console.log(`${r.layout.padEnd(32)} ${r.way.padEnd(48)} ${r.m.seconds.toFixed(2).padStart(8)} ${fmt(r.m.apparent).padStart(10)} ${fmt(r.m.allocated).padStart(10)}`);
  }
  if (!isRoot) {
    console.log('\nnaive way skipped: it needs root for losetup and mount (run the benchmark as root to compare).');
    return 0;
  }
  console.log('');
  for (const L of layouts) {
    const median = (way: string) => {
      const xs = rows.filter((r) => r.layout === L.label && r.way.startsWith(way)).map((r) => r.m.seconds).sort((a, b) => a - b);
      return xs[Math.floor(xs.length / 2)]!;
    };
    const [b, n] = [median('bramble'), median('naive')];
    const hash = hashSeconds.filter((h) => h.layout === L.label).map((h) => h.seconds).sort((x, y) => x - y)[Math.floor(runs / 2)]!;
    console.log(`${L.label}: naive ${n.toFixed(2)} s / bramble ${b.toFixed(2)} s = ${(n / b).toFixed(1)}x` + ` (bramble's SHA-256 of the whole image for SHA256SUMS alone: ${hash.toFixed(2)} s)`);
  }
  return 0;
}

runMain('bench', main);
