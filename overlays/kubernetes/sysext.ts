// The Kubernetes node binaries as a systemd-sysext image for Flatcar (base-images.md §9): a
// squashfs holding /usr/bin/{kubelet,kubeadm,kubectl,crictl}, the CNI plugins, kubelet.service with
// kubeadm's drop-in, and the extension-release file systemd-sysext matches against the OS.
//
// CNI plugins: the image keeps them read-only in /usr/libexec/cni, and the kubelet drop-in copies
// them into /opt/cni/bin before the kubelet starts — the sysext-bakery's pattern (§9.3; it keeps
// them in /usr/local/bin/cni). /opt/cni/bin stays the one plugin directory, which is containerd's
// default CNI bin_dir and where flannel's init container drops its own `flannel` plugin, so neither
// containerd nor the CNI manifest needs another path. /usr/libexec rather than the bakery's
// /usr/local avoids shadowing anything Flatcar keeps at /usr/local.
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { InputError, InterruptedError, VerificationError } from '../../builders/errors.ts';
import { run } from '../../builders/exec.ts';
import type { Arch } from '../../builders/spec.ts';
import { hashFile } from '../../images/download.ts';

/** The extension's name: the image is linked as /etc/extensions/kubernetes.raw (§9.1). */
export const SYSEXT_NAME = 'kubernetes';
/** Where nodes keep the image and the link systemd-sysext merges (sysext-bakery sysupdate layout, §9.3). */
export const SYSEXT_DIR_ON_NODE = '/opt/extensions/kubernetes';
export const SYSEXT_LINK_ON_NODE = `/etc/extensions/${SYSEXT_NAME}.raw`;
/** `SYSEXT_LEVEL=1.0` with `ID=flatcar`, Flatcar's recommended matching (§9.1). */
export const SYSEXT_LEVEL = '1.0';
export const SYSEXT_OS_ID = 'flatcar';

/** Read-only CNI plugins inside the image, copied to CNI_BIN_DIR by the kubelet drop-in. */
export const CNI_PLUGINS_IN_IMAGE = '/usr/libexec/cni';
/** containerd's default CNI bin_dir, also where flannel installs its plugin (pxe-and-bootstrap.md §9). */
export const CNI_BIN_DIR = '/opt/cni/bin';
/** kubelet's default flexvolume dir sits in read-only /usr; link it to writable /var like the bakery (§9.3). */
const VOLUME_PLUGIN_DIR = 'usr/libexec/kubernetes/kubelet-plugins/volume/exec';
const VOLUME_PLUGIN_TARGET = '/var/kubernetes/kubelet-plugins/volume/exec';

const DIR_MODE = 0o755;
const EXEC_MODE = 0o755;
const FILE_MODE = 0o644;

/** systemd's ARCHITECTURE= names (systemd-sysext matching, §9.1). */
export function sysextArchitecture(arch: Arch): 'x86-64' | 'arm64' {
  if (arch === 'amd64') return 'x86-64';
  if (arch === 'arm64') return 'arm64';
  throw new InputError(`Flatcar has no ${arch} build, so there is no Kubernetes sysext for it`, { hint: 'use arm64 or amd64 hardware for Flatcar nodes' });
}

/** `kubernetes-v1.33.4-x86-64.raw`, the sysext-bakery's asset name (§9.3). */
export function sysextFileName(version: string, arch: Arch): string {
  return `${SYSEXT_NAME}-v${version.replace(/^v/, '')}-${sysextArchitecture(arch)}.raw`;
}

/** Path of the image on a node's ROOT (disk nodes) or where Ignition downloads it (PXE nodes). */
export function sysextPathOnNode(version: string, arch: Arch): string {
  return `${SYSEXT_DIR_ON_NODE}/${sysextFileName(version, arch)}`;
}

