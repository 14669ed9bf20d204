// `node --import tsx scripts/bench/flash.ts [--runs N] [--keep] [--skip dd]`: bramble flash against `bmaptool copy`
// and `dd bs=4M conv=fsync`, side by side, writing a Flatcar-layout image (8 GiB apparent, ~220 MiB of
// random data at the places a real image has data: GPT, BIOS-BOOT, ESP, USR-A, OEM, ROOT's ext4
// metadata) to a file-backed loop device one GiB larger than the image. Every run gets a fresh sparse
// backing file and a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`). Needs root.
// bramble runs in its own Node process (startup included), like the other two tools.
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { run } from '../../builders/exec.ts';
import { writeBmap } from '../../images/bmap.ts';
import type { ByteRange } from '../../images/sparse.ts';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const SECTOR = 512;
const IMAGE_SIZE = 8 * GiB;
const TARGET_SIZE = IMAGE_SIZE + GiB;
const repo = fileURLToPath(new URL('../..', import.meta.url));

const args = parseArgs({ options: { runs: { type: 'string' }, keep: { type: 'boolean' }, skip: { type: 'string' } } }).values;
const runs = Math.max(1, Number(args.runs ?? '1'));

/**
 * Flatcar's base layout (shared/reference/flatcar/disk_layout.json): number, name, type code, size in
 * 512-byte blocks (0: the rest of the disk), in on-disk order from sector 4096 (2 MiB alignment).
 */
const LAYOUT: Array<[number, string, string, number]> = [
  [1, 'EFI-SYSTEM', 'ef00', 2097152],
  [2, 'BIOS-BOOT', 'ef02', 4096],
  [3, 'USR-A', '5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6', 4194304],
  [4, 'USR-B', '5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6', 4194304],
  [6, 'OEM', '8300', 2097152],
  [7, 'OEM-CONFIG', 'c95dc21a-df0e-4340-8d7b-26cbfa9a03e0', 131072],
  [9, 'ROOT', '3884dd41-8582-4404-b9a8-e9b84f2df50e', 0],
];
const FIRST_SECTOR = 4096;

/** Partition starts in bytes, by name. */
function starts(): Map<string, number> {
  const out = new Map<string, number>();
  let at = FIRST_SECTOR;
  for (const [, name, , blocks] of LAYOUT) {
    out.set(name, at * SECTOR);
    at += blocks;
  }
  return out;
}

/** Where a built Flatcar image holds data, roughly: file system metadata and the files written at build time. */
function dataRegions(): ByteRange[] {
  const p = starts();
  const r = (name: string, offset: number, bytes: number): ByteRange => [p.get(name)! + offset, p.get(name)! + offset + bytes];
  const regions: ByteRange[] = [
    r('BIOS-BOOT', 0, 256 * 1024), // GRUB core.img
    r('EFI-SYSTEM', 0, 2 * MiB), // FAT tables and directories
    r('EFI-SYSTEM', 4 * MiB, 46 * MiB), // GRUB, kernel
    r('USR-A', 0, 150 * MiB), // /usr file system
    r('USR-A', 160 * MiB, 10 * MiB),
    r('USR-A', 1024 * MiB - 4 * MiB, 4 * MiB), // verity hash tree
    r('OEM', 64 * 1024, 64 * 1024), // btrfs superblock
    r('OEM', 4 * MiB, 2 * MiB), // btrfs metadata chunk
    r('OEM', 30 * MiB, 2 * MiB),
  ];
  // ROOT's ext4: superblock/group descriptors at the start, then bitmaps and inode tables per flex group.
  regions.push(r('ROOT', 0, 4 * MiB));
  for (let g = 1; g * 128 * MiB < 1.7 * GiB; g++) regions.push(r('ROOT', g * 128 * MiB, 256 * 1024));
  return regions;
}

