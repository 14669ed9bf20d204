// The first node's serving units: busybox httpd for the PXE tree and dnsmasq for DHCP/proxyDHCP and
// TFTP, each a container run by containerd's ctr (Flatcar has no Docker by default) from an image the
// bundle pre-imported, on the host network, with its content bind-mounted read-only from ROOT at
// the same path. No unit downloads anything.
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

/** containerd's CLI as Flatcar's containerd sysext installs it. */
export const CTR = '/usr/bin/ctr';
/** Where busybox sits in the busybox image (the applets are links to it). */
export const BUSYBOX_IN_IMAGE = '/bin/busybox';

/** Where the images live in containerd and which unit imports them before the services start. */
export interface ContainerContext {
  /** containerd namespace the bundle imports the first node's images into. */
  namespace: string;
  /** The unit that imports them (ordered before the services). */
  importUnit: string;
}

export interface ContainerUnitSpec {
  description: string;
  container: string;
  image: string;
  /** Directories or files of the host bind-mounted read-only at the same path. */
  readOnlyPaths: string[];
  /** Capabilities beyond containerd's default set (ctr --cap-add). */
  capabilities?: string[];
  /** The process: the image's entrypoint gets these arguments (or they are the command, without one). */
  args: string[];
}

/** One bind mount as `ctr run --mount` takes it: same path inside, read-only, recursive. */
export function readOnlyMount(path: string): string {
  if (!/^\/[A-Za-z0-9._/-]+$/.test(path)) throw new Error(`bind mount path ${path} cannot be passed to ctr`);
  return `type=bind,src=${path},dst=${path},options=rbind:ro`;
}

/** A unit running `spec` with ctr: stale containers of a crash removed first, restarted when it exits. */
export function containerUnit(c: ContainerContext, spec: ContainerUnitSpec): string {
  const ctr = `${CTR} --namespace ${c.namespace}`;
  const run = [
    `${ctr} run --rm --net-host`,
    ...(spec.capabilities ?? []).map((cap) => `--cap-add ${cap}`),
    ...spec.readOnlyPaths.map((p) => `--mount ${readOnlyMount(p)}`),
    spec.image,
    spec.container,
    ...spec.args,
  ].join(' ');
  return [
    `# Written by bramble: ${spec.description}.`,
    '[Unit]',
    `Description=${spec.description} (bramble)`,
    `Requires=containerd.service ${c.importUnit}`,
    `After=containerd.service ${c.importUnit} network-online.target`,
    'Wants=network-online.target',
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    // A task or container left by a crash or power loss would make `ctr run` refuse the name.
    `ExecStartPre=-${ctr} tasks delete --force ${spec.container}`,
    `ExecStartPre=-${ctr} containers delete ${spec.container}`,
    // ctr run forwards systemd's SIGTERM to the task; --rm removes the container when it exits.
    `ExecStart=${run}`,
    'Restart=always',
    'RestartSec=5',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

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
