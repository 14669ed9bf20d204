// The host firewall of every node of a cluster the first node serves: one nftables table, `inet
// bramble`, whose input chain drops what it does not accept (Flatcar has no firewall of its own).
// Accepted: replies to the node's own traffic, loopback, ICMP/ICMPv6 (IPv6 neighbour discovery needs
// it), traffic from pods and the CNI's interfaces (pods reaching host-network services through
// Service addresses), and exactly the ports of nodePorts(): SSH, the kubelet, the CNI, the API server
// and etcd on control-plane nodes, the PXE services and the mirror on the first node. Outbound and
// forwarded traffic is left alone: pod-to-pod and NodePort traffic is forwarded, not input.
import type { ClusterSpec, NodeSpec } from '../../builders/spec.ts';
import { portText, type ServedPort } from './services.ts';

/** nft as Flatcar ships it. */
export const NFT = '/usr/sbin/nft';
export const FIREWALL_TABLE = 'bramble';
export const FIREWALL_RULES_PATH = '/etc/bramble/firewall.nft';
/** flannel's bridge to its pods and its VXLAN device (flannel's defaults). */
export const FLANNEL_INTERFACES = ['cni0', 'flannel.1'];
/** Services that answer only on the boot interface when [first_node] names one. */
const BOOT_NETWORK_SERVICES = new Set(['dhcp', 'tftp', 'proxy-dhcp']);

const quoted = (s: string) => {
  if (!/^[A-Za-z0-9_.:@/ -]+$/.test(s)) throw new Error(`${s} cannot be quoted in an nftables ruleset`);
  return `"${s}"`;
};

/** The ruleset file: idempotent (declares, deletes and recreates the table in one transaction). */
export function renderFirewallRuleset(spec: ClusterSpec, node: NodeSpec, ports: readonly ServedPort[]): string {
  const pods = spec.network.podCidr.includes(':') ? 'ip6' : 'ip';
  const bootInterface = spec.firstNode?.interface;
  const lines = [
    `# Written by bramble for node ${node.name} of cluster ${spec.name}: the host firewall.`,
    '# Inbound traffic is dropped unless accepted below; outbound and forwarded traffic is not filtered.',
    `table inet ${FIREWALL_TABLE}`,
    `delete table inet ${FIREWALL_TABLE}`,
    '',
    `table inet ${FIREWALL_TABLE} {`,
    '  chain input {',
    '    type filter hook input priority filter; policy drop;',
    '    ct state established,related accept',
    '    ct state invalid drop',
    '    iifname "lo" accept',
    '    meta l4proto { icmp, ipv6-icmp } accept',
    '    # Pods reach host-network services (the API server through the kubernetes Service, DNS).',
    `    ${pods} saddr ${spec.network.podCidr} accept`,
  ];
  if (spec.kubernetes.cni === 'flannel') lines.push(`    iifname { ${FLANNEL_INTERFACES.map(quoted).join(', ')} } accept`);
  for (const p of ports) {
    const only = bootInterface && BOOT_NETWORK_SERVICES.has(p.service) ? `iifname ${quoted(bootInterface)} ` : '';
    lines.push(`    # ${p.service}: ${p.purpose}${p.unit ? ` (${p.unit})` : ''}`);
    lines.push(`    ${only}${p.protocol} dport ${portText(p.port)} accept comment ${quoted(p.service)}`);
  }
  lines.push('  }', '}', '');
  return lines.join('\n');
}

/** Loads the ruleset before the network comes up; stopping the unit removes the table again. */
export function firewallUnit(): string {
  return [
    '# Written by bramble: the host firewall (nftables table inet bramble).',
    '[Unit]',
    'Description=Host firewall (bramble)',
    'DefaultDependencies=no',
    'Wants=network-pre.target',
    'Before=network-pre.target shutdown.target',
    'Conflicts=shutdown.target',
    'After=local-fs.target',
    '',
    '[Service]',
    'Type=oneshot',
    'RemainAfterExit=yes',
    `ExecStart=${NFT} -f ${FIREWALL_RULES_PATH}`,
    `ExecReload=${NFT} -f ${FIREWALL_RULES_PATH}`,
    `ExecStop=${NFT} delete table inet ${FIREWALL_TABLE}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}
