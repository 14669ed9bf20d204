// [[nodes]]: each node's own keys, the base/hardware/boot pairs, duplicates and the control-plane rule.
// Addresses are checked with the network (network.ts), which needs the node CIDR.
import type { BootMode, Hardware, OsBase, Role } from '../spec.ts';
import { Problems, suggest, type TomlTable } from './problems.ts';
import { checkLabel, checkMac, checkSize } from './values.ts';

export const roles: readonly Role[] = ['control-plane', 'worker'];
export const hardwares: readonly Hardware[] = ['rpi4', 'rpi3', 'pc', 'arm64-uefi'];
export const bootModes: readonly BootMode[] = ['disk', 'pxe'];

/** Hardware each base OS has images for (base-images.md §1, §11, §12). */
export const hardwareByBase: Record<OsBase, readonly Hardware[]> = {
  flatcar: ['rpi4', 'pc', 'arm64-uefi'],
  hypriot: ['rpi3', 'rpi4'],
};

/** A node as read from the file; fields are undefined where the file had a problem. */
export interface NodeDraft {
  index: number;
  name?: string;
  role?: Role;
  hardware?: Hardware;
  boot: BootMode;
  mac?: string;
  /** Explicit address as written (checked later against the network). */
  ip?: string;
  install: boolean;
  sizeBytes?: number;
}

export function readNodes(nodes: TomlTable[] | undefined, base: OsBase | undefined, p: Problems): NodeDraft[] {
  if (!nodes || nodes.length === 0) {
    // A `nodes` key of the wrong type has already been reported.
    if (p.has(['nodes'])) return [];
    p.add(['nodes'], 'the cluster has no nodes', 'add at least one [[nodes]] table with name, role = "control-plane" and hardware');
    return [];
  }
  const drafts = nodes.map((t, i) => readNode(t, i, base, p));
  checkDuplicates(drafts, 'name', p);
  checkDuplicates(drafts, 'mac', p);
  if (!drafts.some((d) => d.role === 'control-plane') && drafts.every((d) => d.role !== undefined)) {
    p.add(['nodes'], 'no node has role = "control-plane"', 'set role = "control-plane" on at least one node (the first one runs kubeadm init)');
  }
  return drafts;
}

function readEnum<T extends string>(t: TomlTable, key: string, choices: readonly T[], at: (string | number)[], p: Problems): T | undefined {
  const v = t[key];
  if (typeof v !== 'string') return undefined;
  if ((choices as readonly string[]).includes(v)) return v as T;
  const hint = v === 'master' ? 'Kubernetes calls it "control-plane" now' : suggest(v, choices);
  p.add([...at, key], `${key} "${v}" is not one of ${choices.join(', ')}`, hint);
  return undefined;
}

function readNode(t: TomlTable, index: number, base: OsBase | undefined, p: Problems): NodeDraft {
  const at = ['nodes', index];
  const d: NodeDraft = { index, boot: 'disk', install: false };
  for (const key of ['name', 'role', 'hardware'] as const) {
    if (!p.has([...at, key])) {
      p.add([...at, key], `node has no ${key}`, `add ${key === 'name' ? 'name = "worker-1"' : key === 'role' ? 'role = "worker"' : 'hardware = "pc"'} to this [[nodes]] table`);
    }
  }
  if (typeof t.name === 'string') {
    const r = checkLabel(t.name, 'node name');
    if (r.ok) d.name = r.value;
    else p.add([...at, 'name'], r.problem, `${r.hint} (node names become host names and Kubernetes node names)`);
  }
  d.role = readEnum(t, 'role', roles, at, p);
  d.hardware = readEnum(t, 'hardware', hardwares, at, p);
  d.boot = readEnum(t, 'boot', bootModes, at, p) ?? 'disk';
  if (typeof t.mac === 'string') {
    const r = checkMac(t.mac);
    if (r.ok) d.mac = r.value;
    else p.add([...at, 'mac'], r.problem, r.hint);
  }
  if (typeof t.ip === 'string') d.ip = t.ip;
  if (typeof t.install === 'boolean') d.install = t.install;
  if (t.size !== undefined) {
    const r = checkSize(t.size as string | number);
    if (r.ok) d.sizeBytes = r.value;
    else p.add([...at, 'size'], r.problem, r.hint);
  }

  const name = d.name ? `node "${d.name}"` : 'this node';
  if (base && d.hardware && !hardwareByBase[base].includes(d.hardware)) {
    p.add([...at, 'hardware'], ...baseHardwareProblem(base, d.hardware, name));
  }
  if (d.boot === 'pxe') {
    if (base === 'hypriot') {
      p.add([...at, 'boot'], `${name} netboots, but HypriotOS has no PXE images`, 'use boot = "disk" (an SD card image), or [os] base = "flatcar" with pc/arm64-uefi nodes');
    } else if (d.hardware === 'rpi4' || d.hardware === 'rpi3') {
      p.add([...at, 'boot'], `${name} is a Raspberry Pi; bramble netboots only UEFI/BIOS machines`, 'use boot = "disk", or hardware = "arm64-uefi" for a generic UEFI board that netboots');
    }
    if (!p.has([...at, 'mac'])) {
      p.add([...at, 'mac'], `${name} netboots but has no mac`, 'add mac = "…" with the MAC of the NIC it netboots from; the PXE tree finds its config by MAC');
    }
    if (p.has([...at, 'size'])) p.add([...at, 'size'], `size is for disk images, but ${name} netboots`, 'remove size, or set boot = "disk"');
  } else if (d.install) {
    p.add([...at, 'install'], `install = true needs boot = "pxe" (${name} boots from its own disk image)`, 'remove install, or set boot = "pxe" to netboot once and install to disk');
  }
  return d;
}

function baseHardwareProblem(base: OsBase, hw: Hardware, name: string): [string, string] {
  if (base === 'flatcar' && hw === 'rpi3') {
    return [`Flatcar has no image for the Raspberry Pi 3 (${name})`, 'use [os] base = "hypriot" for rpi3 nodes (32-bit HypriotOS), or rpi4 hardware with Flatcar'];
  }
  return [
    `HypriotOS runs only on Raspberry Pi (rpi3, rpi4), not on ${hw} (${name})`,
    `use [os] base = "flatcar" for ${hw} nodes; one cluster has one base OS`,
  ];
}

function checkDuplicates(drafts: NodeDraft[], key: 'name' | 'mac', p: Problems) {
  const seen = new Map<string, number>();
  for (const d of drafts) {
    const v = d[key];
    if (v === undefined) continue;
    const first = seen.get(v);
    if (first === undefined) {
      seen.set(v, d.index);
      continue;
    }
    const line = p.lines.lineOf(['nodes', first, key]);
    p.add(['nodes', d.index, key], `duplicate ${key} "${v}": nodes[${first}] (line ${line}) has it too`, `every node needs its own ${key}`);
  }
}
