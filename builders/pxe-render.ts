// The text files of the static PXE tree (boot.ipxe, nodes/<mac>.ipxe, dnsmasq configs), the
// per-node config initrd, and the provisioning of install-to-disk netboots. Pure functions: the
// PXE builder writes what they return next to the fetched assets.
import ipaddr from 'ipaddr.js';
import { posix } from 'node:path';
import { InputError } from './errors.ts';
import { layout } from './layout.ts';
import type { Arch, NodeSpec } from './spec.ts';
import { writeCpio } from '../images/cpio.ts';
import { flatcarFiles } from '../images/catalog/flatcar.ts';
import { gzipDeterministic } from '../images/gzip.ts';
import { systemdQuote } from '../ignition/render.ts';
import { addFile, addUnit, consoleArgs, FLATCAR_USER, HOSTNAME_PATH, renderOemGrubCfg, type ProvisioningSpec } from '../overlays/provision.ts';
import { DEFAULT_INTERFACE_GLOBS } from '../overlays/network.ts';
import { renderTemplate } from '../overlays/render-templates.ts';

/** Flatcar's initrd generator runs Ignition when this is set to anything but 0/no/off (base-images.md §6.2). */
export const FIRST_BOOT_ARG = 'flatcar.first_boot=1';
/** Old initrds read usr/share/oem/config.ign, new ones oem/config.ign (base-images.md §7): ship both. */
export const NODE_CPIO_CONFIG_PATHS = ['oem/config.ign', 'usr/share/oem/config.ign'];
/** The config holds node secrets; Ignition runs as root, so owner-only is enough (flatcar-install also writes 0600). */
export const NODE_CONFIG_MODE = 0o600;
/**
 * The initramfs unpacker chmods directories that already exist (usr, usr/share), so these must keep
 * the modes the base initrd gives them.
 */
export const NODE_CPIO_DIR_MODE = 0o755;
/** How long boot.ipxe waits for `r` before leaving network boot. */
export const UNKNOWN_MAC_RETRY_MS = 30_000;

/** iPXE binaries in the tree, relative to the TFTP root (= the pxe/ directory); layout.pxeIpxeBinary. */
export interface IpxeBootFiles {
  bios: string;
  efi64: string;
  arm64: string;
}
export const defaultIpxeBootFiles: IpxeBootFiles = {
  bios: 'ipxe/undionly.kpxe',
  efi64: 'ipxe/ipxe.efi',
  arm64: 'ipxe/ipxe-arm64.efi',
};

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const SAFE_URI = /^[A-Za-z0-9._~/:%-]+$/;
const HOSTNAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function requireMac(node: NodeSpec): string {
  const mac = node.mac?.toLowerCase();
  if (!mac || !MAC.test(mac)) {
    throw new InputError(`node ${node.name} boots from the network but has no valid mac`, { hint: `set mac = "52:54:00:12:34:56" in its [[nodes]] table` });
  }
  return mac;
}

/** A URI for `target` (an out/<cluster>-relative path such as layout.pxeAsset gives) as seen from the script at `from`. */
export function relativeUri(from: string, target: string): string {
  const uri = /^[a-z][a-z0-9+.-]*:/i.test(target) ? target : posix.relative(posix.dirname(from), target);
  if (!SAFE_URI.test(uri)) throw new InputError(`PXE path ${JSON.stringify(target)} has characters iPXE URIs cannot carry`, { hint: 'use letters, digits, . _ - / only' });
  return uri;
}

/** boot.ipxe: chains nodes/${mac:hexhyp}.ipxe relative to its own URL; unknown MACs get a message, retry or exit. */
export function renderBootIpxe(nodes: readonly NodeSpec[], options: { cluster?: string } = {}): string {
  const pxeNodes = nodes
    .filter((n) => n.boot === 'pxe')
    .map((n) => ({ name: n.name, mac: requireMac(n), role: n.role }))
    .sort((a, b) => (a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0));
  return renderTemplate('boot.ipxe', {
    cluster: options.cluster ?? 'bramble',
    nodes: pxeNodes,
    retryTimeoutMs: UNKNOWN_MAC_RETRY_MS,
    retrySeconds: UNKNOWN_MAC_RETRY_MS / 1000,
  });
}

export interface NodeIpxeOptions {
  /** Kernel, as an out/<cluster>-relative path (layout.pxeAsset(...)) or an absolute URL. */
  kernelPath: string;
  /** Initrds in load order: Flatcar's PXE cpio, then the node's own (layout.pxeNodeCpio(mac)). */
  initrdPaths: string[];
  /** Kernel arguments (ProvisioningSpec.kernelArgs); initrd= names and flatcar.first_boot=1 are added. */
  args: string[];
}

