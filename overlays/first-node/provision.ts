// Adds the first node's share of a served cluster to provisioning specs: the host firewall on every
// node, and on the first node the units that serve the netbooted nodes. The files they serve (the
// PXE tree, the dnsmasq config) go onto the first node's ROOT, not into its Ignition.
import type { ClusterSpec, NodeSpec } from '../../builders/spec.ts';
import { addFile, addUnit, cloneSpec, type ProvisioningSpec } from '../provision.ts';
import { FIREWALL_RULES_PATH, firewallUnit, renderFirewallRuleset } from './firewall.ts';
import { DNSMASQ_UNIT, FIREWALL_UNIT, isServingNode, nodePorts, PXE_HTTP_UNIT, type MirrorEndpoint } from './services.ts';
import type { ContainerContext } from '../containerd-run.ts';
import { dnsmasqUnit, pxeHttpUnit } from './units.ts';

export interface ServedClusterContext {
  /** Where the bundle put the first node's images in containerd, and the unit that imports them. */
  containers: ContainerContext;
  /** The registry mirror the first node runs, when the cluster bundles one. */
  mirror?: MirrorEndpoint;
}

/** A copy of `prov` with the node's firewall and, on the first node, the serving units. */
export function addServedClusterContent(spec: ClusterSpec, node: NodeSpec, prov: ProvisioningSpec, ctx: ServedClusterContext): ProvisioningSpec {
  if (!spec.firstNode) return prov;
  const p = cloneSpec(prov);
  const ports = nodePorts(spec, node, ctx.mirror);
  addFile(p, { path: FIREWALL_RULES_PATH, mode: 0o644, contents: renderFirewallRuleset(spec, node, ports), overwrite: true });
  addUnit(p, { name: FIREWALL_UNIT, enabled: true, contents: firewallUnit() });
  if (isServingNode(spec, node)) {
    addUnit(p, { name: PXE_HTTP_UNIT, enabled: true, contents: pxeHttpUnit(ctx.containers) });
    addUnit(p, { name: DNSMASQ_UNIT, enabled: true, contents: dnsmasqUnit(ctx.containers) });
  }
  return p;
}
