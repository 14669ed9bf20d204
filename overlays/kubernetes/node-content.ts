// What a Flatcar node needs on first boot to become a Kubernetes node with no controller around:
// its kubeadm config, the shared CAs (control planes only), the sysext with its link, containerd
// told kubeadm's sandbox image, and a kubeadm.service that runs init or join exactly once. The
// first control-plane node also applies the CNI manifest; with a VIP, control planes run kube-vip.
import { InputError } from '../../builders/errors.ts';
import type { ClusterSpec, NodeSpec } from '../../builders/spec.ts';
import { kubernetesPublishesArch, lastArmKubernetesVersion } from '../../builders/versions.ts';
import { addDirectory, addFile, addLink, addUnit, cloneSpec, FLATCAR_USER, type ProvisioningSpec } from '../provision.ts';
import { renderFlannelManifest } from './flannel.ts';
import { cniImages, kubeadmImages, kubeVipImage, normaliseKubernetesVersion } from './images.ts';
import { renderKubeVipManifest } from './kube-vip.ts';
import { bootstrapRole, KUBEADM_CONFIG_PATH, renderKubeadmConfig, type BootstrapRole } from './kubeadm.ts';
import { CONTROL_PLANE_PKI_FILES, isPrivateKeyFile, type Pki } from './pki.ts';
import { SYSEXT_LINK_ON_NODE, sysextPathOnNode } from './sysext.ts';

export const KUBERNETES_DIR = '/etc/kubernetes';
export const PKI_DIR_ON_NODE = '/etc/kubernetes/pki';
/** Written by the kubelet's TLS bootstrap: its presence means init/join already happened (§7). */
export const KUBELET_KUBECONFIG = '/etc/kubernetes/kubelet.conf';
export const ADMIN_KUBECONFIG = '/etc/kubernetes/admin.conf';
/** Static pods kubeadm's kubelet runs. */
export const STATIC_POD_DIR = '/etc/kubernetes/manifests';
/** Add-on manifests applied with kubectl (not static pods, so not in STATIC_POD_DIR). */
export const ADDON_DIR = '/etc/kubernetes/manifests-addons';
export const FLANNEL_MANIFEST_PATH = `${ADDON_DIR}/kube-flannel.yml`;
export const KUBEADM_UNIT = 'kubeadm.service';
export const ADDONS_UNIT = 'kubernetes-addons.service';
export const ADDONS_STAMP = '/var/lib/bramble/kubernetes-addons.applied';
/** Flatcar's containerd reads $CONTAINERD_CONFIG (kubernetes-and-registry.md §6.3). */
export const CONTAINERD_CONFIG_PATH = '/etc/containerd/config.toml';
export const CONTAINERD_CERTS_DIR = '/etc/containerd/certs.d';
export const CONTAINERD_DROP_IN = '10-bramble-config.conf';
/** kubeadm's preflight requires IPv4 forwarding; flannel's bridge traffic must pass iptables. */
export const SYSCTL_PATH = '/etc/sysctl.d/80-kubernetes.conf';
export const MODULES_LOAD_PATH = '/etc/modules-load.d/kubernetes.conf';

const SECRET_MODE = 0o600;
const PUBLIC_MODE = 0o644;
const PRIVATE_DIR_MODE = 0o700;

/** Where the node gets the sysext image from. */
export type SysextSource =
  /** Disk nodes: the image builder wrote it to ROOT at sysextPathOnNode(); only the link is provisioned. */
  | { kind: 'root' }
  /** PXE nodes: Ignition downloads it from the PXE tree's HTTP URL and checks its sha512. */
  | { kind: 'http'; url: string; sha512: string };

export interface KubernetesNodeContext {
  spec: ClusterSpec;
  node: NodeSpec;
  pki: Pki;
  sysext: SysextSource;
  /** `host[:port]` of the bundled registry mirror when it is enabled; images are then pulled from it. */
  mirrorHost?: string;
}

/**
 * Checks, at plan time, that upstream publishes kubelet and kubeadm for every node's arch: HypriotOS
 * nodes are 32-bit arm, for which Kubernetes built them up to v1.26 only. Names the nodes and the fix.
 */
export function checkKubernetesBinariesPublished(spec: ClusterSpec, nodes: readonly NodeSpec[]): void {
  const { text, parsed } = normaliseKubernetesVersion(spec.kubernetes.version);
  const unserved = nodes.filter((n) => !kubernetesPublishesArch(parsed, n.arch));
  if (unserved.length === 0) return;
  const arch = unserved[0]!.arch;
  const names = unserved.filter((n) => n.arch === arch).map((n) => `"${n.name}"`);
  throw new InputError(`${names.length === 1 ? 'node' : 'nodes'} ${names.join(', ')}: Kubernetes ${text} publishes no linux/${arch} kubelet or kubeadm (32-bit arm builds ended with v1.26)`, {
    hint:
      spec.os.base === 'hypriot'
        ? `set [kubernetes] version = "${lastArmKubernetesVersion}", the last release built for arm (HypriotOS nodes get its binaries under /opt/bin), or use os.base = "flatcar" with hardware = "rpi4" (arm64)`
        : 'use arm64 or amd64 hardware',
  });
}

