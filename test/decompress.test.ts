// bz2 and zip → sparse file: byte-identical to the tools' own output, holes where the zeros were,
// and a data map that matches the non-zero blocks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { bzip2Tool, decompressToSparse, extractZipImageToSparse, writeSparse, SPARSE_BLOCK } from '../images/decompress.ts';
import { makeImage, makeZip, TEST_IMAGE_SIZE } from './helpers/tiny-upstream.ts';

const opts = () => ({ signal: new AbortController().signal, events: () => {} });

async function workdir(t: import('node:test').TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-sparse-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Bytes the filesystem allocated for a file (st_blocks is in 512-byte units). */
const allocated = async (p: string) => (await stat(p)).blocks * 512;

test('bz2 → sparse equals `bunzip2 -c` byte for byte, is sparse, and maps its data', async (t) => {
  const dir = await workdir(t);
  const image = await makeImage();
  await writeFile(join(dir, 'image.bin.bz2'), image.bz2);
  const r = await decompressToSparse(join(dir, 'image.bin.bz2'), join(dir, 'out.img'), opts());
  // The reference: bunzip2's own output.
  await run('sh', ['-c', 'bunzip2 -c image.bin.bz2 > reference.img'], { cwd: dir });
  assert.ok((await readFile(join(dir, 'out.img'))).equals(await readFile(join(dir, 'reference.img'))));
  assert.ok((await readFile(join(dir, 'out.img'))).equals(image.raw));
  assert.equal(r.size, TEST_IMAGE_SIZE);
  assert.equal((await stat(join(dir, 'out.img'))).size, TEST_IMAGE_SIZE);
  assert.deepEqual(r.dataRanges, image.dataRanges);
  const data = r.dataRanges.reduce((n, [s, e]) => n + e - s, 0);
  const alloc = await allocated(join(dir, 'out.img'));
  assert.ok(alloc < TEST_IMAGE_SIZE / 4, `allocated ${alloc} of ${TEST_IMAGE_SIZE} apparent`);
  assert.ok(alloc >= data, 'the data blocks are allocated');
  assert.ok((await allocated(join(dir, 'reference.img'))) >= TEST_IMAGE_SIZE, 'bunzip2 -c writes every zero');
});

test('the data map is exact at block granularity whatever the chunking of the stream', async (t) => {
  const dir = await workdir(t);
  const size = 5 * SPARSE_BLOCK * 16 + 123; // not a whole number of blocks
  const raw = Buffer.alloc(size);
  raw[0] = 1; // block 0
  randomBytes(3 * SPARSE_BLOCK).copy(raw, 10 * SPARSE_BLOCK + 7); // blocks 10..13 (straddles into 13)
  raw[11 * SPARSE_BLOCK * 2] = 9; // block 22
  raw[size - 1] = 2; // the short last block
  const expected: Array<[number, number]> = [
    [0, SPARSE_BLOCK],
    [10 * SPARSE_BLOCK, 14 * SPARSE_BLOCK],
    [22 * SPARSE_BLOCK, 23 * SPARSE_BLOCK],
    [size - (size % SPARSE_BLOCK), size],
  ];
  for (const chunk of [13, 4095, 4096, 4097, 65536, size]) {
    async function* source() {
      for (let i = 0; i < size; i += chunk) yield raw.subarray(i, Math.min(size, i + chunk));
    }
    const out = join(dir, `c${chunk}.img`);
    const r = await writeSparse(source(), out, opts());
    assert.deepEqual(r, { size, dataRanges: expected }, `chunk ${chunk}`);
    assert.ok((await readFile(out)).equals(raw), `chunk ${chunk}`);
  }
  // An all-zero stream is one hole of the right length.
  async function* zeros() {
    yield Buffer.alloc(3 * SPARSE_BLOCK + 5);
  }
  const z = await writeSparse(zeros(), join(dir, 'zeros.img'), opts());
  assert.deepEqual(z, { size: 3 * SPARSE_BLOCK + 5, dataRanges: [] });
  assert.equal(await allocated(join(dir, 'zeros.img')), 0);
});

test('zip → sparse extracts the one .img member', async (t) => {
  const dir = await workdir(t);
  const image = await makeImage('zip');
  await writeFile(join(dir, 'hypriotos-rpi-v1.12.3.img.zip'), await makeZip('hypriotos-rpi-v1.12.3.img', image.raw));
  const r = await extractZipImageToSparse(join(dir, 'hypriotos-rpi-v1.12.3.img.zip'), join(dir, 'out.img'), opts());
  assert.ok((await readFile(join(dir, 'out.img'))).equals(image.raw));
  assert.deepEqual(r.dataRanges, image.dataRanges);
  assert.ok((await allocated(join(dir, 'out.img'))) < TEST_IMAGE_SIZE / 4);
});

test('a corrupt bz2 is a tool failure naming the tool, and leaves no output', async (t) => {
  const dir = await workdir(t);
  const image = await makeImage('corrupt');
  const bad = Buffer.from(image.bz2);
  bad.fill(0x41, 200, 400);
  await writeFile(join(dir, 'bad.bz2'), bad);
  await assert.rejects(decompressToSparse(join(dir, 'bad.bz2'), join(dir, 'out.img'), opts()), (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.hostEnvironment);
    assert.match((e as Error).message, new RegExp(`^${bzip2Tool()} -d -c .*failed`));
    return true;
  });
  await assert.rejects(stat(join(dir, 'out.img')), { code: 'ENOENT' });
});

test('an aborted decompression stops with exit 130 and leaves no output', async (t) => {
  const dir = await workdir(t);
  const image = await makeImage('abort');
  await writeFile(join(dir, 'a.bz2'), image.bz2);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(decompressToSparse(join(dir, 'a.bz2'), join(dir, 'out.img'), { signal: ac.signal, events: () => {} }), (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.interrupted);
    return true;
  });
  await assert.rejects(stat(join(dir, 'out.img')), { code: 'ENOENT' });
});
