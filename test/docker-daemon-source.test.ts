// The Docker-daemon image source (`registry.extra_images = ["docker-daemon:NAME:TAG"]`) against a real
// dockerd on a private socket: an image built there with no network (FROM scratch, two COPY layers)
// is exported with docker save and stored verified; its manifest, config and layers agree with
// `docker image inspect` (Id, RootFS diff_ids). The OCI layout newer Docker writes inside docker save
// is read from a real skopeo oci-archive of the same image. A layer with a `../` entry (which no
// daemon would take in, so the archive is made here) is refused with exit 3 and leaves nothing in
// the store; a missing image is exit 2, an unreachable daemon exit 4, a platform no node has exit 2.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pack as tarPack } from 'tar-stream';
import { HostError, InputError, VerificationError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import {
  DockerMediaType,
  dockerOptionsFromEnv,
  exportFromDockerDaemon,
  parseDockerDaemonRef,
  storeSavedImage,
  type DaemonImage,
} from '../images/registry/docker-daemon.ts';
import { MediaType } from '../images/registry/manifest.ts';
import { listStoredBlobs } from '../images/registry/store.ts';
import { blobPath, type PulledImage } from '../images/registry/types.ts';
import { dockerdUnavailable, startDockerd, type PrivateDockerd } from './helpers/dockerd.ts';
import { tempDir } from './helpers/tmp.ts';

const IMAGE = 'bramble-test-app:1.0';
const signal = new AbortController().signal;
const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A tar made with tar-stream from name → bytes (in order). */
async function tarOf(entries: Array<[string, Buffer | string]>): Promise<Buffer> {
  const p = tarPack();
  for (const [name, data] of entries) p.entry({ name, mtime: new Date(0), mode: 0o644 }, data);
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Every blob in the store hashes to its file name. */
async function assertStoreVerifies(root: string): Promise<string[]> {
  const names = await readdir(join(root, 'sha256'));
  for (const hex of names) {
    const h = createHash('sha256');
    for await (const c of createReadStream(join(root, 'sha256', hex))) h.update(c as Buffer);
    assert.equal(h.digest('hex'), hex);
  }
  return names.sort();
}

describe('parsing docker-daemon: entries and DOCKER_HOST', () => {
  test('names are normalised the way containerd resolves them; a digest is refused', () => {
    assert.deepEqual(parseDockerDaemonRef('docker-daemon:myapp:1.0'), {
      daemonName: 'myapp:1.0',
      name: { registry: 'docker.io', repository: 'library/myapp', tag: '1.0' },
      ref: 'docker.io/library/myapp:1.0',
    });
    assert.equal(parseDockerDaemonRef('docker-daemon:registry.example.com:5000/team/app').ref, 'registry.example.com:5000/team/app:latest');
    assert.equal(parseDockerDaemonRef('docker-daemon:registry.example.com:5000/team/app').daemonName, 'registry.example.com:5000/team/app:latest');
    assert.throws(() => parseDockerDaemonRef(`docker-daemon:myapp@sha256:${'a'.repeat(64)}`), (e: unknown) => e instanceof InputError && /names a digest/.test(e.message));
    assert.throws(() => parseDockerDaemonRef('docker-daemon:My_App'), (e: unknown) => e instanceof InputError && e.exitCode === 2);
  });

  test('DOCKER_HOST: unix and tcp addresses; unset means /var/run/docker.sock; anything else is exit 4', () => {
    assert.deepEqual(dockerOptionsFromEnv({}), { socketPath: '/var/run/docker.sock' });
    assert.deepEqual(dockerOptionsFromEnv({ DOCKER_HOST: 'unix:///run/user/1000/docker.sock' }), { socketPath: '/run/user/1000/docker.sock' });
    assert.deepEqual(dockerOptionsFromEnv({ DOCKER_HOST: 'tcp://10.0.0.5:2375' }), { host: '10.0.0.5', port: 2375, protocol: 'http' });
    assert.throws(() => dockerOptionsFromEnv({ DOCKER_HOST: 'ssh://me@host' }), (e: unknown) => e instanceof HostError && e.exitCode === 4);
  });
});

describe('a daemon that is not there', () => {
  test('an unreachable socket is a HostError (exit 4) naming the socket and how to fix it', async (t) => {
    const dir = await tempDir(t, 'docker-daemon-none');
    const socket = join(dir, 'no-daemon.sock');
    await assert.rejects(
      exportFromDockerDaemon(`docker-daemon:${IMAGE}`, { storeRoot: join(dir, 'store'), platforms: ['linux/amd64'], docker: { socketPath: socket }, signal }),
      (e: unknown) => {
        assert.ok(e instanceof HostError, String(e));
        assert.equal(e.exitCode, 4);
        assert.match(e.message, new RegExp(`^cannot reach the Docker daemon at unix://${socket} to export ${IMAGE.replace('.', '\\.')}`));
        assert.match(e.hint!, /start the Docker daemon \(sudo systemctl start docker\), or point DOCKER_HOST at/);
        return true;
      },
    );
  });
});

describe('a private dockerd', { skip: dockerdUnavailable() }, () => {
  let daemon: PrivateDockerd;
  let inspected: DaemonImage;
  let store: string;
  const hostPlatform = process.arch === 'arm64' ? 'linux/arm64' : 'linux/amd64';
  const otherPlatform = process.arch === 'arm64' ? 'linux/amd64' : 'linux/arm64';

  // One daemon for the suite: started before its tests, always stopped after them.
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const fn of cleanups.reverse()) await fn();
  });
  before(async () => {
    daemon = await startDockerd({ after: (fn) => cleanups.push(fn) });
    // The store the export tests share.
    const dir = await mkdtemp(join(tmpdir(), 'bramble-docker-daemon-store-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    store = join(dir, 'store');
  });

  test('build an image with no network: FROM scratch, two COPY layers', async (t) => {
    const context = await tarOf([
      ['Dockerfile', 'FROM scratch\nCOPY hello.txt /hello.txt\nCOPY bin/ /usr/local/bin/\n'],
      ['hello.txt', 'hello from a bramble test image\n'],
      ['bin/tool', '#!/bin/sh\necho tool\n'],
    ]);
    const stream = await daemon.docker.buildImage(Readable.from(context), { t: IMAGE });
    const output = await new Promise<Array<{ error?: string }>>((resolve, reject) => daemon.docker.modem.followProgress(stream, (err, res) => (err ? reject(err) : resolve(res))));
    assert.deepEqual(output.filter((o) => o.error), [], JSON.stringify(output));
    inspected = (await daemon.docker.getImage(IMAGE).inspect()) as unknown as DaemonImage;
    assert.equal(inspected.RootFS?.Layers?.length, 2);
    t.diagnostic(`built ${IMAGE} ${inspected.Id}`);
  });

  let pulled: PulledImage;

  test('exported into the store: every blob verifies, config and layers are what docker image inspect says', async () => {
    pulled = await exportFromDockerDaemon(`docker-daemon:${IMAGE}`, { storeRoot: store, platforms: ['linux/amd64', 'linux/arm64'], docker: daemon.options, signal });
    assert.equal(pulled.ref, 'docker.io/library/bramble-test-app:1.0');
    assert.deepEqual(pulled.name, { registry: 'docker.io', repository: 'library/bramble-test-app', tag: '1.0' });
    const names = await assertStoreVerifies(store);
    assert.deepEqual(names, pulled.blobs.map((b) => b.digest.slice(7)).sort());
    assert.equal(names.length, 4, 'manifest, config, two layers');

    assert.equal(pulled.platforms.length, 1);
    const [p] = pulled.platforms;
    assert.equal(`${p!.os}/${p!.architecture}`, hostPlatform);
    assert.equal(p!.config.digest, inspected.Id, 'the config digest is the image ID');
    assert.deepEqual(p!.layers.map((l) => l.digest), inspected.RootFS!.Layers, 'the layers are the diff_ids, uncompressed');
    assert.ok(p!.layers.every((l) => l.mediaType === DockerMediaType.uncompressedLayer));

    // The manifest bramble wrote: schema 2, naming exactly the stored config and layers.
    const manifestBytes = await readFile(blobPath(store, pulled.top.digest));
    assert.equal(sha256(manifestBytes), pulled.top.digest);
    assert.equal(manifestBytes.length, pulled.top.size);
    const manifest = JSON.parse(manifestBytes.toString('utf8'));
    assert.equal(manifest.schemaVersion, 2);
    assert.equal(manifest.mediaType, MediaType.dockerManifest);
    assert.deepEqual(manifest.config, { mediaType: DockerMediaType.config, size: p!.config.size, digest: inspected.Id });
    assert.deepEqual(manifest.layers.map((l: { digest: string }) => l.digest), inspected.RootFS!.Layers);
    const config = JSON.parse(await readFile(blobPath(store, p!.config.digest), 'utf8'));
    assert.deepEqual(config.rootfs.diff_ids, inspected.RootFS!.Layers);

    const listing = async (digest: string) => (await run('tar', ['-tf', blobPath(store, digest)])).stdout.split('\n').filter(Boolean);
    assert.ok((await listing(p!.layers[0]!.digest)).includes('hello.txt'));
    assert.ok((await listing(p!.layers[1]!.digest)).some((n) => n.endsWith('usr/local/bin/tool')));
  });

  test('a second export gives the same manifest digest and adds nothing to the store', async () => {
    const before = await listStoredBlobs(store);
    const again = await exportFromDockerDaemon(`docker-daemon:${IMAGE}`, { storeRoot: store, platforms: ['linux/amd64', 'linux/arm64'], docker: daemon.options, signal });
    assert.equal(JSON.stringify(again), JSON.stringify(pulled));
    assert.deepEqual(await listStoredBlobs(store), before);
  });

  test('docker-daemon: through DOCKER_HOST when no options are given', async (t) => {
    const root = join(await tempDir(t, 'docker-daemon-env'), 'store');
    const saved = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = daemon.host;
    try {
      const viaEnv = await exportFromDockerDaemon(`docker-daemon:${IMAGE}`, { storeRoot: root, platforms: [hostPlatform], signal });
      assert.equal(viaEnv.top.digest, pulled.top.digest);
    } finally {
      if (saved === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = saved;
    }
  });

  test('an image the daemon does not have is an InputError (exit 2) naming it and the daemon', async (t) => {
    const root = join(await tempDir(t, 'docker-daemon-missing'), 'store');
    await assert.rejects(exportFromDockerDaemon('docker-daemon:no-such-image:9', { storeRoot: root, platforms: [hostPlatform], docker: daemon.options, signal }), (e: unknown) => {
      assert.ok(e instanceof InputError, String(e));
      assert.equal(e.exitCode, 2);
      assert.equal(e.message, `docker-daemon:no-such-image:9: the Docker daemon at ${daemon.host} has no image no-such-image:9`);
      assert.match(e.hint!, /docker build -t no-such-image:9/);
      return true;
    });
  });

  test('an image for a platform no node has is an InputError (exit 2) naming both', async (t) => {
    const root = join(await tempDir(t, 'docker-daemon-platform'), 'store');
    await assert.rejects(exportFromDockerDaemon(`docker-daemon:${IMAGE}`, { storeRoot: root, platforms: [otherPlatform, 'linux/arm/v7'], docker: daemon.options, signal }), (e: unknown) => {
      assert.ok(e instanceof InputError, String(e));
      assert.equal(e.message, `docker-daemon:${IMAGE} is a ${hostPlatform} image, but the cluster's nodes are ${otherPlatform}, linux/arm/v7`);
      return true;
    });
    assert.deepEqual(await listStoredBlobs(root), []);
  });

  test('the OCI layout (as Docker >= 25 writes inside docker save), from a real skopeo oci-archive of the image', async (t) => {
    const dir = await tempDir(t, 'docker-daemon-oci');
    const archive = join(dir, 'image.oci.tar');
    await run('skopeo', ['copy', '--quiet', '--src-daemon-host', daemon.host, `docker-daemon:${IMAGE}`, `oci-archive:${archive}:1.0`]);
    const members = (await run('tar', ['-tf', archive])).stdout.split('\n');
    assert.ok(members.includes('index.json') && members.includes('oci-layout'));
    // What a Docker >= 25 daemon says of such an image: its ID is the config digest, its layers the diff_ids.
    // skopeo rewrites the config for OCI, so they come from its own account of the archive.
    const ociManifest = JSON.parse((await run('skopeo', ['inspect', '--raw', `oci-archive:${archive}`])).stdout);
    const ociConfig = JSON.parse((await run('skopeo', ['inspect', '--config', `oci-archive:${archive}`])).stdout);
    assert.deepEqual(ociConfig.rootfs.diff_ids, inspected.RootFS!.Layers, 'the layers are the daemon\'s');
    const ociDaemon: DaemonImage = { ...inspected, Id: ociManifest.config.digest, RootFS: { Layers: ociConfig.rootfs.diff_ids } };
    const ref = parseDockerDaemonRef(`docker-daemon:${IMAGE}`);
    const root = join(dir, 'store');
    const oci = await storeSavedImage(createReadStream(archive), { ref, daemon: ociDaemon, platforms: [hostPlatform], storeRoot: root, signal });
    await assertStoreVerifies(root);
    assert.equal(oci.ref, 'docker.io/library/bramble-test-app:1.0');
    assert.equal(oci.top.mediaType, MediaType.ociManifest);
    // skopeo's manifest bytes are kept as they are: the digest is of the file in the archive.
    const index = JSON.parse((await run('tar', ['-xOf', archive, 'index.json'])).stdout);
    assert.equal(oci.top.digest, index.manifests[0].digest);
    assert.equal(oci.platforms[0]!.config.digest, ociManifest.config.digest);
    assert.deepEqual(oci.platforms[0]!.layers, ociManifest.layers.map((l: { mediaType: string; digest: string; size: number }) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })));
    assert.deepEqual(oci.blobs.map((b) => b.digest).sort(), [oci.top.digest, ociManifest.config.digest, ...ociManifest.layers.map((l: { digest: string }) => l.digest)].sort());
  });
});

