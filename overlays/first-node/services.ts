// What the first control-plane node serves to the rest of the cluster, and on which ports every node
// listens: one table that the units, the nftables ruleset and `bramble plan` all read, so a port is
// opened exactly when something listens on it.
//
// The first node (cluster.toml's first control-plane node, a disk node with a static IPv4 address)
// carries the PXE tree and a dnsmasq config on ROOT and runs, from pre-imported images with ctr:
// busybox httpd for the tree over HTTP and dnsmasq for DHCP/proxyDHCP and TFTP. The registry
// mirror beside them is the registry bundle's (overlays/registry/mirror.ts).
import { DEFAULT_PXE_HTTP_PORT } from '../../builders/assemble-pxe.ts';
import type { ClusterSpec, NodeSpec } from '../../builders/spec.ts';
import { API_SERVER_PORT, firstControlPlane } from '../kubernetes/kubeadm.ts';

/** Where the served content lives on the first node's ROOT (and, bind-mounted read-only, in its containers). */
export const SERVED_DIR_ON_NODE = '/var/lib/bramble';
export const PXE_TREE_ON_NODE = `${SERVED_DIR_ON_NODE}/pxe`;
export const DNSMASQ_DIR_ON_NODE = `${SERVED_DIR_ON_NODE}/dnsmasq`;
export const DNSMASQ_CONF_ON_NODE = `${DNSMASQ_DIR_ON_NODE}/dnsmasq.conf`;

/** poseidon/dnsmasq (Alpine dnsmasq, ENTRYPOINT /usr/sbin/dnsmasq; amd64 and arm64 since v0.5.0). */
export const DNSMASQ_IMAGE = 'quay.io/poseidon/dnsmasq:v0.5.0';
/** busybox's httpd is a complete static file server in a 2 MB image. */
export const HTTPD_IMAGE = 'docker.io/library/busybox:1.37';

export const PXE_HTTP_UNIT = 'bramble-pxe-http.service';
export const DNSMASQ_UNIT = 'bramble-dnsmasq.service';
export const FIREWALL_UNIT = 'bramble-firewall.service';
export const PXE_HTTP_CONTAINER = 'bramble-pxe-http';
export const DNSMASQ_CONTAINER = 'bramble-dnsmasq';

/** Well-known ports (IANA), and the defaults of the software that listens on them. */
export const PORTS = {
  ssh: 22,
  /** BOOTP/DHCP server. */
  dhcp: 67,
  tftp: 69,
  /** PXE boot server (proxyDHCP): UEFI clients are redirected here (dnsmasq rfc2131.c). */
  proxyDhcp: 4011,
  apiServer: API_SERVER_PORT,
  /** etcd client and peer ports (kubeadm's local etcd). */
  etcd: [2379, 2380] as [number, number],
  kubelet: 10250,
  /** flannel's VXLAN backend: the Linux kernel's VXLAN port, flannel's default. */
  flannelVxlan: 8472,
} as const;

export type Protocol = 'tcp' | 'udp';

/** One listening service: who needs it, where, and which unit runs it (none for the OS's own). */
export interface ServedPort {
  service: string;
  protocol: Protocol;
  /** A port or an inclusive range. */
  port: number | [number, number];
  /** What it is for, for people (`bramble plan`, comments in the ruleset). */
  purpose: string;
  /** The unit that listens, when bramble runs it. */
  unit?: string;
}

/** The registry mirror's endpoint, as the registry bundle declares it. */
export interface MirrorEndpoint {
  port: number;
  unit: string;
}

/**
 * The node that serves the rest: cluster.toml's first control-plane node, when [first_node] is in
 * effect (load checked that it is a disk node with a static IPv4 address).
 */
export function servingNode(spec: ClusterSpec): NodeSpec | undefined {
  return spec.firstNode ? firstControlPlane(spec) : undefined;
}

export function isServingNode(spec: ClusterSpec, node: NodeSpec): boolean {
  return servingNode(spec)?.name === node.name;
}

/** Container images the first node's own services run (the bundle carries and pre-imports them). */
export function firstNodeImages(spec: ClusterSpec): string[] {
  return spec.firstNode ? [DNSMASQ_IMAGE, HTTPD_IMAGE].sort() : [];
}

/**
 * Every port a node listens on for other machines: SSH, the kubelet and the CNI on every node, the
 * API server and etcd on control-plane nodes, and on the first node the PXE services and the mirror.
 */
export function nodePorts(spec: ClusterSpec, node: NodeSpec, mirror?: MirrorEndpoint): ServedPort[] {
  const out: ServedPort[] = [{ service: 'ssh', protocol: 'tcp', port: PORTS.ssh, purpose: 'SSH (sshd, socket-activated by Flatcar)' }];
  if (node.role === 'control-plane') {
    out.push({ service: 'kube-apiserver', protocol: 'tcp', port: PORTS.apiServer, purpose: 'Kubernetes API' });
    out.push({ service: 'etcd', protocol: 'tcp', port: PORTS.etcd, purpose: 'etcd clients and peers (control plane only)' });
  }
  out.push({ service: 'kubelet', protocol: 'tcp', port: PORTS.kubelet, purpose: 'kubelet API (logs, exec, metrics)' });
  if (spec.kubernetes.cni === 'flannel') out.push({ service: 'flannel', protocol: 'udp', port: PORTS.flannelVxlan, purpose: 'flannel VXLAN between nodes' });
  if (isServingNode(spec, node)) {
    const mode = spec.firstNode!.dhcp;
    out.push({ service: 'pxe-http', protocol: 'tcp', port: DEFAULT_PXE_HTTP_PORT, purpose: 'PXE tree over HTTP (iPXE scripts, kernels, initrds, node configs, sysext)', unit: PXE_HTTP_UNIT });
    out.push({
      service: 'dhcp',
      protocol: 'udp',
      port: PORTS.dhcp,
      purpose: mode === 'full' ? `DHCP with a static lease per node on ${spec.firstNode!.interface}` : 'proxyDHCP beside the existing DHCP server',
      unit: DNSMASQ_UNIT,
    });
    out.push({ service: 'tftp', protocol: 'udp', port: PORTS.tftp, purpose: 'TFTP for the iPXE binaries', unit: DNSMASQ_UNIT });
    if (mode === 'proxy') out.push({ service: 'proxy-dhcp', protocol: 'udp', port: PORTS.proxyDhcp, purpose: 'PXE boot server for UEFI clients (proxyDHCP)', unit: DNSMASQ_UNIT });
    if (mirror) out.push({ service: 'registry', protocol: 'tcp', port: mirror.port, purpose: 'registry mirror, read-only', unit: mirror.unit });
  }
  return out;
}

/** `8080`, or `2379-2380`. */
export function portText(p: ServedPort['port']): string {
  return typeof p === 'number' ? String(p) : `${p[0]}-${p[1]}`;
}
