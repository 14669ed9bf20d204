// The disk builder's ROOT free-space check, on the fixture's real-shaped Flatcar image: ROOT content
// larger than the filesystem's free space (a sparse file standing in for a first node's PXE tree and
// mirror, which no fixture input is large enough to be) is refused with exit 2 before anything is
// written, the message names the node and a `size` to set, and no image or temp file is left behind.
// Following the hint works: `size` grows the ROOT partition and its ext4 (checked by e2fsck and sgdisk).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assembleDiskImage } from '../builders/assemble-disk.ts';
import { renderNode } from '../builders/build.ts';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import { fetchInputs, type FetchedInput } from '../builders/fetch.ts';
import { layout } from '../builders/layout.ts';
import { OutputWriter } from '../builders/output.ts';
import type { ClusterSpec } from '../builders/spec.ts';
import { readGpt, findPartition, partitionBytes, PartitionType } from '../images/gpt.ts';
import { ext4Space, listExt4 } from '../images/ext4.ts';
import { testCacheRoot } from '../scripts/fixtures/cache.ts';
import { fixtureSources, getFixture } from './helpers/fixture.ts';
import { node, testSpec } from './helpers/tiny-upstream.ts';

const BIG_FILE = '/var/lib/bramble/stand-in.bin';

let spec: ClusterSpec;
let inputs: Map<string, FetchedInput>;
let dir: string;
let standIn: string;
let tooBig: number;
const signal = new AbortController().signal;

before(async () => {
  const f = await getFixture();
  const sources = fixtureSources(f);
  spec = testSpec(sources, { nodes: [node('cp-1', { role: 'control-plane' })] });
  // The fetch tests' shared cache already holds the decompressed fixture image.
  inputs = (await fetchInputs(spec, { cacheDir: join(testCacheRoot(), 'fetch-cache'), offline: false, targets: ['pc'], signal, events: () => {} })).inputs;
  const base = inputs.get('flatcar-image-amd64')!;
  const gpt = await readGpt(base.derivedPath!);
  const root = partitionBytes(gpt, findPartition(gpt, { label: 'ROOT', typeGuid: PartitionType.flatcarResize }));
  const free = await ext4Space(base.derivedPath!, { offset: root.offset }, { signal });
  dir = await mkdtemp(join(tmpdir(), 'bramble-root-space-'));
  standIn = join(dir, 'stand-in.bin');
  // Sparse: as large as the check counts, nothing on the test machine's disk.
  tooBig = (free.freeBlocks + 1024) * free.blockSize;
  const fh = await open(standIn, 'w');
  await fh.truncate(tooBig);
  await fh.close();
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** assembleDiskImage for cp-1 with the stand-in on ROOT, into out-<label>/. */
async function assemble(label: string, sizeBytes?: number) {
  const rendered = renderNode(spec, { ...spec.nodes[0]!, ...(sizeBytes !== undefined && { sizeBytes }) });
  rendered.rootEntries = [
    { path: '/var/lib/bramble', type: 'dir', mode: 0o755 },
    { path: BIG_FILE, type: 'file', source: standIn, mode: 0o644 },
  ];
  const clusterDir = join(dir, `out-${label}`, spec.name);
  const out = new OutputWriter(clusterDir, () => {}, signal);
  await out.begin();
  const workDir = join(clusterDir, '.work');
  await mkdir(workDir, { recursive: true });
  await assembleDiskImage({ spec, rendered, inputs, out, epoch: 1735689600, workDir, signal, events: () => {} });
  return { clusterDir, out };
}

let hintedGiB: number | undefined;

test('a disk build refuses ROOT content that does not fit: exit 2, the node and a size to set, no image left', async () => {
  await assert.rejects(assemble('base'), (e: BrambleError) => {
    assert.equal(e.exitCode, ExitCode.badInput, String(e.stack));
    assert.match(e.message, /^node "cp-1": its ROOT partition has \d+ MiB free, the files bramble puts there need \d+ MiB$/);
    const m = /set size = "(\d+)GiB" \(or more\) on node "cp-1"/.exec(e.hint ?? '');
    assert.ok(m, e.hint);
    hintedGiB = Number(m[1]);
    return true;
  });
  const names = (await readdir(join(dir, 'out-base', spec.name), { recursive: true })).map(String);
  assert.deepEqual(
    names.filter((n) => n.startsWith('images') && n !== 'images'),
    [],
    'no image, bmap or temp file left in images/',
  );
  assert.ok(!names.includes(layout.manifest), 'no manifest claims a build');
});

test('the size the refusal names makes the same ROOT content fit', async () => {
  assert.ok(hintedGiB, 'the refusal named a size');
  const { clusterDir, out } = await assemble('sized', hintedGiB * 2 ** 30);
  const image = join(clusterDir, layout.image('cp-1'));
  assert.ok(out.artefacts.has(layout.image('cp-1')));
  const grown = await readGpt(image);
  const grownRoot = partitionBytes(grown, findPartition(grown, { label: 'ROOT', typeGuid: PartitionType.flatcarResize }));
  const listed = await listExt4(image, { offset: grownRoot.offset }, { dir: '/var/lib/bramble', signal });
  assert.equal(listed.find((e) => e.path === BIG_FILE)?.size, tooBig, 'the stand-in is on ROOT at its full size');
  assert.equal((await stat(image)).size, hintedGiB * 2 ** 30, 'the image keeps the size asked for (resize2fs must not cut its tail)');
  const fsck = spawnSync('e2fsck', ['-fn', `${image}?offset=${grownRoot.offset}`], { encoding: 'utf8' });
  assert.equal(fsck.status, 0, `e2fsck -fn on the grown ROOT:\n${fsck.stdout}${fsck.stderr}`);
  const blocks = /Block count:\s+(\d+)/.exec(spawnSync('dumpe2fs', ['-h', `${image}?offset=${grownRoot.offset}`], { encoding: 'utf8' }).stdout);
  assert.equal(Number(blocks?.[1]), Math.floor(grownRoot.size / 4096), 'the ext4 fills the grown partition');
  const sgdisk = spawnSync('sgdisk', ['-v', image], { encoding: 'utf8' });
  assert.match(sgdisk.stdout, /No problems found/, sgdisk.stdout);
});