export function extensionRelease(arch: Arch): string {
  return [
    `ID=${SYSEXT_OS_ID}`,
    `SYSEXT_LEVEL=${SYSEXT_LEVEL}`,
    `ARCHITECTURE=${sysextArchitecture(arch)}`,
    // The image ships units: have systemd reload them on merge (sysext-bakery, §9.2).
    'EXTENSION_RELOAD_MANAGER=1',
    '',
  ].join('\n');
}

export const KUBELET_UNIT = `# bramble: the kubelet from the Kubernetes sysext; kubeadm configures it through 10-kubeadm.conf.
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
`;

/** kubeadm's kubelet drop-in (pxe-and-bootstrap.md §6.5), plus the CNI copy and volume dir of the Flatcar sysext. */
export const KUBEADM_KUBELET_DROP_IN = `# bramble: how kubeadm drives the kubelet (files kubeadm init/join writes).
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/sysconfig/kubelet
ExecStartPre=/usr/bin/mkdir --parents ${CNI_BIN_DIR} ${VOLUME_PLUGIN_TARGET}
ExecStartPre=/usr/bin/cp --recursive --remove-destination ${CNI_PLUGINS_IN_IMAGE}/. ${CNI_BIN_DIR}/
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
`;

/** Keeps the kubelet running once the extension is merged (sysext-bakery `10-kubelet-service.conf`, §9.3). */
export const KUBELET_UPHOLD_DROP_IN = `[Unit]
Upholds=kubelet.service
`;

export interface SysextBinaries {
  kubelet: string;
  kubeadm: string;
  kubectl: string;
  /** crictl release tarball: one member `crictl` (kubernetes-and-registry.md §1.2). */
  crictlTgz: string;
  /** containernetworking/plugins release tarball: `./<plugin>` members (§1.2). */
  cniTgz: string;
}

export interface BuildSysextOptions {
  version: string;
  arch: Arch;
  binaries: SysextBinaries;
  /** The .raw file to write; it appears by rename when complete. */
  out: string;
  /** Seconds since the epoch for every timestamp in the image (SOURCE_DATE_EPOCH). */
  epoch: number;
  signal?: AbortSignal;
}

export interface BuiltSysext {
  path: string;
  sha256: string;
  sha512: string;
  size: number;
}

