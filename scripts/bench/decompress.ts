// `npm run bench:decompress [-- --synthetic] [-- --runs N]`: streaming bz2 → sparse file (what the fetch
// stage does) against `bunzip2 -c > file` and `lbzip2 -dc > file`, on the fixture's Flatcar image (2025
// layout, 8 GiB apparent) or, with --synthetic or without the fixture, on a comparable image built here
// (8 GiB apparent, ~48 MiB of data at Flatcar-like offsets; cached under ~/.cache/bramble-test/bench).
// As root, the page cache is dropped before every run. Prints one table and the ratios.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { run } from '../../builders/exec.ts';
import { decompressToSparse } from '../../images/decompress.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

interface Row {
  method: string;
  seconds: number;
  apparent: number;
  allocated: number;
  sha256: string;
}

const args = parseArgs({ options: { synthetic: { type: 'boolean' }, runs: { type: 'string' } } }).values;
const runs = Math.max(1, Number(args.runs ?? '1'));

function cacheRoot(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && xdg.startsWith('/') ? xdg : join(process.env.HOME ?? tmpdir(), '.cache'), 'bramble-test');
}

/** What this script reads of scripts/fixtures/build.ts's FixtureTree. */
interface FixtureTreeView {
  flatcar: Array<{ channel: string; board: string; version: string; current: boolean; layout: string; dir: string }>;
}

/** The fixture's current stable amd64 image (the 2025 layout), when the fixture upstream is available. */
async function fixtureImage(): Promise<{ bz2: string; label: string } | undefined> {
  const builder = new URL('../fixtures/build.ts', import.meta.url);
  if (!existsSync(builder)) return undefined;
  // Imported by URL so this script still runs (on --synthetic input) in a checkout without the fixture.
  const { ensureFixture } = (await import(builder.href)) as { ensureFixture: (o: { log?: (l: string) => void }) => Promise<FixtureTreeView> };
  const tree = await ensureFixture({ log: (l) => process.stderr.write(`fixture: ${l}\n`) });
  const rel = tree.flatcar.find((r) => r.channel === 'stable' && r.board === 'amd64-usr' && r.current);
  if (!rel) return undefined;
  return { bz2: join(rel.dir, 'flatcar_production_image.bin.bz2'), label: `fixture Flatcar ${rel.version} amd64 (${rel.layout} layout)` };
}

/** Where data sits in the synthetic image: ESP, OEM, USR-A and ROOT starts of Flatcar's 2025 layout, roughly. */
const SYNTHETIC_REGIONS: Array<[offset: number, bytes: number]> = [
  [0, 2 * MiB], // protective MBR, GPT, BIOS-BOOT
  [2 * MiB + 512 * 1024, 8 * MiB], // ESP
  [1 * GiB + 130 * MiB, 24 * MiB], // USR-A
  [2 * GiB + 150 * MiB, 6 * MiB], // OEM
  [4 * GiB + 400 * MiB, 8 * MiB], // ROOT
  [8 * GiB - 4 * MiB, 34 * 512], // backup GPT
];
const SYNTHETIC_SIZE = 8 * GiB;

/** Compressible-but-real bytes: the host's own binaries, repeated as needed. */
async function filler(bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let have = 0;
  for (const name of (await readdir('/usr/bin')).sort()) {
    if (have >= bytes) break;
    const b = await readFile(join('/usr/bin', name)).catch(() => undefined);
    if (!b || b.length === 0) continue;
    parts.push(b);
    have += b.length;
  }
  let all = Buffer.concat(parts);
  while (all.length < bytes) all = Buffer.concat([all, all]);
  return all.subarray(0, bytes);
}

async function syntheticImage(): Promise<{ bz2: string; label: string }> {
  const key = createHash('sha256').update(JSON.stringify({ SYNTHETIC_REGIONS, SYNTHETIC_SIZE, v: 1 })).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), 'bench');
  const bz2 = join(dir, `synthetic-${key}.bin.bz2`);
  const label = `synthetic 8 GiB image, ${Math.round(SYNTHETIC_REGIONS.reduce((n, [, b]) => n + b, 0) / MiB)} MiB of data`;
  if (existsSync(bz2)) return { bz2, label };
  await mkdir(dir, { recursive: true });
  process.stderr.write(`building ${bz2} (once)\n`);
  const raw = join(dir, `synthetic-${key}.bin`);
  const fh = await open(raw, 'w');
  try {
    const data = await filler(Math.max(...SYNTHETIC_REGIONS.map(([, b]) => b)));
    for (const [offset, bytes] of SYNTHETIC_REGIONS) await fh.write(data, 0, bytes, offset);
    await fh.truncate(SYNTHETIC_SIZE);
  } finally {
    await fh.close();
  }
  await run('lbzip2', ['-z', '-f', raw]);
  await rename(`${raw}.bz2`, bz2);
  return { bz2, label };
}

