// Kubernetes on HypriotOS (32-bit arm): a version upstream built no linux/arm kubelet for is refused
// at plan time (exit 2, naming the nodes, the version and the fix); v1.26.15 — the last one — is
// fetched verified, pinned in bramble.lock, and written as plain root-owned files into each image's
// ext4 root partition (/opt/bin, /opt/cni/bin), read back with e2fsprogs; the plan says plainly that
// these nodes get no kubeadm bootstrap and why. A root filesystem too small for the binaries stops
// the build with exit 2 before anything is written.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCluster } from '../builders/build.ts';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { parseCluster } from '../builders/load.ts';
import type { LockFile } from '../builders/lockfile.ts';
import type { Manifest } from '../builders/output.ts';
import { formatPlan, planBuild } from '../builders/plan.ts';
import { MBR_LINUX_TYPE, mbrPartitionBytes, readMbr } from '../images/mbr.ts';
import { extractPartition } from '../images/partition.ts';
import { copyIntoImage, makeExt4, makeFat, seededUuid } from '../scripts/fixtures/flatcar-image.ts';
import { FIXTURE_ARM_CRICTL_VERSION, FIXTURE_ARM_KUBERNETES_VERSION, FIXTURE_CNI_VERSION } from '../scripts/fixtures/kubernetes.ts';
import { explainCli, runBramble, TEST_EPOCH, warmBuildCache } from './helpers/build.ts';
import { getFixture, type Fixture } from './helpers/fixture.ts';
import { tempDir } from './helpers/tmp.ts';
import { makeZip, sha256, testSources } from './helpers/tiny-upstream.ts';
import { UpstreamServer } from './helpers/upstream-server.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM864DBcKF0A/DWKtqo+8DyYiDG/b9FQ5GxoyacdaZpj test@example.invalid';

function hypriotToml(o: { version?: string; nodes?: string[] } = {}): string {
  const lines = ['name = "pi-cluster"', '[os]', 'base = "hypriot"'];
  if (o.version) lines.push('[kubernetes]', `version = "${o.version}"`);
  lines.push('[ssh]', `authorized_keys = ["${KEY}"]`);
  (o.nodes ?? ['pi-1']).forEach((n, i) => lines.push('[[nodes]]', `name = "${n}"`, `role = "${i === 0 ? 'control-plane' : 'worker'}"`, 'hardware = "rpi3"'));
  return `${lines.join('\n')}\n`;
}

