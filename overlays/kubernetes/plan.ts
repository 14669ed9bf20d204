// What `bramble plan` shows about Kubernetes, and every Kubernetes check that can fail before the
// first byte is fetched: version with a known image list, CNI bramble bundles, a reachable API
// endpoint, binaries published for each node's arch, an IPv4 pod CIDR for flannel.
import type { Cni, ClusterSpec, Role } from '../../builders/spec.ts';
import { flannelNetConf } from './flannel.ts';
import { cniImages, kubeadmImages, kubeVipImage, type ClusterImage } from './images.ts';
import { bootstrapRole, controlPlaneEndpoint, type BootstrapRole } from './kubeadm.ts';
import { checkNodeKubernetes } from './node-content.ts';

export interface KubernetesPlan {
  /** `v1.33.4`. */
  version: string;
  cni: Cni;
  /** controlPlaneEndpoint, `host:6443`. */
  endpoint: string;
  nodes: Array<{ name: string; role: Role; bootstrap: BootstrapRole }>;
  /** kubeadm's images, then the CNI's, then kube-vip when the cluster has a VIP. */
  images: ClusterImage[];
}

/** Throws InputError (exit 2) naming what to change when the cluster cannot be bootstrapped as configured. */
export function planKubernetes(spec: ClusterSpec, opts: { mirrorHost?: string } = {}): KubernetesPlan {
  const mirror = opts.mirrorHost;
  const kubeadm = kubeadmImages(spec.kubernetes.version, { mirror });
  const cni = cniImages(spec.kubernetes.cni, { mirror });
  if (spec.kubernetes.cni === 'flannel') flannelNetConf(spec.network.podCidr);
  const endpoint = controlPlaneEndpoint(spec);
  for (const node of spec.nodes) checkNodeKubernetes(spec, node);
  return {
    version: kubeadm.version,
    cni: spec.kubernetes.cni,
    endpoint: endpoint.address,
    nodes: spec.nodes.map((n) => ({ name: n.name, role: n.role, bootstrap: bootstrapRole(spec, n) })),
    images: [...kubeadm.images, ...cni, ...(spec.network.vip ? [kubeVipImage({ mirror })] : [])],
  };
}
