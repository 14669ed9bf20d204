// Wires Kubernetes into a build: build-time PKI kept in out/<cluster>/pki, one sysext per arch (on
// ROOT for disk nodes, in the PXE tree for netbooted ones), and each node's kubeadm content added to
// its provisioning spec; for HypriotOS, the binaries alone, as plain files on the root filesystem.
import { join } from 'node:path';
import { ensurePki, type Pki } from '../overlays/kubernetes/pki.ts';
import { controlPlaneEndpoint } from '../overlays/kubernetes/kubeadm.ts';
import { addKubernetes, checkNodeKubernetes } from '../overlays/kubernetes/node-content.ts';
import { PLAIN_BIN_DIR, PLAIN_CNI_DIR, plainBinaryEntries } from '../overlays/kubernetes/plain-binaries.ts';
import { buildKubernetesSysext, sysextFileName, sysextPathOnNode, type SysextBinaries } from '../overlays/kubernetes/sysext.ts';
import type { Ext4Entry } from '../images/ext4.ts';
import type { ProvisioningSpec } from '../overlays/provision.ts';
import type { MirrorBundle } from './registry-content.ts';
import { pxeHttpBase } from './assemble-pxe.ts';
import { BrambleError } from './errors.ts';
import type { FetchedInput } from './fetch.ts';
import { layout } from './layout.ts';
import type { Arch, ClusterSpec, NodeSpec } from './spec.ts';
import { parseKubernetesVersion } from './versions.ts';

export type KubernetesApplicability = { ok: true } | { ok: false; reason: string };

/**
 * Whether this build can carry the Kubernetes bootstrap. It needs Flatcar, a known API address
 * (a VIP or a static ip on the first control-plane node) and, for netbooted nodes, an HTTP address
 * to download the sysext from. Otherwise the images are built without it and the build says why
 * and how to change that.
 */
export function kubernetesApplies(spec: ClusterSpec, nodes: readonly NodeSpec[]): KubernetesApplicability {
  try {
    if (spec.os.base === 'hypriot') return { ok: false, reason: hypriotWithoutBootstrap(spec.kubernetes.version) };
    controlPlaneEndpoint(spec);
    for (const n of nodes) checkNodeKubernetes(spec, n);
    if (nodes.some((n) => n.boot === 'pxe') && !pxeHttpBase(spec)) {
      return {
        ok: false,
        reason:
          'netbooted nodes download the Kubernetes sysext from the first control-plane node, which has no static ip; ' +
          "set [network] node_cidr to the nodes' subnet (every node then gets a static address)",
      };
    }
    return { ok: true };
  } catch (e) {
    if (e instanceof BrambleError) return { ok: false, reason: e.hint ? `${e.message}; ${e.hint}` : e.message };
    throw e;
  }
}

/**
 * Why HypriotOS nodes get the binaries but no kubeadm bootstrap, and what the user can do. kubelet
 * v1.24 removed dockershim, so it needs a CRI runtime, and v1.26 needs CRI v1 (containerd >= 1.6,
 * containerd RELEASES.md); HypriotOS 1.12.3 ships Docker 19.03 (base-images.md §12). Older kubelets
 * could use that Docker, but bramble's kubeadm configs are v1beta4, which kubeadm reads from v1.31.
 */
export function hypriotWithoutBootstrap(version: string): string {
  const k = parseKubernetesVersion(version);
  const missing =
    k && k.major === 1 && k.minor < 24
      ? `bramble's kubeadm configs use the v1beta4 API, which kubeadm ${version} does not read (kubelet ${version} can use HypriotOS's Docker 19.03 through dockershim)`
      : `kubelet ${version} needs a CRI runtime (containerd >= 1.6 for CRI v1), and HypriotOS 1.12.3 has only Docker 19.03, which kubelet dropped with v1.24`;
  return (
    `HypriotOS nodes get the Kubernetes ${version} binaries in ${PLAIN_BIN_DIR} and the CNI plugins in ${PLAIN_CNI_DIR}, but no kubeadm bootstrap: ${missing}; ` +
    'install a container runtime on each node and run kubeadm init/join yourself, or use os.base = "flatcar" with hardware = "rpi4" for a cluster bramble bootstraps'
  );
}

