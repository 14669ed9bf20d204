// The flannel CNI manifest, applied by the first control-plane node after `kubeadm init`
// (pxe-and-bootstrap.md §9: flannel v0.28.9, namespace kube-flannel, vxlan backend, standard
// plugins in /opt/cni/bin). Built as objects and serialised with `yaml`, so the pod CIDR and the
// image references are values, never text spliced into YAML.
import ipaddr from 'ipaddr.js';
import { stringify } from 'yaml';
import { InputError } from '../../builders/errors.ts';
import type { ClusterImage } from './images.ts';
import { CNI_BIN_DIR } from './sysext.ts';

export const FLANNEL_NAMESPACE = 'kube-flannel';
/** Where containerd reads CNI network configs (its default conf_dir). */
const CNI_CONF_DIR = '/etc/cni/net.d';
/** flannel's default VXLAN backend (kube-flannel.yml net-conf.json). */
const FLANNEL_BACKEND = 'vxlan';

export interface FlannelManifestInput {
  /** The cluster's pod CIDR, flannel's `Network`. */
  podCidr: string;
  /** From cniImages('flannel'): refs already point at the mirror when it is enabled. */
  images: ClusterImage[];
}

function imageRef(images: ClusterImage[], name: string): string {
  const i = images.find((x) => x.name === name);
  if (!i) throw new Error(`flannel manifest: no ${name} image in the image list`);
  return i.ref;
}

/** flannel's net-conf.json for an IPv4 pod CIDR. */
export function flannelNetConf(podCidr: string): string {
  const [addr] = podCidr.split('/');
  if (!addr || !ipaddr.isValid(addr) || ipaddr.parse(addr).kind() !== 'ipv4') {
    throw new InputError(`flannel as bundled by bramble needs an IPv4 pod CIDR, got ${podCidr}`, { hint: 'set [network] pod_cidr to an IPv4 range such as 10.244.0.0/16' });
  }
  return `${JSON.stringify({ Network: podCidr, Backend: { Type: FLANNEL_BACKEND } }, null, 2)}\n`;
}

/** The CNI network config flannel installs: flannel delegating to bridge, plus portmap for hostPorts. */
function cniConf(): string {
  const conf = {
    name: 'cbr0',
    cniVersion: '0.3.1',
    plugins: [
      { type: 'flannel', delegate: { hairpinMode: true, isDefaultGateway: true } },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  return `${JSON.stringify(conf, null, 2)}\n`;
}

export function renderFlannelManifest(input: FlannelManifestInput): string {
  const flannel = imageRef(input.images, 'flannel');
  const cniPlugin = imageRef(input.images, 'flannel-cni-plugin');
  const labels = { tier: 'node', app: 'flannel', 'k8s-app': 'flannel' };
  const ns = FLANNEL_NAMESPACE;
  const docs: Record<string, unknown>[] = [
    {
      apiVersion: 'v1',
      kind: 'Namespace',
      // flannel runs privileged host-network pods.
      metadata: { name: ns, labels: { 'k8s-app': 'flannel', 'pod-security.kubernetes.io/enforce': 'privileged' } },
    },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'flannel', namespace: ns, labels: { 'k8s-app': 'flannel' } } },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'flannel', labels: { 'k8s-app': 'flannel' } },
      rules: [
        { apiGroups: [''], resources: ['pods'], verbs: ['get'] },
        { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list', 'watch'] },
        { apiGroups: [''], resources: ['nodes/status'], verbs: ['patch'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'flannel', labels: { 'k8s-app': 'flannel' } },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'flannel' },
      subjects: [{ kind: 'ServiceAccount', name: 'flannel', namespace: ns }],
    },
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'kube-flannel-cfg', namespace: ns, labels },
      data: { 'cni-conf.json': cniConf(), 'net-conf.json': flannelNetConf(input.podCidr) },
    },
    {
      apiVersion: 'apps/v1',
      kind: 'DaemonSet',
      metadata: { name: 'kube-flannel-ds', namespace: ns, labels },
      spec: {
        selector: { matchLabels: { app: 'flannel' } },
        template: {
          metadata: { labels },
          spec: {
            affinity: {
              nodeAffinity: {
                requiredDuringSchedulingIgnoredDuringExecution: {
                  nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/os', operator: 'In', values: ['linux'] }] }],
                },
              },
            },
            hostNetwork: true,
            priorityClassName: 'system-node-critical',
            tolerations: [{ operator: 'Exists', effect: 'NoSchedule' }],
            serviceAccountName: 'flannel',
            initContainers: [
              {
                name: 'install-cni-plugin',
                image: cniPlugin,
                command: ['cp'],
                args: ['-f', '/flannel', `${CNI_BIN_DIR}/flannel`],
                volumeMounts: [{ name: 'cni-plugin', mountPath: CNI_BIN_DIR }],
              },
              {
                name: 'install-cni',
                image: flannel,
                command: ['cp'],
                args: ['-f', '/etc/kube-flannel/cni-conf.json', `${CNI_CONF_DIR}/10-flannel.conflist`],
                volumeMounts: [
                  { name: 'cni', mountPath: CNI_CONF_DIR },
                  { name: 'flannel-cfg', mountPath: '/etc/kube-flannel/' },
                ],
              },
            ],
            containers: [
              {
                name: 'kube-flannel',
                image: flannel,
                command: ['/opt/bin/flanneld'],
                args: ['--ip-masq', '--kube-subnet-mgr'],
                resources: { requests: { cpu: '100m', memory: '50Mi' } },
                securityContext: { privileged: false, capabilities: { add: ['NET_ADMIN', 'NET_RAW'] } },
                env: [
                  { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                  { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
                  { name: 'EVENT_QUEUE_DEPTH', value: '5000' },
                ],
                volumeMounts: [
                  { name: 'run', mountPath: '/run/flannel' },
                  { name: 'flannel-cfg', mountPath: '/etc/kube-flannel/' },
                  { name: 'xtables-lock', mountPath: '/run/xtables.lock' },
                ],
              },
            ],
            volumes: [
              { name: 'run', hostPath: { path: '/run/flannel' } },
              { name: 'cni-plugin', hostPath: { path: CNI_BIN_DIR } },
              { name: 'cni', hostPath: { path: CNI_CONF_DIR } },
              { name: 'flannel-cfg', configMap: { name: 'kube-flannel-cfg' } },
              { name: 'xtables-lock', hostPath: { path: '/run/xtables.lock', type: 'FileOrCreate' } },
            ],
          },
        },
      },
    },
  ];
  return `# Written by bramble: flannel for pod CIDR ${input.podCidr}, applied once after kubeadm init.\n${docs.map((d) => stringify(d, { lineWidth: 0 })).join('---\n')}`;
}
