// The bundle writers on a blob store the test builds itself (tiny multi-arch OCI images with an
// attestation manifest, a single-arch image, an image from a registry with a port): the
// distribution storage tree is served by a real docker-registry in read-only mode and pulled by
// skopeo by tag and by digest with upstream's digests; the per-arch OCI archives are imported by a
// real containerd's `ctr images import`. Link files, stored bytes and reproducibility are checked.
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { run } from '../builders/exec.ts';
import { hostsToml } from '../overlays/registry/mirror.ts';
import { distributionTreeFiles, mirrorNamespace, mirrorRepository, treeFileSha256, treePaths, uniqueBlobs, writeDistributionTree, type TreeFile } from '../images/registry/distribution-tree.ts';
import { ociArchiveContent, ociArchiveSize, writeOciArchive } from '../images/registry/oci-archive.ts';
import type { PulledImage } from '../images/registry/types.ts';
import { TinyBlobStore, type TinyImage } from './helpers/oci-store.ts';
import { containerdForTest, rawManifest, sha256Digest } from './helpers/registry-peers.ts';
import { filesIn } from './helpers/files.ts';
import { startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';

const ARCHES = ['amd64', 'arm64'];
const EPOCH = 1735689600;

let tmp: string;
let store: TinyBlobStore;
let images: TinyImage[];
let pulled: PulledImage[];
let files: TreeFile[];
let treeRoot: string;

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-registry-writers-'));
  store = new TinyBlobStore(join(tmp, 'store'));
  const all = [{ architecture: 'amd64' }, { architecture: 'arm64' }, { architecture: 'arm', variant: 'v7' }];
  images = [
    await store.image({ ref: 'registry.k8s.io/pause:3.10', platforms: all, attestation: true }),
    await store.image({ ref: 'registry.k8s.io/coredns/coredns:v1.12.0', platforms: all, attestation: true }),
    await store.image({ ref: 'docker.io/library/registry:2.8.3', platforms: all }),
    await store.image({ ref: 'ghcr.io/example/amd64-only:1.0', platforms: [{ architecture: 'amd64' }], single: true }),
    await store.image({ ref: '127.0.0.1:5000/tools/probe:v2', platforms: [{ architecture: 'amd64' }, { architecture: 'arm64' }] }),
  ];
  pulled = images.map((i) => i.pulledFor(ARCHES));
  files = distributionTreeFiles(pulled);
  treeRoot = join(tmp, 'tree');
  await writeDistributionTree(files, { rootDir: treeRoot, storeRoot: store.root });
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('distribution storage tree', () => {
  test('link files are exactly sha256:<hex> with no newline, for the index, every kept child, configs, layers and tags', async () => {
    const pause = images[0]!;
    const repo = 'registry.k8s.io/pause';
    const expectLink = async (path: string, digest: string) => assert.equal(await readFile(join(treeRoot, path), 'utf8'), digest, path);
    await expectLink(treePaths.tagCurrent(repo, '3.10'), pause.top.digest);
    await expectLink(treePaths.tagIndexEntry(repo, '3.10', pause.top.digest), pause.top.digest);
    await expectLink(treePaths.revision(repo, pause.top.digest), pause.top.digest);
    for (const arch of ARCHES) {
      const child = pause.children.get(arch)!;
      await expectLink(treePaths.revision(repo, child.digest), child.digest);
      await expectLink(treePaths.layer(repo, child.config.digest), child.config.digest);
      await expectLink(treePaths.layer(repo, child.layers[0]!.digest), child.layers[0]!.digest);
    }
    const paths = new Set((await filesIn(treeRoot)).map((p) => relative(treeRoot, p)));
    // arm/v7 and the attestation are listed by the index but not stored: the cluster runs neither.
    const arm = pause.children.get('arm/v7')!;
    assert.ok(!paths.has(treePaths.revision(repo, arm.digest)));
    assert.ok(!paths.has(treePaths.blob(arm.digest)));
    assert.ok(!paths.has(treePaths.blob(pause.attestation!.digest)));
    // The index is stored with upstream's exact bytes (three-space indent, trailing newline).
    const index = await readFile(join(treeRoot, treePaths.blob(pause.top.digest)));
    assert.equal(sha256Digest(index), pause.top.digest);
    assert.ok(index.toString().includes('\n   "schemaVersion"'));
    // Repository names keep the upstream host; a port's colon becomes `_`.
    assert.equal(mirrorRepository(pulled[4]!.name), '127.0.0.1_5000/tools/probe');
    assert.ok([...paths].some((p) => p.includes('/repositories/127.0.0.1_5000/tools/probe/_manifests/tags/v2/current/link')));
  });

  test('stored bytes equal the sum of the unique blobs of all images', async () => {
    const unique = new Map<string, number>();
    for (const p of pulled) for (const b of p.blobs) unique.set(b.digest, b.size);
    const expected = [...unique.values()].reduce((a, b) => a + b, 0);
    let stored = 0;
    for (const p of await filesIn(join(treeRoot, 'docker/registry/v2/blobs'))) stored += (await stat(p)).size;
    assert.equal(stored, expected);
    assert.equal(uniqueBlobs(files).reduce((a, b) => a + b.size, 0), expected);
    // Shared blobs (the same layer in two repositories would be one) are stored once: one data file per digest.
    assert.equal((await filesIn(join(treeRoot, 'docker/registry/v2/blobs'))).length, unique.size);
  });

  test('blobs are hardlinks of the store on one filesystem, and a second write leaves every file untouched', async () => {
    const b = pulled[0]!.blobs[0]!;
    const [inTree, inStore] = [await stat(join(treeRoot, treePaths.blob(b.digest))), await stat(join(store.root, 'sha256', b.digest.slice(7)))];
    assert.equal(inTree.ino, inStore.ino);
    const before = new Map<string, number>();
    for (const p of await filesIn(treeRoot)) before.set(p, (await stat(p)).mtimeMs);
    const counts = await writeDistributionTree(files, { rootDir: treeRoot, storeRoot: store.root });
    assert.deepEqual(counts, { unchanged: files.length, hardlink: 0, copy: 0, written: 0 });
    for (const [p, m] of before) assert.equal((await stat(p)).mtimeMs, m, p);
  });

  test("treeFileSha256 is each written file's real sha256 (the build lists tree files without reading them)", async () => {
    for (const f of files) {
      const real = createHash('sha256').update(await readFile(join(treeRoot, f.path))).digest('hex');
      assert.equal(treeFileSha256(f), real, f.path);
    }
  });

  test('a tag naming two different manifests is refused', () => {
    const clash = { ...pulled[1]!, name: { ...pulled[1]!.name, repository: 'pause', tag: '3.10' }, ref: 'registry.k8s.io/pause:3.10' };
    assert.throws(() => distributionTreeFiles([pulled[0]!, clash]), /same repository and tag with different content/);
  });

  describe('served read-only by docker-registry', () => {
    let reg: DockerRegistry;
    before(async () => {
      reg = await startDockerRegistry(join(tmp, 'registry-run'), { storage: treeRoot, readOnly: true });
    });
    after(async () => reg?.stop());

    for (const [i, ref] of ['registry.k8s.io/pause:3.10', 'registry.k8s.io/coredns/coredns:v1.12.0', 'docker.io/library/registry:2.8.3', 'ghcr.io/example/amd64-only:1.0', '127.0.0.1:5000/tools/probe:v2'].entries()) {
      test(`skopeo pulls ${ref} by tag and by digest with upstream's digests`, async () => {
        const img = pulled[i]!;
        const repo = mirrorRepository(img.name);
        const byTag = await rawManifest(`${reg.host}/${repo}:${img.name.tag}`);
        assert.equal(sha256Digest(byTag), img.top.digest);
        const byDigest = await rawManifest(`${reg.host}/${repo}@${img.top.digest}`);
        assert.equal(sha256Digest(byDigest), img.top.digest);
        for (const p of img.platforms) {
          assert.equal(sha256Digest(await rawManifest(`${reg.host}/${repo}@${p.digest}`)), p.digest);
          // A full copy (config and layers fetched and verified by skopeo) for each kept arch.
          const dest = join(tmp, 'copies', `${i}-${p.architecture}`);
          await mkdir(dest, { recursive: true });
          await run('skopeo', ['copy', '--src-tls-verify=false', '--override-arch', p.architecture, '--preserve-digests', `docker://${reg.host}/${repo}:${img.name.tag}`, `dir:${dest}`]);
          assert.equal(sha256Digest(await readFile(join(dest, 'manifest.json'))), p.digest);
          assert.deepEqual((await readFile(join(dest, p.layers[0]!.digest.slice(7)))).length, p.layers[0]!.size);
        }
      });
    }

    test("a real containerd given the generated hosts.toml files pulls upstream references from the mirror", async (t) => {
      const registries = new Map(pulled.map((p) => [p.name.registry, mirrorNamespace(p.name.registry)]));
      const c = await containerdForTest(t, async (dir) => {
        for (const [upstream, namespace] of registries) {
          await mkdir(join(dir, 'certs.d', upstream), { recursive: true });
          await writeFile(join(dir, 'certs.d', upstream, 'hosts.toml'), hostsToml(upstream, reg.host, namespace));
        }
      });
      const hostsDir = join(c.dir, 'certs.d');
      for (const img of pulled) {
        for (const p of img.platforms) {
          // No upstream is reachable from here: success means containerd found the mirror path.
          await c.ctr(['-n', p.architecture, 'images', 'pull', '--hosts-dir', hostsDir, '--platform', `linux/${p.architecture}`, img.ref]);
          const table = await c.ctr(['-n', p.architecture, 'images', 'ls']);
          assert.match(table, new RegExp(`^${img.ref.replace(/[.]/g, '\\.')}\\s+\\S+\\s+${img.top.digest}`, 'm'));
        }
      }
    });

    test('an arch the cluster does not run is not served, and the tree is unchanged by serving', async () => {
      const arm = images[0]!.children.get('arm/v7')!;
      const r = await fetch(`http://${reg.host}/v2/registry.k8s.io/pause/manifests/${arm.digest}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
      assert.equal(r.status, 404);
      const put = await fetch(`http://${reg.host}/v2/registry.k8s.io/pause/blobs/uploads/`, { method: 'POST' });
      assert.equal(put.status, 405, 'read-only mode refuses uploads');
      const paths = (await filesIn(treeRoot)).map((p) => relative(treeRoot, p));
      assert.deepEqual(paths, files.map((f) => f.path));
    });
  });
});

describe('per-arch OCI archives', () => {
  const archives = new Map<string, string>();
  before(async () => {
    for (const arch of ARCHES) {
      const dest = join(tmp, `${arch}.oci.tar`);
      await writeOciArchive(ociArchiveContent(pulled, arch), { storeRoot: store.root, dest, epoch: EPOCH });
      archives.set(arch, dest);
    }
  });

  test('entries are sorted, owned by 0:0, dated SOURCE_DATE_EPOCH; index.json names each image for containerd', async () => {
    const { stdout } = await run('tar', ['--list', '--verbose', '--numeric-owner', '--full-time', '-f', archives.get('arm64')!], { env: { TZ: 'UTC' } });
    const lines = stdout.trim().split('\n');
    const names = lines.map((l) => l.split(/\s+/).pop()!);
    assert.deepEqual(names, [...names].sort());
    assert.equal(names.at(-1), 'oci-layout');
    for (const l of lines) assert.match(l, /^\S+ 0\/0 +\d+ 2025-01-01 00:00:00 /, l);
    const index = JSON.parse((await run('tar', ['-xOf', archives.get('arm64')!, 'index.json'])).stdout) as {
      manifests: Array<{ digest: string; annotations: Record<string, string>; platform: { architecture: string } }>;
    };
    // The amd64-only image is not in the arm64 archive; the others point at their arm64 child.
    assert.deepEqual(
      index.manifests.map((m) => m.annotations['io.containerd.image.name']),
      ['127.0.0.1:5000/tools/probe:v2', 'docker.io/library/registry:2.8.3', 'registry.k8s.io/coredns/coredns:v1.12.0', 'registry.k8s.io/pause:3.10'],
    );
    for (const m of index.manifests) {
      const img = pulled.find((p) => p.ref === m.annotations['io.containerd.image.name'])!;
      assert.equal(m.digest, img.platforms.find((p) => p.architecture === 'arm64')!.digest);
      assert.equal(m.annotations['org.opencontainers.image.ref.name'], img.ref);
    }
  });

  test('the same inputs give byte-identical archives', async () => {
    const again = join(tmp, 'again.oci.tar');
    const w = await writeOciArchive(ociArchiveContent(pulled, 'amd64'), { storeRoot: store.root, dest: again, epoch: EPOCH });
    assert.ok((await readFile(again)).equals(await readFile(archives.get('amd64')!)));
    assert.equal(`sha256:${w.sha256}`, sha256Digest(await readFile(again)));
    // The size known in advance and a hash-only pass (what a rebuild compares) agree with the file.
    for (const arch of ARCHES) {
      const content = ociArchiveContent(pulled, arch);
      const bytes = await readFile(archives.get(arch)!);
      assert.equal(ociArchiveSize(content), bytes.length, arch);
      const hashed = await writeOciArchive(content, { storeRoot: store.root, epoch: EPOCH });
      assert.deepEqual(hashed, { size: bytes.length, sha256: sha256Digest(bytes).slice('sha256:'.length) }, arch);
    }
  });

  test("a real containerd's ctr images import accepts each archive and lists every image by its upstream name", async (t) => {
    const c = await containerdForTest(t);
    for (const arch of ARCHES) {
      const ns = `bramble-${arch}`;
      await c.ctr(['-n', ns, 'images', 'import', '--platform', `linux/${arch}`, archives.get(arch)!]);
      const listed = (await c.ctr(['-n', ns, 'images', 'ls', '-q'])).trim().split('\n').sort();
      const expected = pulled.filter((p) => p.platforms.some((x) => x.architecture === arch)).map((p) => p.ref).sort();
      assert.deepEqual(listed, expected);
      const table = await c.ctr(['-n', ns, 'images', 'ls']);
      for (const p of pulled) {
        const child = p.platforms.find((x) => x.architecture === arch);
        if (child) assert.match(table, new RegExp(`^${p.ref.replace(/[.]/g, '\\.')}\\s+\\S+\\s+${child.digest}`, 'm'));
      }
    }
  });
});
