// The neutral provisioning spec: what a node must have on first boot (files, units, users, links,
// kernel arguments, network), independent of how it gets there. renderIgnition (Flatcar) and
// renderCloudInit (HypriotOS) turn it into native configs; later stages add to it with addFile/addUnit.
import type { Arch, ClusterSpec, NodeSpec, OsBase } from '../builders/spec.ts';
import { InputError } from '../builders/errors.ts';
import { NETWORKD_UNIT_PATH, networkIntentFor, renderNetworkdUnit, type NetworkIntent } from './network.ts';
import { renderTemplate } from './render-templates.ts';

/** Where an entry came from when a user snippet added it, so later checks can blame the right line. */
export interface SpecOrigin {
  file: string;
  keyPath: string;
  line?: number;
}

/** Contents fetched by the node at first boot (Ignition only), checked against a hash. */
export interface RemoteContents {
  source: string;
  verification?: { hash: string };
}

export type FileContents = Buffer | string | RemoteContents;

export interface ProvisionedUser {
  name: string;
  sshAuthorizedKeys: string[];
  groups?: string[];
  /** Passwordless sudo (cloud-init `sudo:`; on Flatcar, membership of group `sudo`, which core already has). */
  sudo?: boolean;
  origin?: SpecOrigin;
}

export interface ProvisionedFile {
  /** Absolute path on the node. */
  path: string;
  /** Permission bits, 0..0o7777. */
  mode: number;
  contents: FileContents;
  /** Replace a file already on the node (Ignition `overwrite`); also lets a snippet replace one of ours. */
  overwrite?: boolean;
  /** Owner and group names; root when unset. */
  user?: string;
  group?: string;
  origin?: SpecOrigin;
}

export interface ProvisionedDirectory {
  path: string;
  mode: number;
  user?: string;
  group?: string;
  origin?: SpecOrigin;
}

export interface ProvisionedLink {
  path: string;
  target: string;
  hard?: boolean;
  overwrite?: boolean;
  user?: string;
  group?: string;
  origin?: SpecOrigin;
}

export interface ProvisionedDropin {
  name: string;
  contents: string;
}

export interface ProvisionedUnit {
  /** Unit file name, e.g. `kubelet.service`. */
  name: string;
  enabled?: boolean;
  mask?: boolean;
  /** Full unit file; omit to only add drop-ins to or enable a unit the OS ships. */
  contents?: string;
  dropins?: ProvisionedDropin[];
  origin?: SpecOrigin;
}

export interface ProvisioningSpec {
  hostname: string;
  users: ProvisionedUser[];
  files: ProvisionedFile[];
  directories: ProvisionedDirectory[];
  links: ProvisionedLink[];
  units: ProvisionedUnit[];
  /** Kernel command-line arguments (OEM grub.cfg on disk, the iPXE kernel line on PXE); extend freely. */
  kernelArgs: string[];
  /** Network intent; Flatcar also gets it as the networkd unit in `files`, HypriotOS as network-config. */
  network: NetworkIntent;
  /** Commands (argv arrays) run once on first boot, in order, after files, links and units are in place. */
  commands: string[][];
}

/** Flatcar's login user; it exists in the image, Ignition only adds keys. */
export const FLATCAR_USER = 'core';
/** HypriotOS's default user (base-images.md §12), recreated with SSH keys and no password. */
export const HYPRIOT_USER = 'pirate';
/** Groups HypriotOS gives its default user: Docker without sudo, GPU/camera access. */
export const HYPRIOT_USER_GROUPS = ['users', 'docker', 'video'];
export const HOSTNAME_PATH = '/etc/hostname';

/** Serial and screen consoles Flatcar's GRUB uses by default (base-images.md §5). */
export function consoleArgs(arch: Arch, base: OsBase): string[] {
  if (base === 'hypriot') return []; // the Pi's cmdline.txt in the image already names its consoles
  if (arch === 'amd64') return ['console=ttyS0,115200n8', 'console=tty0'];
  return ['console=ttyAMA0,115200n8', 'console=tty0'];
}

