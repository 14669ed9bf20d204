// The built-in cluster used when no -c is given: one control-plane node of the requested target, on DHCP.
import { archOf, defaultSources, type ClusterSpec, type Hardware, type NodeSpec, type OsBase, type Target } from './spec.ts';
import { defaultPodCidr, defaultServiceCidr } from './load/network.ts';
import { defaultFlatcarChannel, defaultKubernetesVersionFor, defaultOsVersion } from './versions.ts';

export const defaultClusterName = 'bramble';
export const defaultNodeName = 'control-plane-1';
export const defaultClusterSource = '<built-in default>';
/**
 * MAC of the default netbooted node. Locally administered (bit 1 of the first octet set) and unicast
 * (bit 0 clear), IEEE 802 §8.4, so it cannot clash with a vendor-assigned address; the remaining
 * bytes spell "bram".
 */
export const defaultPxeMac = '02:62:72:61:6d:01';

export function defaultCluster(target: Target): ClusterSpec {
  const hardware: Hardware = target === 'pxe' ? 'pc' : target;
  // Flatcar has no Raspberry Pi 3 image; HypriotOS does.
  const base: OsBase = target === 'rpi3' ? 'hypriot' : 'flatcar';
  const node: NodeSpec = {
    name: defaultNodeName,
    role: 'control-plane',
    hardware,
    boot: target === 'pxe' ? 'pxe' : 'disk',
    ...(target === 'pxe' && { mac: defaultPxeMac }),
    install: false,
    arch: archOf(hardware, base),
  };
  return {
    name: defaultClusterName,
    source: defaultClusterSource,
    os: { base, channel: defaultFlatcarChannel, version: defaultOsVersion(base) },
    kubernetes: { version: defaultKubernetesVersionFor(base), cni: 'flannel' },
    network: { dns: [], podCidr: defaultPodCidr, serviceCidr: defaultServiceCidr },
    ssh: { authorizedKeys: [] },
    registry: { mirror: true, extraImages: [] },
    sources: { ...defaultSources, registries: { ...defaultSources.registries }, trustedKeys: [...defaultSources.trustedKeys] },
    nodes: [node],
  };
}
