// A node's network intent (static or DHCP, which interface) and its two native forms: a
// systemd-networkd .network unit (Flatcar) and a cloud-init network-config version 2 (HypriotOS).
import ipaddr from 'ipaddr.js';
import type { ClusterSpec, NodeSpec } from '../builders/spec.ts';
import { renderTemplate } from './render-templates.ts';

export interface NetworkIntent {
  /** Which interface: the node's MAC when known, else interface-name globs. */
  match: { mac?: string; names: string[] };
  dhcp: boolean;
  /** Static addresses in CIDR form (node ip + the node_cidr prefix); empty with DHCP. */
  addresses: string[];
  gateway?: string;
  dns: string[];
}

/** Interface names matched when the MAC is unknown: predictable names and the kernel's ethN. */
export const DEFAULT_INTERFACE_GLOBS = ['en*', 'eth*'];
/** Sorts before Flatcar's zz-default.network, so its settings win. */
export const NETWORKD_UNIT_PATH = '/etc/systemd/network/00-bramble.network';
/** HypriotOS (Raspbian) names the Pi's wired interface eth0. */
export const HYPRIOT_INTERFACE = 'eth0';

/** Static addressing when the cluster has a node_cidr and the node an ip; DHCP otherwise. */
export function networkIntentFor(cluster: ClusterSpec, node: NodeSpec): NetworkIntent {
  const { nodeCidr, gateway, dns } = cluster.network;
  const match = { ...(node.mac ? { mac: node.mac.toLowerCase() } : {}), names: [...DEFAULT_INTERFACE_GLOBS] };
  if (!nodeCidr || !node.ip) return { match, dhcp: true, addresses: [], dns: [...dns] };
  const [, prefix] = ipaddr.parseCIDR(nodeCidr);
  return {
    match,
    dhcp: false,
    addresses: [`${ipaddr.parse(node.ip).toString()}/${prefix}`],
    ...(gateway ? { gateway } : {}),
    dns: [...dns],
  };
}

/** The systemd-networkd unit for Flatcar. */
export function renderNetworkdUnit(intent: NetworkIntent, nodeName: string): string {
  return renderTemplate('networkd.network', {
    node: nodeName,
    mac: intent.match.mac ?? null,
    names: intent.match.names.join(' '),
    dhcp: intent.dhcp,
    addresses: intent.addresses,
    gateway: intent.gateway ?? null,
    dns: intent.dns,
  });
}

export interface NetworkConfigV2 {
  version: 2;
  ethernets: Record<string, Record<string, unknown>>;
}

/**
 * cloud-init network-config version 2. The interface is keyed eth0 (what HypriotOS calls it) and,
 * when the MAC is known, matched by it and renamed to eth0, so the key is also the final name.
 * gateway4/gateway6 rather than routes: old cloud-init releases (HypriotOS ships one) know them.
 */
export function networkConfigV2(intent: NetworkIntent): NetworkConfigV2 {
  const eth: Record<string, unknown> = {};
  if (intent.match.mac) {
    eth.match = { macaddress: intent.match.mac };
    eth['set-name'] = HYPRIOT_INTERFACE;
  }
  if (intent.dhcp) {
    eth.dhcp4 = true;
  } else {
    eth.dhcp4 = false;
    eth.addresses = [...intent.addresses];
    if (intent.gateway) eth[ipaddr.parse(intent.gateway).kind() === 'ipv6' ? 'gateway6' : 'gateway4'] = intent.gateway;
  }
  if (intent.dns.length > 0) eth.nameservers = { addresses: [...intent.dns] };
  return { version: 2, ethernets: { [HYPRIOT_INTERFACE]: eth } };
}
