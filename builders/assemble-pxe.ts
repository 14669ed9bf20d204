// The static PXE tree: Flatcar's PXE kernel and initrd per arch and version (and, for install = true
// nodes, its disk image with the detached signature flatcar-install checks), iPXE binaries, boot.ipxe,
// one script and one config initrd per netbooted node, and dnsmasq configs (full DHCP and proxyDHCP).
import { constants } from 'node:fs';
import { copyFile, readFile, rm, stat } from 'node:fs/promises';
import { posix } from 'node:path';
import { InputError } from './errors.ts';
import type { StageContext } from './events.ts';
import type { FetchedInput } from './fetch.ts';
import { layout } from './layout.ts';
import { sha256File, type OutputWriter } from './output.ts';
import { buildNodeCpio, INSTALL_IMAGE, renderBootIpxe, renderDnsmasq, renderNodeIpxe, type DnsmasqOptions } from './pxe-render.ts';
import type { Arch, ClusterSpec, NodeSpec } from './spec.ts';
import { flatcarInputId } from '../images/catalog/flatcar.ts';
import { ipxeInputId } from '../images/catalog/boot-firmware.ts';
import { ipxeBinaries } from './versions.ts';
import { sysextTreePath } from './kubernetes-content.ts';

/** The iPXE binary dnsmasq hands each client architecture, as paths in the tree (TFTP root = pxe/). */
function dnsmasqBootFiles() {
  const rel = (file: string) => layout.pxeIpxeBinary(file).slice(`${layout.pxeDir}/`.length);
  const [bios, efi64] = ['undionly.kpxe', 'snponly.efi'].map(rel);
  const arm64 = rel(ipxeBinaries('arm64')[0]!);
  return { bios: bios!, efi64: efi64!, arm64 };
}

export const PXE_KERNEL = 'flatcar_production_pxe.vmlinuz';
export const PXE_INITRD = 'flatcar_production_pxe_image.cpio.gz';
/** Port the first node's HTTP server uses for the tree unless [pxe] http_base says otherwise. */
export const DEFAULT_PXE_HTTP_PORT = 8080;

export interface PxeNodeConfig {
  node: NodeSpec;
  /** The Kubernetes sysext the node downloads from the tree, when the build carries Kubernetes. */
  sysext?: { path: string; fileName: string };
  /** The Ignition the node boots with (the installer's, for install = true nodes). */
  ignitionJson: string;
  kernelArgs: string[];
}

export interface AssemblePxeOptions extends StageContext {
  spec: ClusterSpec;
  version: string;
  nodes: PxeNodeConfig[];
  inputs: Map<string, FetchedInput>;
  out: OutputWriter;
  epoch: number;
}

function input(inputs: Map<string, FetchedInput>, id: string): FetchedInput {
  const i = inputs.get(id);
  if (!i) throw new Error(`assemble-pxe: input ${id} was not fetched`);
  return i;
}

/**
 * Whether install = true nodes of `arch` fetch Flatcar's disk image (and its .sig) from the tree:
 * when some of the build's netbooted nodes install and the first node serves the tree. Otherwise the
 * tree carries no image and flatcar-install asks the release server.
 */
export function treeServesInstallImage(spec: ClusterSpec, nodes: readonly NodeSpec[], arch: Arch): boolean {
  return pxeHttpBase(spec) !== undefined && nodes.some((n) => n.boot === 'pxe' && n.install && n.arch === arch);
}

/** flatcar-install -b for the tree: it appends `/<version>/<image>`, which is layout.pxeAsset's path. */
export function treeInstallImageBase(spec: ClusterSpec, arch: Arch): string {
  const httpBase = pxeHttpBase(spec);
  if (!httpBase) throw new Error('treeInstallImageBase: the tree is not served over HTTP');
  const asset = layout.pxeAsset(arch, '<version>', INSTALL_IMAGE);
  const dir = posix.dirname(posix.dirname(asset)).slice(`${layout.pxeDir}/`.length);
  return new URL(dir, httpBase).toString();
}

/** Where the tree is served over HTTP: the first control-plane node with a static address, port 8080. */
export function pxeHttpBase(spec: ClusterSpec): string | undefined {
  const server = spec.nodes.find((n) => n.role === 'control-plane' && n.boot === 'disk' && n.ip);
  if (!server?.ip) return undefined;
  const host = server.ip.includes(':') ? `[${server.ip}]` : server.ip;
  return `http://${host}:${DEFAULT_PXE_HTTP_PORT}/`;
}

