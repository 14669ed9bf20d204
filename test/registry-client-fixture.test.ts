// The fixture upstream's registry (scripts/fixtures/registry.ts, served under /v2/ by the fixture
// server): skopeo reads it like any registry; bramble pulls every image a default cluster needs
// through the [sources.registries] remaps the fixture prints; and its fault injection drives the
// client's retries and its resumption of a transfer cut short, within one run and across runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import type { BrambleEvent } from '../builders/events.ts';
import { run } from '../builders/exec.ts';
import { parseSources } from '../builders/load/sources.ts';
import { pullImages, type PullImagesOptions } from '../images/registry/pull.ts';
import { listStoredBlobs } from '../images/registry/store.ts';
import type { PulledImage } from '../images/registry/types.ts';
import { FIXTURE_REGISTRY_HOSTS, fixtureImageRefs } from '../scripts/fixtures/registry.ts';
import { startFixtureServer, type FixtureServer } from '../scripts/fixtures/server.ts';
import { tempDir } from './helpers/tmp.ts';

/** The fixture server needs no release tree to serve its registry: an empty root will do. */
async function serve(t: import('node:test').TestContext): Promise<FixtureServer> {
  const server = await startFixtureServer({ root: await tempDir(t, 'reg-fixture-root') });
  t.after(() => server.close());
  return server;
}

async function pull(server: FixtureServer, storeRoot: string, refs: string[], o: Partial<PullImagesOptions> = {}): Promise<{ images: PulledImage[]; events: BrambleEvent[] }> {
  const events: BrambleEvent[] = [];
  const registries = Object.fromEntries(FIXTURE_REGISTRY_HOSTS.map((h) => [h, server.url]));
  const images = await pullImages({ refs, platforms: ['linux/amd64'], storeRoot, registries, signal: new AbortController().signal, events: (e) => events.push(e), ...o });
  return { images, events };
}

test('skopeo reads the fixture registry: the served index is the fixture image, and a full copy verifies', async (t) => {
  const server = await serve(t);
  const host = server.url.slice('http://'.length);
  const image = server.registry.image('registry.k8s.io/kube-apiserver:v1.33.4');
  const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${host}/kube-apiserver:v1.33.4`], { binary: true });
  assert.deepEqual(raw.stdoutBytes, image.index.bytes);
  const dir = await tempDir(t, 'reg-fixture-copy');
  await run('skopeo', ['copy', '--quiet', '--all', '--preserve-digests', '--src-tls-verify=false', `docker://${host}/library/registry:2.8.3`, `oci:${dir}:2.8.3`], { env: { HOME: dir } });
  const registryImage = server.registry.image('registry:2.8.3');
  const copied = new Set(await readdir(join(dir, 'blobs', 'sha256')));
  assert.deepEqual([...copied].sort(), [...registryImage.blobs.keys()].map((d) => d.slice(7)).sort());
  // distribution's rule: an OCI index is hidden from a client whose Accept lacks the OCI index type.
  const res = await fetch(`${server.url}/v2/pause/manifests/3.10`, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' } });
  assert.equal(res.status, 404);
  assert.match(await res.text(), /"code":"MANIFEST_UNKNOWN","message":"OCI index found, but accept header does not support OCI indexes"/);
});

test('every image of a default cluster comes through the [sources.registries] remaps the fixture prints', async (t) => {
  const server = await serve(t);
  const sourcesText = server.sourcesToml.replace(/^trusted_keys = .*$/m, '');
  const sources = parseSources(sourcesText, join(await tempDir(t, 'reg-fixture-src'), 'sources.toml'));
  assert.deepEqual(sources.registries, Object.fromEntries(FIXTURE_REGISTRY_HOSTS.map((h) => [h, server.url])));
  const refs = fixtureImageRefs();
  assert.ok(refs.includes('registry.k8s.io/coredns/coredns:v1.12.0') && refs.includes('ghcr.io/flannel-io/flannel:v0.28.9') && refs.includes('docker.io/library/registry:2.8.3'));
  const store = await tempDir(t, 'reg-store');
  const events: BrambleEvent[] = [];
  const started = Date.now();
  const images = await pullImages({
    // Short names, as people write them, normalise to the same images.
    refs: refs.map((r) => r.replace(/^docker\.io\/library\//, '')),
    platforms: ['linux/amd64', 'linux/arm64', 'linux/arm/v7'],
    storeRoot: store,
    registries: sources.registries,
    signal: new AbortController().signal,
    events: (e) => events.push(e),
  });
  t.diagnostic(`pulled ${images.length} fixture images for 3 platforms in ${Date.now() - started} ms`);
  assert.deepEqual(images.map((i) => i.ref), refs);
  const unique = new Map<string, number>();
  for (const image of images) {
    const served = server.registry.image(image.ref);
    assert.equal(image.top.digest, served.index.digest);
    assert.deepEqual(image.platforms.map((p) => p.digest), served.children.map((c) => c.manifest.digest));
    for (const b of image.blobs) unique.set(b.digest, b.size);
  }
  const stored = await listStoredBlobs(store);
  assert.deepEqual(stored.map((b) => b.digest), [...unique.keys()].sort());
  const storedBytes = (await Promise.all(stored.map(async (b) => (await stat(join(store, 'sha256', b.digest.slice(7)))).size))).reduce((a, b) => a + b, 0);
  assert.equal(storedBytes, [...unique.values()].reduce((a, b) => a + b, 0));
  assert.ok(!server.requests.some((r) => r.path.includes(server.registry.image(refs[0]!).attestation!.manifest.digest)), 'attestations are never requested');
});

test('a transfer cut short is resumed with Range: within a run, and by the next run from the bytes kept', async (t) => {
  const server = await serve(t);
  const store = await tempDir(t, 'reg-store');
  const image = server.registry.image('registry.k8s.io/pause:3.10');
  const layer = image.children[0]!.layers[1]!;
  const path = `/v2/pause/blobs/${layer.digest}`;
  const step = Math.floor(layer.size / 5);
  server.faults.set(path, { kind: 'truncate', afterBytes: step });
  await assert.rejects(pull(server, store, ['registry.k8s.io/pause:3.10']), (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.hostEnvironment, String(e));
    assert.match((e as Error).message, new RegExp(`layer ${layer.digest}: the connection closed after \\d+ of ${layer.size} bytes`));
    return true;
  });
  const partial = join(store, 'tmp', `${layer.digest.slice(7)}.partial`);
  const kept = (await stat(partial)).size;
  // Each attempt asks for the bytes after those kept so far. (fetch may drop the last chunk of a body
  // that ends early, so an attempt can add fewer than `step` bytes; never more.)
  const offsets = server.requests.filter((r) => r.path === path).map((r) => (r.range ? Number(/^bytes=(\d+)-$/.exec(r.range)![1]) : 0));
  assert.equal(offsets.length, 3);
  assert.equal(offsets[0], 0);
  for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i]! >= offsets[i - 1]! && offsets[i]! <= offsets[i - 1]! + step, `offsets ${offsets.join(', ')}`);
  assert.ok(offsets[2]! > 0, `a later attempt resumed: ${offsets.join(', ')}`);
  assert.ok(kept >= offsets[2]! && kept > 0 && kept < layer.size, `kept ${kept} bytes`);
  assert.deepEqual(await readFile(partial), layer.bytes.subarray(0, kept), 'the bytes kept are the first bytes of the blob');
  assert.ok(!(await listStoredBlobs(store)).some((b) => b.digest === layer.digest));

  server.faults.delete(path);
  server.requests.length = 0;
  await pull(server, store, ['registry.k8s.io/pause:3.10']);
  assert.deepEqual(server.requests.filter((r) => r.path === path).map((r) => r.range), [`bytes=${kept}-`]);
  assert.deepEqual(await readFile(join(store, 'sha256', layer.digest.slice(7))), layer.bytes);
  await assert.rejects(stat(partial));
});

