// The plan stage: a pure, deterministic function from a ClusterSpec (and the lock, when there is one) to
// the versioned BuildPlan: which nodes are built, with what addresses and versions, which artefacts
// land in out/<cluster>/ and which upstream inputs that needs. No I/O.
import { kubernetesApplies, kubernetesBinariesApply, sysextTreePath } from './kubernetes-content.ts';
import { planRegistryBundle, type CachedMirrorSize, type ImageOrigin } from './registry-content.ts';
import { sysextFileName } from '../overlays/kubernetes/sysext.ts';
import { bootstrapRole, type BootstrapRole } from '../overlays/kubernetes/kubeadm.ts';
import { checkKubernetesBinariesPublished } from '../overlays/kubernetes/node-content.ts';
import { planKubernetes } from '../overlays/kubernetes/plan.ts';
import { flatcarFiles, flatcarInputId } from '../images/catalog/flatcar.ts';
import { HYPRIOT_IMAGE_ID } from '../images/catalog/hypriot.ts';
import { CNI_PLUGINS_VERSION, crictlVersionFor, kubernetesBinaries } from '../images/catalog/kubernetes.ts';
import { UsageError } from './errors.ts';
import { servedPorts, withServedNodes } from './first-node.ts';
import { firstNodeImages, portText, servingNode } from '../overlays/first-node/services.ts';
import { layout } from './layout.ts';
import { treeServesInstallImage } from './assemble-pxe.ts';
import { apiServiceIp, clusterDnsIp } from './load/network.ts';
import type { LockFile } from './lockfile.ts';
import type { Arch, BootMode, ClusterSpec, Cni, FlatcarChannel, Hardware, NodeSpec, OsBase, Role, Target } from './spec.ts';
import { currentVersion, ipxeBinaries, kubeadmImages, knownKubernetesRange, parseKubernetesVersion, rpi4FirmwareVersion } from './versions.ts';

export const planVersion = 1;

export type ArtefactKind = 'disk-image' | 'bmap' | 'ignition' | 'cloud-init' | 'pxe-script' | 'pxe-initrd' | 'pxe-asset' | 'dnsmasq-conf' | 'sysext' | 'pki';

export interface PlannedNode {
  name: string;
  role: Role;
  hardware: Hardware;
  boot: BootMode;
  /** What `--target` builds this node: its hardware's disk image, or the PXE tree. */
  target: Target;
  arch: Arch;
  mac: string | null;
  /** The node's static address, or "dhcp". */
  ip: string;
  install: boolean;
  /** Requested disk image size in bytes; null keeps the base image's size. */
  size: number | null;
}

export interface PlannedArtefact {
  /** Relative to out/<cluster>/, from layout.ts. */
  path: string;
  kind: ArtefactKind;
  node?: string;
  target: Target;
  /** null for arch-independent files (boot.ipxe, dnsmasq configs). */
  arch: Arch | null;
  /** Carries keys or tokens: written with mode 0600 and never published. */
  secret: boolean;
}

export interface PlannedInput {
  /** The id bramble.lock records it under. */
  id: string;
  description: string;
  version: string;
  arch?: Arch;
}