function checkArg(arg: string): string {
  // iPXE splits on whitespace and treats `#…`, `||`, `&&` and `;` as script syntax.
  if (!arg || /\s/.test(arg) || arg.startsWith('#') || ['||', '&&', ';'].includes(arg)) {
    throw new InputError(`kernel argument ${JSON.stringify(arg)} cannot be passed on an iPXE kernel line`, { hint: 'remove spaces and script syntax from kernel arguments' });
  }
  return arg;
}

/** nodes/<mac>.ipxe: kernel with the node's arguments, Flatcar's initrd and the node's config initrd, boot. */
export function renderNodeIpxe(node: NodeSpec, options: NodeIpxeOptions): string {
  const mac = requireMac(node);
  const script = layout.pxeNodeScript(mac);
  const initrds = options.initrdPaths.map((p) => ({ name: posix.basename(p), uri: relativeUri(script, p) }));
  if (new Set(initrds.map((i) => i.name)).size !== initrds.length) throw new Error('renderNodeIpxe: initrd file names must differ (UEFI finds them by name)');
  const args = [...initrds.map((i) => `initrd=${i.name}`)];
  if (!options.args.some((a) => a.startsWith('flatcar.first_boot='))) args.push(FIRST_BOOT_ARG);
  args.push(...options.args);
  return renderTemplate('node.ipxe', {
    name: node.name,
    role: node.role,
    mac,
    install: node.install,
    kernelUri: relativeUri(script, options.kernelPath),
    args: args.map(checkArg).join(' '),
    initrds,
    configInitrdName: posix.basename(layout.pxeNodeCpio(mac)),
  });
}

/** The node's config initrd: a gzipped newc cpio with its Ignition at both initrd config paths. */
export function buildNodeCpio(ignitionJson: string, options: { mtime?: number } = {}): Buffer {
  const cpio = writeCpio(
    [
      ...['oem', 'usr', 'usr/share', 'usr/share/oem'].map((path) => ({ path, type: 'dir' as const, mode: NODE_CPIO_DIR_MODE })),
      ...NODE_CPIO_CONFIG_PATHS.map((path) => ({ path, type: 'file' as const, mode: NODE_CONFIG_MODE, data: ignitionJson })),
    ],
    options,
  );
  return gzipDeterministic(cpio);
}

export interface DnsmasqOptions {
  mode: 'dhcp' | 'proxy';
  cluster?: string;
  /** Serve only this interface (recommended). */
  interface?: string;
  /** The boot network, IPv4 CIDR (PXE is IPv4 only). */
  subnet: string;
  /** Dynamic pool for machines that are not nodes (full DHCP only); without it only nodes get addresses. */
  range?: { start: string; end: string };
  gateway?: string;
  dns?: string[];
  leases: Array<{ mac: string; ip?: string; name: string }>;
  /** Directory dnsmasq's TFTP serves: the PXE tree (out/<cluster>/pxe) where it is installed. */
  tftpRoot: string;
  /** HTTP URL the PXE tree is served under; boot.ipxe is fetched from here. */
  httpBase: string;
  bootFiles?: Partial<IpxeBootFiles>;
  /**
   * The arches whose iPXE binaries the tree carries (amd64: BIOS and x86-64 UEFI; arm64: arm64 UEFI).
   * Only their clients are offered a boot file, so none is pointed at a file the tree lacks.
   */
  ipxeArches: readonly Arch[];
  /** DHCP lease time; default 12h. */
  leaseTime?: string;
}

function ipv4In(what: string, ip: string, net: [ipaddr.IPv4, number]): string {
  if (!ipaddr.IPv4.isValidFourPartDecimal(ip)) throw new InputError(`${what} ${ip} is not an IPv4 address`, { hint: 'PXE and dnsmasq proxy mode work over IPv4 only' });
  if (!ipaddr.IPv4.parse(ip).match(net)) throw new InputError(`${what} ${ip} is outside ${net[0].toString()}/${net[1]}`, { hint: 'put it inside the boot subnet' });
  return ip;
}

function checkDnsServer(ip: string): string {
  if (!ipaddr.IPv4.isValidFourPartDecimal(ip)) throw new InputError(`DNS server ${ip} is not an IPv4 address`, { hint: 'DHCPv4 option 6 carries IPv4 addresses only' });
  return ip;
}

