// [first_node]: whether the first control-plane node serves the netbooted nodes (PXE tree over HTTP and
// TFTP, dnsmasq) and how its dnsmasq hands out boot information. On by default when some node
// netboots and the first control-plane node can serve: a Flatcar disk node with a static IPv4 address.
import type { FirstNodeDhcp, FirstNodeSettings, NodeSpec, OsBase } from '../spec.ts';
import { Problems, suggest, type TomlTable } from './problems.ts';

export const firstNodeDhcpModes: readonly FirstNodeDhcp[] = ['full', 'proxy'];
/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/' or whitespace; dnsmasq.conf needs no ',' either. */
const interfacePattern = /^[A-Za-z0-9_.:@-]{1,15}$/;
/** proxyDHCP never hands out addresses, so it is the default that cannot disturb an existing network. */
export const defaultFirstNodeDhcp: FirstNodeDhcp = 'proxy';

type NodeFacts = Pick<NodeSpec, 'name' | 'role' | 'boot' | 'ip'>;

/** Why the first control-plane node cannot serve the netbooted nodes, or undefined when it can. */
export function whyFirstNodeCannotServe(nodes: readonly NodeFacts[], base: OsBase, mirror: boolean): string | undefined {
  if (!nodes.some((n) => n.boot === 'pxe')) return 'no node has boot = "pxe"';
  if (base !== 'flatcar') return `the first node's services run as containers on Flatcar, not os.base = "${base}"`;
  if (!mirror) return 'the first node\'s services run from images the registry bundle carries, and registry.mirror = false bundles none';
  const first = nodes.find((n) => n.role === 'control-plane');
  if (!first) return 'the cluster has no control-plane node';
  if (first.boot !== 'disk') return `the first control-plane node "${first.name}" netboots itself`;
  if (!first.ip || first.ip.includes(':')) return `the first control-plane node "${first.name}" has no static IPv4 address (PXE is IPv4 only)`;
  return undefined;
}

export function readFirstNode(t: TomlTable, nodes: readonly NodeFacts[], base: OsBase, mirror: boolean, p: Problems): FirstNodeSettings | undefined {
  const at = (key: string) => ['first_node', key];
  const cannot = whyFirstNodeCannotServe(nodes, base, mirror);
  const explicit = typeof t.serve === 'boolean' ? t.serve : undefined;
  if (explicit === true && cannot) {
    p.add(at('serve'), `the first node cannot serve the others: ${cannot}`, 'remove serve = true, or give it what it needs: netbooted nodes, Flatcar, registry.mirror, a first control-plane disk node with a static IPv4 ip');
  }
  const serve = (explicit ?? true) && !cannot;

  let dhcp = defaultFirstNodeDhcp;
  if (typeof t.dhcp === 'string') {
    if ((firstNodeDhcpModes as readonly string[]).includes(t.dhcp)) dhcp = t.dhcp as FirstNodeDhcp;
    else p.add(at('dhcp'), `dhcp "${t.dhcp}" is not one of ${firstNodeDhcpModes.join(', ')}`, suggest(t.dhcp, firstNodeDhcpModes));
  }
  let iface: string | undefined;
  if (typeof t.interface === 'string') {
    if (interfacePattern.test(t.interface)) iface = t.interface;
    else p.add(at('interface'), `"${t.interface}" is not a network interface name`, 'write the name `ip link` shows on the first node, e.g. "eth1" or "enp2s0" (at most 15 characters)');
  }

  if (!serve) {
    const why = explicit === false ? 'serve = false' : cannot;
    for (const key of ['dhcp', 'interface'] as const) {
      if (t[key] !== undefined) p.add(at(key), `first_node.${key} has no effect: the first node serves nothing (${why})`, `remove ${key}`);
    }
    return undefined;
  }
  if (dhcp === 'full' && iface === undefined && !p.has(at('interface'))) {
    p.add(at('dhcp'), 'full DHCP needs a dedicated interface: a second DHCP server on a shared network hands out addresses it does not own', 'add interface = "eth1" (the first node\'s NIC on the boot network), or use dhcp = "proxy" next to an existing DHCP server');
  }
  return { dhcp, ...(iface !== undefined && { interface: iface }) };
}