test('5xx answers are retried with backoff; a registry that keeps failing is exit 4', async (t) => {
  const server = await serve(t);
  const store = await tempDir(t, 'reg-store');
  const image = server.registry.image('quay.io/poseidon/dnsmasq:v0.5.0');
  const path = `/v2/poseidon/dnsmasq/blobs/${image.children[0]!.config.digest}`;
  server.faults.set(path, { kind: 'status', status: 503 });
  // The registry recovers while the client waits to retry.
  const { images, events } = await pull(server, store, ['quay.io/poseidon/dnsmasq:v0.5.0'], {
    events: (e) => {
      if (e.kind === 'warning' && e.message.includes(path)) server.faults.delete(path);
    },
  });
  assert.equal(images[0]!.top.digest, image.index.digest);
  assert.equal(events.length, 0);
  assert.deepEqual(server.requests.filter((r) => r.path === path).map((r) => r.status), [503, 200]);

  const manifestPath = '/v2/poseidon/dnsmasq/manifests/v0.5.0';
  server.faults.set(manifestPath, { kind: 'status', status: 502 });
  server.requests.length = 0;
  await assert.rejects(pull(server, store, ['quay.io/poseidon/dnsmasq:v0.5.0']), (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.hostEnvironment, String(e));
    assert.match((e as Error).message, /manifests\/v0\.5\.0 answered HTTP 502/);
    return true;
  });
  assert.equal(server.requests.filter((r) => r.path === manifestPath).length, 4);
});

test('bytes served instead of a blob (a wrong body from the fixture) are rejected with exit 3', async (t) => {
  const server = await serve(t);
  const store = await tempDir(t, 'reg-store');
  const image = server.registry.image('ghcr.io/kube-vip/kube-vip:v1.2.3');
  const config = image.children[0]!.config;
  server.faults.set(`/v2/kube-vip/kube-vip/blobs/${config.digest}`, { kind: 'body', data: Buffer.alloc(config.size, 0x7b) });
  await assert.rejects(pull(server, store, ['ghcr.io/kube-vip/kube-vip:v1.2.3']), (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.verification, String(e));
    assert.match((e as Error).message, new RegExp(`config ${config.digest}: verification failed`));
    return true;
  });
  assert.ok(!(await listStoredBlobs(store)).some((b) => b.digest === config.digest));
});