describe('plan: HypriotOS and the Kubernetes version', () => {
  test('a version with no linux/arm kubelet is refused with exit 2, naming every node, the version and the fix', () => {
    const spec = parseCluster(hypriotToml({ version: 'v1.33.4', nodes: ['pi-1', 'pi-2', 'pi-3'] }), 'cluster.toml');
    assert.throws(() => planBuild(spec), (e: unknown) => {
      assert.ok(e instanceof InputError, String(e));
      assert.equal(e.exitCode, 2);
      assert.equal(e.message, 'nodes "pi-1", "pi-2", "pi-3": Kubernetes v1.33.4 publishes no linux/arm kubelet or kubeadm (32-bit arm builds ended with v1.26)');
      assert.equal(
        e.hint,
        'set [kubernetes] version = "v1.26.15", the last release built for arm (HypriotOS nodes get its binaries under /opt/bin), or use os.base = "flatcar" with hardware = "rpi4" (arm64)',
      );
      return true;
    });
  });

  test('`bramble plan` and `bramble fetch` exit 2 with the message and hint, no stack trace, nothing fetched', async (t) => {
    const dir = await tempDir(t, 'k8s-hypriot-cli');
    await writeFile(join(dir, 'cluster.toml'), hypriotToml({ version: '1.27.0' }));
    for (const cmd of ['plan', 'fetch']) {
      const r = await runBramble([cmd, '-c', join(dir, 'cluster.toml'), '--cache', join(dir, 'cache'), '--offline'], { cwd: dir });
      assert.equal(r.code, 2, explainCli(r));
      assert.match(r.stderr, /node "pi-1": Kubernetes v1\.27\.0 publishes no linux\/arm kubelet or kubeadm/);
      assert.match(r.stderr, /set \[kubernetes\] version = "v1\.26\.15"/);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
    await assert.rejects(stat(join(dir, 'bramble.lock')), { code: 'ENOENT' });
    await assert.rejects(stat(join(dir, 'cache')), { code: 'ENOENT' });
  });

  test('no [kubernetes] version means v1.26.15 on HypriotOS: arm binaries planned, and a warning says there is no bootstrap, why, and what to do', () => {
    const plan = planBuild(parseCluster(hypriotToml(), 'cluster.toml'));
    assert.equal(plan.kubernetes.version, 'v1.26.15');
    const k8sInputs = plan.inputs.filter((i) => /^(kubernetes-|crictl-|cni-plugins-)/.test(i.id)).map((i) => `${i.id}@${i.version}`);
    assert.deepEqual(k8sInputs, ['cni-plugins-arm@1.7.1', 'crictl-arm@1.26.1', 'kubernetes-kubeadm-arm@1.26.15', 'kubernetes-kubectl-arm@1.26.15', 'kubernetes-kubelet-arm@1.26.15']);
    assert.equal(plan.kubernetes.bootstrap, null);
    const expected =
      'HypriotOS nodes get the Kubernetes v1.26.15 binaries in /opt/bin and the CNI plugins in /opt/cni/bin, but no kubeadm bootstrap: ' +
      'kubelet v1.26.15 needs a CRI runtime (containerd >= 1.6 for CRI v1), and HypriotOS 1.12.3 has only Docker 19.03, which kubelet dropped with v1.24; ' +
      'install a container runtime on each node and run kubeadm init/join yourself, or use os.base = "flatcar" with hardware = "rpi4" for a cluster bramble bootstraps';
    assert.equal(plan.kubernetes.bootstrapMissing, expected);
    assert.ok(plan.warnings.includes(`no Kubernetes bootstrap: ${expected}`), plan.warnings.join('\n'));
    const text = formatPlan(plan);
    assert.match(text, /^ {2}bootstrap {3}none \(see the warning below\)$/m);
    assert.match(text, /^ {2}! no Kubernetes bootstrap: HypriotOS nodes get the Kubernetes v1\.26\.15 binaries/m);
  });

  test('with a pre-dockershim-removal version the warning names the kubeadm config API instead', () => {
    const plan = planBuild(parseCluster(hypriotToml({ version: 'v1.23.17' }), 'cluster.toml'));
    assert.match(plan.kubernetes.bootstrapMissing!, /bramble's kubeadm configs use the v1beta4 API, which kubeadm v1\.23\.17 does not read \(kubelet v1\.23\.17 can use HypriotOS's Docker 19\.03 through dockershim\)/);
    assert.ok(plan.inputs.some((i) => i.id === 'kubernetes-kubelet-arm' && i.version === '1.23.17'));
  });
});

