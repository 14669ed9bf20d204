// The fetch stage against the fixture upstream (real-shaped Flatcar, HypriotOS and dl.k8s.io trees signed
// by the fixture's test key, served on 127.0.0.1 with a request log and injectable faults).
// Decompressing the 8 GiB fixture image takes a while, so the tests that need it share one cache under
// ~/.cache/bramble-test/fetch-cache: content-addressed, it is keyed by the bytes themselves.
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import { fetchInput, fetchInputs, type FetchOptions } from '../builders/fetch.ts';
import type { ClusterSpec, Sources } from '../builders/spec.ts';
import { testCacheRoot } from '../scripts/fixtures/cache.ts';
import { Cache } from '../images/cache.ts';
import { kubernetesInputs } from '../images/catalog/kubernetes.ts';
import { loadTrustedKeys } from '../images/verify.ts';
import { fixtureSources, flatcarRelease, getFixture, type Fixture } from './helpers/fixture.ts';
import { filesUnder, node, testSpec } from './helpers/tiny-upstream.ts';

let f: Fixture;
let sources: Sources;
let signingKey: string;
const sharedCache = join(testCacheRoot(), 'fetch-cache');

before(async () => {
  f = await getFixture();
  signingKey = await readFile(f.keys.signingPublicInTree, 'utf8');
  sources = fixtureSources(f);
});

function cluster(over: Partial<ClusterSpec> = {}): ClusterSpec {
  return testSpec(sources, {
    nodes: [node('cp1', { role: 'control-plane' }), node('net1', { boot: 'pxe', mac: '52:54:00:00:00:21' })],
    ...over,
  });
}

async function freshCache(t: import('node:test').TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-fetch-fixture-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const opts = (cacheDir: string, over: Partial<FetchOptions> = {}): FetchOptions => ({
  cacheDir,
  offline: false,
  signal: new AbortController().signal,
  events: () => {},
  ...over,
});


function fails(code: number, pattern: RegExp) {
  return (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, code, String((e as Error)?.stack ?? e));
    assert.match(`${(e as Error).message}\n${(e as BrambleError).hint ?? ''}`, pattern);
    return true;
  };
}

const imagePath = (channel = 'stable', board = 'amd64-usr', version = '4593.2.5') =>
  `/flatcar/${channel}/${board}/${version}/flatcar_production_image.bin.bz2`;

test('fixture: the whole amd64 set is fetched and verified; with the lock a rebuild makes zero requests, offline or not', async () => {
  const first = await fetchInputs(cluster(), opts(sharedCache));
  assert.equal(first.lock.os.version, flatcarRelease(f, 'stable', 'amd64-usr').version);
  assert.deepEqual(
    first.lock.inputs.map((i) => i.id).filter((id) => id.startsWith('flatcar-')),
    ['flatcar-image-amd64', 'flatcar-pxe-cpio-amd64', 'flatcar-pxe-kernel-amd64'],
  );
  // Signed by the fixture's test key (its primary key or one of its subkeys).
  const key = (await loadTrustedKeys([signingKey])).keys[1]!;
  assert.equal(key.getFingerprint(), f.keys.signing.fingerprint.toLowerCase());
  const fingerprints = [key, ...key.subkeys].map((k) => k.getFingerprint());
  for (const i of first.lock.inputs.filter((x) => x.id.startsWith('flatcar-'))) {
    const m = /^sha512:.*\.DIGESTS\+openpgp:([0-9a-f]{40})$/.exec(i.verifiedWith);
    assert.ok(m && fingerprints.includes(m[1]!), `${i.id}: ${i.verifiedWith}`);
  }

  // The derived image is the fixture's raw image: same size, GPT where it should be, and sparse.
  const image = first.inputs.get('flatcar-image-amd64')!;
  const raw = flatcarRelease(f, 'stable', 'amd64-usr').rawImage;
  const st = await stat(image.derivedPath!);
  assert.equal(st.size, (await stat(raw)).size);
  assert.ok(st.blocks * 512 < st.size / 20, `allocated ${st.blocks * 512} of ${st.size}`);
  const header = Buffer.alloc(8);
  const fh = await open(image.derivedPath!, 'r');
  await fh.read(header, 0, 8, 512).finally(() => fh.close());
  assert.equal(header.toString('latin1'), 'EFI PART', 'GPT header at LBA 1 (UEFI 2.10 §5.3.2)');
  assert.equal(image.dataRanges![0]![0], 0, 'the protective MBR is data');

  for (const offline of [true, false]) {
    f.server.requests.length = 0;
    const again = await fetchInputs(cluster(), opts(sharedCache, { lock: first.lock, offline }));
    assert.deepEqual(f.server.requests, [], `offline=${offline}`);
    assert.deepEqual(again.lock, first.lock);
    assert.equal(again.inputs.get('flatcar-image-amd64')!.derivedPath, image.derivedPath);
  }
});

