// [network] and node addresses: CIDRs, their overlaps and sizes, gateway/VIP/DNS placement, explicit node
// IPs, and allocation of the rest. All address work goes through allocate.ts (ipaddr.js).
import {
  allocateAddresses,
  contains,
  formatAddress,
  lastAddress,
  overlaps,
  parseAddress,
  parseCidr,
  size,
  unusableAddresses,
  type Cidr,
} from '../allocate.ts';
import type { NetworkSpec } from '../spec.ts';
import type { NodeDraft } from './nodes.ts';
import { Problems, type TomlTable } from './problems.ts';

export const defaultPodCidr = '10.244.0.0/16';
export const defaultServiceCidr = '10.96.0.0/12';

/** kube-apiserver rejects larger service ranges (--service-cluster-ip-range: IPv4 max /12, IPv6 max /108). */
const maxServiceRange = { 4: 12, 6: 108 } as const;
/** kube-controller-manager's default --node-cidr-mask-size: each node gets a /24 (IPv4) or /64 (IPv6). */
const podRangePerNode = { 4: 24, 6: 64 } as const;
/** A node subnet must hold at least two hosts besides its network (and IPv4 broadcast) address. */
const maxNodePrefix = { 4: 30, 6: 126 } as const;
/** Cluster DNS lives at the 10th address of the service range (kubeadm's default clusterDNS). */
export const clusterDnsIndex = 10;

type At = (string | number)[];
type Addr = { family: 4 | 6; value: bigint };

export function readNetwork(t: TomlTable, nodes: NodeDraft[], p: Problems): { network: NetworkSpec; ips: (string | undefined)[] } {
  const at = (key: string): At => ['network', key];
  const cidr = (key: string, fallback?: string): Cidr | undefined => {
    const text = typeof t[key] === 'string' ? (t[key] as string) : fallback;
    if (text === undefined) return undefined;
    const r = parseCidr(text);
    if ('cidr' in r) return r.cidr;
    p.add(at(key), `"${text}" ${r.error}`, r.suggestion ? `did you mean "${r.suggestion}"?` : 'write a network in CIDR form, e.g. "192.168.50.0/24"');
    return undefined;
  };
  const address = (path: At, text: string): Addr | undefined => {
    const a = parseAddress(text);
    if (!a) {
      const hint = text.includes('/') ? 'write the address without a prefix length; the prefix comes from node_cidr' : 'write an IPv4 or IPv6 address, e.g. "192.168.50.10"';
      p.add(path, `"${text}" is not an IP address`, hint);
    }
    return a;
  };

  const nodeCidr = cidr('node_cidr');
  const podCidr = cidr('pod_cidr', defaultPodCidr);
  const serviceCidr = cidr('service_cidr', defaultServiceCidr);
  const gatewayText = t.gateway as string | undefined;
  const vipText = t.api_vip as string | undefined;
  const dnsTexts = (t.dns as string[] | undefined) ?? [];

  const gateway = gatewayText === undefined ? undefined : address(at('gateway'), gatewayText);
  const vip = vipText === undefined ? undefined : address(at('api_vip'), vipText);
  const dns = dnsTexts.map((d, i) => address(['network', 'dns', i], d));

  if (nodeCidr && nodeCidr.prefix > maxNodePrefix[nodeCidr.family]) {
    p.add(at('node_cidr'), `${nodeCidr.text} is too small to hold nodes`, `use a /${maxNodePrefix[nodeCidr.family]} or larger, e.g. a /24`);
  }
  // Where an address may not go inside the node subnet, and who holds it.
  const holders = new Map<bigint, string>();
  if (nodeCidr) {
    for (const v of unusableAddresses(nodeCidr)) holders.set(v, `the ${v === nodeCidr.base ? 'network' : 'broadcast'} address of ${nodeCidr.text}`);
  }

  const inNodeSubnet = (path: At, a: Addr | undefined, what: string, text: string) => {
    if (!a) return;
    if (!nodeCidr) {
      p.add(path, `${what} "${text}" is set but [network] has no node_cidr`, 'set node_cidr to use static addresses, or remove it to use DHCP');
    } else if (!contains(nodeCidr, a)) {
      p.add(path, `${what} ${text} is outside node_cidr ${nodeCidr.text}`, `use an address inside ${nodeCidr.text}`);
    } else if (holders.has(a.value)) {
      p.add(path, `${what} ${text} is ${holders.get(a.value)}`, `pick another address inside ${nodeCidr.text}`);
    }
  };
  inNodeSubnet(at('gateway'), gateway, 'gateway', gatewayText!);
  if (gateway && nodeCidr && contains(nodeCidr, gateway) && !holders.has(gateway.value)) holders.set(gateway.value, 'the gateway address');
  dns.forEach((a, i) => {
    if (a && nodeCidr && contains(nodeCidr, a) && !holders.has(a.value)) holders.set(a.value, `the address of DNS server dns[${i}]`);
  });
  inNodeSubnet(at('api_vip'), vip, 'api_vip', vipText!);

  checkRanges(nodeCidr, podCidr, serviceCidr, nodes.length, p);

  // Explicit node addresses.
  const explicit: (string | undefined)[] = nodes.map(() => undefined);
  const byAddress = new Map<bigint, number>();
  nodes.forEach((n, i) => {
    if (n.ip === undefined) return;
    const path = ['nodes', n.index, 'ip'];
    const a = address(path, n.ip);
    if (!a) return;
    const before = p.errors.length;
    inNodeSubnet(path, a, 'ip', n.ip);
    if (vip && a.family === vip.family && a.value === vip.value) {
      p.add(path, `ip ${n.ip} is the api_vip`, 'the API VIP floats between control-plane nodes; give the node its own address');
    }
    const first = byAddress.get(a.value);
    if (first !== undefined) {
      p.add(path, `duplicate ip ${n.ip}: nodes[${first}] (line ${p.lines.lineOf(['nodes', first, 'ip'])}) has it too`, 'every node needs its own address');
    }
    byAddress.set(a.value, n.index);
    if (p.errors.length === before) explicit[i] = formatAddress(a.family, a.value);
  });

  let ips = explicit;
  if (nodeCidr && nodeCidr.prefix <= maxNodePrefix[nodeCidr.family]) {
    const reserved = [gateway, vip, ...dns].filter((a): a is Addr => a !== undefined).map((a) => formatAddress(a.family, a.value));
    // A node whose explicit ip has a problem keeps it out of the pool but gets no address itself.
    const requested = nodes.map((n, i) => (n.ip === undefined ? undefined : (explicit[i] ?? n.ip)));
    const allocated = allocateAddresses({ nodeCidr, reserved, requested });
    ips = nodes.map((n, i) => (n.ip === undefined ? allocated[i] : explicit[i]));
    nodes.forEach((n, i) => {
      if (n.ip !== undefined || allocated[i] !== undefined) return;
      const who = n.name ? `node "${n.name}"` : `nodes[${n.index}]`;
      p.add(['nodes', n.index], `no free address left in node_cidr ${nodeCidr.text} for ${who}`, 'use a larger node_cidr, or give the node an explicit ip');
    });
  }

  const network: NetworkSpec = {
    ...(nodeCidr && { nodeCidr: nodeCidr.text }),
    ...(gateway && { gateway: formatAddress(gateway.family, gateway.value) }),
    dns: dns.filter((a): a is Addr => a !== undefined).map((a) => formatAddress(a.family, a.value)),
    podCidr: podCidr?.text ?? defaultPodCidr,
    serviceCidr: serviceCidr?.text ?? defaultServiceCidr,
    ...(vip && { vip: formatAddress(vip.family, vip.value) }),
  };
  return { network, ips };
}