describe('build: the binaries on the HypriotOS root filesystem', () => {
  let f: Fixture;
  let dir: string;
  let clusterDir: string;
  let lock: LockFile;
  let manifest: Manifest;
  let rootFs: string;

  before(async () => {
    f = await getFixture();
    dir = await mkdtemp(join(tmpdir(), 'bramble-k8s-hypriot-'));
    await writeFile(join(dir, 'cluster.toml'), hypriotToml());
    await writeFile(join(dir, 'sources.toml'), f.sourcesToml);
    const r = await runBramble(['build', '-c', 'cluster.toml', '--sources', 'sources.toml', '--cache', warmBuildCache(), '--out', 'out'], {
      cwd: dir,
      env: { SOURCE_DATE_EPOCH: String(TEST_EPOCH), ...(process.env.HOME && { HOME: process.env.HOME }) },
    });
    assert.equal(r.code, 0, explainCli(r));
    assert.match(r.stderr, /images are built without the Kubernetes bootstrap: HypriotOS nodes get the Kubernetes v1\.26\.15 binaries/);
    clusterDir = join(dir, 'out', 'pi-cluster');
    lock = JSON.parse(await readFile(join(dir, 'bramble.lock'), 'utf8')) as LockFile;
    manifest = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
    // The root partition as its own file, for e2fsprogs (independent of bramble's own ext4 code).
    const image = join(clusterDir, 'images', 'pi-1.img');
    const part = (await readMbr(image)).partitions.find((p) => p.type === MBR_LINUX_TYPE)!;
    rootFs = join(dir, 'root.ext4');
    await extractPartition(image, mbrPartitionBytes(part), rootFs);
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const armFile = (...parts: string[]) => join(f.root, ...parts);
  const k8sDir = () => armFile('k8s', 'release', FIXTURE_ARM_KUBERNETES_VERSION, 'bin', 'linux', 'arm');

  test('bramble.lock and manifest.json pin each arm input with upstream\'s sha256', async () => {
    const expected: Record<string, { version: string; sha256: string }> = {};
    for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
      expected[`kubernetes-${name}-arm`] = { version: '1.26.15', sha256: await readFile(join(k8sDir(), `${name}.sha256`), 'utf8') };
    }
    const crictl = armFile('github', 'kubernetes-sigs', 'cri-tools', 'releases', 'download', FIXTURE_ARM_CRICTL_VERSION, `crictl-${FIXTURE_ARM_CRICTL_VERSION}-linux-arm.tar.gz`);
    expected['crictl-arm'] = { version: '1.26.1', sha256: (await readFile(`${crictl}.sha256`, 'utf8')).trim() };
    const cni = armFile('github', 'containernetworking', 'plugins', 'releases', 'download', FIXTURE_CNI_VERSION, `cni-plugins-linux-arm-${FIXTURE_CNI_VERSION}.tgz`);
    expected['cni-plugins-arm'] = { version: '1.7.1', sha256: (await readFile(`${cni}.sha256`, 'utf8')).split(/\s+/)[0]! };
    for (const [id, want] of Object.entries(expected)) {
      const locked = lock.inputs.find((i) => i.id === id);
      assert.ok(locked, `${id} in bramble.lock`);
      assert.equal(locked.version, want.version, id);
      assert.equal(locked.sha256, want.sha256, id);
      assert.match(locked.verifiedWith, /^sha256:.*\.sha256$/, id);
      assert.equal(manifest.inputs.find((i) => i.id === id)?.sha256, want.sha256, `${id} in manifest.json`);
    }
  });

  test('e2fsck -fn is clean; /opt/bin and /opt/cni/bin hold exactly the binaries, root-owned 0755, byte for byte', async () => {
    await run('e2fsck', ['-fn', rootFs]);
    const ls = async (path: string) => {
      const { stdout } = await run('debugfs', ['-R', `ls -p ${path}`, rootFs]);
      return stdout
        .split('\n')
        .map((l) => /^\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/([^/]*)\/(\d*)\/$/.exec(l))
        .filter((m): m is RegExpExecArray => !!m && m[5] !== '.' && m[5] !== '..')
        .map((m) => ({ name: m[5]!, mode: m[2]!, uid: m[3]!, gid: m[4]! }));
    };
    const bin = await ls('/opt/bin');
    assert.deepEqual(bin.map((e) => e.name).sort(), ['crictl', 'kubeadm', 'kubectl', 'kubelet']);
    const cniMembers = (await run('tar', ['-tzf', armFile('github', 'containernetworking', 'plugins', 'releases', 'download', FIXTURE_CNI_VERSION, `cni-plugins-linux-arm-${FIXTURE_CNI_VERSION}.tgz`)])).stdout
      .split('\n')
      .map((m) => m.replace(/^\.\//, ''))
      .filter((m) => m && m !== '.' && m !== 'README.md' && m !== 'LICENSE');
    const cni = await ls('/opt/cni/bin');
    assert.deepEqual(cni.map((e) => e.name).sort(), cniMembers.sort());
    for (const e of [...bin, ...cni]) assert.deepEqual([e.mode, e.uid, e.gid], ['100755', '0', '0'], e.name);
    for (const d of await ls('/opt')) if (d.name === 'bin' || d.name === 'cni') assert.deepEqual([d.mode, d.uid, d.gid], ['040755', '0', '0'], d.name);

    const dump = async (path: string) => {
      const out = join(dir, 'dumped');
      await run('debugfs', ['-R', `dump ${path} ${out}`, rootFs]);
      return readFile(out);
    };
    for (const name of ['kubelet', 'kubeadm', 'kubectl']) assert.ok((await dump(`/opt/bin/${name}`)).equals(await readFile(join(k8sDir(), name))), name);
    assert.match((await dump('/opt/bin/crictl')).toString(), /crictl version v1\.26\.1/);
    assert.match((await dump('/opt/cni/bin/bridge')).toString(), /linux\/arm/);
  });

  test('the same build again (other --out, same lock and SOURCE_DATE_EPOCH) gives a byte-identical image', async () => {
    const r = await runBramble(['build', '-c', 'cluster.toml', '--sources', 'sources.toml', '--cache', warmBuildCache(), '--out', 'out2'], {
      cwd: dir,
      env: { SOURCE_DATE_EPOCH: String(TEST_EPOCH), ...(process.env.HOME && { HOME: process.env.HOME }) },
    });
    assert.equal(r.code, 0, explainCli(r));
    assert.equal(await readFile(join(dir, 'out2', 'pi-cluster', 'SHA256SUMS'), 'utf8'), await readFile(join(clusterDir, 'SHA256SUMS'), 'utf8'));
  });

  test('the seed is still in the FAT partition and the node image is in manifest and SHA256SUMS', async () => {
    const img = manifest.artefacts.find((a) => a.path === 'images/pi-1.img')!;
    assert.equal(img.secret, true);
    const sums = await readFile(join(clusterDir, 'SHA256SUMS'), 'utf8');
    assert.match(sums, new RegExp(`^${img.sha256}  images/pi-1\\.img$`, 'm'));
    const check = await run('sha256sum', ['-c', '--quiet', 'SHA256SUMS'], { cwd: clusterDir });
    assert.equal(check.stdout, '');
  });
});

/**
 * A HypriotOS-shaped release whose root filesystem has 8 MiB, and binaries of 4 MiB each: more
 * than fits. Everything else as upstream lays it out, served on loopback.
 */
async function publishTinyHypriot(server: UpstreamServer, work: string): Promise<void> {
  const MiB = 1024 * 1024;
  const img = join(work, 'hypriotos-rpi-v1.12.3.img');
  await writeFile(img, '');
  await truncate(img, 20 * MiB);
  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', img], {
    input: 'label: dos\nlabel-id: 0x5c1c6a1e\nunit: sectors\n\nstart=2048, size=20480, type=c\nstart=22528, size=16384, type=83\n',
  });
  const bootDir = join(work, 'boot');
  await mkdir(bootDir, { recursive: true });
  await writeFile(join(bootDir, 'cmdline.txt'), 'root=PARTUUID=5c1c6a1e-02\n');
  await makeFat(join(work, 'boot.vfat'), 10 * MiB, 'HypriotOS', bootDir, 'tiny', false);
  await copyIntoImage(join(work, 'boot.vfat'), img, 2048 * 512, 10 * MiB);
  const rootDir = join(work, 'root');
  await mkdir(join(rootDir, 'etc'), { recursive: true });
  await writeFile(join(rootDir, 'etc', 'hostname'), 'black-pearl\n');
  await makeExt4(join(work, 'root.ext4'), 8 * MiB, 'root', rootDir, seededUuid('tiny', 'root'));
  await copyIntoImage(join(work, 'root.ext4'), img, 22528 * 512, 8 * MiB);
  const zip = await makeZip('hypriotos-rpi-v1.12.3.img', await readFile(img));
  const zipPath = '/hypriot/v1.12.3/hypriotos-rpi-v1.12.3.img.zip';
  server.files.set(zipPath, zip);
  server.files.set(`${zipPath}.sha256`, Buffer.from(`${sha256(zip)}  hypriotos-rpi-v1.12.3.img.zip\n`));

  for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
    const data = randomBytes(4 * MiB);
    const path = `/dl.k8s.io/release/v1.26.15/bin/linux/arm/${name}`;
    server.files.set(path, data);
    server.files.set(`${path}.sha256`, Buffer.from(sha256(data)));
  }
  const tarball = async (name: string, members: Record<string, number>) => {
    const src = join(work, name);
    await mkdir(src, { recursive: true });
    for (const [m, bytes] of Object.entries(members)) await writeFile(join(src, m), randomBytes(bytes), { mode: 0o755 });
    await run('tar', ['-czf', `${src}.tgz`, '--owner=0', '--group=0', '-C', src, ...Object.keys(members)]);
    return readFile(`${src}.tgz`);
  };
  const crictl = await tarball('crictl', { crictl: 1 * MiB });
  const crictlPath = '/github/kubernetes-sigs/cri-tools/releases/download/v1.26.1/crictl-v1.26.1-linux-arm.tar.gz';
  server.files.set(crictlPath, crictl);
  server.files.set(`${crictlPath}.sha256`, Buffer.from(`${sha256(crictl)}\n`));
  const cni = await tarball('cni', { bridge: 256 * 1024, loopback: 256 * 1024 });
  const cniPath = '/github/containernetworking/plugins/releases/download/v1.7.1/cni-plugins-linux-arm-v1.7.1.tgz';
  server.files.set(cniPath, cni);
  server.files.set(`${cniPath}.sha256`, Buffer.from(`${sha256(cni)}  cni-plugins-linux-arm-v1.7.1.tgz\n`));
}

