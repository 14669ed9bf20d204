// `npm run bench:compress`: how to compress a built disk image for publishing. One pc node image is
// built from the fixture upstream (8 GiB apparent, mostly holes), then compressed and decompressed
// with: bramble's own path (compressFile: zstd -19 --long=27 -T0 fed from the bmap's data ranges),
// the zstd CLI at levels 3, 10 and 19, xz -6 (multi-threaded) and bzip2 -9 (lbzip2 when installed),
// the format the upstream Flatcar image ships as; the upstream .bin.bz2's own size is shown too.
// Prints size, compress and decompress seconds. Nothing is asserted: figures go in the README.
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCluster } from '../../builders/build.ts';
import { discardEvents } from '../../builders/events.ts';
import { findTool, run } from '../../builders/exec.ts';
import { loadClusterFile } from '../../builders/load.ts';
import type { Manifest } from '../../builders/output.ts';
import { bmapByteRanges, readBmap } from '../../images/bmap.ts';
import { compressFile } from '../../images/compress.ts';
import { ensureFixture } from '../fixtures/build.ts';
import { testCacheRoot } from '../fixtures/cache.ts';
import { startFixtureServer } from '../fixtures/server.ts';
import { runMain } from '../run-main.ts';

const MiB = 1024 ** 2;
const log = (line: string) => process.stderr.write(`${line}\n`);

interface Row {
  way: string;
  size: number;
  compress: number;
  decompress: number;
}

async function seconds(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Decompress to /dev/null with the format's CLI (all of the image's bytes, holes included). */
const decompress = (tool: string, file: string) => run('sh', ['-c', `${tool} -dc '${file}' > /dev/null`]);

async function main(): Promise<number> {
  const tree = await ensureFixture({ log });
  const server = await startFixtureServer({ root: tree.root });
  const work = await mkdtemp(join(tmpdir(), 'bramble-bench-compress-'));
  const rows: Row[] = [];
  let upstreamBz2 = 0;
  try {
    const sources = join(work, 'sources.toml');
    await writeFile(sources, server.sourcesToml);
    const config = join(work, 'cluster.toml');
    await writeFile(config, ['name = "bench"', '[os]\nbase = "flatcar"\nchannel = "stable"\nversion = "current"', '[[nodes]]\nname = "n1"\nrole = "control-plane"\nhardware = "pc"', ''].join('\n\n'));
    const spec = await loadClusterFile(config, { sourcesFile: sources });
    log('bench: building one pc node image from the fixture upstream (not timed)');
    const built = await buildCluster({
      spec,
      targets: ['pc'],
      outDir: join(work, 'out'),
      cacheDir: join(testCacheRoot(), 'build-cache'),
      lockPath: join(work, 'bramble.lock'),
      offline: false,
      signal: new AbortController().signal,
      events: discardEvents,
    });
    const image = join(built.clusterDir, 'images', 'n1.img');
    const size = (await stat(image)).size;
    const bmap = await readBmap(`${image}.bmap`);
    const ranges = bmapByteRanges(bmap);
    const mapped = ranges.reduce((n, [s, e]) => n + e - s, 0);
    const manifest = JSON.parse(await readFile(join(built.clusterDir, 'manifest.json'), 'utf8')) as Manifest;
    const upstream = manifest.inputs.find((i) => i.id === 'flatcar-image-amd64');
    if (upstream) {
      const bz2 = join(tree.root, new URL(upstream.url).pathname);
      upstreamBz2 = await stat(bz2).then((s) => s.size, () => 0);
    }
    log(`bench: image ${(size / MiB).toFixed(0)} MiB apparent, ${(mapped / MiB).toFixed(1)} MiB mapped`);

    const measure = async (way: string, out: string, compress: () => Promise<unknown>, tool: string) => {
      log(`bench: ${way}`);
      const c = await seconds(compress);
      const d = await seconds(() => decompress(tool, out));
      rows.push({ way, size: (await stat(out)).size, compress: c, decompress: d });
      await rm(out, { force: true });
    };

    await measure('bramble publish (zstd -19 --long=27 -T0, holes from the bmap)', join(work, 'b.zst'), () => compressFile(image, join(work, 'b.zst'), { format: 'zstd', size, dataRanges: ranges }), 'zstd');
    for (const level of [3, 10, 19]) {
      const out = join(work, `z${level}.zst`);
      await measure(`zstd -${level} --long=27 -T0`, out, () => run('sh', ['-c', `zstd -q -T0 --long=27 -${level} -c '${image}' > '${out}'`]), 'zstd');
    }
    const xzOut = join(work, 'x.xz');
    await measure(`xz -6 -T+${availableParallelism()}`, xzOut, () => compressFile(image, xzOut, { format: 'xz', size, dataRanges: ranges }), 'xz');
    const bz = findTool('lbzip2') ? 'lbzip2' : 'bzip2';
    const bzOut = join(work, 'b.bz2');
    await measure(`${bz} -9`, bzOut, () => run('sh', ['-c', `${bz} -9 -c '${image}' > '${bzOut}'`]), bz);
  } finally {
    await server.close();
    await rm(work, { recursive: true, force: true });
  }

  console.log(`\none pc node image (8 GiB apparent), ${availableParallelism()} CPUs; decompression to /dev/null with the format's CLI\n`);
  console.log(`${'way'.padEnd(64)} ${'size'.padStart(10)} ${'compress s'.padStart(11)} ${'decompress s'.padStart(13)}`);
  for (const r of rows) {
    console.log(`${r.way.padEnd(64)} ${`${(r.size / MiB).toFixed(2)} MiB`.padStart(10)} ${r.compress.toFixed(1).padStart(11)} ${r.decompress.toFixed(1).padStart(13)}`);
  }
  if (upstreamBz2) console.log(`\nthe upstream flatcar_production_image.bin.bz2 of the fixture (the base, without bramble's edits): ${(upstreamBz2 / MiB).toFixed(2)} MiB`);
  return 0;
}

runMain('bench', main);