async function dropCaches(): Promise<string> {
  if (process.getuid?.() !== 0) return 'not root: page cache kept';
  await run('sync', []);
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3\n');
    return 'page cache dropped before each run';
  } catch (e) {
    return `page cache kept (${(e as Error).message})`;
  }
}

async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path, { highWaterMark: 4 * MiB }), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) h.update(chunk);
  });
  return h.digest('hex');
}

async function measure(method: string, out: string, fn: () => Promise<void>): Promise<Row> {
  await rm(out, { force: true });
  await dropCaches();
  const t0 = performance.now();
  await fn();
  const seconds = (performance.now() - t0) / 1000;
  const st = await stat(out);
  return { method, seconds, apparent: st.size, allocated: st.blocks * 512, sha256: await sha256OfFile(out) };
}

const fmtBytes = (n: number) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / MiB).toFixed(1)} MiB`);

async function main() {
  const input = (!args.synthetic && (await fixtureImage())) || (await syntheticImage());
  const work = await mkdtemp(join(tmpdir(), 'bramble-bench-'));
  const cacheNote = await dropCaches();
  const signal = new AbortController().signal;
  const rows: Row[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      rows.push(
        await measure('stream bz2 → sparse (lbzip2)', join(work, 'sparse.img'), async () => {
          await decompressToSparse(input.bz2, join(work, 'sparse.img'), { signal, events: () => {}, tool: 'lbzip2' });
        }),
      );
      await rm(join(work, 'sparse.img'), { force: true });
      rows.push(
        await measure('stream bz2 → sparse (bzip2)', join(work, 'sparse1.img'), async () => {
          await decompressToSparse(input.bz2, join(work, 'sparse1.img'), { signal, events: () => {}, tool: 'bzip2' });
        }),
      );
      await rm(join(work, 'sparse1.img'), { force: true });
      rows.push(await measure('bunzip2 -c > file', join(work, 'bunzip2.img'), () => shell(`bunzip2 -c '${input.bz2}' > '${join(work, 'bunzip2.img')}'`)));
      await rm(join(work, 'bunzip2.img'), { force: true });
      rows.push(await measure('lbzip2 -dc > file', join(work, 'lbzip2.img'), () => shell(`lbzip2 -dc '${input.bz2}' > '${join(work, 'lbzip2.img')}'`)));
      await rm(join(work, 'lbzip2.img'), { force: true });
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const best = (m: string) => Math.min(...rows.filter((r) => r.method === m).map((r) => r.seconds));
  const compressed = (await stat(input.bz2)).size;
  const lines = [
    `input: ${input.label}: ${input.bz2} (${fmtBytes(compressed)} compressed)`,
    `${cacheNote}; ${runs} run(s) each, best time shown`,
    '',
    `${'method'.padEnd(32)} ${'seconds'.padStart(8)} ${'apparent'.padStart(10)} ${'allocated'.padStart(10)}  sha256`,
  ];
  for (const m of [...new Set(rows.map((r) => r.method))]) {
    const r = rows.find((x) => x.method === m)!;
    lines.push(`${m.padEnd(32)} ${best(m).toFixed(2).padStart(8)} ${fmtBytes(r.apparent).padStart(10)} ${fmtBytes(r.allocated).padStart(10)}  ${r.sha256.slice(0, 16)}`);
  }
  const same = new Set(rows.map((r) => r.sha256)).size === 1;
  lines.push(
    '',
    `identical output bytes: ${same ? 'yes' : 'NO'}`,
    `time ratio  stream→sparse (lbzip2) / bunzip2 -c:   ${(best('stream bz2 → sparse (lbzip2)') / best('bunzip2 -c > file')).toFixed(3)}`,
    `time ratio  stream→sparse (bzip2)  / bunzip2 -c:   ${(best('stream bz2 → sparse (bzip2)') / best('bunzip2 -c > file')).toFixed(3)}`,
    `time ratio  stream→sparse (lbzip2) / lbzip2 -dc:   ${(best('stream bz2 → sparse (lbzip2)') / best('lbzip2 -dc > file')).toFixed(3)}`,
  );
  process.stdout.write(lines.join('\n') + '\n');
  if (!same) process.exitCode = 1;
}

async function shell(cmd: string): Promise<void> {
  await run('sh', ['-c', cmd]);
}

await main();
