// The fetch stage end to end against tiny Flatcar/HypriotOS/dl.k8s.io trees served on 127.0.0.1 and
// signed with keys made here: what is fetched for which nodes, the lock, offline rebuilds with zero
// requests, and every way verification must fail with exit 3 and an untouched cache.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import type { BrambleEvent } from '../builders/events.ts';
import { fetchInput, fetchInputs, neededInputs, type FetchOptions } from '../builders/fetch.ts';
import type { LockFile } from '../builders/lockfile.ts';
import type { ClusterSpec } from '../builders/spec.ts';
import { Cache } from '../images/cache.ts';
import { cniPluginsInput, kubernetesBinaryInput } from '../images/catalog/kubernetes.ts';
import { loadTrustedKeys } from '../images/verify.ts';
import {
  detachedSignature,
  filesUnder,
  FLATCAR_PREFIX,
  flatcarDigests,
  makeFlatcarRelease,
  makeImage,
  makeKey,
  makeZip,
  node,
  publishBootFirmware,
  publishFlatcar,
  sha256,
  testSources,
  testSpec,
  type FlatcarRelease,
  type TestKey,
} from './helpers/tiny-upstream.ts';
import { UpstreamServer } from './helpers/upstream-server.ts';

// One release and two keys for the whole file: building them is the slow part.
const release: Promise<FlatcarRelease> = makeFlatcarRelease('4593.2.5');
const keys = Promise.all([makeKey('Mirror Signing'), makeKey('Stranger')]);

const IMAGE_PATH = `${FLATCAR_PREFIX}/stable/amd64-usr/4593.2.5/flatcar_production_image.bin.bz2`;

async function setup(t: import('node:test').TestContext, publish: { signing?: 'sig' | 'asc'; trust?: boolean } = {}) {
  const [mirror, stranger] = await keys;
  const server = await new UpstreamServer().start();
  const cacheDir = await mkdtemp(join(tmpdir(), 'bramble-fetch-'));
  t.after(async () => {
    await server.close();
    await rm(cacheDir, { recursive: true, force: true });
  });
  await publishFlatcar(server, await release, mirror, { signing: publish.signing });
  publishBootFirmware(server);
  const events: BrambleEvent[] = [];
  const spec = testSpec(testSources(server, publish.trust === false ? undefined : mirror), {
    nodes: [
      node('cp1', { role: 'control-plane' }),
      node('net1', { boot: 'pxe', mac: '52:54:00:12:34:56' }),
      node('pi1', { hardware: 'rpi4', arch: 'arm64' }),
    ],
  });
  const opts = (over: Partial<FetchOptions> = {}): FetchOptions => ({
    cacheDir,
    offline: false,
    signal: new AbortController().signal,
    events: (e) => events.push(e),
    ...over,
  });
  return { server, cacheDir, spec, opts, events, mirror, stranger };
}


function fails(code: number, ...patterns: RegExp[]) {
  return (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, code, `expected exit ${code}, got ${(e as Error)?.stack ?? String(e)}`);
    const text = `${(e as Error).message}\n${(e as BrambleError).hint ?? ''}`;
    for (const p of patterns) assert.match(text, p);
    return true;
  };
}

test('which inputs: the image per arch with disk nodes, kernel and cpio per arch with pxe nodes, filtered by target', async () => {
  const spec = testSpec(testSources({ base: 'http://h' } as UpstreamServer), {
    nodes: [node('a'), node('b', { boot: 'pxe', mac: '52:54:00:00:00:01' }), node('c', { hardware: 'rpi4', arch: 'arm64' })],
  });
  // Flatcar inputs only: iPXE binaries and the RPi4 firmware ride along, pinned on first use.
  const ids = (targets?: Parameters<typeof neededInputs>[2]) =>
    neededInputs(spec, '1.2.3', targets)
      .map((i) => i.id)
      .filter((id) => id.startsWith('flatcar-'));
  assert.deepEqual(ids(), ['flatcar-image-amd64', 'flatcar-pxe-kernel-amd64', 'flatcar-pxe-cpio-amd64', 'flatcar-image-arm64']);
  assert.deepEqual(ids(['pxe']), ['flatcar-pxe-kernel-amd64', 'flatcar-pxe-cpio-amd64']);
  assert.deepEqual(ids(['rpi4']), ['flatcar-image-arm64']);
  assert.deepEqual(ids(['rpi3']), []);
  const image = neededInputs(spec, '1.2.3')[0]!;
  assert.equal(image.url, 'http://h/flatcar/stable/amd64-usr/1.2.3/flatcar_production_image.bin.bz2');
  assert.deepEqual(image.check, {
    kind: 'flatcar-digests',
    digestsUrl: `${image.url}.DIGESTS`,
    signatureUrl: `${image.url}.sig`,
    digestsAscUrl: `${image.url}.DIGESTS.asc`,
  });
  const hyp = testSpec(testSources({ base: 'http://h' } as UpstreamServer), {
    os: { base: 'hypriot', channel: 'stable', version: 'current' },
    nodes: [node('p', { hardware: 'rpi3', arch: 'arm' })],
  });
  assert.deepEqual(
    neededInputs(hyp, '1.12.3').map((i) => [i.id, i.url]),
    [['hypriot-image-arm', 'http://h/hypriot/v1.12.3/hypriotos-rpi-v1.12.3.img.zip']],
  );
});