export async function assemblePxe(o: AssemblePxeOptions): Promise<void> {
  const arches = [...new Set(o.nodes.map((n) => n.node.arch))].sort();
  for (const arch of arches) {
    for (const [id, file] of [
      [`flatcar-pxe-kernel-${arch}`, PXE_KERNEL],
      [`flatcar-pxe-cpio-${arch}`, PXE_INITRD],
    ] as const) {
      const i = input(o.inputs, id);
      await o.out.writeFile(layout.pxeAsset(arch, o.version, file), await readFile(i.path), {
        kind: 'pxe-asset',
        target: 'pxe',
        arch,
        secret: false,
      });
    }
  }
  for (const arch of arches) {
    if (treeServesInstallImage(o.spec, o.nodes.map((n) => n.node), arch)) await writeInstallImage(o, arch);
    else if (o.nodes.some((n) => n.node.install && n.node.arch === arch)) {
      o.events({ kind: 'warning', message: `install = true nodes (${arch}) download Flatcar from the release server: no control-plane node with a static ip serves the PXE tree` });
    }
  }
  for (const arch of arches) {
    for (const file of ipxeBinaries(arch)) {
      await o.out.writeFile(layout.pxeIpxeBinary(file), await readFile(input(o.inputs, ipxeInputId(file, arch)).path), {
        kind: 'ipxe-binary',
        target: 'pxe',
        arch,
        secret: false,
      });
    }
  }
  for (const n of o.nodes) {
    const mac = n.node.mac!;
    const kernelPath = layout.pxeAsset(n.node.arch, o.version, PXE_KERNEL);
    const initrdPaths = [layout.pxeAsset(n.node.arch, o.version, PXE_INITRD), layout.pxeNodeCpio(mac)];
    const meta = { node: n.node.name, target: 'pxe' as const, arch: n.node.arch, secret: true };
    await o.out.writeFile(layout.pxeNodeCpio(mac), buildNodeCpio(n.ignitionJson, { mtime: o.epoch }), { kind: 'pxe-initrd', ...meta });
    await o.out.writeFile(layout.pxeNodeScript(mac), renderNodeIpxe(n.node, { kernelPath, initrdPaths, args: n.kernelArgs }), {
      kind: 'pxe-script',
      ...meta,
    });
  }
  const sysexts = new Map(o.nodes.filter((n) => n.sysext).map((n) => [n.sysext!.fileName, n.sysext!]));
  for (const [fileName, s] of [...sysexts].sort(([a], [b]) => (a < b ? -1 : 1))) {
    await o.out.writeFile(sysextTreePath(fileName), await readFile(s.path), { kind: 'sysext', target: 'pxe', secret: false });
  }
  const netbooted = o.nodes.map((n) => n.node);
  await o.out.writeFile(layout.pxeBootScript, renderBootIpxe(netbooted, { cluster: o.spec.name }), {
    kind: 'pxe-script',
    target: 'pxe',
    secret: false,
  });
  await writeDnsmasqConfigs(o);
}

/**
 * The verified Flatcar disk image and its upstream detached signature, where flatcar-install -b asks
 * for them. The image is copied (a reflink where the filesystem can), and left alone when the tree
 * already has these bytes.
 */
async function writeInstallImage(o: AssemblePxeOptions, arch: Arch) {
  const image = input(o.inputs, flatcarInputId('image', arch));
  if (!image.signature) throw new Error(`assemble-pxe: the ${arch} image was fetched without its signature`);
  const rel = layout.pxeAsset(arch, o.version, INSTALL_IMAGE);
  const meta = { kind: 'pxe-asset' as const, target: 'pxe' as const, arch, secret: false };
  const dest = o.out.path(rel);
  const present = await stat(dest).then((st) => st.isFile() && st.size === image.size, () => false);
  if (present && (await sha256File(dest, o.signal)) === image.sha256) {
    await o.out.recordFile(rel, meta, { sha256: image.sha256 });
  } else {
    const tmp = await o.out.tempPathFor(rel);
    try {
      // A copy of the verified input: its digest is known.
      await copyFile(image.path, tmp, constants.COPYFILE_FICLONE);
      await o.out.adoptFile(rel, tmp, meta, { sha256: image.sha256 });
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }
  await o.out.writeFile(`${rel}.sig`, image.signature.data, meta);
}

/** The arches whose iPXE binaries a tree for these netbooted nodes carries (assemblePxe writes them). */
function ipxeArchesOf(nodes: readonly NodeSpec[]): Arch[] {
  return [...new Set(nodes.map((n) => n.arch))].filter((a) => ipxeBinaries(a).length > 0).sort();
}

/**
 * What every dnsmasq config of the cluster shares (boot subnet, leases, boot files, HTTP boot URL),
 * or why there can be none: it needs an IPv4 node_cidr and a first node with a static ip serving the tree.
 * Boot files are offered for the arches of `netbooted` (by default every netbooted node of the cluster).
 */
export function dnsmasqCommon(spec: ClusterSpec, netbooted: readonly NodeSpec[] = spec.nodes.filter((n) => n.boot === 'pxe')): Omit<DnsmasqOptions, 'mode'> | { missing: string } {
  const subnet = spec.network.nodeCidr;
  const httpBase = pxeHttpBase(spec);
  if (!subnet || !httpBase || subnet.includes(':')) {
    return { missing: 'it needs an IPv4 network.node_cidr and a control-plane node with a static ip to serve the tree' };
  }
  const leases = spec.nodes.filter((n) => n.mac).map((n) => ({ mac: n.mac!, ip: n.ip, name: n.name }));
  if (leases.length === 0) throw new InputError('the PXE tree has no node with a MAC address');
  return {
    cluster: spec.name,
    subnet,
    gateway: spec.network.gateway,
    dns: spec.network.dns.filter((d) => !d.includes(':')),
    leases,
    tftpRoot: `/srv/bramble/${spec.name}/pxe`,
    httpBase,
    bootFiles: dnsmasqBootFiles(),
    ipxeArches: ipxeArchesOf(netbooted),
  };
}

async function writeDnsmasqConfigs(o: AssemblePxeOptions) {
  const common = dnsmasqCommon(o.spec, o.nodes.map((n) => n.node));
  if ('missing' in common) {
    o.events({ kind: 'warning', message: `no dnsmasq.conf written: ${common.missing}; serve pxe/ with your own DHCP/TFTP/HTTP setup` });
    return;
  }
  const meta = { kind: 'dnsmasq-conf' as const, target: 'pxe' as const, secret: false };
  await o.out.writeFile(layout.dnsmasqConf, renderDnsmasq({ mode: 'dhcp', ...common }), meta);
  await o.out.writeFile(layout.dnsmasqProxyConf, renderDnsmasq({ mode: 'proxy', ...common }), meta);
}