describe('hostile archives, made here (no daemon takes such a layer in)', () => {
  /** A legacy docker save archive around the given layer tars, and the inspect data that fits it. */
  async function legacyArchive(layers: Buffer[], extra: Array<[string, Buffer | string]> = []): Promise<{ archive: Buffer; daemon: DaemonImage }> {
    const diffIds = layers.map(sha256);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds }, config: {} }));
    const id = sha256(config);
    const entries: Array<[string, Buffer | string]> = [
      [`${id.slice(7)}.json`, config],
      ...layers.map((l, i): [string, Buffer] => [`layer${i}/layer.tar`, l]),
      ['manifest.json', JSON.stringify([{ Config: `${id.slice(7)}.json`, RepoTags: ['evil:1'], Layers: layers.map((_, i) => `layer${i}/layer.tar`) }])],
      ...extra,
    ];
    return { archive: await tarOf(entries), daemon: { Id: id, Os: 'linux', Architecture: 'amd64', RootFS: { Layers: diffIds } } };
  }
  const ref = parseDockerDaemonRef('docker-daemon:evil:1');

  test('a layer with a "../" entry is a VerificationError (exit 3); nothing enters the store', async (t) => {
    const root = join(await tempDir(t, 'docker-daemon-evil'), 'store');
    const good = await tarOf([['etc/motd', 'fine\n']]);
    const evil = await tarOf([['usr/bin/ok', 'ok\n'], ['../../etc/cron.d/evil', '* * * * * root sh\n']]);
    const { archive, daemon } = await legacyArchive([good, evil]);
    await assert.rejects(storeSavedImage(Readable.from(archive), { ref, daemon, platforms: ['linux/amd64'], storeRoot: root, signal }), (e: unknown) => {
      assert.ok(e instanceof VerificationError, String(e));
      assert.equal(e.exitCode, 3);
      assert.match(e.message, /^docker-daemon:evil:1: layer 2 \(sha256:[0-9a-f]{64}\): verification failed \(expected entries inside the layer root, got entry "\.\.\/\.\.\/etc\/cron\.d\/evil" which climbs out of the root with "\.\."\)$/);
      return true;
    });
    assert.deepEqual(await listStoredBlobs(root), []);
    assert.deepEqual(await readdir(join(root, 'tmp')), [], 'the unpacked archive is gone');
  });

  test('an archive entry that climbs out, or a layer that is not its diff_id, is a VerificationError too', async (t) => {
    const root = join(await tempDir(t, 'docker-daemon-evil2'), 'store');
    const layer = await tarOf([['a', 'a\n']]);
    const outer = await legacyArchive([layer], [['../escape.txt', 'x']]);
    await assert.rejects(storeSavedImage(Readable.from(outer.archive), { ref, daemon: outer.daemon, platforms: ['linux/amd64'], storeRoot: root, signal }), (e: unknown) => {
      assert.ok(e instanceof VerificationError && e.exitCode === 3, String(e));
      assert.match(e.message, /entry "\.\.\/escape\.txt" which climbs out of the root/);
      return true;
    });
    const swapped = await legacyArchive([layer]);
    const otherDaemon = { ...swapped.daemon, RootFS: { Layers: [sha256(Buffer.from('another layer'))] } };
    await assert.rejects(storeSavedImage(Readable.from(swapped.archive), { ref, daemon: otherDaemon, platforms: ['linux/amd64'], storeRoot: root, signal }), (e: unknown) => {
      assert.ok(e instanceof VerificationError && e.exitCode === 3, String(e));
      assert.match(e.message, /the exported layers: verification failed \(expected the daemon's RootFS layers sha256:/);
      return true;
    });
    assert.deepEqual(await listStoredBlobs(root), []);
  });
});