test('happy path: version.txt resolves current, every input verified by DIGESTS + signature, images decompressed sparse', async (t) => {
  const { server, spec, opts, events, mirror } = await setup(t);
  const rel = await release;
  const { lock, inputs } = await fetchInputs(spec, opts());
  assert.equal(lock.os.version, '4593.2.5');
  assert.deepEqual(lock.os, { base: 'flatcar', channel: 'stable', version: '4593.2.5' });
  assert.deepEqual(
    lock.inputs.map((i) => i.id).filter((id) => id.startsWith('flatcar-')),
    ['flatcar-image-amd64', 'flatcar-image-arm64', 'flatcar-pxe-cpio-amd64', 'flatcar-pxe-kernel-amd64'],
  );
  assert.deepEqual(
    lock.inputs.map((i) => i.id),
    [...lock.inputs.map((i) => i.id)].sort(),
    'the lock lists inputs sorted by id',
  );
  const image = inputs.get('flatcar-image-amd64')!;
  assert.equal(image.sha256, sha256(rel.image.bz2));
  assert.equal(image.size, rel.image.bz2.length);
  assert.equal(image.url, server.url(IMAGE_PATH));
  assert.equal(image.verifiedWith, `sha512:flatcar_production_image.bin.bz2.DIGESTS+openpgp:${mirror.fingerprint}`);
  assert.ok((await readFile(image.path)).equals(rel.image.bz2));
  assert.ok((await readFile(image.derivedPath!)).equals(rel.image.raw));
  assert.deepEqual(image.dataRanges, rel.image.dataRanges);
  assert.ok((await stat(image.derivedPath!)).blocks * 512 < rel.image.raw.length / 4, 'the derived image is sparse');
  assert.deepEqual(JSON.parse(await readFile(`${image.derivedPath}.ranges.json`, 'utf8')).dataRanges, rel.image.dataRanges);
  assert.ok((await readFile(inputs.get('flatcar-pxe-kernel-amd64')!.path)).equals(rel.kernel));
  assert.ok((await readFile(inputs.get('flatcar-pxe-cpio-amd64')!.path)).equals(rel.cpio));
  assert.equal(inputs.get('flatcar-pxe-cpio-amd64')!.derivedPath, undefined);
  assert.deepEqual(
    lock.inputs.find((i) => i.id === 'flatcar-pxe-kernel-amd64'),
    {
      id: 'flatcar-pxe-kernel-amd64',
      url: server.url(`${FLATCAR_PREFIX}/stable/amd64-usr/4593.2.5/flatcar_production_pxe.vmlinuz`),
      version: '4593.2.5',
      sha256: sha256(rel.kernel),
      size: rel.kernel.length,
      verifiedWith: `sha512:flatcar_production_pxe.vmlinuz.DIGESTS+openpgp:${mirror.fingerprint}`,
    },
  );
  assert.equal(events.filter((e) => e.kind === 'download' && !e.cached && /flatcar_production/.test(e.url)).length, 4);
  // Both boards share one image file here, so the arm64 image is a hit by content.
  assert.equal(inputs.get('flatcar-image-arm64')!.sha256, image.sha256);
});