export interface BuildPlan {
  planVersion: 1;
  cluster: string;
  selection: { targets: Target[] | null; nodes: string[] | null };
  /** version is the lock's when the lock matches, else as configured ("current" until fetched). */
  os: { base: OsBase; channel: FlatcarChannel | null; version: string; locked: boolean };
  kubernetes: {
    version: string;
    cni: Cni;
    /** Upstream refs: with the bootstrap, every image the cluster runs (kubeadm's, the CNI's, kube-vip); else kubeadm's list. */
    images: string[];
    /** Node name → how it joins on first boot (kubeadm init or join); null when the build carries no bootstrap. */
    bootstrap: Record<string, BootstrapRole> | null;
    /** Why there is no bootstrap (DHCP API address, HypriotOS, …), else null. */
    bootstrapMissing: string | null;
  };
  network: {
    addressing: 'static' | 'dhcp';
    nodeCidr: string | null;
    gateway: string | null;
    dns: string[];
    podCidr: string;
    serviceCidr: string;
    /** First address of the service range: the `kubernetes` Service. */
    apiServiceIp: string;
    /** Tenth address of the service range: cluster DNS. */
    clusterDns: string;
    apiVip: string | null;
  };
  registry: {
    mirror: boolean;
    extraImages: string[];
    /** The bundled mirror: every image the cluster pulls, for the arches of its nodes, and where nodes reach it. */
    bundle: {
      images: Array<{ ref: string; origin: ImageOrigin }>;
      arches: Arch[];
      /** `ip:5000` of the first control-plane node, which serves it to every node. */
      address: string;
      servedBy: string;
      /** What the mirror stores, when the cache already holds every pinned image (set by `bramble plan`). */
      cachedSize?: CachedMirrorSize;
    } | null;
    /** Why nothing is bundled (registry.mirror = false, no Kubernetes bootstrap), else null. */
    bundleMissing: string | null;
  };
  /** What the first node serves the netbooted nodes, where; null when it serves nothing ([first_node]). */
  firstNode: PlannedFirstNode | null;
  /** Per selected node (Flatcar clusters the first node serves): the ports its firewall opens, e.g. `tcp 6443`. */
  firewall: Record<string, string[]> | null;
  nodes: PlannedNode[];
  artefacts: PlannedArtefact[];
  inputs: PlannedInput[];
  warnings: string[];
}

export interface PlannedFirstNode {
  node: string;
  address: string;
  dhcp: 'full' | 'proxy';
  interface: string | null;
  /** Container images its serving units run. */
  images: string[];
  services: Array<{ service: string; protocol: string; port: string; purpose: string; unit: string | null }>;
}

export interface PlanOptions {
  targets?: Target[];
  nodes?: string[];
  lock?: LockFile;
}

/** The target that builds a node. */
export function nodeTarget(node: Pick<NodeSpec, 'boot' | 'hardware'>): Target {
  return node.boot === 'pxe' ? 'pxe' : node.hardware;
}

export function planBuild(spec: ClusterSpec, opts: PlanOptions = {}): BuildPlan {
  const selected = withServedNodes(spec, selectNodes(spec, opts));
  // Before anything else: a version with no binaries for a node's arch is a config error, not a build without them.
  checkKubernetesBinariesPublished(spec, selected);
  const warnings: string[] = [];
  const os = resolveOs(spec, opts.lock, warnings);
  const k = parseKubernetesVersion(spec.kubernetes.version);
  if (!k) throw new Error(`unvalidated Kubernetes version ${spec.kubernetes.version}`);
  const { images: bootstrapImages, ...bootstrap } = bootstrapOf(spec, selected);
  // With the bootstrap, every image the cluster runs (checked: known tags, a bundled CNI); without it, kubeadm's own list.
  const images = bootstrapImages ?? kubeadmImages(k);
  if (!images) {
    warnings.push(`no known kubeadm image tags for Kubernetes ${spec.kubernetes.version} (known: ${knownKubernetesRange()}); the image list is empty`);
  }
  if (bootstrap.bootstrapMissing) warnings.push(`no Kubernetes bootstrap: ${bootstrap.bootstrapMissing}`);
  const targets = opts.targets?.length ? [...new Set(opts.targets)].sort() : null;
  const nodeNames = opts.nodes?.length ? [...new Set(opts.nodes)].sort() : null;
  return {
    planVersion,
    cluster: spec.name,
    selection: { targets, nodes: nodeNames },
    os,
    kubernetes: {
      version: spec.kubernetes.version,
      cni: spec.kubernetes.cni,
      images: images ?? [],
      ...bootstrap,
    },
    network: {
      addressing: spec.network.nodeCidr ? 'static' : 'dhcp',
      nodeCidr: spec.network.nodeCidr ?? null,
      gateway: spec.network.gateway ?? null,
      dns: [...spec.network.dns],
      podCidr: spec.network.podCidr,
      serviceCidr: spec.network.serviceCidr,
      apiServiceIp: apiServiceIp(spec.network.serviceCidr),
      clusterDns: clusterDnsIp(spec.network.serviceCidr),
      apiVip: spec.network.vip ?? null,
    },
    registry: { mirror: spec.registry.mirror, extraImages: [...spec.registry.extraImages], ...registryBundleOf(spec, selected) },
    ...planFirstNode(spec, selected),
    nodes: selected.map(planNode),
    artefacts: planArtefacts(spec, selected, os.version),
    inputs: planInputs(spec, selected, os.version),
    warnings,
  };
}

