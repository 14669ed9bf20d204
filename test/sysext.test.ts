// The Kubernetes sysext, built with the real mksquashfs from small stand-in binaries and release-
// shaped tarballs, and read back with unsquashfs: exact tree, root-owned, extension-release,
// byte-identical rebuilds, and hostile tarballs refused with exit 3.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VerificationError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import {
  buildKubernetesSysext,
  KUBEADM_KUBELET_DROP_IN,
  sysextFileName,
  sysextPathOnNode,
  type SysextBinaries,
} from '../overlays/kubernetes/sysext.ts';

const EPOCH = 1_700_000_000;
const PLUGINS = ['bridge', 'host-local', 'loopback', 'portmap'];
let work: string;
let inputs: SysextBinaries;

async function script(path: string, text: string) {
  await writeFile(path, `#!/bin/sh\necho "${text}"\n`);
  await chmod(path, 0o755);
}

/** A gzip tarball of `members` from `dir`, as the `tar` tool writes release tarballs. */
async function tarball(dir: string, out: string, members: string[], extra: string[] = []) {
  await run('tar', ['--create', '--gzip', '--file', out, '--owner=0', '--group=0', ...extra, '--directory', dir, ...members]);
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'bramble-sysext-test-'));
  const bin = join(work, 'bin');
  await mkdir(join(bin, 'crictl'), { recursive: true });
  await mkdir(join(bin, 'cni'), { recursive: true });
  for (const name of ['kubelet', 'kubeadm', 'kubectl']) await script(join(bin, name), `${name} v1.33.4`);
  await script(join(bin, 'crictl', 'crictl'), 'crictl v1.33.0');
  for (const p of PLUGINS) await script(join(bin, 'cni', p), `CNI ${p} plugin`);
  await writeFile(join(bin, 'cni', 'README.md'), 'CNI plugins\n');
  await writeFile(join(bin, 'cni', 'LICENSE'), 'Apache-2.0\n');
  await tarball(join(bin, 'crictl'), join(work, 'crictl.tar.gz'), ['crictl']);
  // containernetworking/plugins tarballs have `./name` members (kubernetes-and-registry.md §1.2).
  await tarball(join(bin, 'cni'), join(work, 'cni.tgz'), ['.']);
  inputs = {
    kubelet: join(bin, 'kubelet'),
    kubeadm: join(bin, 'kubeadm'),
    kubectl: join(bin, 'kubectl'),
    crictlTgz: join(work, 'crictl.tar.gz'),
    cniTgz: join(work, 'cni.tgz'),
  };
});
after(() => rm(work, { recursive: true, force: true }));

interface Entry {
  mode: string;
  owner: string;
  path: string;
  target?: string;
}

/** `unsquashfs -lln` lines: `-rwxr-xr-x 0/0   129 2023-11-14 22:13 squashfs-root/usr/bin/crictl`. */
async function listImage(path: string): Promise<Entry[]> {
  const { stdout } = await run('unsquashfs', ['-lln', path]);
  return stdout
    .split('\n')
    .filter((l) => l.includes('squashfs-root'))
    .map((line) => {
      const m = /^(\S+) (\S+)\s+\d+ \S+ \S+ squashfs-root(\S*)(?: -> (\S+))?$/.exec(line);
      assert.ok(m, `unexpected unsquashfs line: ${line}`);
      return { mode: m[1]!, owner: m[2]!, path: m[3] || '/', ...(m[4] ? { target: m[4] } : {}) };
    });
}

test('file names and node paths follow the sysext-bakery naming', () => {
  assert.equal(sysextFileName('v1.33.4', 'amd64'), 'kubernetes-v1.33.4-x86-64.raw');
  assert.equal(sysextFileName('1.33.4', 'arm64'), 'kubernetes-v1.33.4-arm64.raw');
  assert.equal(sysextPathOnNode('v1.33.4', 'arm64'), '/opt/extensions/kubernetes/kubernetes-v1.33.4-arm64.raw');
  assert.throws(() => sysextFileName('v1.33.4', 'arm'), /Flatcar has no arm build/);
});

