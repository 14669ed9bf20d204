// Version defaults and the version facts the plan needs. Sources are named beside each table; see
// ../shared/reference (base-images.md §1, §11, §12; kubernetes-and-registry.md §1.2, §2.2).
import { HYPRIOT_LATEST } from '../images/catalog/hypriot.ts';
import type { Arch, FlatcarChannel, OsBase } from './spec.ts';

export const flatcarChannels: readonly FlatcarChannel[] = ['stable', 'beta', 'alpha', 'lts'];
export const defaultFlatcarChannel: FlatcarChannel = 'stable';
/** "current" follows the channel's version.txt at fetch time; the lock file pins what it resolved to. */
export const currentVersion = 'current';

/** HypriotOS is inactive; v1.12.3 (2020-07-02) is its last release (base-images.md §12). */
export const defaultHypriotVersion = HYPRIOT_LATEST;

/** What an absent `[os] version` means for each base. */
export function defaultOsVersion(base: OsBase): string {
  return base === 'hypriot' ? defaultHypriotVersion : currentVersion;
}

/** A recent patch whose kubeadm image tags are known (kubernetes-and-registry.md §2.2). */
export const defaultKubernetesVersion = 'v1.33.4';

/**
 * The last Kubernetes release with linux/arm (32-bit) kubelet and kubeadm: v1.26's final patch
 * (kubernetes/kubernetes#115742 stopped those builds with v1.27; only kubectl is still built for arm).
 */
export const lastArmKubernetesVersion = 'v1.26.15';

/** What an absent `[kubernetes] version` means: HypriotOS is 32-bit arm, so it gets the last release built for it. */
export function defaultKubernetesVersionFor(base: OsBase): string {
  return base === 'hypriot' ? lastArmKubernetesVersion : defaultKubernetesVersion;
}

/** pftf/RPi4 UEFI firmware release put on rpi4 ESPs (base-images.md §11: latest tag v1.50). */
export const rpi4FirmwareVersion = '1.50';

/** iPXE binaries the PXE tree serves per client arch (pxe-and-bootstrap.md §4.2). */
export function ipxeBinaries(arch: Arch): string[] {
  if (arch === 'amd64') return ['undionly.kpxe', 'ipxe.efi', 'snponly.efi'];
  if (arch === 'arm64') return ['arm64-efi/snponly.efi'];
  return [];
}

export interface KubernetesVersion {
  major: number;
  minor: number;
  patch: number;
}

const versionPattern = /^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$/;

export function parseKubernetesVersion(v: string): KubernetesVersion | undefined {
  const m = versionPattern.exec(v);
  return m ? { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) } : undefined;
}

/**
 * Kubernetes stopped publishing linux/arm (32-bit) kubelet and kubeadm with v1.27 (kubernetes/kubernetes#115742),
 * and cri-tools stopped with v1.29 (kubernetes-sigs/cri-tools#1308); HypriotOS nodes are 32-bit, so they only
 * get Kubernetes binaries up to v1.26.
 */
export function kubernetesPublishesArch(k: KubernetesVersion, arch: Arch): boolean {
  return arch !== 'arm' || (k.major === 1 && k.minor < 27);
}

interface KubeadmTags {
  minor: number;
  fromPatch: number;
  toPatch: number;
  coredns: string;
  etcd: string;
  pause: string;
}

/**
 * Image tags `kubeadm config images list` prints per patch release, from kubernetes/minikube
 * pkg/minikube/constants/constants_kubeadm_images.go (kubernetes-and-registry.md §2.2).
 */
const kubeadmTags: readonly KubeadmTags[] = [
  { minor: 31, fromPatch: 0, toPatch: 0, coredns: 'v1.11.1', etcd: '3.5.15-0', pause: '3.10' },
  { minor: 31, fromPatch: 1, toPatch: 13, coredns: 'v1.11.3', etcd: '3.5.15-0', pause: '3.10' },
  { minor: 31, fromPatch: 14, toPatch: 14, coredns: 'v1.11.3', etcd: '3.5.24-0', pause: '3.10' },
  { minor: 32, fromPatch: 0, toPatch: 9, coredns: 'v1.11.3', etcd: '3.5.16-0', pause: '3.10' },
  { minor: 32, fromPatch: 10, toPatch: 13, coredns: 'v1.11.3', etcd: '3.5.24-0', pause: '3.10' },
  { minor: 33, fromPatch: 0, toPatch: 5, coredns: 'v1.12.0', etcd: '3.5.21-0', pause: '3.10' },
  { minor: 33, fromPatch: 6, toPatch: 13, coredns: 'v1.12.0', etcd: '3.5.24-0', pause: '3.10' },
  { minor: 34, fromPatch: 0, toPatch: 1, coredns: 'v1.12.1', etcd: '3.6.4-0', pause: '3.10.1' },
  { minor: 34, fromPatch: 2, toPatch: 10, coredns: 'v1.12.1', etcd: '3.6.5-0', pause: '3.10.1' },
  { minor: 35, fromPatch: 0, toPatch: 7, coredns: 'v1.13.1', etcd: '3.6.6-0', pause: '3.10.1' },
  { minor: 36, fromPatch: 0, toPatch: 3, coredns: 'v1.14.2', etcd: '3.6.8-0', pause: '3.10.2' },
];

/** The default kubeadm image repository (kubeadm v1beta4 defaults.go). */
export const kubeadmImageRepository = 'registry.k8s.io';

/**
 * The images kubeadm pulls for a version, in kubeadm's order (images.go GetControlPlaneImages), or
 * undefined when the version is outside the known table.
 */
export function kubeadmImages(k: KubernetesVersion): string[] | undefined {
  if (k.major !== 1) return undefined;
  const row = kubeadmTags.find((t) => t.minor === k.minor && k.patch >= t.fromPatch && k.patch <= t.toPatch);
  if (!row) return undefined;
  const v = `v${k.major}.${k.minor}.${k.patch}`;
  const r = kubeadmImageRepository;
  return [
    `${r}/kube-apiserver:${v}`,
    `${r}/kube-controller-manager:${v}`,
    `${r}/kube-scheduler:${v}`,
    `${r}/kube-proxy:${v}`,
    `${r}/coredns/coredns:${row.coredns}`,
    `${r}/pause:${row.pause}`,
    `${r}/etcd:${row.etcd}`,
  ];
}

/** Human description of the releases with known image tags, for hints. */
export function knownKubernetesRange(): string {
  const first = kubeadmTags[0]!;
  const last = kubeadmTags[kubeadmTags.length - 1]!;
  return `v1.${first.minor}.${first.fromPatch} to v1.${last.minor}.${last.toPatch}`;
}