function registryBundleOf(spec: ClusterSpec, nodes: NodeSpec[]): Pick<BuildPlan['registry'], 'bundle' | 'bundleMissing'> {
  const r = planRegistryBundle(spec, nodes);
  if (!r.ok) return { bundle: null, bundleMissing: r.reason };
  return {
    bundle: {
      images: r.plan.images.map((i) => ({ ref: i.ref, origin: i.origin })),
      arches: r.plan.arches,
      address: r.plan.server.address,
      servedBy: r.plan.server.node,
    },
    bundleMissing: null,
  };
}

function planFirstNode(spec: ClusterSpec, selected: NodeSpec[]): Pick<BuildPlan, 'firstNode' | 'firewall'> {
  const server = servingNode(spec);
  if (!server) return { firstNode: null, firewall: null };
  const services = servedPorts(spec, server).filter((p) => p.unit);
  return {
    firstNode: {
      node: server.name,
      address: server.ip!,
      dhcp: spec.firstNode!.dhcp,
      interface: spec.firstNode!.interface ?? null,
      images: firstNodeImages(spec),
      services: services.map((p) => ({ service: p.service, protocol: p.protocol, port: portText(p.port), purpose: p.purpose, unit: p.unit ?? null })),
    },
    firewall: Object.fromEntries(selected.map((n) => [n.name, servedPorts(spec, n).map((p) => `${p.protocol} ${portText(p.port)}`)])),
  };
}

function planNode(n: NodeSpec): PlannedNode {
  return {
    name: n.name,
    role: n.role,
    hardware: n.hardware,
    boot: n.boot,
    target: nodeTarget(n),
    arch: n.arch,
    mac: n.mac ?? null,
    ip: n.ip ?? 'dhcp',
    install: n.install,
    size: n.sizeBytes ?? null,
  };
}

function selectNodes(spec: ClusterSpec, opts: PlanOptions): NodeSpec[] {
  const listing = spec.nodes.map((n) => `${n.name} (${nodeTarget(n)})`).join(', ');
  for (const name of opts.nodes ?? []) {
    if (!spec.nodes.some((n) => n.name === name)) {
      throw new UsageError(`cluster "${spec.name}" has no node named "${name}"`, { hint: `its nodes: ${listing}` });
    }
  }
  for (const t of opts.targets ?? []) {
    if (!spec.nodes.some((n) => nodeTarget(n) === t)) {
      const available = [...new Set(spec.nodes.map(nodeTarget))].join(', ');
      throw new UsageError(`no node of cluster "${spec.name}" is built by target "${t}"`, { hint: `targets with nodes here: ${available} (nodes: ${listing})` });
    }
  }
  const selected = spec.nodes.filter(
    (n) => (!opts.targets?.length || opts.targets.includes(nodeTarget(n))) && (!opts.nodes?.length || opts.nodes.includes(n.name)),
  );
  if (selected.length === 0) {
    throw new UsageError('the --target and --node options select no node together', { hint: `nodes: ${listing}` });
  }
  return selected;
}

function resolveOs(spec: ClusterSpec, lock: LockFile | undefined, warnings: string[]): BuildPlan['os'] {
  const channel = spec.os.base === 'flatcar' ? spec.os.channel : null;
  const configured = { base: spec.os.base, channel, version: spec.os.version, locked: false };
  if (!lock) return configured;
  const matches =
    lock.os.base === spec.os.base &&
    lock.os.channel === spec.os.channel &&
    (spec.os.version === currentVersion || spec.os.version === lock.os.version);
  if (!matches) {
    warnings.push(
      `bramble.lock was made for ${lock.os.base} ${lock.os.channel} ${lock.os.version}, not ${spec.os.base} ${channel ?? ''} ${spec.os.version}`.replace(/ +/g, ' ') +
        '; `bramble fetch` will resolve the OS again',
    );
    return configured;
  }
  if (lock.cluster !== spec.name) warnings.push(`bramble.lock was written for cluster "${lock.cluster}"`);
  return { ...configured, version: lock.os.version, locked: true };
}

