// The Kubernetes node binaries as plain files, for a base without systemd-sysext (HypriotOS):
// kubelet, kubeadm, kubectl and crictl in /opt/bin, the CNI plugins in /opt/cni/bin (containerd's
// and the kubelet's default plugin directory), all root-owned 0755, written into the image's root
// filesystem by the image builder. Release tarballs go through the same checks as for the sysext.
import { join } from 'node:path';
import { VerificationError } from '../../builders/errors.ts';
import type { Ext4Entry } from '../../images/ext4.ts';
import { CNI_BIN_DIR, extractExecutables, type SysextBinaries } from './sysext.ts';

/** Where the binaries go: not on Raspbian's default PATH, so nothing the OS ships is shadowed. */
export const PLAIN_BIN_DIR = '/opt/bin';
export const PLAIN_CNI_DIR = CNI_BIN_DIR;

const DIR_MODE = 0o755;
const EXEC_MODE = 0o755;

/**
 * The root-filesystem entries for the binaries, with `source` pointing at verified files (the
 * tarball members extracted under `workDir`), sorted by path.
 */
export async function plainBinaryEntries(binaries: SysextBinaries, o: { workDir: string; signal?: AbortSignal }): Promise<Ext4Entry[]> {
  const entries: Ext4Entry[] = [
    { path: PLAIN_BIN_DIR, type: 'dir', mode: DIR_MODE },
    { path: PLAIN_CNI_DIR, type: 'dir', mode: DIR_MODE },
  ];
  for (const name of ['kubelet', 'kubeadm', 'kubectl'] as const) entries.push({ path: `${PLAIN_BIN_DIR}/${name}`, type: 'file', source: binaries[name], mode: EXEC_MODE });

  const crictl = (await extractExecutables(binaries.crictlTgz, join(o.workDir, 'crictl'), o.signal)).get('crictl');
  if (!crictl) throw new VerificationError(binaries.crictlTgz, 'a member named crictl', 'none');
  entries.push({ path: `${PLAIN_BIN_DIR}/crictl`, type: 'file', source: crictl, mode: EXEC_MODE });

  const plugins = await extractExecutables(binaries.cniTgz, join(o.workDir, 'cni'), o.signal);
  if (plugins.size === 0) throw new VerificationError(binaries.cniTgz, 'CNI plugin executables', 'none');
  for (const [name, source] of plugins) entries.push({ path: `${PLAIN_CNI_DIR}/${name}`, type: 'file', source, mode: EXEC_MODE });
  return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