test('with the lock and a warm cache a rebuild makes zero requests, online or --offline', async (t) => {
  const { server, spec, opts, events } = await setup(t);
  const first = await fetchInputs(spec, opts());
  server.log.length = 0;
  events.length = 0;
  for (const offline of [true, false]) {
    const again = await fetchInputs(spec, opts({ lock: first.lock, offline }));
    assert.deepEqual(server.log, [], `offline=${offline}: no request at all`);
    assert.deepEqual(again.lock, first.lock);
    assert.deepEqual(
      [...again.inputs.values()].map((i) => [i.id, i.path, i.derivedPath]),
      [...first.inputs.values()].map((i) => [i.id, i.path, i.derivedPath]),
    );
  }
  assert.ok(events.filter((e) => e.kind === 'download').every((e) => e.kind === 'download' && e.cached));
});

test('--offline with a cold cache is a clear error, with or without a lock, and makes no request', async (t) => {
  const { server, spec, opts, cacheDir } = await setup(t);
  const other = await mkdtemp(join(tmpdir(), 'bramble-fetch-warm-'));
  t.after(() => rm(other, { recursive: true, force: true }));
  const { lock } = await fetchInputs(spec, opts({ cacheDir: other }));
  server.log.length = 0;
  await assert.rejects(
    fetchInputs(spec, opts({ lock, offline: true })),
    fails(ExitCode.hostEnvironment, /flatcar_production_image\.bin\.bz2 is not in the cache \(sha256 [0-9a-f]{64}\)/, /run `bramble fetch` first, online/),
  );
  await assert.rejects(fetchInputs(spec, opts({ offline: true })), fails(ExitCode.hostEnvironment, /"current"/, /run `bramble fetch` first, online/));
  assert.deepEqual(server.log, []);
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('a tampered image (DIGESTS mismatch) fails with exit 3, names the file and both digests, and leaves the cache empty', async (t) => {
  const { server, spec, opts, cacheDir } = await setup(t);
  const tampered = Buffer.from((await release).image.bz2);
  tampered[tampered.length - 20] ^= 0xff;
  server.files.set(IMAGE_PATH, tampered);
  const expected = /sha512 ([0-9a-f]{128}) \(flatcar_production_image\.bin\.bz2\.DIGESTS\)/;
  await assert.rejects(fetchInputs(spec, opts()), fails(ExitCode.verification, /flatcar_production_image\.bin\.bz2: verification failed/, expected, /got sha512 [0-9a-f]{128}/));
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('signatures: by an untrusted key, by the trusted key over other bytes, or no trusted key configured → exit 3, cache empty', async (t) => {
  const { server, spec, opts, cacheDir, stranger, mirror } = await setup(t);
  const rel = await release;
  server.files.set(`${IMAGE_PATH}.sig`, await detachedSignature(rel.image.bz2, stranger));
  await assert.rejects(fetchInputs(spec, opts()), fails(ExitCode.verification, /flatcar_production_image\.bin\.bz2/, /untrusted key/, /sources\.trustedKeys/));
  assert.deepEqual(await filesUnder(cacheDir), []);

  server.files.set(`${IMAGE_PATH}.sig`, await detachedSignature(randomBytes(64), mirror));
  await assert.rejects(fetchInputs(spec, opts()), fails(ExitCode.verification, /bad signature/));
  assert.deepEqual(await filesUnder(cacheDir), []);

  server.files.set(`${IMAGE_PATH}.sig`, await detachedSignature(rel.image.bz2, mirror));
  const untrusting: ClusterSpec = { ...spec, sources: { ...spec.sources, trustedKeys: [] } };
  await assert.rejects(fetchInputs(untrusting, opts()), fails(ExitCode.verification, /untrusted key/));
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('a truncated image download fails (exit 3) and leaves nothing in the cache', async (t) => {
  const { server, spec, opts, cacheDir } = await setup(t);
  server.misbehave.set(IMAGE_PATH, { truncateAt: 4096 });
  await assert.rejects(fetchInputs(spec, opts()), fails(ExitCode.verification, /truncated download/));
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('a release signed only by a clearsigned .DIGESTS.asc is accepted; an edited .DIGESTS.asc is not', async (t) => {
  const { server, spec, opts, cacheDir, mirror } = await setup(t, { signing: 'asc' });
  const { inputs } = await fetchInputs(spec, opts({ targets: ['pc'] }));
  assert.equal(inputs.get('flatcar-image-amd64')!.verifiedWith, `sha512:flatcar_production_image.bin.bz2.DIGESTS.asc+openpgp:${mirror.fingerprint}`);
  assert.ok(server.requestsFor(`${IMAGE_PATH}.sig`).length > 0, 'the detached signature is tried first');

  await rm(cacheDir, { recursive: true, force: true });
  const asc = server.files.get(`${IMAGE_PATH}.DIGESTS.asc`)!.toString();
  const real = flatcarDigests('flatcar_production_image.bin.bz2', (await release).image.bz2);
  const forged = flatcarDigests('flatcar_production_image.bin.bz2', Buffer.from('forged'));
  const forgedSha512 = forged.split('\n')[5]!.split(' ')[0]!;
  server.files.set(`${IMAGE_PATH}.DIGESTS.asc`, Buffer.from(asc.replace(real.split('\n')[5]!.split(' ')[0]!, forgedSha512)));
  await assert.rejects(fetchInputs(spec, opts({ targets: ['pc'] })), fails(ExitCode.verification, /DIGESTS\.asc/));
  assert.deepEqual(await filesUnder(cacheDir), []);

  server.files.delete(`${IMAGE_PATH}.DIGESTS.asc`);
  await assert.rejects(fetchInputs(spec, opts({ targets: ['pc'] })), fails(ExitCode.verification, /\.sig or .*\.DIGESTS\.asc.*neither exists/));
});

test('bytes that differ from the locked sha256 fail with exit 3 even when upstream signs them', async (t) => {
  const { server, spec, opts, cacheDir, mirror } = await setup(t);
  const { lock } = await fetchInputs(spec, opts({ targets: ['pc'] }));
  await rm(cacheDir, { recursive: true, force: true });
  // Upstream re-publishes the same version with other (validly signed) bytes.
  const other = await makeImage('republished');
  await publishFlatcar(server, { ...(await release), image: other }, mirror);
  await assert.rejects(fetchInputs(spec, opts({ lock, targets: ['pc'] })), fails(ExitCode.verification, /bramble\.lock/, new RegExp(lock.inputs[0]!.sha256)));
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('concurrent fetches into one cache both succeed and download and decompress each entry once', async (t) => {
  const { server, spec, opts, events } = await setup(t);
  const [a, b] = await Promise.all([fetchInputs(spec, opts()), fetchInputs(spec, opts())]);
  assert.deepEqual(a.lock, b.lock);
  assert.equal(server.requestsFor(IMAGE_PATH).length, 1);
  assert.equal(events.filter((e) => e.kind === 'info' && e.message.startsWith('decompressing')).length, 1);
  assert.ok((await readFile(a.inputs.get('flatcar-image-amd64')!.derivedPath!)).equals((await release).image.raw));
});

test('a run limited to some targets keeps the other locked inputs; a pinned version needs no version.txt', async (t) => {
  const { server, spec, opts } = await setup(t);
  const full = await fetchInputs(spec, opts());
  const partial = await fetchInputs(spec, opts({ lock: full.lock, targets: ['pxe'] }));
  assert.deepEqual(partial.lock, full.lock);
  assert.deepEqual(
    [...partial.inputs.keys()].filter((id) => id.startsWith('flatcar-')),
    ['flatcar-pxe-kernel-amd64', 'flatcar-pxe-cpio-amd64'],
  );

  server.log.length = 0;
  const pinned = { ...spec, os: { ...spec.os, version: '4593.2.5' } };
  const r = await fetchInputs(pinned, opts({ targets: ['pc'] }));
  assert.equal(r.lock.os.version, '4593.2.5');
  assert.equal(server.requestsFor('version.txt').length, 0);
  // Without a lock, a cache hit is still compared with upstream's DIGESTS (one small request), never re-downloaded.
  assert.deepEqual(
    server.log.map((l) => l.path).filter((p) => p.startsWith(FLATCAR_PREFIX)),
    [`${IMAGE_PATH}.DIGESTS`],
  );
});

test('a lock for another OS version is not used: a warning, then the pinned version is fetched', async (t) => {
  const { spec, opts, events } = await setup(t);
  const stale: LockFile = { lockVersion: 1, cluster: 'test', os: { base: 'flatcar', channel: 'stable', version: '4000.0.0' }, inputs: [] };
  const pinned = { ...spec, os: { ...spec.os, version: '4593.2.5' } };
  const r = await fetchInputs(pinned, opts({ lock: stale, targets: ['pc'] }));
  assert.equal(r.lock.os.version, '4593.2.5');
  assert.ok(events.some((e) => e.kind === 'warning' && /made for flatcar stable 4000\.0\.0/.test(e.message)));
});

test('HypriotOS: the zip is verified with its sha256sum file and its .img extracted sparse', async (t) => {
  const server = await new UpstreamServer().start();
  const cacheDir = await mkdtemp(join(tmpdir(), 'bramble-fetch-'));
  t.after(async () => {
    await server.close();
    await rm(cacheDir, { recursive: true, force: true });
  });
  const image = await makeImage('hypriot');
  const zip = await makeZip('hypriotos-rpi-v1.12.3.img', image.raw);
  const path = '/hypriot/v1.12.3/hypriotos-rpi-v1.12.3.img.zip';
  server.files.set(path, zip);
  server.files.set(`${path}.sha256`, Buffer.from(`${sha256(zip)}  hypriotos-rpi-v1.12.3.img.zip\n`));
  const spec = testSpec(testSources(server), {
    os: { base: 'hypriot', channel: 'stable', version: 'current' },
    nodes: [node('p1', { role: 'control-plane', hardware: 'rpi3', arch: 'arm' })],
  });
  const base = { cacheDir, offline: false, signal: new AbortController().signal, events: () => {} };
  const { lock, inputs } = await fetchInputs(spec, base);
  assert.deepEqual(lock.os, { base: 'hypriot', channel: 'stable', version: '1.12.3' });
  const input = inputs.get('hypriot-image-arm')!;
  assert.equal(input.verifiedWith, 'sha256:hypriotos-rpi-v1.12.3.img.zip.sha256');
  assert.ok((await readFile(input.derivedPath!)).equals(image.raw));
  assert.deepEqual(input.dataRanges, image.dataRanges);

  await rm(cacheDir, { recursive: true, force: true });
  server.files.set(`${path}.sha256`, Buffer.from(`${sha256(Buffer.from('x'))}  hypriotos-rpi-v1.12.3.img.zip\n`));
  await assert.rejects(fetchInputs(spec, base), fails(ExitCode.verification, /hypriotos-rpi-v1\.12\.3\.img\.zip: verification failed/));
  assert.deepEqual(await filesUnder(cacheDir), []);
});

test('Kubernetes binaries: bare-hex .sha256 from dl.k8s.io, sha256sum-style for the CNI plugins; a mismatch is exit 3', async (t) => {
  const server = await new UpstreamServer().start();
  const cacheDir = await mkdtemp(join(tmpdir(), 'bramble-fetch-'));
  t.after(async () => {
    await server.close();
    await rm(cacheDir, { recursive: true, force: true });
  });
  const sources = testSources(server);
  const kubelet = randomBytes(50_000);
  const cni = randomBytes(40_000);
  server.files.set('/dl.k8s.io/release/v1.33.4/bin/linux/arm64/kubelet', kubelet);
  server.files.set('/dl.k8s.io/release/v1.33.4/bin/linux/arm64/kubelet.sha256', Buffer.from(sha256(kubelet))); // no newline, as dl.k8s.io
  const cniPath = '/github/containernetworking/plugins/releases/download/v1.7.1/cni-plugins-linux-arm64-v1.7.1.tgz';
  server.files.set(cniPath, cni);
  server.files.set(`${cniPath}.sha256`, Buffer.from(`${sha256(cni)}  cni-plugins-linux-arm64-v1.7.1.tgz\n`));
  const cache = new Cache(cacheDir);
  const ctx = { signal: new AbortController().signal, events: () => {}, offline: false, keys: () => loadTrustedKeys() };
  const k = await fetchInput(cache, kubernetesBinaryInput(sources, 'v1.33.4', 'arm64', 'kubelet'), ctx);
  assert.equal(k.sha256, sha256(kubelet));
  assert.equal(k.verifiedWith, 'sha256:kubelet.sha256');
  const c = await fetchInput(cache, cniPluginsInput(sources, 'arm64'), ctx);
  assert.ok((await readFile(c.path)).equals(cni));

  server.files.set('/dl.k8s.io/release/v1.33.4/bin/linux/arm64/kubectl', randomBytes(10));
  server.files.set('/dl.k8s.io/release/v1.33.4/bin/linux/arm64/kubectl.sha256', Buffer.from(sha256(kubelet)));
  const before = await filesUnder(cacheDir);
  await assert.rejects(fetchInput(cache, kubernetesBinaryInput(sources, '1.33.4', 'arm64', 'kubectl'), ctx), fails(ExitCode.verification, /kubectl: verification failed/));
  assert.deepEqual(await filesUnder(cacheDir), before);
});