function checkRanges(node: Cidr | undefined, pod: Cidr | undefined, service: Cidr | undefined, nodeCount: number, p: Problems) {
  if (service) {
    const max = maxServiceRange[service.family];
    if (service.prefix < max) {
      p.add(['network', 'service_cidr'], `${service.text} is wider than kube-apiserver accepts (IPv${service.family}: /${max} at most)`, `use a /${max} or narrower, e.g. "${service.family === 4 ? defaultServiceCidr : 'fd00:10:96::/108'}"`);
    } else if (size(service) <= BigInt(clusterDnsIndex + 1)) {
      p.add(['network', 'service_cidr'], `${service.text} is too small to hold the API service and cluster DNS addresses (the 1st and ${clusterDnsIndex}th)`, 'use a /24 or larger, e.g. "10.96.0.0/12"');
    }
  }
  if (pod) {
    const perNode = podRangePerNode[pod.family];
    const ranges = pod.prefix <= perNode ? 1n << BigInt(perNode - pod.prefix) : 0n;
    if (ranges < BigInt(Math.max(nodeCount, 1))) {
      p.add(['network', 'pod_cidr'], `${pod.text} is too small: each node takes a /${perNode} for its pods and the cluster has ${nodeCount} node${nodeCount === 1 ? '' : 's'}`, `use a /16 such as "${defaultPodCidr}"`);
    }
  }
  if (pod && service && pod.family !== service.family) {
    p.add(['network', 'service_cidr'], `service_cidr ${service.text} and pod_cidr ${pod.text} are of different IP families`, 'use IPv4 (or IPv6) for both; dual-stack is not supported');
  }
  const pairs: [string, Cidr | undefined, string, Cidr | undefined][] = [
    ['pod_cidr', pod, 'node_cidr', node],
    ['service_cidr', service, 'node_cidr', node],
    ['service_cidr', service, 'pod_cidr', pod],
  ];
  for (const [key, a, otherKey, b] of pairs) {
    if (a && b && overlaps(a, b)) {
      p.add(['network', key], `${key} ${a.text} overlaps ${otherKey} ${b.text}`, `choose non-overlapping ranges (defaults: pod_cidr ${defaultPodCidr}, service_cidr ${defaultServiceCidr})`);
    }
  }
}

/** First address of the service range: the `kubernetes` Service (kube-apiserver). */
export function apiServiceIp(serviceCidr: string): string {
  const r = parseCidr(serviceCidr);
  if (!('cidr' in r)) throw new Error(`invalid service CIDR ${serviceCidr}`);
  return formatAddress(r.cidr.family, r.cidr.base + 1n);
}

export function clusterDnsIp(serviceCidr: string): string {
  const r = parseCidr(serviceCidr);
  if (!('cidr' in r)) throw new Error(`invalid service CIDR ${serviceCidr}`);
  if (r.cidr.base + BigInt(clusterDnsIndex) >= lastAddress(r.cidr)) throw new Error(`service CIDR ${serviceCidr} too small`);
  return formatAddress(r.cidr.family, r.cidr.base + BigInt(clusterDnsIndex));
}
