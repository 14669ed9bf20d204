// Issue #7's Docker-daemon source end to end, through the real CLI: a private dockerd builds a tiny
// FROM-scratch image with no network, and a fixture cluster lists it as
// `registry.extra_images = ["docker-daemon:NAME:TAG"]` (the CLI reaches the daemon through
// DOCKER_HOST). Then
//  - bramble.lock pins it as `image:docker-daemon:NAME:TAG` with the digest of its top manifest, whose
//    config is the daemon's image ID and whose layers are the daemon's diff_ids;
//  - a second, real docker-registry started read-only on out/<cluster>/registry serves it under the
//    normalised name (docker.io/library/NAME:TAG), and skopeo reads the digest manifest.json records;
//  - the per-arch OCI archive names it, and a real containerd's `ctr images import` takes it;
//  - an `--offline` rebuild exports it again and writes identical bundle bytes;
//  - once the image changes in the daemon (same tag, other content), an `--offline` rebuild fails with
//    exit 3 naming the image and the lock entry, and leaves out/ as it was; removing that entry and
//    running `bramble fetch` pins the new digest.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pack as tarPack } from 'tar-stream';
import { run } from '../builders/exec.ts';
import type { Manifest } from '../builders/output.ts';
import { registryStoreRoot } from '../builders/registry-content.ts';
import { blobPath } from '../images/registry/types.ts';
import { buildWithCli, explainCli, runBramble, TEST_EPOCH, warmBuildCache, writeTestCluster, type TestClusterFiles } from './helpers/build.ts';
import { dockerdUnavailable, startDockerd, type PrivateDockerd } from './helpers/dockerd.ts';
import { getFixture, type Fixture } from './helpers/fixture.ts';
import { containerdForTest, rawManifest, sha256Digest } from './helpers/registry-peers.ts';
import { startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';
import type { LockedInput } from '../builders/lockfile.ts';

const CLUSTER = 'daemon';
const NODE_CIDR = '10.78.0.0/24';
/** The image as the daemon knows it, as cluster.toml lists it, and as the mirror serves it. */
const DAEMON_NAME = 'bramble-bundle-app:1.0';
const ENTRY = `docker-daemon:${DAEMON_NAME}`;
const MIRRORED = `docker.io/library/${DAEMON_NAME}`;
const LOCK_ID = `image:${ENTRY}`;
/** The node's hardware is the host's arch, since the daemon builds for the host. */
const ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';
const HARDWARE = ARCH === 'arm64' ? 'rpi4' : 'pc';

const readLockInputs = async (path: string) => (JSON.parse(await readFile(path, 'utf8')) as { inputs: LockedInput[] }).inputs;

/** A build context tar (Dockerfile and files) made with tar-stream. */
async function contextOf(entries: Array<[string, string]>): Promise<Readable> {
  const p = tarPack();
  for (const [name, data] of entries) p.entry({ name, mtime: new Date(0), mode: 0o755 }, data);
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return Readable.from(Buffer.concat(chunks));
}

/** `docker build -t DAEMON_NAME` of a FROM-scratch image holding `hello` (no network: nothing is pulled). */
async function buildImage(daemon: PrivateDockerd, hello: string): Promise<{ Id: string; RootFS: { Layers: string[] } }> {
  const context = await contextOf([
    ['Dockerfile', 'FROM scratch\nCOPY hello.txt /hello.txt\nCOPY bin/ /usr/local/bin/\n'],
    ['hello.txt', hello],
    ['bin/tool', '#!/bin/sh\necho tool\n'],
  ]);
  const stream = await daemon.docker.buildImage(context, { t: DAEMON_NAME });
  const output = await new Promise<Array<{ error?: string }>>((resolve, reject) => daemon.docker.modem.followProgress(stream, (err, res) => (err ? reject(err) : resolve(res))));
  assert.deepEqual(output.filter((o) => o.error), [], JSON.stringify(output));
  return (await daemon.docker.getImage(DAEMON_NAME).inspect()) as unknown as { Id: string; RootFS: { Layers: string[] } };
}

describe('a docker-daemon: extra image bundled into the registry mirror', { skip: dockerdUnavailable() }, () => {
  let f: Fixture;
  let tmp: string;
  let files: TestClusterFiles;
  let daemon: PrivateDockerd;
  let inspected: { Id: string; RootFS: { Layers: string[] } };
  let clusterDir: string;
  let manifest: Manifest;
  let lockPath: string;
  const outDir = () => join(tmp, 'c', 'out');

  // dockerd (and everything else started here) is stopped after the suite, in reverse order.
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });
  const withDaemon = () => ({ DOCKER_HOST: daemon.host });
  const offlineRebuild = () =>
    runBramble(['build', '-c', files.config, '--sources', files.sources, '--out', outDir(), '--cache', warmBuildCache(), '--lock', lockPath, '--offline'], {
      env: { SOURCE_DATE_EPOCH: String(TEST_EPOCH), ...withDaemon(), ...(process.env.HOME && { HOME: process.env.HOME }) },
    });

  before(async () => {
    f = await getFixture();
    tmp = await mkdtemp(join(tmpdir(), 'bramble-daemon-bundle-'));
    cleanups.push(() => rm(tmp, { recursive: true, force: true }));
    daemon = await startDockerd({ after: (fn) => cleanups.push(fn) });
    inspected = await buildImage(daemon, 'hello from the docker-daemon bundle test\n');
    files = await writeTestCluster(join(tmp, 'c'), f, { name: CLUSTER, nodeCidr: NODE_CIDR, nodes: [{ name: 'cp-1', hardware: HARDWARE, role: 'control-plane' }] });
    await appendFile(files.config, `\n[registry]\nextra_images = [${JSON.stringify(ENTRY)}]\n`);
    lockPath = join(tmp, 'c', 'bramble.lock');
    const r = await buildWithCli(files, { outDir: outDir(), cacheDir: warmBuildCache(), lockPath, env: withDaemon() });
    assert.equal(r.code, 0, explainCli(r));
    clusterDir = join(outDir(), CLUSTER);
    manifest = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
  });

  test('the lock pins it as cluster.toml names it, by the digest of a manifest made of the daemon image', async () => {
    const locked = (await readLockInputs(lockPath)).find((i) => i.id === LOCK_ID);
    assert.ok(locked, `${LOCK_ID} in bramble.lock`);
    assert.equal(locked.url, MIRRORED);
    assert.equal(locked.version, '1.0');
    assert.equal(locked.verifiedWith, 'sha256:manifest-bytes+docker-daemon:image-id');
    const input = manifest.inputs.find((i) => i.id === LOCK_ID);
    assert.ok(input, `${LOCK_ID} among manifest.json's inputs`);
    assert.equal(input.sha256, locked.sha256);
    assert.equal(input.url, MIRRORED);
  });

  describe('a second, real docker-registry serving out/<cluster>/registry read-only', () => {
    let reg: DockerRegistry;
    before(async () => {
      reg = await startDockerRegistry(join(tmp, 'serve'), { storage: join(clusterDir, 'registry'), readOnly: true });
    });
    after(async () => reg?.stop());

    test('skopeo reads it under the normalised name, by tag and by digest, with the digest manifest.json records', async () => {
      const recorded = `sha256:${manifest.inputs.find((i) => i.id === LOCK_ID)!.sha256}`;
      const byTag = await rawManifest(`${reg.host}/${MIRRORED}`);
      assert.equal(sha256Digest(byTag), recorded);
      const inspect = JSON.parse((await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/${MIRRORED}`])).stdout) as { Digest: string; Layers: string[]; Architecture: string };
      assert.equal(inspect.Digest, recorded);
      assert.equal(inspect.Architecture, ARCH);
      assert.deepEqual(inspect.Layers, inspected.RootFS.Layers, "the layers are the daemon's diff_ids");
      const m = JSON.parse(byTag.toString('utf8')) as { config: { digest: string } };
      assert.equal(m.config.digest, inspected.Id, "the config is the daemon's image");
      const byDigest = await rawManifest(`${reg.host}/${MIRRORED.replace(/:[^/:]+$/, '')}@${recorded}`);
      assert.ok(byDigest.equals(byTag));
      // The layer bytes come through the registry as the daemon made them.
      const dest = join(tmp, 'copy');
      await mkdir(dest);
      await run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reg.host}/${MIRRORED}`, `dir:${dest}`]);
      const hello = (await run('tar', ['-xOf', join(dest, inspected.RootFS.Layers[0]!.slice('sha256:'.length)), 'hello.txt'])).stdout;
      assert.equal(hello, 'hello from the docker-daemon bundle test\n');
    });
  });

  test(`the ${ARCH} OCI archive names it, and a real containerd's ctr images import takes it`, async (t) => {
    const recorded = `sha256:${manifest.inputs.find((i) => i.id === LOCK_ID)!.sha256}`;
    const archive = join(clusterDir, 'oci', `${ARCH}.oci.tar`);
    assert.ok(manifest.artefacts.some((a) => a.path === `oci/${ARCH}.oci.tar` && a.kind === 'bundle'));
    const index = JSON.parse((await run('tar', ['-xOf', archive, 'index.json'])).stdout) as { manifests: Array<{ digest: string; annotations: Record<string, string> }> };
    const entry = index.manifests.find((m) => m.annotations['io.containerd.image.name'] === MIRRORED);
    assert.ok(entry, `${MIRRORED} in index.json`);
    assert.equal(entry.digest, recorded);

    const c = await containerdForTest(t);
    await c.ctr(['-n', 'k8s', 'images', 'import', '--platform', `linux/${ARCH}`, archive]);
    const table = await c.ctr(['-n', 'k8s', 'images', 'ls']);
    assert.match(table, new RegExp(`^${MIRRORED.replace(/[.]/g, '\\.')}\\s+\\S+\\s+${recorded}`, 'm'));
  });

  test('an --offline rebuild exports it again and writes the same bundle bytes', async () => {
    const bundle = (m: Manifest) => new Map(m.artefacts.filter((a) => a.kind === 'bundle').map((a) => [a.path, a.sha256]));
    const r = await offlineRebuild();
    assert.equal(r.code, 0, explainCli(r));
    const again = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
    assert.deepEqual(bundle(again), bundle(manifest));
  });

  test('a changed image under the pinned tag fails an --offline rebuild (exit 3) until its lock entry is removed and bramble fetch pins the new one', async () => {
    const pinned = (await readLockInputs(lockPath)).find((i) => i.id === LOCK_ID)!.sha256;
    const manifestBefore = await readFile(join(clusterDir, 'manifest.json'));
    const changed = await buildImage(daemon, 'the image changed after the lock was written\n');
    assert.notEqual(changed.Id, inspected.Id);

    const r = await offlineRebuild();
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, new RegExp(`^error: registry\\.extra_images "${ENTRY.replace(/[.]/g, '\\.')}" \\(${MIRRORED.replace(/[.]/g, '\\.')} from the Docker daemon\\): verification failed \\(expected sha256:${pinned}, pinned in bramble\\.lock, got sha256:[0-9a-f]{64}\\)$`, 'm'));
    assert.match(r.stderr, new RegExp(`^hint: the image changed in the daemon since bramble\\.lock was written\\. To bundle the new one, remove the entry "${LOCK_ID.replace(/[.]/g, '\\.')}" from bramble\\.lock and run \`bramble fetch\``, 'm'));
    assert.ok((await readFile(join(clusterDir, 'manifest.json'))).equals(manifestBefore), 'out/ is left as it was');
    assert.equal((await readLockInputs(lockPath)).find((i) => i.id === LOCK_ID)!.sha256, pinned, 'the lock keeps the pin');

    // The refresh the hint names: drop the entry, fetch again.
    const lock = JSON.parse(await readFile(lockPath, 'utf8')) as { inputs: LockedInput[] };
    lock.inputs = lock.inputs.filter((i) => i.id !== LOCK_ID);
    await writeFile(lockPath, JSON.stringify(lock, null, 2) + '\n');
    const fetched = await runBramble(['fetch', '-c', files.config, '--sources', files.sources, '--cache', warmBuildCache(), '--lock', lockPath], {
      env: { ...withDaemon(), ...(process.env.HOME && { HOME: process.env.HOME }) },
    });
    assert.equal(fetched.code, 0, explainCli(fetched));
    const refreshed = (await readLockInputs(lockPath)).find((i) => i.id === LOCK_ID);
    assert.ok(refreshed, `${LOCK_ID} pinned again`);
    assert.notEqual(refreshed.sha256, pinned);
    // The new pin is the manifest of the changed image, as stored in the blob store.
    const stored = JSON.parse(await readFile(blobPath(registryStoreRoot(warmBuildCache()), `sha256:${refreshed.sha256}`), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
    assert.equal(stored.config.digest, changed.Id);
    assert.deepEqual(stored.layers.map((l) => l.digest), changed.RootFS.Layers);
  });
});