/** dnsmasq.conf (full DHCP, one static lease per node) or dnsmasq-proxy.conf (proxyDHCP beside an existing server). */
export function renderDnsmasq(o: DnsmasqOptions): string {
  let net: [ipaddr.IPv4, number];
  try {
    net = ipaddr.IPv4.parseCIDR(o.subnet);
  } catch {
    throw new InputError(`boot subnet ${o.subnet} is not an IPv4 CIDR`, { hint: 'e.g. 10.0.0.0/24; PXE works over IPv4 only' });
  }
  const network = ipaddr.IPv4.networkAddressFromCIDR(o.subnet).toString();
  const netmask = ipaddr.IPv4.subnetMaskFromPrefixLength(net[1]).toString();
  let httpBase: URL;
  try {
    httpBase = new URL(o.httpBase.endsWith('/') ? o.httpBase : `${o.httpBase}/`);
  } catch {
    throw new InputError(`PXE HTTP base ${o.httpBase} is not a URL`, { hint: 'e.g. http://10.0.0.2:8080/' });
  }
  if (httpBase.protocol !== 'http:') throw new InputError(`PXE HTTP base ${o.httpBase} must be plain http://`, { hint: 'stock iPXE binaries have no HTTPS' });
  const leases = o.leases.map((l) => {
    const mac = l.mac.toLowerCase();
    if (!MAC.test(mac)) throw new InputError(`lease ${l.name}: ${l.mac} is not a MAC address`, { hint: 'write it as 52:54:00:12:34:56' });
    if (!HOSTNAME.test(l.name)) throw new InputError(`lease name ${l.name} is not a host name`, { hint: 'use lower-case letters, digits and -' });
    return { mac, ip: o.mode === 'dhcp' && l.ip ? ipv4In(`lease ${l.name}: address`, l.ip, net) : (l.ip ?? null), name: l.name };
  });
  const bootFiles = { ...defaultIpxeBootFiles, ...o.bootFiles };
  for (const f of Object.values(bootFiles)) relativeUri('x', f);
  const amd64 = o.ipxeArches.includes('amd64');
  const offered = { bios: amd64 ? bootFiles.bios : null, efi64: amd64 ? bootFiles.efi64 : null, arm64: o.ipxeArches.includes('arm64') ? bootFiles.arm64 : null };
  if (/[\s,]/.test(o.tftpRoot) || !o.tftpRoot) throw new InputError(`tftp root ${JSON.stringify(o.tftpRoot)} cannot be written into dnsmasq.conf`, { hint: 'use a path without spaces or commas' });
  if (o.interface !== undefined && !/^[A-Za-z0-9_.:@-]+$/.test(o.interface)) throw new InputError(`interface ${o.interface} is not an interface name`);
  const leaseTime = o.leaseTime ?? '12h';
  if (!/^(\d+[smhdw]?|infinite)$/.test(leaseTime)) throw new InputError(`lease time ${leaseTime} is not a dnsmasq lease time`, { hint: 'e.g. 12h, 30m, infinite' });
  const context = {
    cluster: o.cluster ?? 'bramble',
    interface: o.interface ?? null,
    subnet: `${network}/${net[1]}`,
    network,
    netmask,
    range: o.mode === 'dhcp' && o.range ? { start: ipv4In('range start', o.range.start, net), end: ipv4In('range end', o.range.end, net) } : null,
    gateway: o.gateway ? ipv4In('gateway', o.gateway, net) : null,
    dns: o.dns && o.dns.length > 0 ? o.dns.map(checkDnsServer).join(',') : null,
    leaseTime,
    leases,
    bootFiles: offered,
    bootUrl: new URL('boot.ipxe', httpBase).toString(),
    tftpRoot: o.tftpRoot,
  };
  return renderTemplate(o.mode === 'dhcp' ? 'dnsmasq.conf' : 'dnsmasq-proxy.conf', context);
}

export interface InstallerOptions {
  /** Target disk; default /dev/sda. */
  disk?: string;
  /**
   * flatcar-install -b: it downloads `<base>/<version>/flatcar_production_image.bin.bz2` and its `.sig`,
   * e.g. from the first node's PXE tree; default Flatcar's release server.
   */
  imageBaseUrl?: string;
  /** flatcar-install -V; default `current` of the channel. */
  version?: string;
  /** flatcar-install -C. */
  channel?: string;
  /** Armored public key that signed the image (flatcar-install -k); default the key inside flatcar-install. */
  signingKey?: string;
  /**
   * Kernel arguments of the installed system: written as the OEM partition's grub.cfg beside the
   * config.ign flatcar-install puts there, as a bramble disk image carries them. None: no grub.cfg.
   */
  installedKernelArgs?: string[];
  /** SSH keys for `core` during the install, for debugging. */
  sshAuthorizedKeys?: string[];
}