/**
 * Checks that the node can run Kubernetes as bramble bootstraps it: binaries published for its
 * arch, and Flatcar (HypriotOS nodes get the binaries but no bootstrap, see kubernetesApplies).
 */
export function checkNodeKubernetes(spec: ClusterSpec, node: NodeSpec): void {
  checkKubernetesBinariesPublished(spec, [node]);
  if (spec.os.base !== 'flatcar') {
    throw new InputError(`node "${node.name}": bramble bundles Kubernetes for Flatcar nodes only, not for os.base = "${spec.os.base}"`, {
      hint: 'use os.base = "flatcar"',
    });
  }
}

/** The containerd config: Flatcar's defaults (§6.3) plus kubeadm's sandbox image and the registry hosts dir. */
export function containerdConfig(sandboxImage: string): string {
  return [
    "# Written by bramble: Flatcar's containerd defaults plus the sandbox image kubeadm expects",
    '# (kubernetes-and-registry.md §2.3) and the registry hosts directory (§6.1).',
    'version = 2',
    '',
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  enable_selinux = true',
    `  sandbox_image = ${JSON.stringify(sandboxImage)}`,
    '',
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
    '  runtime_type = "io.containerd.runc.v2"',
    '',
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
    '  SystemdCgroup = true',
    '',
    '[plugins."io.containerd.grpc.v1.cri".registry]',
    `  config_path = ${JSON.stringify(CONTAINERD_CERTS_DIR)}`,
    '',
  ].join('\n');
}

export const CONTAINERD_CONFIG_DROP_IN = `# Written by bramble: use ${CONTAINERD_CONFIG_PATH} instead of Flatcar's read-only default.
[Service]
Environment=CONTAINERD_CONFIG=${CONTAINERD_CONFIG_PATH}
`;

/** The once-only bootstrap unit for a node's role. */
export function kubeadmUnit(role: BootstrapRole, opts: { kubeVipAfterJoin: boolean }): string {
  const verb = role === 'init' ? 'init' : 'join';
  const lines = [
    `# Written by bramble: kubeadm ${verb} on first boot, retried until it succeeds, never again after.`,
    '[Unit]',
    `Description=kubeadm ${verb} (bramble, ${role})`,
    'Wants=network-online.target containerd.service',
    // kubeadm, kubelet and kubectl come from the Kubernetes sysext.
    'After=network-online.target containerd.service systemd-sysext.service',
    `ConditionPathExists=!${KUBELET_KUBECONFIG}`,
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    'Type=oneshot',
    'RemainAfterExit=yes',
    // Workers may boot before the control plane answers; a failed join is tried again.
    'Restart=on-failure',
    'RestartSec=30',
  ];
  // A worker's failed join can leave files behind (ca.crt, bootstrap-kubelet.conf) that fail the
  // next attempt's preflight; reset first. Never on control planes: reset removes the shared CAs.
  if (role === 'join-worker') lines.push('ExecStartPre=-/usr/bin/kubeadm reset --force');
  lines.push(`ExecStart=/usr/bin/kubeadm ${verb} --config ${KUBEADM_CONFIG_PATH}`);
  if (role === 'init') {
    lines.push(`ExecStartPost=/usr/bin/install -D --owner=${FLATCAR_USER} --group=${FLATCAR_USER} --mode=0600 ${ADMIN_KUBECONFIG} /home/${FLATCAR_USER}/.kube/config`);
  }
  // kubeadm join's preflight wants an empty static-pod dir, so kube-vip moves in after the join.
  if (opts.kubeVipAfterJoin) lines.push(`ExecStartPost=/usr/bin/cp ${ADDON_DIR}/kube-vip.yaml ${STATIC_POD_DIR}/kube-vip.yaml`);
  lines.push('', '[Install]', 'WantedBy=multi-user.target', '');
  return lines.join('\n');
}

/**
 * Applies the add-on manifests once the first control plane is up. A unit of its own, retried
 * until kubectl succeeds: if it were a step of kubeadm.service, a failed apply would be lost,
 * because the retried kubeadm.service is skipped once kubelet.conf exists.
 */