/** The provisioning spec every node starts from: hostname, login user with the cluster's keys, network, consoles. */
export function provisionNode(spec: ClusterSpec, node: NodeSpec): ProvisioningSpec {
  const base = spec.os.base;
  const network = networkIntentFor(spec, node);
  const keys = [...spec.ssh.authorizedKeys];
  const p: ProvisioningSpec = {
    hostname: node.name,
    users:
      base === 'flatcar'
        ? [{ name: FLATCAR_USER, sshAuthorizedKeys: keys }]
        : [{ name: HYPRIOT_USER, sshAuthorizedKeys: keys, groups: [...HYPRIOT_USER_GROUPS], sudo: true }],
    files: [],
    directories: [],
    links: [],
    units: [],
    kernelArgs: consoleArgs(node.arch, base),
    network,
    commands: [],
  };
  if (base === 'flatcar') {
    // cloud-init takes hostname and network as keys of its own; Ignition only writes files.
    addFile(p, { path: HOSTNAME_PATH, mode: 0o644, contents: `${node.name}\n`, overwrite: true });
    addFile(p, { path: NETWORKD_UNIT_PATH, mode: 0o644, contents: renderNetworkdUnit(network, node.name), overwrite: true });
  }
  return p;
}

function pathTaken(p: ProvisioningSpec, path: string): string | undefined {
  if (p.files.some((f) => f.path === path)) return 'file';
  if (p.directories.some((d) => d.path === path)) return 'directory';
  if (p.links.some((l) => l.path === path)) return 'link';
  return undefined;
}

/** Add a file; a second entry for the same path is a bug in the stage that adds it. */
export function addFile(p: ProvisioningSpec, file: ProvisionedFile): void {
  const taken = pathTaken(p, file.path);
  if (taken) throw new Error(`provisioning: ${file.path} is already a ${taken}`);
  p.files.push(file);
}

export function addDirectory(p: ProvisioningSpec, dir: ProvisionedDirectory): void {
  const taken = pathTaken(p, dir.path);
  if (taken) throw new Error(`provisioning: ${dir.path} is already a ${taken}`);
  p.directories.push(dir);
}

export function addLink(p: ProvisioningSpec, link: ProvisionedLink): void {
  const taken = pathTaken(p, link.path);
  if (taken) throw new Error(`provisioning: ${link.path} is already a ${taken}`);
  p.links.push(link);
}

export function addUnit(p: ProvisioningSpec, unit: ProvisionedUnit): void {
  if (p.units.some((u) => u.name === unit.name)) throw new Error(`provisioning: unit ${unit.name} is already defined`);
  p.units.push(unit);
}

/** A deep copy, so a stage can extend a spec without changing its input. */
export function cloneSpec(p: ProvisioningSpec): ProvisioningSpec {
  const copyContents = (c: FileContents): FileContents =>
    Buffer.isBuffer(c) ? Buffer.from(c) : typeof c === 'string' ? c : { ...c, ...(c.verification ? { verification: { ...c.verification } } : {}) };
  return {
    hostname: p.hostname,
    users: p.users.map((u) => ({ ...u, sshAuthorizedKeys: [...u.sshAuthorizedKeys], ...(u.groups ? { groups: [...u.groups] } : {}) })),
    files: p.files.map((f) => ({ ...f, contents: copyContents(f.contents) })),
    directories: p.directories.map((d) => ({ ...d })),
    links: p.links.map((l) => ({ ...l })),
    units: p.units.map((u) => ({ ...u, ...(u.dropins ? { dropins: u.dropins.map((d) => ({ ...d })) } : {}) })),
    kernelArgs: [...p.kernelArgs],
    network: { ...p.network, match: { ...p.network.match, names: [...p.network.match.names] }, addresses: [...p.network.addresses], dns: [...p.network.dns] },
    commands: p.commands.map((c) => [...c]),
  };
}

export function isRemote(c: FileContents): c is RemoteContents {
  return typeof c === 'object' && !Buffer.isBuffer(c);
}

/**
 * The OEM partition's grub.cfg (base-images.md §5): appends `args` to Flatcar's kernel command line.
 * Flatcar's GRUB already passes its default consoles, so a disk build may leave consoleArgs() out.
 */
export function renderOemGrubCfg(nodeName: string, args: readonly string[], options: { oemId?: string } = {}): string {
  for (const a of args) {
    // The value sits inside GRUB double quotes: no quotes, expansions, escapes or spaces inside one arg.
    if (!a || /[\s"$\\`']/.test(a)) {
      throw new InputError(`kernel argument ${JSON.stringify(a)} cannot go into grub.cfg`, { hint: 'remove quotes, $, backslashes and spaces from kernel arguments' });
    }
  }
  if (options.oemId !== undefined && !/^[a-z0-9_-]+$/.test(options.oemId)) throw new InputError(`OEM id ${options.oemId} is not a plain name`);
  return renderTemplate('oem-grub.cfg', { node: nodeName, oemId: options.oemId ?? null, args: args.join(' ') });
}