/**
 * Whether the build fetches the Kubernetes node binaries: with the bootstrap (the Flatcar sysext),
 * or for HypriotOS as plain files (the plan already refused versions with no 32-bit arm build).
 */
export function kubernetesBinariesApply(spec: ClusterSpec, nodes: readonly NodeSpec[]): boolean {
  if (nodes.length === 0) return false;
  return spec.os.base === 'hypriot' || kubernetesApplies(spec, nodes).ok;
}

export interface BuiltSysextForArch {
  arch: Arch;
  path: string;
  fileName: string;
  sha512: string;
}

export interface KubernetesBundle {
  pki: Pki;
  sysexts: Map<Arch, BuiltSysextForArch>;
  /** The bundled registry mirror, when the build carries one. */
  mirror?: MirrorBundle;
}

function need(inputs: Map<string, FetchedInput>, id: string): string {
  const i = inputs.get(id);
  if (!i) throw new Error(`kubernetes: input ${id} was not fetched`);
  return i.path;
}

function binariesOf(inputs: Map<string, FetchedInput>, arch: Arch): SysextBinaries {
  return {
    kubelet: need(inputs, `kubernetes-kubelet-${arch}`),
    kubeadm: need(inputs, `kubernetes-kubeadm-${arch}`),
    kubectl: need(inputs, `kubernetes-kubectl-${arch}`),
    crictlTgz: need(inputs, `crictl-${arch}`),
    cniTgz: need(inputs, `cni-plugins-${arch}`),
  };
}

export async function prepareKubernetes(o: {
  spec: ClusterSpec;
  nodes: readonly NodeSpec[];
  inputs: Map<string, FetchedInput>;
  clusterDir: string;
  workDir: string;
  epoch: number;
  signal: AbortSignal;
}): Promise<KubernetesBundle> {
  const pki = await ensurePki(join(o.clusterDir, layout.pkiDir), { cluster: o.spec.name, signal: o.signal });
  const sysexts = new Map<Arch, BuiltSysextForArch>();
  for (const arch of [...new Set(o.nodes.map((n) => n.arch))].sort()) {
    const fileName = sysextFileName(o.spec.kubernetes.version, arch);
    const built = await buildKubernetesSysext({
      version: o.spec.kubernetes.version,
      arch,
      binaries: binariesOf(o.inputs, arch),
      out: join(o.workDir, fileName),
      epoch: o.epoch,
      signal: o.signal,
    });
    sysexts.set(arch, { arch, path: built.path, fileName, sha512: built.sha512 });
  }
  return { pki, sysexts };
}

/** Per arch of `nodes`, the verified binaries as plain root-filesystem entries (HypriotOS, no sysext). */
export async function preparePlainBinaries(o: {
  nodes: readonly NodeSpec[];
  inputs: Map<string, FetchedInput>;
  workDir: string;
  signal: AbortSignal;
}): Promise<Map<Arch, Ext4Entry[]>> {
  const out = new Map<Arch, Ext4Entry[]>();
  for (const arch of [...new Set(o.nodes.map((n) => n.arch))].sort()) {
    out.set(arch, await plainBinaryEntries(binariesOf(o.inputs, arch), { workDir: join(o.workDir, `kubernetes-${arch}`), signal: o.signal }));
  }
  return out;
}

/** The PXE tree path of an arch's sysext (out/<cluster>-relative). */
export function sysextTreePath(fileName: string): string {
  return `${layout.pxeDir}/assets/kubernetes/${fileName}`;
}

export function withKubernetes(spec: ClusterSpec, node: NodeSpec, prov: ProvisioningSpec, k8s: KubernetesBundle): ProvisioningSpec {
  const sysext = k8s.sysexts.get(node.arch)!;
  if (node.boot === 'disk') return addKubernetes(prov, { spec, node, pki: k8s.pki, sysext: { kind: 'root' } });
  const url = new URL(sysextTreePath(sysext.fileName).slice(`${layout.pxeDir}/`.length), pxeHttpBase(spec)!).toString();
  return addKubernetes(prov, { spec, node, pki: k8s.pki, sysext: { kind: 'http', url, sha512: sysext.sha512 } });
}

export { sysextPathOnNode };