test('unsquashfs -lln shows exactly the expected tree, root-owned', async () => {
  const built = await buildKubernetesSysext({ version: 'v1.33.4', arch: 'amd64', binaries: inputs, out: join(work, 'out', 'a.raw'), epoch: EPOCH });
  const entries = await listImage(built.path);
  const dirs = [
    '/', '/usr', '/usr/bin', '/usr/lib', '/usr/lib/extension-release.d', '/usr/lib/systemd', '/usr/lib/systemd/system',
    '/usr/lib/systemd/system/kubelet.service.d', '/usr/lib/systemd/system/multi-user.target.d', '/usr/libexec', '/usr/libexec/cni',
    '/usr/libexec/kubernetes', '/usr/libexec/kubernetes/kubelet-plugins', '/usr/libexec/kubernetes/kubelet-plugins/volume',
  ];
  const executables = ['/usr/bin/crictl', '/usr/bin/kubeadm', '/usr/bin/kubectl', '/usr/bin/kubelet', ...PLUGINS.map((p) => `/usr/libexec/cni/${p}`)];
  const files = [
    '/usr/lib/extension-release.d/extension-release.kubernetes',
    '/usr/lib/systemd/system/kubelet.service',
    '/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf',
    '/usr/lib/systemd/system/multi-user.target.d/10-kubelet-service.conf',
  ];
  const expected: Entry[] = [
    ...dirs.map((path) => ({ mode: 'drwxr-xr-x', owner: '0/0', path })),
    ...executables.map((path) => ({ mode: '-rwxr-xr-x', owner: '0/0', path })),
    ...files.map((path) => ({ mode: '-rw-r--r--', owner: '0/0', path })),
    { mode: 'lrwxrwxrwx', owner: '0/0', path: '/usr/libexec/kubernetes/kubelet-plugins/volume/exec', target: '/var/kubernetes/kubelet-plugins/volume/exec' },
  ];
  const byPath = (a: Entry, b: Entry) => a.path.localeCompare(b.path);
  assert.deepEqual([...entries].sort(byPath), [...expected].sort(byPath));

  const cat = async (p: string) => (await run('unsquashfs', ['-cat', built.path, p])).stdout;
  assert.equal(await cat('usr/lib/extension-release.d/extension-release.kubernetes'), 'ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n');
  assert.equal(await cat('usr/bin/kubeadm'), await readFile(inputs.kubeadm, 'utf8'));
  assert.equal(await cat('usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf'), KUBEADM_KUBELET_DROP_IN);
  assert.match(KUBEADM_KUBELET_DROP_IN, /^ExecStart=\/usr\/bin\/kubelet \$KUBELET_KUBECONFIG_ARGS \$KUBELET_CONFIG_ARGS \$KUBELET_KUBEADM_ARGS \$KUBELET_EXTRA_ARGS$/m);
  assert.match(KUBEADM_KUBELET_DROP_IN, /^ExecStartPre=\/usr\/bin\/cp --recursive --remove-destination \/usr\/libexec\/cni\/\. \/opt\/cni\/bin\/$/m);

  const stats = (await run('unsquashfs', ['-stat', built.path])).stdout;
  assert.match(stats, /Creation or last append time .*2023/);
  assert.equal(built.size, (await readFile(built.path)).length);
  assert.match(built.sha512, /^[0-9a-f]{128}$/);
});

test('two builds from the same inputs are byte-identical, whatever the inputs\' mtimes', async () => {
  const a = await buildKubernetesSysext({ version: 'v1.33.4', arch: 'arm64', binaries: inputs, out: join(work, 'same', 'a.raw'), epoch: EPOCH });
  await utimes(inputs.kubelet, new Date(), new Date(2001, 1, 1));
  const b = await buildKubernetesSysext({ version: 'v1.33.4', arch: 'arm64', binaries: inputs, out: join(work, 'same', 'b.raw'), epoch: EPOCH });
  assert.equal(a.sha256, b.sha256);
  assert.ok((await readFile(a.path)).equals(await readFile(b.path)));
  assert.match((await run('unsquashfs', ['-cat', a.path, 'usr/lib/extension-release.d/extension-release.kubernetes'])).stdout, /^ARCHITECTURE=arm64$/m);
  const later = await buildKubernetesSysext({ version: 'v1.33.4', arch: 'arm64', binaries: inputs, out: join(work, 'same', 'c.raw'), epoch: EPOCH + 1 });
  assert.notEqual(later.sha256, a.sha256);
});

async function expectRefused(cniTgz: string, pattern: RegExp) {
  const out = join(work, 'refused.raw');
  await assert.rejects(buildKubernetesSysext({ version: 'v1.33.4', arch: 'amd64', binaries: { ...inputs, cniTgz }, out, epoch: EPOCH }), (e: unknown) => {
    assert.ok(e instanceof VerificationError, `expected VerificationError, got ${String(e)}`);
    assert.equal(e.exitCode, 3);
    assert.match(e.message, pattern);
    return true;
  });
  await assert.rejects(readFile(out), { code: 'ENOENT' });
}

test('tarball members with "..", absolute paths or links are refused with exit 3', async () => {
  const evil = join(work, 'evil');
  await mkdir(join(evil, 'inner'), { recursive: true });
  await script(join(evil, 'escape'), 'escape');
  // -P keeps `../escape` and `/abs/...` names as they are (GNU tar strips them otherwise).
  await tarball(join(evil, 'inner'), join(work, 'dotdot.tgz'), ['../escape'], ['-P']);
  await expectRefused(join(work, 'dotdot.tgz'), /member "\.\.\/escape".*a path with "\.\."/);

  await run('tar', ['--create', '--gzip', '-P', '--file', join(work, 'abs.tgz'), join(evil, 'escape')]);
  await expectRefused(join(work, 'abs.tgz'), /an absolute path/);

  const linked = join(work, 'linked');
  await mkdir(linked);
  await symlink('/etc/passwd', join(linked, 'bridge'));
  await tarball(linked, join(work, 'link.tgz'), ['./bridge']);
  await expectRefused(join(work, 'link.tgz'), /member bridge.*a symbolic link/);
});