async function buildImage(dir: string): Promise<{ image: string; bmap: string; dataBytes: number; ranges: ByteRange[] }> {
  const image = join(dir, 'flatcar_production_image.bin');
  await writeFile(image, '');
  await truncate(image, IMAGE_SIZE);
  const sgdisk = ['-o'];
  for (const [n, name, type, blocks] of LAYOUT) {
    sgdisk.push('-n', `${n}:${n === 1 ? FIRST_SECTOR : 0}:${blocks ? `+${blocks}` : 0}`, '-t', `${n}:${type}`, '-c', `${n}:${name}`);
  }
  await run('sgdisk', [...sgdisk, image]);
  const regions = dataRegions();
  const fh = await open(image, 'r+');
  try {
    for (const [s, e] of regions) {
      for (let pos = s; pos < e; pos += 8 * MiB) {
        const n = Math.min(8 * MiB, e - pos);
        await fh.write(randomBytes(n), 0, n, pos);
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  const tables: ByteRange[] = [
    [0, 34 * SECTOR],
    [IMAGE_SIZE - 33 * SECTOR, IMAGE_SIZE],
  ];
  const bmap = `${image}.bmap`;
  const written = await writeBmap(image, [...tables, ...regions], bmap);
  return { image, bmap, dataBytes: written.mappedBlocksCount * written.blockSize, ranges: regions };
}

interface Method {
  name: string;
  command: (image: string, bmap: string, dev: string) => [string, string[]];
  /** The tool's own account of its copy time, without process startup (bramble and bmaptool report one). */
  ownSeconds?: (stdout: string, stderr: string) => number | undefined;
}

/** bramble in a fresh Node process (tsx, as bin/bramble.mjs runs it); it prints the flash's own time. */
function brambleCommand(verify: boolean): Method['command'] {
  const code = `
    import { flashImage, worstExitCode } from './builders/flash.ts';
    const [image, bmap, dev, verify] = process.argv.slice(1);
    const results = await flashImage({ source: image, bmapPath: bmap, targets: [dev], verify: verify === 'verify', forceNonRemovable: true, signal: new AbortController().signal });
    const r = results.get(dev);
    if (!r?.ok) throw r?.error ?? new Error('no result');
    console.log(JSON.stringify({ ms: r.ms }));`;
  return (image, bmap, dev) => ['node', ['--import', 'tsx', '--input-type=module', '-e', code, image, bmap, dev, verify ? 'verify' : 'no-verify']];
}

const brambleOwn = (stdout: string) => {
  const m = /\{"ms":(\d+)\}/.exec(stdout);
  return m ? Number(m[1]) / 1000 : undefined;
};

const allMethods: Method[] = [
  { name: 'bramble flash', command: brambleCommand(true), ownSeconds: brambleOwn },
  { name: 'bramble flash --no-verify', command: brambleCommand(false), ownSeconds: brambleOwn },
  {
    name: 'bmaptool copy',
    command: (image, bmap, dev) => ['bmaptool', ['copy', '--bmap', bmap, image, dev]],
    // "bmaptool: info: copying time: 0.7s, copying speed 327.0 MiB/sec" (BmapCopy's summary line).
    ownSeconds: (_out, err) => {
      const m = /copying time: (?:(\d+)m )?([\d.]+)s/.exec(err);
      return m ? Number(m[1] ?? 0) * 60 + Number(m[2]) : undefined;
    },
  },
  { name: 'dd bs=4M conv=fsync', command: (image, _bmap, dev) => ['dd', [`if=${image}`, `of=${dev}`, 'bs=4M', 'conv=fsync', 'status=none']] },
];
/** --skip dd leaves out the slow baseline (minutes on a slow disk) when comparing bramble with bmaptool. */
const methods = allMethods.filter((m) => !(args.skip ?? '').split(',').some((k) => k && m.name.startsWith(k)));

async function dropCaches(): Promise<void> {
  await run('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3\n');
}

/** The mapped data regions read back equal the image's (cmp), so a fast wrong copy does not count. */
async function sameData(image: string, dev: string, ranges: ByteRange[]): Promise<boolean> {
  for (const [s, e] of ranges) {
    const r = await run('cmp', ['-i', String(s), '-n', String(e - s), image, dev], { okCodes: [1] });
    if (r.exitCode !== 0) return false;
  }
  return true;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the flash benchmark needs root (loop devices, drop_caches)');
  const dir = await mkdtemp(join(tmpdir(), 'bramble-bench-flash-'));
  try {
    process.stderr.write('building the image...\n');
    const { image, bmap, dataBytes, ranges } = await buildImage(dir);
    const wall = new Map<string, number[]>();
    const own = new Map<string, number[]>();
    const add = (m: Map<string, number[]>, k: string, v: number) => m.set(k, [...(m.get(k) ?? []), v]);
    for (let i = 0; i < runs; i++) {
      // dd writes all 8 GiB: one run of it is enough to see where it stands.
      for (const m of methods.filter((x) => i === 0 || !x.name.startsWith('dd'))) {
        const backing = join(dir, 'stick.backing');
        await writeFile(backing, '');
        await truncate(backing, TARGET_SIZE);
        const dev = (await run('losetup', ['-f', '--show', backing])).stdout.trim();
        try {
          await dropCaches();
          const [tool, argv] = m.command(image, bmap, dev);
          const t0 = performance.now();
          const r = await run(tool, argv, { cwd: repo });
          const seconds = (performance.now() - t0) / 1000;
          if (!(await sameData(image, dev, ranges))) throw new Error(`${m.name}: the device does not hold the image's data`);
          add(wall, m.name, seconds);
          const mine = m.ownSeconds?.(r.stdout, r.stderr);
          if (mine !== undefined) add(own, m.name, mine);
          process.stderr.write(`  run ${i + 1}: ${m.name}: ${seconds.toFixed(2)} s${mine !== undefined ? ` (own ${mine.toFixed(2)} s)` : ''}\n`);
        } finally {
          await run('losetup', ['-d', dev]);
          await rm(backing, { force: true });
        }
      }
    }
    const median = (xs: number[] | undefined) => (xs?.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : undefined);
    const fmt = (n: number | undefined, w: number, digits = 2, unit = '') => (n === undefined ? '-' : `${n.toFixed(digits)}${unit}`).padStart(w);
    console.log(`flash benchmark: ${IMAGE_SIZE / GiB} GiB image, ${(dataBytes / MiB).toFixed(1)} MiB mapped, to a file-backed loop device of ${TARGET_SIZE / GiB} GiB`);
    console.log(`host: Linux ${release()}, ${cpus().length} CPUs, ${cpus()[0]?.model ?? '?'}; page cache dropped before each run; median of ${runs}${methods.some((m) => m.name.startsWith('dd')) ? ' (dd: 1)' : ''}`);
    console.log('wall: the whole process, startup included; own: the copy as the tool itself times it (bmaptool\'s "copying time")');
    console.log('');
    console.log(`${'method'.padEnd(28)}${'wall s'.padStart(8)}${'own s'.padStart(8)}${'MiB/s'.padStart(8)}${'wall vs bmaptool'.padStart(18)}${'own vs bmaptool'.padStart(17)}`);
    const baseWall = median(wall.get('bmaptool copy'));
    const baseOwn = median(own.get('bmaptool copy'));
    for (const m of methods) {
      const w = median(wall.get(m.name))!;
      const o = median(own.get(m.name));
      const rate = dataBytes / MiB / (o ?? w);
      console.log(
        `${m.name.padEnd(28)}${fmt(w, 8)}${fmt(o, 8)}${fmt(rate, 8, 0)}${fmt(baseWall && w / baseWall, 18, 2, '×')}${fmt(baseOwn && o && o / baseOwn, 17, 2, '×')}`,
      );
    }
  } finally {
    if (!args.keep) await rm(dir, { recursive: true, force: true });
    else process.stderr.write(`kept ${dir}\n`);
  }
}

await main();