/** Builds the sysext squashfs; the same inputs and epoch give a byte-identical file. */
export async function buildKubernetesSysext(opts: BuildSysextOptions): Promise<BuiltSysext> {
  const { signal } = opts;
  if (!Number.isInteger(opts.epoch) || opts.epoch < 0) throw new Error(`sysext epoch must be a non-negative integer, got ${opts.epoch}`);
  const work = await mkdtemp(join(tmpdir(), 'bramble-sysext-'));
  const tmpOut = join(dirname(opts.out), `.${basename(opts.out)}.tmp-${process.pid}`);
  try {
    const root = join(work, 'root');
    await stageTree(root, opts, join(work, 'extract'));
    if (signal?.aborted) throw new InterruptedError();
    await mkdir(dirname(opts.out), { recursive: true });
    await rm(tmpOut, { force: true });
    const env = { SOURCE_DATE_EPOCH: undefined };
    await run(
      'mksquashfs',
      [root, tmpOut, '-noappend', '-all-root', '-no-xattrs', '-mkfs-time', String(opts.epoch), '-all-time', String(opts.epoch), '-quiet', '-no-progress'],
      { signal, env },
    );
    const digests = await hashFile(tmpOut, signal);
    await rename(tmpOut, opts.out);
    return { path: opts.out, ...digests };
  } catch (e) {
    await rm(tmpOut, { force: true });
    throw e;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function mkdirs(root: string, rel: string) {
  let p = root;
  for (const part of rel.split('/')) {
    p = join(p, part);
    await mkdir(p, { recursive: true });
    await chmod(p, DIR_MODE); // mkdir's mode is cut by the umask; the image must not depend on it
  }
}

async function putFile(root: string, rel: string, contents: string, mode = FILE_MODE) {
  await mkdirs(root, dirname(rel));
  await writeFile(join(root, rel), contents);
  await chmod(join(root, rel), mode);
}

async function putExecutable(root: string, rel: string, from: string) {
  await mkdirs(root, dirname(rel));
  await copyFile(from, join(root, rel));
  await chmod(join(root, rel), EXEC_MODE);
}

async function stageTree(root: string, opts: BuildSysextOptions, extractDir: string): Promise<void> {
  await mkdir(root);
  await chmod(root, DIR_MODE);
  const b = opts.binaries;
  for (const name of ['kubelet', 'kubeadm', 'kubectl'] as const) await putExecutable(root, `usr/bin/${name}`, b[name]);

  const crictl = await extractExecutables(b.crictlTgz, join(extractDir, 'crictl'), opts.signal);
  const crictlBin = crictl.get('crictl');
  if (!crictlBin) throw new VerificationError(`${b.crictlTgz}`, 'a member named crictl', [...crictl.keys()].join(', ') || 'no executable members');
  await putExecutable(root, 'usr/bin/crictl', crictlBin);

  const plugins = await extractExecutables(b.cniTgz, join(extractDir, 'cni'), opts.signal);
  if (plugins.size === 0) throw new VerificationError(`${b.cniTgz}`, 'CNI plugin executables', 'none');
  for (const [name, path] of [...plugins].sort(([a], [c]) => a.localeCompare(c))) {
    await putExecutable(root, `${CNI_PLUGINS_IN_IMAGE.slice(1)}/${name}`, path);
  }

  await mkdirs(root, dirname(VOLUME_PLUGIN_DIR));
  await symlink(VOLUME_PLUGIN_TARGET, join(root, VOLUME_PLUGIN_DIR));
  await putFile(root, `usr/lib/extension-release.d/extension-release.${SYSEXT_NAME}`, extensionRelease(opts.arch));
  await putFile(root, 'usr/lib/systemd/system/kubelet.service', KUBELET_UNIT);
  await putFile(root, 'usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf', KUBEADM_KUBELET_DROP_IN);
  await putFile(root, 'usr/lib/systemd/system/multi-user.target.d/10-kubelet-service.conf', KUBELET_UPHOLD_DROP_IN);
}

/** Member names of a tarball, rejecting absolute paths and `..` segments before anything is extracted. */
export async function listTarballSafely(tgz: string, signal?: AbortSignal): Promise<string[]> {
  const { stdout } = await run('tar', ['--list', '--gzip', '--file', tgz, '--quoting-style=escape'], { signal });
  const names = stdout.split('\n').filter((n) => n.length > 0);
  for (const name of names) {
    if (name.startsWith('/')) throw new VerificationError(`${tgz}: member ${JSON.stringify(name)}`, 'a relative path', 'an absolute path');
    if (name.split('/').includes('..')) throw new VerificationError(`${tgz}: member ${JSON.stringify(name)}`, 'a path inside the archive', 'a path with ".."');
  }
  return names;
}

/**
 * Extracts the top-level executable regular files of a release tarball (`crictl`, `./bridge`, …),
 * leaving out docs and refusing links, so nothing in the archive can point outside the image.
 */
export async function extractExecutables(tgz: string, dir: string, signal?: AbortSignal): Promise<Map<string, string>> {
  const names = await listTarballSafely(tgz, signal);
  const topLevel = names.filter((n) => /^(\.\/)?[^/]+$/.test(n) && n !== '.' && n !== './');
  await mkdir(dir, { recursive: true });
  if (topLevel.length > 0) {
    await run('tar', ['--extract', '--gzip', '--file', tgz, '--directory', dir, '--no-same-owner', '--', ...topLevel], { signal });
  }
  const found = new Map<string, string>();
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name);
    const st = await lstat(path);
    if (st.isSymbolicLink()) throw new VerificationError(`${tgz}: member ${name}`, 'a regular file', 'a symbolic link');
    if (st.isFile() && (st.mode & 0o111) !== 0) found.set(name, path);
  }
  return found;
}
