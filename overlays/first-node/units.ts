// The first node's serving units: busybox httpd for the PXE tree and dnsmasq for DHCP/proxyDHCP and
// TFTP, each a container run by containerd's ctr (../containerd-run.ts) from an image the bundle
// pre-imported, on the host network, with its content bind-mounted read-only from ROOT at the same
// path. No unit downloads anything.
import { DEFAULT_PXE_HTTP_PORT } from '../../builders/assemble-pxe.ts';
import {
  DNSMASQ_CONF_ON_NODE,
  DNSMASQ_CONTAINER,
  DNSMASQ_DIR_ON_NODE,
  DNSMASQ_IMAGE,
  HTTPD_IMAGE,
  PXE_HTTP_CONTAINER,
  PXE_TREE_ON_NODE,
} from './services.ts';
import { containerUnit, type ContainerContext } from '../containerd-run.ts';

/** Where busybox sits in the busybox image (the applets are links to it). */
export const BUSYBOX_IN_IMAGE = '/bin/busybox';

/** busybox httpd serving the PXE tree: foreground, every request's client and URL to the journal (-vv), port 8080. */
export function pxeHttpUnit(c: ContainerContext): string {
  return containerUnit(c, {
    description: `PXE tree over HTTP on port ${DEFAULT_PXE_HTTP_PORT}`,
    container: PXE_HTTP_CONTAINER,
    image: HTTPD_IMAGE,
    readOnlyPaths: [PXE_TREE_ON_NODE],
    args: [BUSYBOX_IN_IMAGE, 'httpd', '-f', '-vv', '-p', String(DEFAULT_PXE_HTTP_PORT), '-h', PXE_TREE_ON_NODE],
  });
}

/**
 * dnsmasq with the generated config (DHCP or proxyDHCP, TFTP from the tree). NET_ADMIN lets it set
 * ARP entries for the clients it answers (poseidon/dnsmasq's documented --cap-add).
 */
export function dnsmasqUnit(c: ContainerContext): string {
  return containerUnit(c, {
    description: 'DHCP and TFTP for the netbooted nodes (dnsmasq)',
    container: DNSMASQ_CONTAINER,
    image: DNSMASQ_IMAGE,
    readOnlyPaths: [PXE_TREE_ON_NODE, DNSMASQ_DIR_ON_NODE],
    capabilities: ['CAP_NET_ADMIN'],
    args: ['--keep-in-foreground', '--log-facility=-', `--conf-file=${DNSMASQ_CONF_ON_NODE}`],
  });
}