test('fixture: the LTS channel resolves through current/version.txt', async (t) => {
  const cacheDir = await freshCache(t);
  const lts = cluster({ os: { base: 'flatcar', channel: 'lts', version: 'current' } });
  const r = await fetchInputs(lts, opts(cacheDir, { targets: ['pxe'] }));
  assert.equal(r.lock.os.version, flatcarRelease(f, 'lts', 'amd64-usr').version);
  assert.deepEqual(
    [...r.inputs.keys()].filter((id) => id.startsWith('flatcar-')),
    ['flatcar-pxe-kernel-amd64', 'flatcar-pxe-cpio-amd64'],
  );
});

test('fixture faults: wrong bytes, a truncated body, or a key not trusted → exit 3 and an empty cache', async (t) => {
  const spec = cluster();
  const path = imagePath();
  const cases: Array<{ name: string; setup: () => void; spec: ClusterSpec; pattern: RegExp }> = [
    { name: 'wrong bytes', setup: () => f.server.faults.set(path, { kind: 'body', data: 'not an image' }), spec, pattern: /sha512/ },
    { name: 'truncated', setup: () => f.server.faults.set(path, { kind: 'truncate', afterBytes: 100_000 }), spec, pattern: /truncated download/ },
    {
      name: 'untrusted key',
      setup: () => {},
      spec: { ...spec, sources: { ...sources, trustedKeys: [] } },
      pattern: /untrusted key/,
    },
  ];
  for (const c of cases) {
    const cacheDir = await freshCache(t);
    c.setup();
    try {
      await assert.rejects(fetchInputs(c.spec, opts(cacheDir, { targets: ['pc'] })), fails(ExitCode.verification, c.pattern), c.name);
    } finally {
      f.server.faults.delete(path);
    }
    assert.deepEqual(await filesUnder(cacheDir), [], c.name);
  }
});

test('fixture: Kubernetes binaries, crictl and CNI plugins verify in their own checksum formats', async (t) => {
  const cache = new Cache(await freshCache(t));
  const ctx = { signal: new AbortController().signal, events: () => {}, offline: false, keys: () => loadTrustedKeys([signingKey]) };
  for (const input of kubernetesInputs(sources, f.kubernetes.version, 'arm64', { crictl: f.kubernetes.crictlVersion, cniPlugins: f.kubernetes.cniVersion })) {
    const got = await fetchInput(cache, input, ctx);
    assert.match(got.verifiedWith, /^sha256:.*\.sha256$/, input.id);
  }
});

test('fixture: the HypriotOS zip verifies against its .sha256 and extracts sparse', async () => {
  const spec = cluster({ os: { base: 'hypriot', channel: 'stable', version: 'current' }, nodes: [node('p1', { role: 'control-plane', hardware: 'rpi3', arch: 'arm' })] });
  const r = await fetchInputs(spec, opts(sharedCache));
  const input = r.inputs.get('hypriot-image-arm')!;
  assert.equal(input.sha256, (await readFile(f.hypriot.sha256, 'utf8')).split(/\s+/)[0]);
  const st = await stat(input.derivedPath!);
  assert.ok(st.blocks * 512 < st.size, 'sparse');
  const mbr = Buffer.alloc(2);
  const fh = await open(input.derivedPath!, 'r');
  await fh.read(mbr, 0, 2, 510).finally(() => fh.close());
  assert.deepEqual([...mbr], [0x55, 0xaa], 'MBR boot signature');
});
