// Kubernetes node binaries as a catalogue (kubernetes-and-registry.md §1): kubelet/kubeadm/kubectl from
// the dl.k8s.io tree with bare-hex `.sha256` files, crictl and the CNI plugins from GitHub releases.
import type { Arch, Sources } from '../../builders/spec.ts';
import { bareVersion, joinUrl, type InputSource } from './input.ts';

/** Default crictl release (cri-tools publishes one per Kubernetes minor). */
export const CRICTL_VERSION = '1.33.0';
/**
 * crictl for 32-bit arm nodes: cri-tools stopped building linux/arm with v1.29
 * (kubernetes-sigs/cri-tools#1308), and arm nodes run Kubernetes v1.26 at the latest, so its minor's release.
 */
export const ARM_CRICTL_VERSION = '1.26.1';

/** The crictl release nodes of `arch` get. */
export function crictlVersionFor(arch: Arch): string {
  return arch === 'arm' ? ARM_CRICTL_VERSION : CRICTL_VERSION;
}
/** Default containernetworking/plugins release. */
export const CNI_PLUGINS_VERSION = '1.7.1';

export const kubernetesBinaries = ['kubelet', 'kubeadm', 'kubectl'] as const;
export type KubernetesBinary = (typeof kubernetesBinaries)[number];

/** `{sources.kubernetes}/v{ver}/bin/linux/{arch}/{name}`, checked with its bare-hex `.sha256`. */
export function kubernetesBinaryInput(sources: Pick<Sources, 'kubernetes'>, version: string, arch: Arch, name: KubernetesBinary): InputSource {
  const v = bareVersion(version);
  const url = joinUrl(sources.kubernetes, `v${v}`, 'bin', 'linux', arch, name);
  return { id: `kubernetes-${name}-${arch}`, url, version: v, check: { kind: 'checksum-file', url: `${url}.sha256`, algorithm: 'sha256' } };
}

/** `{github}/kubernetes-sigs/cri-tools/releases/download/v{ver}/crictl-v{ver}-linux-{arch}.tar.gz` (+ `.sha256`, bare hex). */
export function crictlInput(sources: Pick<Sources, 'github'>, arch: Arch, version = crictlVersionFor(arch)): InputSource {
  const v = bareVersion(version);
  const url = joinUrl(sources.github, 'kubernetes-sigs', 'cri-tools', 'releases', 'download', `v${v}`, `crictl-v${v}-linux-${arch}.tar.gz`);
  return { id: `crictl-${arch}`, url, version: v, check: { kind: 'checksum-file', url: `${url}.sha256`, algorithm: 'sha256' } };
}

/** `{github}/containernetworking/plugins/releases/download/v{ver}/cni-plugins-linux-{arch}-v{ver}.tgz` (+ `.sha256`, sha256sum line). */
export function cniPluginsInput(sources: Pick<Sources, 'github'>, arch: Arch, version = CNI_PLUGINS_VERSION): InputSource {
  const v = bareVersion(version);
  const url = joinUrl(sources.github, 'containernetworking', 'plugins', 'releases', 'download', `v${v}`, `cni-plugins-linux-${arch}-v${v}.tgz`);
  return { id: `cni-plugins-${arch}`, url, version: v, check: { kind: 'checksum-file', url: `${url}.sha256`, algorithm: 'sha256' } };
}

/** Everything a node of `arch` needs to run Kubernetes `version`. */
export function kubernetesInputs(
  sources: Pick<Sources, 'kubernetes' | 'github'>,
  version: string,
  arch: Arch,
  opts: { crictl?: string; cniPlugins?: string } = {},
): InputSource[] {
  return [
    ...kubernetesBinaries.map((name) => kubernetesBinaryInput(sources, version, arch, name)),
    crictlInput(sources, arch, opts.crictl),
    cniPluginsInput(sources, arch, opts.cniPlugins),
  ];
}