const byPath = (a: PlannedArtefact, b: PlannedArtefact) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
const archesOf = (nodes: NodeSpec[]) => [...new Set(nodes.map((n) => n.arch))].sort();

function planArtefacts(spec: ClusterSpec, nodes: NodeSpec[], osVersion: string): PlannedArtefact[] {
  const out: PlannedArtefact[] = [];
  const add = (path: string, kind: ArtefactKind, target: Target, arch: Arch | null, secret: boolean, node?: string) =>
    out.push({ path, kind, ...(node !== undefined && { node }), target, arch, secret });
  for (const n of nodes) {
    const t = nodeTarget(n);
    if (spec.os.base === 'hypriot') {
      add(layout.cloudInit(n.name, 'user-data'), 'cloud-init', t, n.arch, true, n.name);
      add(layout.cloudInit(n.name, 'meta-data'), 'cloud-init', t, n.arch, false, n.name);
      add(layout.cloudInit(n.name, 'network-config'), 'cloud-init', t, n.arch, false, n.name);
    } else {
      add(layout.ignition(n.name), 'ignition', t, n.arch, true, n.name);
    }
    if (n.boot === 'disk') {
      // The image carries the node's first-boot config, hence its secrets.
      add(layout.image(n.name), 'disk-image', t, n.arch, true, n.name);
      add(layout.bmap(n.name), 'bmap', t, n.arch, false, n.name);
    } else {
      add(layout.pxeNodeScript(n.mac!), 'pxe-script', t, n.arch, true, n.name);
      add(layout.pxeNodeCpio(n.mac!), 'pxe-initrd', t, n.arch, true, n.name);
    }
  }
  const pxe = nodes.filter((n) => n.boot === 'pxe');
  if (pxe.length) {
    add(layout.pxeBootScript, 'pxe-script', 'pxe', null, false);
    add(layout.dnsmasqConf, 'dnsmasq-conf', 'pxe', null, false);
    add(layout.dnsmasqProxyConf, 'dnsmasq-conf', 'pxe', null, false);
    for (const arch of archesOf(pxe)) {
      add(layout.pxeAsset(arch, osVersion, flatcarFiles['pxe-kernel']), 'pxe-asset', 'pxe', arch, false);
      add(layout.pxeAsset(arch, osVersion, flatcarFiles['pxe-cpio']), 'pxe-asset', 'pxe', arch, false);
      // flatcar-install on an install=true node writes this image to its disk, checked with its .sig.
      if (treeServesInstallImage(spec, pxe, arch)) {
        add(layout.pxeAsset(arch, osVersion, flatcarFiles.image), 'pxe-asset', 'pxe', arch, false);
        add(`${layout.pxeAsset(arch, osVersion, flatcarFiles.image)}.sig`, 'pxe-asset', 'pxe', arch, false);
      }
      for (const file of ipxeBinaries(arch)) add(layout.pxeIpxeBinary(file), 'pxe-asset', 'pxe', arch, false);
      if (kubernetesApplies(spec, nodes).ok) add(sysextTreePath(sysextFileName(spec.kubernetes.version, arch)), 'sysext', 'pxe', arch, false);
    }
  }
  return out.sort(byPath);
}