test('a root filesystem too small for the binaries stops the build with exit 2 naming the node and both sizes; no image, no manifest', async (t) => {
  const work = await tempDir(t, 'k8s-hypriot-small');
  const server = await new UpstreamServer().start();
  t.after(() => server.close());
  await publishTinyHypriot(server, work);
  const spec = { ...parseCluster(hypriotToml(), 'cluster.toml'), sources: testSources(server) };
  const outDir = join(work, 'out');
  await assert.rejects(
    buildCluster({
      spec,
      outDir,
      cacheDir: join(work, 'cache'),
      lockPath: join(work, 'bramble.lock'),
      offline: false,
      signal: new AbortController().signal,
      events: () => {},
    }),
    (e: unknown) => {
      assert.ok(e instanceof InputError, String(e));
      assert.equal(e.exitCode, 2);
      assert.match(e.message, /node "pi-1": the root filesystem of http:\/\/127\.0\.0\.1:\d+\/hypriot\/v1\.12\.3\/hypriotos-rpi-v1\.12\.3\.img\.zip has \d+\.\d MiB free, the files bramble adds need 13\.\d MiB/);
      assert.match(e.hint!, /bramble does not grow HypriotOS images/);
      return true;
    },
  );
  const clusterDir = join(outDir, 'pi-cluster');
  await assert.rejects(stat(join(clusterDir, 'manifest.json')), { code: 'ENOENT' });
  await assert.rejects(stat(join(clusterDir, 'images', 'pi-1.img')), { code: 'ENOENT' });
});

test('examples/hypriot-rpi3.toml plans with the v1.26.15 arm binaries and the no-bootstrap warning', async () => {
  const spec = parseCluster(await readFile(join(root, 'examples/hypriot-rpi3.toml'), 'utf8'), 'hypriot-rpi3.toml');
  const plan = planBuild(spec);
  assert.equal(plan.kubernetes.version, 'v1.26.15');
  assert.ok(plan.inputs.some((i) => i.id === 'crictl-arm' && i.version === '1.26.1'));
  assert.match(plan.warnings.join('\n'), /no Kubernetes bootstrap: HypriotOS nodes get/);
});