export function addonsUnit(manifests: string[]): string {
  return [
    '# Written by bramble: apply the cluster add-ons (CNI) once, after kubeadm init.',
    '[Unit]',
    'Description=Apply Kubernetes add-ons (bramble)',
    `After=${KUBEADM_UNIT}`,
    `ConditionPathExists=!${ADDONS_STAMP}`,
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    'Type=oneshot',
    'RemainAfterExit=yes',
    'Restart=on-failure',
    'RestartSec=15',
    ...manifests.map((m) => `ExecStart=/usr/bin/kubectl --kubeconfig ${ADMIN_KUBECONFIG} apply --filename ${m}`),
    `ExecStartPost=/usr/bin/install -D --mode=0644 /dev/null ${ADDONS_STAMP}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** Adds a drop-in to a unit entry, creating the entry when no earlier stage added one. */
function addDropin(p: ProvisioningSpec, unit: string, name: string, contents: string): void {
  const existing = p.units.find((u) => u.name === unit);
  if (!existing) return addUnit(p, { name: unit, dropins: [{ name, contents }] });
  if ((existing.dropins ?? []).some((d) => d.name === name)) throw new Error(`provisioning: ${unit} already has drop-in ${name}`);
  existing.dropins = [...(existing.dropins ?? []), { name, contents }];
}

/** A copy of `prov` with the node's Kubernetes first-boot content added. */
export function addKubernetes(prov: ProvisioningSpec, ctx: KubernetesNodeContext): ProvisioningSpec {
  const { spec, node, pki } = ctx;
  checkNodeKubernetes(spec, node);
  const p = cloneSpec(prov);
  const role = bootstrapRole(spec, node);
  const mirror = ctx.mirrorHost;
  const images = kubeadmImages(spec.kubernetes.version, { mirror });
  const controlPlane = node.role === 'control-plane';

  addFile(p, { path: KUBEADM_CONFIG_PATH, mode: SECRET_MODE, contents: renderKubeadmConfig({ spec, node, pki, images }), overwrite: true });

  // Workers get nothing of the PKI: kubeadm join refuses to run when ca.crt exists (§6.1).
  if (controlPlane) {
    addDirectory(p, { path: PKI_DIR_ON_NODE, mode: PRIVATE_DIR_MODE });
    addDirectory(p, { path: `${PKI_DIR_ON_NODE}/etcd`, mode: PRIVATE_DIR_MODE });
    for (const rel of CONTROL_PLANE_PKI_FILES) {
      addFile(p, { path: `${PKI_DIR_ON_NODE}/${rel}`, mode: isPrivateKeyFile(rel) ? SECRET_MODE : PUBLIC_MODE, contents: pki.files[rel], overwrite: true });
    }
  }

  const sysextPath = sysextPathOnNode(images.version, node.arch);
  if (ctx.sysext.kind === 'http') {
    addFile(p, { path: sysextPath, mode: PUBLIC_MODE, contents: { source: ctx.sysext.url, verification: { hash: `sha512-${ctx.sysext.sha512}` } }, overwrite: true });
  }
  addLink(p, { path: SYSEXT_LINK_ON_NODE, target: sysextPath, overwrite: true });

  addFile(p, { path: CONTAINERD_CONFIG_PATH, mode: PUBLIC_MODE, contents: containerdConfig(images.pause), overwrite: true });
  addDropin(p, 'containerd.service', CONTAINERD_DROP_IN, CONTAINERD_CONFIG_DROP_IN);
  addFile(p, { path: SYSCTL_PATH, mode: PUBLIC_MODE, contents: 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n', overwrite: true });
  addFile(p, { path: MODULES_LOAD_PATH, mode: PUBLIC_MODE, contents: 'br_netfilter\n', overwrite: true });

  const vip = spec.network.vip;
  if (vip && controlPlane) {
    const manifest = renderKubeVipManifest({ vip, image: kubeVipImage({ mirror }).ref, initNode: role === 'init' });
    // The init node needs kube-vip before `kubeadm init` (its kubeconfigs point at the VIP, §8).
    const path = role === 'init' ? `${STATIC_POD_DIR}/kube-vip.yaml` : `${ADDON_DIR}/kube-vip.yaml`;
    addFile(p, { path, mode: SECRET_MODE, contents: manifest, overwrite: true });
  }

  addUnit(p, { name: KUBEADM_UNIT, enabled: true, contents: kubeadmUnit(role, { kubeVipAfterJoin: Boolean(vip) && role === 'join-control-plane' }) });

  if (role === 'init') {
    const cni = cniImages(spec.kubernetes.cni, { mirror });
    if (spec.kubernetes.cni === 'flannel') {
      addFile(p, { path: FLANNEL_MANIFEST_PATH, mode: PUBLIC_MODE, contents: renderFlannelManifest({ podCidr: spec.network.podCidr, images: cni }), overwrite: true });
      addUnit(p, { name: ADDONS_UNIT, enabled: true, contents: addonsUnit([FLANNEL_MANIFEST_PATH]) });
    }
  }
  return p;
}