function planInputs(spec: ClusterSpec, nodes: NodeSpec[], osVersion: string): PlannedInput[] {
  const out: PlannedInput[] = [];
  const add = (id: string, description: string, version: string, arch?: Arch) => {
    if (!out.some((i) => i.id === id)) out.push({ id, description, version, ...(arch && { arch }) });
  };
  const channel = spec.os.channel;
  if (spec.os.base === 'hypriot') {
    add(HYPRIOT_IMAGE_ID, 'HypriotOS SD card image (zip) and its .sha256', osVersion, 'arm');
  } else {
    for (const arch of archesOf(nodes)) {
      const mine = nodes.filter((n) => n.arch === arch);
      if (mine.some((n) => n.boot === 'disk') || treeServesInstallImage(spec, mine, arch)) {
        add(flatcarInputId('image', arch), `Flatcar ${channel} disk image (${flatcarFiles.image}), DIGESTS and signature`, osVersion, arch);
      }
      if (mine.some((n) => n.boot === 'pxe')) {
        add(flatcarInputId('pxe-kernel', arch), `Flatcar ${channel} PXE kernel (${flatcarFiles['pxe-kernel']})`, osVersion, arch);
        add(flatcarInputId('pxe-cpio', arch), `Flatcar ${channel} PXE initrd (${flatcarFiles['pxe-cpio']})`, osVersion, arch);
        for (const file of ipxeBinaries(arch)) add(`ipxe-${file.split('/').pop()}-${arch}`, `iPXE binary ${file}`, 'unversioned', arch);
      }
    }
    if (nodes.some((n) => n.hardware === 'rpi4')) {
      add('rpi4-uefi-firmware-arm64', 'Raspberry Pi 4 UEFI firmware (pftf/RPi4 release zip)', rpi4FirmwareVersion, 'arm64');
    }
  }
  if (kubernetesBinariesApply(spec, nodes)) {
    const bare = spec.kubernetes.version.replace(/^v/, '');
    for (const arch of archesOf(nodes)) {
      for (const name of kubernetesBinaries) add(`kubernetes-${name}-${arch}`, `Kubernetes ${name} (dl.k8s.io) and its .sha256`, bare, arch);
      add(`crictl-${arch}`, 'crictl (cri-tools release tarball)', crictlVersionFor(arch), arch);
      add(`cni-plugins-${arch}`, 'CNI plugins (containernetworking/plugins release tarball)', CNI_PLUGINS_VERSION, arch);
    }
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The plan as JSON: fixed key order (as built above), 2-space indent, trailing newline. */
export function planToJson(plan: BuildPlan): string {
  return `${JSON.stringify(plan, null, 2)}\n`;
}

/**
 * How each selected node joins the cluster on first boot and every image the cluster runs (throwing
 * InputError for what cannot be bootstrapped as configured), or why the images carry no bootstrap.
 */
function bootstrapOf(
  spec: ClusterSpec,
  nodes: NodeSpec[],
): { bootstrap: Record<string, BootstrapRole> | null; bootstrapMissing: string | null; images?: string[] } {
  const k = kubernetesApplies(spec, nodes);
  if (!k.ok) return { bootstrap: null, bootstrapMissing: k.reason };
  const planned = planKubernetes(spec);
  return {
    bootstrap: Object.fromEntries(nodes.map((n) => [n.name, bootstrapRole(spec, n)])),
    bootstrapMissing: null,
    images: planned.images.map((i) => i.upstream),
  };
}

/** A human summary: versions, network, the bootstrap, a node table, images, artefacts and inputs. */
export function formatPlan(plan: BuildPlan): string {
  const lines: string[] = [];
  const os = [plan.os.base, plan.os.channel, plan.os.version].filter(Boolean).join(' ');
  const net = plan.network;
  lines.push(`cluster ${plan.cluster}`);
  lines.push(`  os          ${os}${plan.os.locked ? ' (from bramble.lock)' : ''}`);
  lines.push(`  kubernetes  ${plan.kubernetes.version}, cni ${plan.kubernetes.cni}, ${plan.kubernetes.images.length} images`);
  lines.push(
    `  network     ${net.addressing === 'static' ? `static ${net.nodeCidr}${net.gateway ? ` via ${net.gateway}` : ''}` : 'DHCP'}` +
      `${net.dns.length ? `, dns ${net.dns.join(' ')}` : ''}${net.apiVip ? `, api vip ${net.apiVip}` : ''}`,
  );
  lines.push(`  pods        ${net.podCidr}`);
  lines.push(`  services    ${net.serviceCidr} (api ${net.apiServiceIp}, dns ${net.clusterDns})`);
  const boot = plan.kubernetes.bootstrap;
  lines.push(
    `  bootstrap   ${boot ? Object.entries(boot).map(([n, r]) => `${n}: kubeadm ${r.replace('-', ' ')}`).join(', ') : 'none (see the warning below)'}`,
  );
  lines.push(`  registry    ${registryLine(plan.registry)}`);
  if (plan.selection.targets || plan.selection.nodes) {
    lines.push(`  selected    ${[plan.selection.targets && `targets ${plan.selection.targets.join(' ')}`, plan.selection.nodes && `nodes ${plan.selection.nodes.join(' ')}`].filter(Boolean).join('; ')}`);
  }
  if (plan.firstNode) lines.push(...formatFirstNode(plan.firstNode, plan.firewall ?? {}));
  lines.push('', `nodes (${plan.nodes.length})`);
  lines.push(
    ...table(
      ['NAME', 'ROLE', 'HARDWARE', 'BOOT', 'ARCH', 'MAC', 'IP'],
      plan.nodes.map((n) => [n.name, n.role, n.hardware, n.boot + (n.install ? '+install' : ''), n.arch, n.mac ?? '-', n.ip]),
    ),
  );
  lines.push('', `artefacts (${plan.artefacts.length}) in out/${plan.cluster}/`);
  lines.push(...table(['PATH', 'KIND', 'NODE', 'SECRET'], plan.artefacts.map((a) => [a.path, a.kind, a.node ?? '-', a.secret ? 'yes' : ''])));
  // With a bundled mirror its table lists the images (and where they go); else the plain list.
  if (!plan.registry.bundle) lines.push('', `images (${plan.kubernetes.images.length})`, ...plan.kubernetes.images.map((i) => `  ${i}`));
  if (plan.registry.bundle) {
    lines.push('', `images (${plan.registry.bundle.images.length}) in out/${plan.cluster}/${layout.registryDir}/ and ${layout.ociArchive('<arch>')}`);
    const size = plan.registry.bundle.cachedSize;
    if (size && 'unknown' in size) lines.push(`  size: unknown: ${size.unknown}`);
    else if (size) {
      const left = size.notCounted.length ? `; not counting ${size.notCounted.join(', ')}` : '';
      lines.push(`  size: ${size.uniqueBytes} bytes (${(size.uniqueBytes / 2 ** 20).toFixed(1)} MiB) in ${size.blobs} unique blobs, from the cache${left}`);
    }
    lines.push(...table(['IMAGE', 'FOR'], plan.registry.bundle.images.map((i) => [i.ref, i.origin])));
  }
  lines.push('', `inputs (${plan.inputs.length})`);
  lines.push(...table(['ID', 'VERSION', 'WHAT'], plan.inputs.map((i) => [i.id, i.version, i.description])));
  if (plan.warnings.length) lines.push('', 'warnings', ...plan.warnings.map((w) => `  ! ${w}`));
  return `${lines.join('\n')}\n`;
}

function registryLine(r: BuildPlan['registry']): string {
  if (!r.bundle) return `no mirror bundled: ${r.bundleMissing}`;
  const b = r.bundle;
  return `mirror of ${b.images.length} images for ${b.arches.join(' ')}, served by ${b.servedBy} at ${b.address}; every node pulls through it`;
}

function formatFirstNode(f: PlannedFirstNode, firewall: Record<string, string[]>): string[] {
  const mode = f.dhcp === 'full' ? `full DHCP on ${f.interface}` : `proxyDHCP${f.interface ? ` on ${f.interface}` : ''}`;
  return [
    '',
    `first node ${f.node} serves the netbooted nodes at ${f.address} (${mode}; building it builds their PXE tree too)`,
    ...table(
      ['SERVICE', 'ADDRESS', 'UNIT', 'WHAT'],
      f.services.map((s) => [s.service, `${f.address}:${s.port}/${s.protocol}`, s.unit ?? '-', s.purpose]),
    ),
    `  images: ${f.images.join(', ')} (bundled, pre-imported)`,
    '',
    'firewall (nftables, inbound: established, loopback, ICMP, pods, and these ports)',
    ...table(['NODE', 'OPEN PORTS'], Object.entries(firewall).map(([node, ports]) => [node, ports.join(', ')])),
  ];
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => `  ${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}`.trimEnd();
  return [fmt(header), ...rows.map(fmt)];
}
