// Two clean builds of the same config and lock (same download cache, same SOURCE_DATE_EPOCH, and the
// same pki/: the PKI is generated once and then kept as an input, so "the same cluster" includes it)
// give identical SHA256SUMS, and publishing each gives identical release SHA256SUMS and signatures,
// even with zstd given one CPU for one release and every CPU for the other.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import { sha256File } from '../builders/output.ts';
import { compressFile } from '../images/compress.ts';
import { brambleBin, explainCli, runBramble } from './helpers/build.ts';
import { buildReleaseCluster, makeGpgKey, type BuiltCluster, type GpgKey } from './helpers/release.ts';

let tmp: string;
let first: BuiltCluster;
let secondDir: string;
let key: GpgKey;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-reproducible-'));
  key = await makeGpgKey(join(tmp, 'key'));
  first = await buildReleaseCluster(join(tmp, 'a'), 'repro');
  // The second build: a fresh output directory holding only the first build's pki/.
  const outB = join(tmp, 'a', 'out-b');
  await mkdir(join(outB, 'repro'), { recursive: true });
  await run('cp', ['-a', join(first.clusterDir, 'pki'), join(outB, 'repro', 'pki')]);
  // The same config, lock (dir/bramble.lock) and cache as the first build.
  secondDir = (await buildReleaseCluster(join(tmp, 'a'), 'repro', outB)).clusterDir;
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('two clean builds of the same config, lock and pki/ have identical SHA256SUMS', async () => {
  const [a, b] = await Promise.all([readFile(join(first.clusterDir, 'SHA256SUMS'), 'utf8'), readFile(join(secondDir, 'SHA256SUMS'), 'utf8')]);
  assert.ok(a.includes('images/cp-1.img') && a.includes('registry/'), a.slice(0, 500));
  assert.equal(b, a);
});

test('their releases (zstd; one CPU for one, all for the other) have identical SHA256SUMS and signatures', async () => {
  const relA = join(tmp, 'rel-a');
  const relB = join(tmp, 'rel-b');
  const args = (dir: string, rel: string) => ['publish', dir, '--to', `dir://${rel}`, '--private', '--sign-key', key.secretFile];
  const a = await runBramble(args(first.clusterDir, relA));
  assert.equal(a.code, 0, explainCli(a));
  // The same command pinned to CPU 0: zstd -T0 then runs one worker.
  await run('taskset', ['-c', '0', process.execPath, brambleBin, ...args(secondDir, relB)]);
  const [sa, sb] = await Promise.all([readFile(join(relA, 'SHA256SUMS'), 'utf8'), readFile(join(relB, 'SHA256SUMS'), 'utf8')]);
  assert.match(sa, /cp-1\.img\.zst$/m);
  assert.equal(sb, sa);
  assert.equal(await readFile(join(relB, 'SHA256SUMS.asc'), 'utf8'), await readFile(join(relA, 'SHA256SUMS.asc'), 'utf8'));
});

// xz on a whole 8 GiB image takes minutes on one CPU, so its thread-count independence is shown on a
// smaller sparse file with the same code path.
for (const format of ['zstd', 'xz'] as const) {
  test(`compressFile (${format}): the same bytes with 1 and 4 threads, and they decompress to the input`, async () => {
    const src = join(tmp, `sparse-${format}.img`);
    const fh = await open(src, 'w');
    const size = 96 * 1024 * 1024;
    await fh.truncate(size);
    const ranges: Array<[number, number]> = [];
    for (const at of [0, 5 << 20, 40 << 20, 90 << 20]) {
      const data = randomBytes(1 << 20);
      data.fill(7, 0, 1 << 19);
      await fh.write(data, 0, data.length, at);
      ranges.push([at, at + data.length]);
    }
    await fh.close();
    const results = [];
    for (const threads of [1, 4]) {
      const dest = join(tmp, `out-${format}-${threads}`);
      results.push({ dest, ...(await compressFile(src, dest, { format, size, dataRanges: ranges, threads })) });
    }
    assert.equal(results[0]!.sha256, results[1]!.sha256);
    assert.equal(results[0]!.inputSha256, await sha256File(src));
    const { stdout } = await run('sh', ['-c', `${format} -dc ${results[0]!.dest} | sha256sum`]);
    assert.equal(stdout.split(' ')[0], results[0]!.inputSha256);
  });
}
