// Every container image a bramble cluster pulls: kubeadm's list for the exact patch version
// (kubernetes-and-registry.md §2), the CNI's images (pxe-and-bootstrap.md §9) and kube-vip (§8),
// each with the reference nodes pull — the upstream one, or its path in the bundled mirror.
import { InputError } from '../../builders/errors.ts';
import type { Cni } from '../../builders/spec.ts';
import { kubeadmImageRepository, kubeadmImages as kubeadmImageRefs, parseKubernetesVersion, type KubernetesVersion } from '../../builders/versions.ts';

export interface ClusterImage {
  /** Short name: kube-apiserver, coredns, pause, flannel, … */
  name: string;
  /** Where upstream publishes it, e.g. registry.k8s.io/coredns/coredns:v1.12.0. */
  upstream: string;
  /** What nodes pull: `upstream`, or its path in the bundled mirror. */
  ref: string;
}

export interface KubeadmImageSet {
  /** `v1.33.4`. */
  version: string;
  /** In kubeadm's order: apiserver, controller-manager, scheduler, proxy, coredns, pause, etcd. */
  images: ClusterImage[];
  /** ClusterConfiguration.imageRepository that yields these refs. */
  imageRepository: string;
  /** ClusterConfiguration.dns.imageRepository, set only when needed to keep CoreDNS's upstream path. */
  dnsImageRepository?: string;
  /** The pause ref kubeadm expects; containerd's sandbox image must be exactly this (§2.3). */
  pause: string;
}

/** flannel v0.28.9 `Documentation/kube-flannel.yml` (pxe-and-bootstrap.md §9). */
export const FLANNEL_IMAGE = 'ghcr.io/flannel-io/flannel:v0.28.9';
export const FLANNEL_CNI_PLUGIN_IMAGE = 'ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3';
/** kube-vip, newest release in pxe-and-bootstrap.md §8. */
export const KUBE_VIP_IMAGE = 'ghcr.io/kube-vip/kube-vip:v1.2.3';

/** The CNIs whose manifest bramble renders and bundles; `none` leaves networking to the user. */
export const supportedCnis: readonly Cni[] = ['flannel', 'none'];

/**
 * Where an upstream image lives in the bundled mirror: under a path named after its upstream
 * registry (`<mirror>/registry.k8s.io/pause:3.10`), so images of different registries never collide
 * and the repository is the one a per-upstream `hosts.toml` mirror would request
 * (kubernetes-and-registry.md §6.2, design note (a)).
 */
export function mirrorRef(upstream: string, mirror: string | undefined): string {
  return mirror ? `${mirror.replace(/\/+$/, '')}/${upstream}` : upstream;
}

/** Splits `repo:tag` at the tag's colon (a registry port's colon comes before the last slash). */
export function splitRef(ref: string): { repository: string; tag: string } {
  const at = ref.lastIndexOf(':');
  if (at < 0 || at < ref.lastIndexOf('/')) throw new Error(`image reference without a tag: ${ref}`);
  return { repository: ref.slice(0, at), tag: ref.slice(at + 1) };
}

/**
 * kubeadm's CoreDNS rule (images.go, §2.1): the repository is dns.imageRepository if set, else
 * imageRepository; `/coredns` is appended only when that is the default registry.k8s.io.
 */
export function kubeadmCoreDnsImage(imageRepository: string, dnsImageRepository: string | undefined, tag: string): string {
  const repo = dnsImageRepository || imageRepository;
  return repo === kubeadmImageRepository ? `${repo}/coredns/coredns:${tag}` : `${repo}/coredns:${tag}`;
}

/** `v1.33.4` for `1.33.4` or `v1.33.4`; an InputError for anything else. */
export function normaliseKubernetesVersion(version: string): { text: string; parsed: KubernetesVersion } {
  const parsed = parseKubernetesVersion(version);
  if (!parsed) {
    throw new InputError(`Kubernetes version "${version}" is not an exact release version`, { hint: 'set [kubernetes] version to an exact patch release such as v1.33.4' });
  }
  return { text: `v${parsed.major}.${parsed.minor}.${parsed.patch}`, parsed };
}

/** The releases with a known image list, as "v1.31.0–v1.31.14, v1.32.0–v1.32.13, …". */
export function supportedKubernetesVersions(): string {
  const ranges: string[] = [];
  // Probe the version table through its public lookup, so the table stays in one place.
  for (let minor = 0; minor < 100; minor++) {
    const patches: number[] = [];
    for (let patch = 0; patch < 100; patch++) if (kubeadmImageRefs({ major: 1, minor, patch })) patches.push(patch);
    if (patches.length > 0) ranges.push(`v1.${minor}.${patches[0]}–v1.${minor}.${patches[patches.length - 1]}`);
  }
  return ranges.join(', ');
}

/**
 * The images kubeadm pulls for `version` (exact patch: etcd changes within a minor, §2.2), as
 * nodes will pull them. `mirror` is the bundled mirror's `host[:port]`; with it, imageRepository
 * and dns.imageRepository point into the mirror and keep CoreDNS's upstream path.
 */
export function kubeadmImages(version: string, opts: { mirror?: string } = {}): KubeadmImageSet {
  const { text, parsed } = normaliseKubernetesVersion(version);
  const refs = kubeadmImageRefs(parsed);
  if (!refs) {
    throw new InputError(`no kubeadm image list is known for Kubernetes ${text}`, {
      hint: `set [kubernetes] version to one of: ${supportedKubernetesVersions()}`,
    });
  }
  const imageRepository = mirrorRef(kubeadmImageRepository, opts.mirror);
  const dnsImageRepository = opts.mirror ? `${imageRepository}/coredns` : undefined;
  const images = refs.map((upstream): ClusterImage => {
    const { repository, tag } = splitRef(upstream);
    const name = repository.slice(repository.lastIndexOf('/') + 1);
    const ref = name === 'coredns' ? kubeadmCoreDnsImage(imageRepository, dnsImageRepository, tag) : `${imageRepository}/${repository.slice(kubeadmImageRepository.length + 1)}:${tag}`;
    return { name, upstream, ref };
  });
  const pause = images.find((i) => i.name === 'pause')!.ref;
  return { version: text, images, imageRepository, ...(dnsImageRepository ? { dnsImageRepository } : {}), pause };
}

/** The images the cluster's CNI manifest runs. */
export function cniImages(cni: Cni, opts: { mirror?: string } = {}): ClusterImage[] {
  const image = (name: string, upstream: string): ClusterImage => ({ name, upstream, ref: mirrorRef(upstream, opts.mirror) });
  switch (cni) {
    case 'flannel':
      return [image('flannel-cni-plugin', FLANNEL_CNI_PLUGIN_IMAGE), image('flannel', FLANNEL_IMAGE)];
    case 'none':
      return [];
    case 'calico':
    case 'cilium':
      throw new InputError(`[kubernetes] cni = "${cni}" is not bundled by bramble: it renders and bundles only the flannel manifest`, {
        hint: 'set [kubernetes] cni = "flannel", or cni = "none" and apply your own CNI after the cluster is up',
      });
  }
}

/** kube-vip, run as a static pod on control-plane nodes when network.vip is set. */
export function kubeVipImage(opts: { mirror?: string } = {}): ClusterImage {
  return { name: 'kube-vip', upstream: KUBE_VIP_IMAGE, ref: mirrorRef(KUBE_VIP_IMAGE, opts.mirror) };
}
