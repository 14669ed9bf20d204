// Wires the Kubernetes bootstrap into a build: build-time PKI kept in out/<cluster>/pki, one sysext
// per arch (on ROOT for disk nodes, in the PXE tree for netbooted ones), and each node's kubeadm
// content added to its provisioning spec.
import { join } from 'node:path';
import { ensurePki, type Pki } from '../overlays/kubernetes/pki.ts';
import { controlPlaneEndpoint } from '../overlays/kubernetes/kubeadm.ts';
import { addKubernetes, checkNodeKubernetes } from '../overlays/kubernetes/node-content.ts';
import { buildKubernetesSysext, sysextFileName, sysextPathOnNode } from '../overlays/kubernetes/sysext.ts';
import type { ProvisioningSpec } from '../overlays/provision.ts';
import { pxeHttpBase } from './assemble-pxe.ts';
import { BrambleError } from './errors.ts';
import type { FetchedInput } from './fetch.ts';
import { layout } from './layout.ts';
import type { Arch, ClusterSpec, NodeSpec } from './spec.ts';

export type KubernetesApplicability = { ok: true } | { ok: false; reason: string };

/**
 * Whether this build can carry the Kubernetes bootstrap. It needs Flatcar, a known API address
 * (a VIP or a static ip on the first control-plane node) and, for netbooted nodes, an HTTP address
 * to download the sysext from. Otherwise the images are built without it and the build says why.
 */
export function kubernetesApplies(spec: ClusterSpec, nodes: readonly NodeSpec[]): KubernetesApplicability {
  try {
    if (spec.os.base !== 'flatcar') return { ok: false, reason: `bramble bundles Kubernetes for Flatcar only, not for os.base = "${spec.os.base}"` };
    controlPlaneEndpoint(spec);
    for (const n of nodes) checkNodeKubernetes(spec, n);
    if (nodes.some((n) => n.boot === 'pxe') && !pxeHttpBase(spec)) {
      return { ok: false, reason: 'netbooted nodes download the Kubernetes sysext from the first control-plane node, which has no static ip' };
    }
    return { ok: true };
  } catch (e) {
    if (e instanceof BrambleError) return { ok: false, reason: e.message };
    throw e;
  }
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
}

function need(inputs: Map<string, FetchedInput>, id: string): string {
  const i = inputs.get(id);
  if (!i) throw new Error(`kubernetes: input ${id} was not fetched`);
  return i.path;
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
      binaries: {
        kubelet: need(o.inputs, `kubernetes-kubelet-${arch}`),
        kubeadm: need(o.inputs, `kubernetes-kubeadm-${arch}`),
        kubectl: need(o.inputs, `kubernetes-kubectl-${arch}`),
        crictlTgz: need(o.inputs, `crictl-${arch}`),
        cniTgz: need(o.inputs, `cni-plugins-${arch}`),
      },
      out: join(o.workDir, fileName),
      epoch: o.epoch,
      signal: o.signal,
    });
    sysexts.set(arch, { arch, path: built.path, fileName, sha512: built.sha512 });
  }
  return { pki, sysexts };
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
