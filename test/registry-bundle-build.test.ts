// Issue #7 end to end, through the real CLI against the fixture upstream (its registry serves
// deterministic multi-arch images with attestations): a statically addressed cluster of a pc control
// plane and an rpi4 worker, with one extra image given by its short name, is built; then
//  - a second, real docker-registry started read-only on out/<cluster>/registry serves every image,
//    and skopeo pulls each by tag and by digest with the digests the fixture upstream served;
//  - a real containerd's `ctr images import` accepts each per-arch OCI archive;
//  - stored bytes equal the sum of the unique blobs, computed from the upstream manifests;
//  - every node's Ignition points containerd at the mirror for each upstream; the first node's units
//    pass systemd-analyze verify and its ROOT carries the tree and the archives;
//  - `bramble inspect` lists images, arches, digests and unique bytes; an `--offline` rebuild from the
//    lock asks the fixture registry nothing and writes identical bundle bytes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { join, relative } from 'node:path';
import { run } from '../builders/exec.ts';
import type { Manifest } from '../builders/output.ts';
import { listExt4, readExt4File } from '../images/ext4.ts';
import { registryEndpoint } from '../images/registry/reference.ts';
import type { IgnitionConfig } from '../ignition/model.ts';
import { decodeDataUrl } from '../ignition/validate.ts';
import { buildWithCli, explainCli, partitionSpan, runBramble, sfdiskTable, TEST_EPOCH, warmBuildCache, writeTestCluster, type TestClusterFiles } from './helpers/build.ts';
import { getFixture, type Fixture } from './helpers/fixture.ts';
import { containerdForTest, rawManifest, sha256Digest } from './helpers/registry-peers.ts';
import { filesIn } from './helpers/files.ts';
import { startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';

const CLUSTER = 'mirror';
const NODE_CIDR = '10.79.0.0/24';
const ARCHES = ['amd64', 'arm64'];
/** The extra image as cluster.toml names it, and normalised. */
const EXTRA_SHORT = 'busybox:1.37';
const EXTRA = 'docker.io/library/busybox:1.37';
const UPSTREAMS = ['docker.io', 'ghcr.io', 'quay.io', 'registry.k8s.io'];

let f: Fixture;
let tmp: string;
let files: TestClusterFiles;
let clusterDir: string;
let manifest: Manifest;
/** Image refs the build bundled (from the manifest's inputs), normalised. */
let refs: string[];

interface UpstreamImage {
  ref: string;
  top: string;
  children: Map<string, { digest: string; blobs: Array<{ digest: string; size: number }> }>;
  topSize: number;
}
const upstream = new Map<string, UpstreamImage>();

/** `docker://` reference of `ref` at the fixture upstream (its [sources.registries] remap). */
function atUpstream(ref: string): string {
  const slash = ref.indexOf('/');
  const host = ref.slice(0, slash);
  const remaps = Object.fromEntries([...f.sourcesToml.matchAll(/^"([^"]+)" = "([^"]+)"$/gm)].map((m) => [m[1]!, m[2]!]));
  const ep = registryEndpoint(host, remaps);
  return `${new URL(ep.origin).host}/${ep.repositoryPrefix}${ref.slice(slash + 1)}`;
}

/** What upstream serves for `ref`, for the cluster's arches: read with skopeo, not with bramble. */
async function readUpstream(ref: string): Promise<UpstreamImage> {
  const topBytes = await rawManifest(atUpstream(ref));
  const index = JSON.parse(topBytes.toString()) as { manifests: Array<{ digest: string; platform: { os: string; architecture: string } }> };
  const children = new Map<string, UpstreamImage['children'] extends Map<string, infer V> ? V : never>();
  const repo = atUpstream(ref).replace(/:[^/:]+$/, '');
  for (const arch of ARCHES) {
    const child = index.manifests.find((m) => m.platform.os === 'linux' && m.platform.architecture === arch)!;
    const bytes = await rawManifest(`${repo}@${child.digest}`);
    assert.equal(sha256Digest(bytes), child.digest);
    const m = JSON.parse(bytes.toString()) as { config: { digest: string; size: number }; layers: Array<{ digest: string; size: number }> };
    children.set(arch, { digest: child.digest, blobs: [{ digest: child.digest, size: bytes.length }, m.config, ...m.layers] });
  }
  return { ref, top: sha256Digest(topBytes), topSize: topBytes.length, children };
}

before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-registry-build-'));
  files = await writeTestCluster(join(tmp, 'c'), f, {
    name: CLUSTER,
    nodeCidr: NODE_CIDR,
    nodes: [
      { name: 'cp-1', hardware: 'pc', role: 'control-plane' },
      { name: 'pi-1', hardware: 'rpi4', role: 'worker' },
    ],
  });
  await appendFile(files.config, `\n[registry]\nextra_images = [${JSON.stringify(EXTRA_SHORT)}]\n`);
  const r = await buildWithCli(files, { outDir: join(tmp, 'c', 'out'), cacheDir: warmBuildCache(), lockPath: join(tmp, 'c', 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = join(tmp, 'c', 'out', CLUSTER);
  manifest = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
  refs = manifest.inputs.filter((i) => i.id.startsWith('image:')).map((i) => i.url);
  for (const ref of refs) upstream.set(ref, await readUpstream(ref));
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function ignitionOf(node: string): Promise<IgnitionConfig> {
  return readFile(join(clusterDir, 'configs', `${node}.ign`), 'utf8').then((t) => JSON.parse(t) as IgnitionConfig);
}

function fileIn(cfg: IgnitionConfig, path: string): string | undefined {
  const file = cfg.storage?.files?.find((x) => x.path === path);
  if (!file?.contents?.source) return undefined;
  const bytes = decodeDataUrl(file.contents.source);
  return (file.contents.compression === 'gzip' ? gunzipSync(bytes) : bytes).toString('utf8');
}

describe('bramble build bundles the cluster images as a registry mirror', () => {
  test('the bundle holds kubeadm, CNI, registry server and extra images, each pinned in the lock with upstream digests', async () => {
    const lock = JSON.parse(await readFile(join(tmp, 'c', 'bramble.lock'), 'utf8')) as { inputs: Array<{ id: string; url: string; sha256: string }> };
    for (const ref of ['registry.k8s.io/kube-apiserver:v1.33.4', 'registry.k8s.io/coredns/coredns:v1.12.0', 'registry.k8s.io/pause:3.10', 'ghcr.io/flannel-io/flannel:v0.28.9', 'docker.io/library/registry:2.8.3', EXTRA]) {
      assert.ok(refs.includes(ref), `${ref} bundled (have ${refs.join(', ')})`);
    }
    for (const ref of refs) {
      const locked = lock.inputs.find((i) => i.url === ref);
      assert.ok(locked, `${ref} in bramble.lock`);
      assert.equal(`sha256:${locked.sha256}`, upstream.get(ref)!.top);
    }
    assert.ok(lock.inputs.some((i) => i.id === `image:${EXTRA_SHORT}`), 'the lock names the extra image as cluster.toml does');
  });

  test('stored bytes equal the sum of the unique blobs of every image for amd64 and arm64', async () => {
    const unique = new Map<string, number>();
    for (const u of upstream.values()) {
      unique.set(u.top, u.topSize);
      for (const c of u.children.values()) for (const b of c.blobs) unique.set(b.digest, b.size);
    }
    const expected = [...unique.values()].reduce((a, b) => a + b, 0);
    const blobFiles = await filesIn(join(clusterDir, 'registry/docker/registry/v2/blobs'));
    let stored = 0;
    for (const p of blobFiles) stored += (await stat(p)).size;
    assert.equal(blobFiles.length, unique.size);
    assert.equal(stored, expected);
    const inspect = await runBramble(['inspect', clusterDir]);
    assert.equal(inspect.code, 0, explainCli(inspect));
    assert.match(inspect.stdout, new RegExp(`^registry mirror: ${refs.length} images for amd64 arm64, ${unique.size} unique blobs, ${expected} bytes `, 'm'));
    for (const u of upstream.values()) {
      assert.match(inspect.stdout, new RegExp(`^ {2}${u.ref.replace(/[.]/g, '\\.')}\\n {6}top +${u.top}\\n {6}linux/amd64 +${u.children.get('amd64')!.digest}\\n {6}linux/arm64 +${u.children.get('arm64')!.digest}$`, 'm'));
    }

    // bramble plan reads the same total from the cache before any build, without a request.
    const planArgs = ['plan', '-c', files.config, '--sources', files.sources, '--lock', join(tmp, 'c', 'bramble.lock')];
    const mark = f.server.requests.length;
    const plan = await runBramble([...planArgs, '--cache', warmBuildCache()]);
    assert.equal(plan.code, 0, explainCli(plan));
    assert.match(plan.stdout, new RegExp(`^ {2}size: ${expected} bytes \\(\\d+\\.\\d MiB\\) in ${unique.size} unique blobs, from the cache$`, 'm'));
    assert.deepEqual(f.server.requests.slice(mark), [], 'plan asks no server anything');
    const json = await runBramble([...planArgs, '--cache', warmBuildCache(), '--json']);
    assert.equal(json.code, 0, explainCli(json));
    assert.deepEqual(JSON.parse(json.stdout).registry.bundle.cachedSize, { uniqueBytes: expected, blobs: unique.size, notCounted: [] });
    // An empty cache, or no lock yet: the size is unknown, and the plan says what fills it in.
    const empty = await runBramble([...planArgs, '--cache', join(tmp, 'empty-cache')]);
    assert.equal(empty.code, 0, explainCli(empty));
    assert.match(empty.stdout, /^ {2}size: unknown: the cache does not hold every pinned image yet; `bramble fetch` pulls them$/m);
    const unlocked = await runBramble(['plan', '-c', files.config, '--sources', files.sources, '--lock', join(tmp, 'no.lock'), '--cache', warmBuildCache()]);
    assert.equal(unlocked.code, 0, explainCli(unlocked));
    assert.match(unlocked.stdout, new RegExp(`^ {2}size: unknown: ${refs.length} of ${refs.length} images are not pinned in bramble\\.lock yet \\(first: .*\\); \`bramble fetch\` pulls and pins them$`, 'm'));
  });

  describe('a second, real docker-registry serving out/<cluster>/registry read-only', () => {
    let reg: DockerRegistry;
    before(async () => {
      reg = await startDockerRegistry(join(tmp, 'serve'), { storage: join(clusterDir, 'registry'), readOnly: true });
    });
    after(async () => reg?.stop());

    test('skopeo pulls every image by tag and by digest, with the upstream digests, for each arch', async () => {
      for (const u of upstream.values()) {
        const mirrorRef = `${reg.host}/${u.ref}`;
        assert.equal(sha256Digest(await rawManifest(mirrorRef)), u.top, `${u.ref} by tag`);
        const repo = mirrorRef.replace(/:[^/:]+$/, '');
        assert.equal(sha256Digest(await rawManifest(`${repo}@${u.top}`)), u.top, `${u.ref} by digest`);
        for (const [arch, c] of u.children) {
          const dest = join(tmp, 'copies', `${u.ref.replace(/[/:]/g, '_')}-${arch}`);
          await mkdir(dest, { recursive: true });
          await run('skopeo', ['copy', '--src-tls-verify=false', '--override-arch', arch, '--preserve-digests', `docker://${repo}@${u.top}`, `dir:${dest}`]);
          assert.equal(sha256Digest(await readFile(join(dest, 'manifest.json'))), c.digest, `${u.ref} ${arch}`);
        }
      }
    });
  });

  test("a real containerd's ctr images import accepts each per-arch archive and names every image", async (t) => {
    const c = await containerdForTest(t);
    for (const arch of ARCHES) {
      const archive = join(clusterDir, 'oci', `${arch}.oci.tar`);
      assert.ok(manifest.artefacts.some((a) => a.path === `oci/${arch}.oci.tar` && a.kind === 'bundle'));
      await c.ctr(['-n', `k8s-${arch}`, 'images', 'import', '--platform', `linux/${arch}`, archive]);
      const listed = (await c.ctr(['-n', `k8s-${arch}`, 'images', 'ls', '-q'])).trim().split('\n').sort();
      assert.deepEqual(listed, [...refs].sort());
      const table = await c.ctr(['-n', `k8s-${arch}`, 'images', 'ls']);
      for (const u of upstream.values()) assert.match(table, new RegExp(`^${u.ref.replace(/[.]/g, '\\.')}\\s+\\S+\\s+${u.children.get(arch)!.digest}`, 'm'));
    }
  });

  test('every node pulls each upstream through the mirror at the first node; kubeadm and containerd keep upstream refs', async () => {
    const lock = JSON.parse(await readFile(join(tmp, 'c', 'bramble.lock'), 'utf8')) as { inputs: unknown[] };
    assert.ok(lock.inputs.length > 0);
    const cpIp = manifest.nodes.find((n) => n.name === 'cp-1')!.ip!;
    for (const node of ['cp-1', 'pi-1']) {
      const cfg = await ignitionOf(node);
      for (const host of UPSTREAMS) {
        const text = fileIn(cfg, `/etc/containerd/certs.d/${host}/hosts.toml`);
        assert.ok(text, `${node}: hosts.toml for ${host}`);
        assert.match(text, new RegExp(`^server = "http://${cpIp.replace(/\./g, '\\.')}:5000/v2/${host.replace(/\./g, '\\.')}"$`, 'm'));
        assert.match(text, /^override_path = true$/m);
      }
      const containerd = fileIn(cfg, '/etc/containerd/config.toml')!;
      assert.match(containerd, /config_path = "\/etc\/containerd\/certs\.d"/);
      assert.match(containerd, /sandbox_image = "registry\.k8s\.io\/pause:3\.10"/);
    }
    const kubeadm = fileIn(await ignitionOf('cp-1'), '/etc/kubernetes/kubeadm.yaml')!;
    assert.match(kubeadm, /^imageRepository: registry\.k8s\.io$/m);
    const worker = await ignitionOf('pi-1');
    assert.ok(!worker.systemd?.units?.some((u) => u.name === 'bramble-registry.service'), 'only the first node serves');
  });

  test("the first node's import and registry units pass systemd-analyze verify", async (t) => {
    const dir = await mkdtemp(join(tmp, 'units-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const units = (await ignitionOf('cp-1')).systemd?.units ?? [];
    const names = ['bramble-images-import.service', 'bramble-registry.service'];
    for (const name of names) {
      const u = units.find((x) => x.name === name);
      assert.ok(u?.contents && u.enabled, `${name} enabled with contents`);
      await writeFile(join(dir, name), u.contents);
    }
    // Stand-ins for units the units order against, shipped by Flatcar's sysexts and the Kubernetes bootstrap.
    for (const name of ['containerd.service', 'kubeadm.service', 'kubelet.service']) {
      await writeFile(join(dir, name), `[Unit]\nDescription=stand-in for ${name}\n[Service]\nExecStart=/bin/true\n`);
    }
    const r = await run('systemd-analyze', ['verify', '--man=no', ...names.map((n) => join(dir, n))], { okCodes: [1] });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', r.stderr);
  });

  test("the first node's ROOT carries the storage tree and the archives it imports at boot", async () => {
    const image = join(clusterDir, 'images', 'cp-1.img');
    const root = partitionSpan(await sfdiskTable(image), 'ROOT');
    const onRoot = await listExt4(image, root, { dir: '/var/lib/registry' });
    const treeFiles = (await filesIn(join(clusterDir, 'registry'))).map((p) => `/var/lib/registry/${relative(join(clusterDir, 'registry'), p)}`);
    assert.deepEqual(onRoot.filter((e) => e.type === 'file').map((e) => e.path), treeFiles);
    for (const e of onRoot.filter((x) => x.type === 'file' && x.path.endsWith('/link')).slice(0, 20)) {
      const bytes = await readExt4File(image, root, e.path);
      assert.ok(bytes.equals(await readFile(join(clusterDir, 'registry', e.path.slice('/var/lib/registry/'.length)))), e.path);
    }
    const archive = await readExt4File(image, root, '/var/lib/bramble/images/amd64.oci.tar');
    assert.ok(archive.equals(await readFile(join(clusterDir, 'oci', 'amd64.oci.tar'))));
    const services = await readExt4File(image, root, '/var/lib/bramble/images/services-amd64.oci.tar');
    const index = JSON.parse((await run('tar', ['-xOf', '-', 'index.json'], { input: services })).stdout) as { manifests: Array<{ annotations: Record<string, string> }> };
    assert.ok(index.manifests.some((m) => m.annotations['io.containerd.image.name'] === 'docker.io/library/registry:2.8.3'));
    // The worker carries no mirror.
    const workerRoot = partitionSpan(await sfdiskTable(join(clusterDir, 'images', 'pi-1.img')), 'ROOT');
    const workerEntries = await listExt4(join(clusterDir, 'images', 'pi-1.img'), workerRoot);
    assert.ok(!workerEntries.some((e) => e.path.startsWith('/var/lib/registry')));
  });

  test('an --offline rebuild from the lock asks the fixture registry nothing and writes the same bundle', async () => {
    const before = new Map(manifest.artefacts.filter((a) => a.kind === 'bundle').map((a) => [a.path, a.sha256]));
    const inode = (await stat(join(clusterDir, 'oci', 'arm64.oci.tar'))).ino;
    // One byte of the amd64 archive changed, its size kept: the rebuild must notice and rewrite it.
    const damaged = join(clusterDir, 'oci', 'amd64.oci.tar');
    const fh = await open(damaged, 'r+');
    await fh.write(Buffer.from('X'), 0, 1, 600);
    await fh.close();
    const mark = f.server.requests.length;
    const r = await runBramble(
      ['build', '-c', files.config, '--sources', files.sources, '--out', join(tmp, 'c', 'out'), '--cache', warmBuildCache(), '--lock', join(tmp, 'c', 'bramble.lock'), '--offline'],
      { env: { SOURCE_DATE_EPOCH: String(TEST_EPOCH), ...(process.env.HOME && { HOME: process.env.HOME }) } },
    );
    assert.equal(r.code, 0, explainCli(r));
    const asked = f.server.requests.slice(mark).filter((q) => q.path.startsWith('/v2/'));
    assert.deepEqual(asked, []);
    const again = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
    assert.deepEqual(new Map(again.artefacts.filter((a) => a.kind === 'bundle').map((a) => [a.path, a.sha256])), before);
    assert.equal((await stat(join(clusterDir, 'oci', 'arm64.oci.tar'))).ino, inode, 'an unchanged archive is left alone');
    assert.equal(createHash('sha256').update(await readFile(damaged)).digest('hex'), before.get('oci/amd64.oci.tar'), 'a changed archive is written again');
  });
});
