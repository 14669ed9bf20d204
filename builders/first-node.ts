// Glue for "the first node serves the rest": which nodes a build must include when the first node is
// built, each node's firewall and the first node's serving units (in their Ignition), and the files
// the first node carries on ROOT — the PXE tree as the build wrote it and its own dnsmasq config.
import { dnsmasqCommon } from './assemble-pxe.ts';
import type { OutputWriter } from './output.ts';
import { layout } from './layout.ts';
import { renderDnsmasq } from './pxe-render.ts';
import type { ClusterSpec, NodeSpec } from './spec.ts';
import type { Ext4Entry } from '../images/ext4.ts';
import type { ProvisioningSpec } from '../overlays/provision.ts';
import { addServedClusterContent } from '../overlays/first-node/provision.ts';
import { DNSMASQ_CONF_ON_NODE, DNSMASQ_DIR_ON_NODE, nodePorts, PXE_TREE_ON_NODE, SERVED_DIR_ON_NODE, servingNode, type MirrorEndpoint, type ServedPort } from '../overlays/first-node/services.ts';
import type { ContainerContext } from '../overlays/containerd-run.ts';
import { IMPORT_UNIT, MIRROR_PORT, REGISTRY_NAMESPACE, REGISTRY_UNIT } from '../overlays/registry/mirror.ts';

/** The first node's images are imported with the registry server's, into the mirror's containerd namespace. */
const containers: ContainerContext = { namespace: REGISTRY_NAMESPACE, importUnit: IMPORT_UNIT };

/** The mirror as the registry bundle serves it, when the cluster bundles one. */
export function mirrorEndpoint(spec: ClusterSpec): MirrorEndpoint | undefined {
  return spec.registry.mirror ? { port: MIRROR_PORT, unit: REGISTRY_UNIT } : undefined;
}

/** Every port `node` opens to other machines (its firewall accepts exactly these). */
export function servedPorts(spec: ClusterSpec, node: NodeSpec): ServedPort[] {
  return nodePorts(spec, node, mirrorEndpoint(spec));
}

/**
 * The nodes a build selects, completed: the first node's image carries the netbooted nodes' PXE
 * tree, so building it builds them too.
 */
export function withServedNodes(spec: ClusterSpec, selected: readonly NodeSpec[]): NodeSpec[] {
  const server = servingNode(spec);
  if (!server || !selected.some((n) => n.name === server.name)) return [...selected];
  return spec.nodes.filter((n) => n.boot === 'pxe' || selected.some((s) => s.name === n.name));
}

/** The node's provisioning with its firewall and, on the first node, the serving units. */
export function withFirstNode(spec: ClusterSpec, node: NodeSpec, prov: ProvisioningSpec): ProvisioningSpec {
  return addServedClusterContent(spec, node, prov, { containers, mirror: mirrorEndpoint(spec) });
}

/** The first node's dnsmasq.conf: the chosen mode, on its boot interface, TFTP from the tree on ROOT. */
export function firstNodeDnsmasqConf(spec: ClusterSpec): string {
  const common = dnsmasqCommon(spec);
  if ('missing' in common) throw new Error(`first node: no dnsmasq config: ${common.missing}`);
  const settings = spec.firstNode!;
  return renderDnsmasq({
    ...common,
    mode: settings.dhcp === 'full' ? 'dhcp' : 'proxy',
    ...(settings.interface !== undefined && { interface: settings.interface }),
    tftpRoot: PXE_TREE_ON_NODE,
  });
}

/**
 * What the first node carries on ROOT: every file of the PXE tree this build wrote (node configs
 * stay owner-only, as in out/), and its dnsmasq config. Directories are world-readable, so dnsmasq,
 * which drops root, can walk to the iPXE binaries it sends over TFTP.
 */
export function firstNodeRootEntries(spec: ClusterSpec, out: OutputWriter): Ext4Entry[] {
  const prefix = `${layout.pxeDir}/`;
  const files = [...out.artefacts.values()].filter((a) => a.path.startsWith(prefix));
  const dirs = new Set<string>([SERVED_DIR_ON_NODE, PXE_TREE_ON_NODE, DNSMASQ_DIR_ON_NODE]);
  const entries: Ext4Entry[] = [];
  for (const a of files) {
    const onNode = `${PXE_TREE_ON_NODE}/${a.path.slice(prefix.length)}`;
    for (let d = onNode.slice(0, onNode.lastIndexOf('/')); d.length > PXE_TREE_ON_NODE.length; d = d.slice(0, d.lastIndexOf('/'))) dirs.add(d);
    entries.push({ path: onNode, type: 'file', source: out.path(a.path), mode: a.secret ? 0o600 : 0o644 });
  }
  entries.push({ path: DNSMASQ_CONF_ON_NODE, type: 'file', data: firstNodeDnsmasqConf(spec), mode: 0o644 });
  return [...[...dirs].map((path): Ext4Entry => ({ path, type: 'dir', mode: 0o755 })), ...entries];
}