export const INSTALLER_UNIT = 'bramble-install.service';
export const INSTALLED_IGNITION_PATH = '/opt/bramble/installed.ign';
export const INSTALLER_KEY_PATH = '/opt/bramble/image-signing-key.asc';
export const INSTALLED_GRUB_CFG_PATH = '/opt/bramble/installed-grub.cfg';
export const INSTALLER_OEM_GRUB_SCRIPT = '/opt/bramble/install-oem-grub';
export const DEFAULT_INSTALL_DISK = '/dev/sda';
/** The generic image, as bramble's disk images use: `-o ""` keeps an OEM id of the netboot out of the name. */
export const INSTALL_IMAGE = flatcarFiles.image;

/**
 * Run after flatcar-install with the disk and the grub.cfg: mounts the disk's OEM partition (found by
 * label among the disk's partitions, as flatcar-install finds it) and puts grub.cfg there.
 */
const OEM_GRUB_SCRIPT = `#!/bin/bash
# Written by bramble: copies the installed system's grub.cfg (its kernel arguments) to the OEM
# partition of the disk flatcar-install just wrote, beside the config.ign flatcar-install put there.
set -euo pipefail
disk=$1
cfg=$2
udevadm settle
oem=$(blkid -l -t LABEL=OEM -o device "$disk"*)
if [[ -z $oem ]]; then
  echo "no partition labelled OEM on $disk" >&2
  exit 1
fi
mnt=$(mktemp -d)
mount "$oem" "$mnt"
trap 'umount "$mnt"; rmdir "$mnt"' EXIT
install -m 0644 "$cfg" "$mnt/grub.cfg"
`;

/** The provisioning of an install-to-disk netboot: flatcar-install with the node's own Ignition, then reboot. */
export function renderInstallerProvisioning(node: NodeSpec, installedIgnitionJson: string, o: InstallerOptions = {}): ProvisioningSpec {
  const disk = o.disk ?? DEFAULT_INSTALL_DISK;
  if (!/^\/dev\/[A-Za-z0-9/_.:-]+$/.test(disk)) throw new InputError(`install disk ${disk} is not a /dev path`, { hint: 'e.g. /dev/sda or /dev/disk/by-id/…' });
  const p: ProvisioningSpec = {
    hostname: node.name,
    users: [{ name: FLATCAR_USER, sshAuthorizedKeys: [...(o.sshAuthorizedKeys ?? [])] }],
    files: [],
    directories: [],
    links: [],
    units: [],
    kernelArgs: consoleArgs(node.arch, 'flatcar'),
    // The netboot uses Flatcar's default DHCP; the static addressing belongs to the installed system.
    network: { match: { ...(node.mac ? { mac: node.mac } : {}), names: [...DEFAULT_INTERFACE_GLOBS] }, dhcp: true, addresses: [], dns: [] },
    commands: [],
  };
  addFile(p, { path: HOSTNAME_PATH, mode: 0o644, contents: `${node.name}\n`, overwrite: true });
  addFile(p, { path: INSTALLED_IGNITION_PATH, mode: NODE_CONFIG_MODE, contents: installedIgnitionJson });
  const argv = ['/usr/bin/flatcar-install', '-d', disk, '-i', INSTALLED_IGNITION_PATH, '-o', ''];
  if (node.arch === 'arm64') argv.push('-B', 'arm64-usr');
  if (o.channel) argv.push('-C', o.channel);
  if (o.version) argv.push('-V', o.version);
  if (o.imageBaseUrl) argv.push('-b', o.imageBaseUrl);
  if (o.signingKey) {
    addFile(p, { path: INSTALLER_KEY_PATH, mode: 0o644, contents: o.signingKey });
    argv.push('-k', INSTALLER_KEY_PATH);
  }
  let oemGrubCommand: string | null = null;
  if (o.installedKernelArgs?.length) {
    addFile(p, { path: INSTALLED_GRUB_CFG_PATH, mode: 0o644, contents: renderOemGrubCfg(node.name, o.installedKernelArgs) });
    addFile(p, { path: INSTALLER_OEM_GRUB_SCRIPT, mode: 0o755, contents: OEM_GRUB_SCRIPT });
    oemGrubCommand = [INSTALLER_OEM_GRUB_SCRIPT, disk, INSTALLED_GRUB_CFG_PATH].map(systemdQuote).join(' ');
  }
  addUnit(p, {
    name: INSTALLER_UNIT,
    enabled: true,
    contents: renderTemplate('installer.service', {
      node: node.name,
      disk,
      command: argv.map(systemdQuote).join(' '),
      configPath: INSTALLED_IGNITION_PATH,
      oemGrubCommand,
    }),
  });
  return p;
}
