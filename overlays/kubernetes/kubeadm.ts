// kubeadm configs for each node's bootstrap role, in the v1beta4 config API
// (pxe-and-bootstrap.md §6.4): InitConfiguration + ClusterConfiguration on the first control-plane
// node, JoinConfiguration (with or without `controlPlane`) on every other node. The token and the
// CA pin come from the build-time PKI, so no node ever waits for a join command.
import ipaddr from 'ipaddr.js';
import { stringify } from 'yaml';
import { InputError } from '../../builders/errors.ts';
import type { ClusterSpec, NodeSpec } from '../../builders/spec.ts';
import type { KubeadmImageSet } from './images.ts';
import type { Pki } from './pki.ts';
import { BOOTSTRAP_TOKEN_GROUP, BOOTSTRAP_TOKEN_TTL, BOOTSTRAP_TOKEN_USAGES } from './token.ts';

export const KUBEADM_API_VERSION = 'kubeadm.k8s.io/v1beta4';
/** kube-apiserver's secure port, kubeadm's default `bindPort` (§6.4). */
export const API_SERVER_PORT = 6443;
/** containerd's CRI socket (containerd's default `grpc.address` /run/containerd/containerd.sock). */
export const CONTAINERD_CRI_SOCKET = 'unix:///run/containerd/containerd.sock';
/** Where each node finds its kubeadm config (written by Ignition / cloud-init). */
export const KUBEADM_CONFIG_PATH = '/etc/kubernetes/kubeadm.yaml';

export type BootstrapRole = 'init' | 'join-control-plane' | 'join-worker';

/** The node that runs `kubeadm init`: the first control-plane node in cluster.toml order. */
export function firstControlPlane(spec: ClusterSpec): NodeSpec {
  const cp = spec.nodes.find((n) => n.role === 'control-plane');
  if (!cp) throw new InputError(`cluster "${spec.name}" has no control-plane node`, { hint: 'give one [[nodes]] entry role = "control-plane"' });
  return cp;
}

export function bootstrapRole(spec: ClusterSpec, node: NodeSpec): BootstrapRole {
  if (node.role === 'worker') return 'join-worker';
  return firstControlPlane(spec).name === node.name ? 'init' : 'join-control-plane';
}

export interface ControlPlaneEndpoint {
  host: string;
  port: number;
  /** `host:port`, IPv6 hosts in brackets. */
  address: string;
}

/**
 * Where every node reaches the API: the VIP when network.api_vip is set, else the first control-plane
 * node's static IP. Without either no node could know it at build time.
 */
export function controlPlaneEndpoint(spec: ClusterSpec): ControlPlaneEndpoint {
  const first = firstControlPlane(spec);
  const host = spec.network.vip ?? first.ip;
  if (!host) {
    const hint = spec.network.nodeCidr
      ? `set [network] api_vip to a free address of ${spec.network.nodeCidr}, or give node "${first.name}" an ip`
      : `set [network] node_cidr to the nodes' subnet (with gateway and dns): every node then gets a static address and "${first.name}"'s becomes the API endpoint; add api_vip for a virtual IP`;
    throw new InputError(`cluster "${spec.name}": the Kubernetes API endpoint is unknown: network.api_vip is not set and control-plane node "${first.name}" has no static ip`, { hint });
  }
  const address = ipaddr.isValid(host) && ipaddr.parse(host).kind() === 'ipv6' ? `[${host}]:${API_SERVER_PORT}` : `${host}:${API_SERVER_PORT}`;
  return { host, port: API_SERVER_PORT, address };
}

export interface KubeadmConfigInput {
  spec: ClusterSpec;
  node: NodeSpec;
  pki: Pick<Pki, 'token' | 'caCertHash'>;
  images: KubeadmImageSet;
}

type Obj = Record<string, unknown>;

function nodeRegistration(spec: ClusterSpec, node: NodeSpec): Obj {
  const reg: Obj = { name: node.name, criSocket: CONTAINERD_CRI_SOCKET, imagePullPolicy: 'IfNotPresent' };
  // v1beta4: extra args are a list of {name, value} (§6.4).
  if (node.ip) reg.kubeletExtraArgs = [{ name: 'node-ip', value: node.ip }];
  // A cluster without workers must be able to run workloads on its control planes.
  if (node.role === 'control-plane' && !spec.nodes.some((n) => n.role === 'worker')) reg.taints = [];
  return reg;
}

function localApiEndpoint(node: NodeSpec): Obj {
  return node.ip ? { advertiseAddress: node.ip, bindPort: API_SERVER_PORT } : { bindPort: API_SERVER_PORT };
}

export function initConfiguration(input: KubeadmConfigInput): Obj {
  const { spec, node, pki } = input;
  return {
    apiVersion: KUBEADM_API_VERSION,
    kind: 'InitConfiguration',
    bootstrapTokens: [
      {
        token: pki.token.token,
        description: `bramble: join token of cluster ${spec.name}, generated at build time`,
        ttl: BOOTSTRAP_TOKEN_TTL,
        usages: [...BOOTSTRAP_TOKEN_USAGES],
        groups: [BOOTSTRAP_TOKEN_GROUP],
      },
    ],
    nodeRegistration: nodeRegistration(spec, node),
    localAPIEndpoint: localApiEndpoint(node),
  };
}

export function clusterConfiguration(input: KubeadmConfigInput): Obj {
  const { spec, images } = input;
  const endpoint = controlPlaneEndpoint(spec);
  const controlPlaneIps = spec.nodes.filter((n) => n.role === 'control-plane' && n.ip).map((n) => n.ip!);
  const certSANs = [...new Set([endpoint.host, ...controlPlaneIps])];
  return {
    apiVersion: KUBEADM_API_VERSION,
    kind: 'ClusterConfiguration',
    clusterName: spec.name,
    // Always explicit: without it an offline kubeadm tries dl.k8s.io first (§2.1).
    kubernetesVersion: images.version,
    controlPlaneEndpoint: endpoint.address,
    imageRepository: images.imageRepository,
    ...(images.dnsImageRepository ? { dns: { imageRepository: images.dnsImageRepository } } : {}),
    networking: { podSubnet: spec.network.podCidr, serviceSubnet: spec.network.serviceCidr },
    apiServer: { certSANs },
  };
}

export function joinConfiguration(input: KubeadmConfigInput): Obj {
  const { spec, node, pki } = input;
  const config: Obj = {
    apiVersion: KUBEADM_API_VERSION,
    kind: 'JoinConfiguration',
    nodeRegistration: nodeRegistration(spec, node),
    discovery: {
      bootstrapToken: {
        apiServerEndpoint: controlPlaneEndpoint(spec).address,
        token: pki.token.token,
        caCertHashes: [pki.caCertHash],
      },
    },
  };
  // Joining control planes find the shared CAs in /etc/kubernetes/pki, so no certificateKey (§6.1).
  if (node.role === 'control-plane') config.controlPlane = { localAPIEndpoint: localApiEndpoint(node) };
  return config;
}

/** The kubeadm YAML (one or two documents) for `input.node`, as written to KUBEADM_CONFIG_PATH. */
export function renderKubeadmConfig(input: KubeadmConfigInput): string {
  const role = bootstrapRole(input.spec, input.node);
  const docs = role === 'init' ? [initConfiguration(input), clusterConfiguration(input)] : [joinConfiguration(input)];
  const header = `# Written by bramble for node ${input.node.name} (${role}); used once by kubeadm.service.\n`;
  return header + docs.map((d) => stringify(d, { lineWidth: 0 })).join('---\n');
}
