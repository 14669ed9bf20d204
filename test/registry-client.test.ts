// The registry client against the real docker-registry (distribution 2.8, Debian's build) seeded by
// skopeo with multi-arch images built here: pulls by tag and digest, platform selection without
// attestations, one stored copy per blob across images, no refetch, offline from pinned digests,
// and rejection (exit 3, nothing unverified stored) of tampered blobs and manifests and of layers
// whose tar entries escape the root.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import type { BrambleEvent } from '../builders/events.ts';
import { run } from '../builders/exec.ts';
import { pullImages, type PullImagesOptions } from '../images/registry/pull.ts';
import { listStoredBlobs } from '../images/registry/store.ts';
import type { Digest, PulledImage } from '../images/registry/types.ts';
import { blobOf, buildFixtureImage, gzipLayer, OCI, ustarArchive, type FixtureImage, type FixturePlatform } from '../scripts/fixtures/registry.ts';
import { registryBlobData, seedImage, startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';
import { tempDir } from './helpers/tmp.ts';

let registry: DockerRegistry;
let work: string;
const afterAll: (() => Promise<void>)[] = [];
const hooks = { after: (fn: () => Promise<void>) => afterAll.push(fn) };

/** Images sharing the fixture's per-platform base layer. */
const alpha = buildFixtureImage('example.test/test/alpha:1');
const beta = buildFixtureImage('example.test/test/beta:1');

const platformName = (p: FixturePlatform) => `${p.os}-${p.architecture}${p.variant ?? ''}`;

/** An image none of whose layers is shared, so its blobs can be tampered with in the registry's storage. */
function uniqueImage(name: string, layerTar?: (p: FixturePlatform) => Buffer): FixtureImage {
  return buildFixtureImage(`example.test/test/${name}:1`, {
    layers: (p) => [gzipLayer(layerTar ? layerTar(p) : ustarArchive([{ name: 'etc/' }, { name: `etc/${name}`, data: `${name} ${platformName(p)}\n` }]))],
  });
}

const tamperedBlob = uniqueImage('tampered-blob');
const tamperedChild = uniqueImage('tampered-child');
const tamperedIndex = uniqueImage('tampered-index');
let dotDot: FixtureImage;
const hardlink = uniqueImage('hardlink', () =>
  ustarArchive([{ name: 'etc/' }, { name: 'etc/shadow-copy', type: '1', linkname: '../../etc/shadow' }]),
);
const absolute = uniqueImage('absolute', () => ustarArchive([{ name: '/etc/passwd', data: 'root::0:0::/:/bin/sh\n' }]));

before(async () => {
  work = await tempDir(hooks, 'registry-client');
  registry = await startDockerRegistry(join(work, 'registry'));
  afterAll.unshift(() => registry.stop());
  for (const [image, name] of [
    [alpha, 'test/alpha'],
    [beta, 'test/beta'],
    [tamperedBlob, 'test/tampered-blob'],
    [tamperedChild, 'test/tampered-child'],
    [tamperedIndex, 'test/tampered-index'],
    [hardlink, 'test/hardlink'],
    [absolute, 'test/absolute'],
  ] as const) {
    await seedImage(registry, work, image, name, '1');
  }
  dotDot = await dotDotImage();
  await seedImage(registry, work, dotDot, 'test/dot-dot', '1');
});

after(async () => {
  for (const fn of afterAll) await fn();
});

/** A layer made by GNU tar with --absolute-names, so its member really is `../bramble-escape`. */
async function dotDotImage(): Promise<FixtureImage> {
  const dir = join(work, 'dot-dot', 'inside');
  await mkdir(dir, { recursive: true });
  await writeFile(join(work, 'dot-dot', 'bramble-escape'), 'outside the root\n');
  const tar = join(work, 'dot-dot', 'layer.tar');
  await run('tar', ['--create', '--absolute-names', '--file', tar, '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '../bramble-escape'], { cwd: dir });
  const listing = await run('tar', ['--list', '--file', tar]);
  assert.equal(listing.stdout.trim(), '../bramble-escape', 'GNU tar kept the ../ member name');
  const bytes = await readFile(tar);
  return buildFixtureImage('example.test/test/dot-dot:1', { layers: () => [gzipLayer(bytes)] });
}

async function pull(storeRoot: string, refs: string[], o: Partial<PullImagesOptions> = {}): Promise<{ images: PulledImage[]; events: BrambleEvent[] }> {
  const events: BrambleEvent[] = [];
  const images = await pullImages({ refs, platforms: ['linux/amd64', 'linux/arm64'], storeRoot, signal: new AbortController().signal, events: (e) => events.push(e), ...o });
  return { images, events };
}

const ref = (name: string) => `${registry.host}/test/${name}:1`;

function exitCode(code: number, pattern: RegExp) {
  return (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, code, `expected exit ${code}, got ${String(e)}`);
    assert.match((e as Error).message, pattern);
    return true;
  };
}

/** Every stored file hashes to its name: nothing unverified ever appears in the store. */
async function assertStoreVerified(storeRoot: string): Promise<{ digest: Digest; size: number }[]> {
  const stored = await listStoredBlobs(storeRoot);
  for (const b of stored) {
    const bytes = await readFile(join(storeRoot, 'sha256', b.digest.slice(7)));
    assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, b.digest);
  }
  return stored;
}

async function partials(storeRoot: string): Promise<string[]> {
  return (await readdir(join(storeRoot, 'tmp')).catch(() => [] as string[])).filter((n) => n.endsWith('.partial'));
}

test('pulls by tag and by digest: the exact upstream index, only the wanted platforms, no attestation', async (t) => {
  const store = await tempDir(t, 'reg-store');
  const { images } = await pull(store, [ref('alpha'), `${registry.host}/test/alpha@${alpha.index.digest}`]);
  const [byTag, byDigest] = images as [PulledImage, PulledImage];
  assert.equal(byTag.ref, `${registry.host}/test/alpha:1`);
  assert.equal(byDigest.ref, `${registry.host}/test/alpha@${alpha.index.digest}`);
  assert.deepEqual(byTag.name, { registry: registry.host, repository: 'test/alpha', tag: '1' });
  for (const image of images) {
    assert.deepEqual(image.top, { mediaType: OCI.index, digest: alpha.index.digest, size: alpha.index.size });
    assert.deepEqual(
      image.platforms.map((p) => [p.os, p.architecture, p.variant, p.digest, p.config.digest, p.layers.map((l) => l.digest)]),
      alpha.children.slice(0, 2).map((c) => [c.platform.os, c.platform.architecture, undefined, c.manifest.digest, c.config.digest, c.layers.map((l) => l.digest)]),
    );
  }
  assert.deepEqual(byTag.blobs, byDigest.blobs);
  // The stored index is byte-for-byte what was pushed (never re-serialised).
  assert.deepEqual(await readFile(join(store, 'sha256', alpha.index.digest.slice(7))), alpha.index.bytes);
  const stored = await assertStoreVerified(store);
  assert.deepEqual(stored.map((b) => b.digest), byTag.blobs.map((b) => b.digest));
  const armChild = alpha.children[2]!;
  for (const skipped of [armChild.manifest, armChild.config, ...armChild.layers.slice(1), alpha.attestation!.manifest, alpha.attestation!.config]) {
    assert.ok(!stored.some((b) => b.digest === skipped.digest), `${skipped.digest} (${skipped.mediaType}) must not be pulled`);
  }
});

test('one stored copy per blob across images and arches: stored bytes equal the sum of unique blobs', async (t) => {
  const store = await tempDir(t, 'reg-store');
  const { images } = await pull(store, [ref('alpha'), ref('beta')], { platforms: ['linux/amd64', 'linux/arm64', 'linux/arm/v7'] });
  const unique = new Map<Digest, number>();
  let listed = 0;
  for (const image of images) {
    listed += image.blobs.length;
    for (const b of image.blobs) unique.set(b.digest, b.size);
  }
  // The base layer of each platform is in both images.
  assert.equal(listed - unique.size, 3);
  const stored = await assertStoreVerified(store);
  assert.deepEqual(stored.map((b) => b.digest).sort(), [...unique.keys()].sort());
  const storedBytes = (await Promise.all(stored.map(async (b) => (await stat(join(store, 'sha256', b.digest.slice(7)))).size))).reduce((a, b) => a + b, 0);
  assert.equal(storedBytes, [...unique.values()].reduce((a, b) => a + b, 0));
  assert.deepEqual(images[1]!.platforms.map((p) => `${p.architecture}${p.variant ? `/${p.variant}` : ''}`), ['amd64', 'arm64', 'arm/v7']);
});

test('a second pull fetches no blob; with pinned digests an offline pull makes no request at all', async (t) => {
  const store = await tempDir(t, 'reg-store');
  const first = await pull(store, [ref('alpha'), ref('beta')]);
  const seen = registry.requestedPaths().length;
  const second = await pull(store, [ref('alpha'), ref('beta')]);
  assert.deepEqual(second.images, first.images);
  const during = registry.requestedPaths().slice(seen);
  assert.ok(during.length > 0 && during.every((p) => p.includes('/manifests/1')), `only the two tags are resolved again: ${during.join(' ')}`);
  assert.ok(second.events.every((e) => e.kind !== 'download' || e.cached || e.url.includes('/manifests/1')));

  const pinned = Object.fromEntries(first.images.map((i) => [i.ref, i.top.digest]));
  const before = registry.requestedPaths().length;
  const offline = await pull(store, [ref('alpha'), ref('beta')], { pinned, offline: true });
  assert.deepEqual(offline.images, first.images);
  assert.equal(registry.requestedPaths().length, before, 'no request reached the registry');

  await assert.rejects(pull(store, [ref('alpha')], { offline: true }), exitCode(ExitCode.hostEnvironment, /--offline forbids/));
  const empty = await tempDir(t, 'reg-store');
  await assert.rejects(pull(empty, [ref('alpha')], { pinned, offline: true }), exitCode(ExitCode.hostEnvironment, /not in the cache and --offline forbids/));
});

test('an image without a wanted platform is an input error naming the image and the platforms it has', async (t) => {
  const store = await tempDir(t, 'reg-store');
  await assert.rejects(
    pull(store, [ref('alpha')], { platforms: ['linux/amd64', 'linux/s390x', 'linux/riscv64'] }),
    exitCode(ExitCode.badInput, new RegExp(`image ${registry.host}/test/alpha:1 is not published for linux/s390x, linux/riscv64 \\(it has linux/amd64, linux/arm/v7, linux/arm64\\)`)),
  );
  await assert.rejects(pull(store, [`${registry.host}/test/nothing:1`]), exitCode(ExitCode.badInput, /test\/nothing\/manifests\/1 does not exist \(HTTP 404 [A-Z_]+_UNKNOWN/));
  await assert.rejects(pull(store, [`${registry.host}/test/alpha:2`]), exitCode(ExitCode.badInput, /does not exist \(HTTP 404 MANIFEST_UNKNOWN/));
});

test('a blob whose bytes do not match its digest is rejected (exit 3) and never stored', async (t) => {
  const store = await tempDir(t, 'reg-store');
  const layer = tamperedBlob.children[1]!.layers[0]!;
  const data = registryBlobData(registry.storage, layer.digest);
  const bytes = await readFile(data);
  bytes[bytes.length - 1] ^= 0xff; // same size: only the sha256 can tell
  await writeFile(data, bytes);
  await assert.rejects(pull(store, [ref('tampered-blob')]), exitCode(ExitCode.verification, new RegExp(`layer ${layer.digest}: verification failed \\(expected ${layer.digest}, got sha256:`)));
  const stored = await assertStoreVerified(store);
  assert.ok(!stored.some((b) => b.digest === layer.digest));
  assert.deepEqual(await partials(store), []);
});

test('a manifest whose bytes do not match its digest is rejected (exit 3): a child by digest, an index by tag', async (t) => {
  const store = await tempDir(t, 'reg-store');
  const child = tamperedChild.children[0]!.manifest;
  // Valid JSON with the same meaning, but re-serialised: exactly what must never pass for the original.
  await writeFile(registryBlobData(registry.storage, child.digest), JSON.stringify(JSON.parse(child.bytes.toString()), null, 1));
  await assert.rejects(pull(store, [ref('tampered-child')]), exitCode(ExitCode.verification, new RegExp(`manifest ${child.digest}: verification failed`)));
  assert.ok(!(await assertStoreVerified(store)).some((b) => b.digest === child.digest));

  const index = tamperedIndex.index;
  await writeFile(registryBlobData(registry.storage, index.digest), JSON.stringify(JSON.parse(index.bytes.toString()), null, 1));
  await assert.rejects(pull(store, [ref('tampered-index')]), exitCode(ExitCode.verification, new RegExp(`manifest 1 \\(Docker-Content-Digest\\): verification failed \\(expected ${index.digest}`)));
  await assert.rejects(pull(store, [`${registry.host}/test/tampered-index@${index.digest}`]), exitCode(ExitCode.verification, /verification failed/));
  const stored = await assertStoreVerified(store);
  assert.ok(!stored.some((b) => b.digest === index.digest));
});

test('layers whose tar entries escape the root are rejected (exit 3) and not stored: ../, absolute names, hard links out', async (t) => {
  const cases: [string, FixtureImage, RegExp][] = [
    ['dot-dot', dotDot, /entry "\.\.\/bramble-escape" which climbs out of the root/],
    ['absolute', absolute, /entry "\/etc\/passwd" which is absolute/],
    ['hardlink', hardlink, /hard link "etc\/shadow-copy" to "\.\.\/\.\.\/etc\/shadow" which climbs out/],
  ];
  for (const [name, image, pattern] of cases) {
    const store = await tempDir(t, 'reg-store');
    await assert.rejects(pull(store, [ref(name)]), exitCode(ExitCode.verification, pattern));
    const stored = new Set((await assertStoreVerified(store)).map((b) => b.digest));
    for (const layer of image.children.flatMap((c) => c.layers)) assert.ok(!stored.has(layer.digest), `${name}: layer ${layer.digest} must not be stored`);
    assert.deepEqual(await partials(store), []);
  }
});

test('a zstd layer is read with the zstd tool and accepted; a gzip stream cut short is rejected', async (t) => {
  const dir = await tempDir(t, 'reg-zstd');
  const tar = ustarArchive([{ name: 'etc/' }, { name: 'etc/zstd-layer', data: 'zstd\n' }]);
  await writeFile(join(dir, 'layer.tar'), tar);
  await run('zstd', ['-q', '-19', join(dir, 'layer.tar'), '-o', join(dir, 'layer.tar.zst')]);
  const zstdLayer = { layer: blobOf('application/vnd.oci.image.layer.v1.tar+zstd', await readFile(join(dir, 'layer.tar.zst'))), diffId: gzipLayer(tar).diffId };
  const zstdImage = buildFixtureImage('example.test/test/zstd:1', { layers: () => [zstdLayer] });
  await seedImage(registry, dir, zstdImage, 'test/zstd', '1');
  const store = await tempDir(t, 'reg-store');
  const { images } = await pull(store, [ref('zstd')]);
  assert.deepEqual(images[0]!.platforms[0]!.layers, [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: zstdLayer.layer.digest, size: zstdLayer.layer.size }]);

  const whole = gzipLayer(ustarArchive([{ name: 'etc/' }, { name: 'etc/cut', data: 'x'.repeat(4000) }])).layer.bytes;
  const cut = blobOf(OCI.layerGzip, whole.subarray(0, whole.length - 12));
  const cutImage = buildFixtureImage('example.test/test/cut:1', { layers: () => [{ layer: cut, diffId: gzipLayer(Buffer.alloc(0)).diffId }] });
  await seedImage(registry, dir, cutImage, 'test/cut', '1');
  await assert.rejects(pull(store, [ref('cut')]), exitCode(ExitCode.verification, /layer sha256:[a-f0-9]{64}: verification failed \(expected a gzip-compressed tar layer, got unreadable data/));
  assert.ok(!(await assertStoreVerified(store)).some((b) => b.digest === cut.digest));
});
