// kube-vip as a static pod holding the API VIP on the control-plane nodes, in ARP mode with leader
// election (pxe-and-bootstrap.md §8). vip_interface is left out: kube-vip then picks the interface
// of the default route, and bramble does not know the interface names of every board.
import ipaddr from 'ipaddr.js';
import { stringify } from 'yaml';
import { API_SERVER_PORT } from './kubeadm.ts';

/** kube-vip's kubeconfig inside the pod. */
const KUBECONFIG_IN_POD = '/etc/kubernetes/admin.conf';
/**
 * From Kubernetes 1.29, admin.conf is not cluster-admin until `kubeadm init` has bound it, so on
 * the init node kube-vip must use super-admin.conf, which only that node has (§8, kube-vip#684).
 */
export const INIT_NODE_KUBECONFIG = '/etc/kubernetes/super-admin.conf';
export const JOINED_NODE_KUBECONFIG = '/etc/kubernetes/admin.conf';
/** Leader-election timings of `kube-vip manifest pod` (seconds; §8). */
const LEASE_DURATION = '5';
const RENEW_DEADLINE = '3';
const RETRY_PERIOD = '1';

export interface KubeVipInput {
  vip: string;
  /** From kubeVipImage(): points at the mirror when it is enabled. */
  image: string;
  /** True on the node running `kubeadm init`. */
  initNode: boolean;
}

export function renderKubeVipManifest(input: KubeVipInput): string {
  const hostBits = ipaddr.parse(input.vip).kind() === 'ipv6' ? '128' : '32';
  const env: Array<[string, string]> = [
    ['vip_arp', 'true'],
    ['port', String(API_SERVER_PORT)],
    ['vip_subnet', hostBits],
    ['cp_enable', 'true'],
    ['cp_namespace', 'kube-system'],
    ['vip_leaderelection', 'true'],
    ['vip_leaseduration', LEASE_DURATION],
    ['vip_renewdeadline', RENEW_DEADLINE],
    ['vip_retryperiod', RETRY_PERIOD],
    ['address', input.vip],
  ];
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'kube-vip', namespace: 'kube-system' },
    spec: {
      containers: [
        {
          name: 'kube-vip',
          image: input.image,
          imagePullPolicy: 'IfNotPresent',
          args: ['manager'],
          env: env.map(([name, value]) => ({ name, value })),
          securityContext: { capabilities: { add: ['NET_ADMIN', 'NET_RAW'] } },
          volumeMounts: [{ name: 'kubeconfig', mountPath: KUBECONFIG_IN_POD }],
        },
      ],
      hostNetwork: true,
      hostAliases: [{ ip: '127.0.0.1', hostnames: ['kubernetes'] }],
      volumes: [{ name: 'kubeconfig', hostPath: { path: input.initNode ? INIT_NODE_KUBECONFIG : JOINED_NODE_KUBECONFIG } }],
    },
  };
  return `# Written by bramble: kube-vip holding the API VIP ${input.vip}.\n${stringify(pod, { lineWidth: 0 })}`;
}
