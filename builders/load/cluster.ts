// From a shape-checked cluster.toml table to a ClusterSpec: top-level, [os], [kubernetes], [ssh],
// [registry], then nodes and network. Every problem is reported into `p`; nothing is thrown here.
import { archOf, type Cni, type ClusterSpec, type FlatcarChannel, type OsBase, type Sources } from '../spec.ts';
import {
  currentVersion,
  defaultFlatcarChannel,
  defaultHypriotVersion,
  defaultKubernetesVersion,
  defaultKubernetesVersionFor,
  defaultOsVersion,
  flatcarChannels,
  parseKubernetesVersion,
} from '../versions.ts';
import { readNetwork } from './network.ts';
import { readNodes } from './nodes.ts';
import { Problems, isTable, suggest, type TomlTable } from './problems.ts';
import { readSourcesTable } from './sources.ts';
import { readKernelArgs, readSnippets } from './provision.ts';
import { readFirstNode } from './first-node.ts';
import type { ConfigError } from '../errors.ts';
import { checkImageRef, checkLabel, checkSshKey } from './values.ts';

export const osBases: readonly OsBase[] = ['flatcar', 'hypriot'];
export const cnis: readonly Cni[] = ['flannel', 'calico', 'cilium', 'none'];

const flatcarVersionPattern = /^\d+\.\d+\.\d+$/;
const hypriotVersionPattern = /^v?(\d+\.\d+\.\d+)$/;

/** `{ [key]: list }` when the list has entries, else nothing: specs carry no empty optional lists. */
const nonEmpty = <K extends string, T>(key: K, list: T[]) => (list.length ? ({ [key]: list } as Record<K, T[]>) : {});

/** nodes[].ram_limit_3gb: only meaningful for a Flatcar Raspberry Pi 4, whose UEFI firmware has the switch. */
function readRamLimit(v: unknown, d: { index: number; hardware?: string }, base: OsBase, p: Problems): { ramLimit3GB?: boolean } {
  if (typeof v !== 'boolean') return {};
  if (d.hardware !== 'rpi4' || base !== 'flatcar') {
    p.add(['nodes', d.index, 'ram_limit_3gb'], 'ram_limit_3gb is a setting of the Raspberry Pi 4 UEFI firmware, which only Flatcar rpi4 images carry', 'remove it from this node');
    return {};
  }
  return { ramLimit3GB: v };
}

const section = (t: TomlTable, key: string): TomlTable => (isTable(t[key]) ? (t[key] as TomlTable) : {});

export interface ClusterDraft {
  spec: Omit<ClusterSpec, 'sources'>;
  sources: Partial<Sources>;
  /** Problems found inside other files the config names (snippets), with their own file and line. */
  foreign: ConfigError[];
}

export function readCluster(t: TomlTable, p: Problems, file: string, baseDir: string): ClusterDraft {
  let name = 'bramble';
  if (typeof t.name !== 'string') {
    if (!p.has(['name'])) p.add(['name'], 'the cluster has no name', 'add name = "homelab" at the top of the file (it names out/<name>/)');
  } else {
    const r = checkLabel(t.name, 'cluster name');
    if (r.ok) name = r.value;
    else p.add(['name'], r.problem, r.hint);
  }

  const os = readOs(section(t, 'os'), p);
  const kubernetes = readKubernetes(section(t, 'kubernetes'), os.base, p);

  const ssh = section(t, 'ssh');
  const authorizedKeys: string[] = [];
  ((ssh.authorized_keys as string[] | undefined) ?? []).forEach((k, i) => {
    const r = checkSshKey(k);
    if (r.ok) authorizedKeys.push(r.value);
    else p.add(['ssh', 'authorized_keys', i], r.problem, r.hint);
  });

  const registry = section(t, 'registry');
  const extraImages: string[] = [];
  ((registry.extra_images as string[] | undefined) ?? []).forEach((ref, i) => {
    const r = checkImageRef(ref);
    if (r.ok) extraImages.push(r.value);
    else p.add(['registry', 'extra_images', i], r.problem, r.hint);
  });

  const sources = isTable(t.sources) ? readSourcesTable(t.sources as TomlTable, ['sources'], p, baseDir) : {};

  const foreign: ConfigError[] = [];
  const provisionTable = section(t, 'provision');
  const provision = {
    kernelArgs: readKernelArgs(provisionTable.kernel_args, ['provision', 'kernel_args'], p),
    snippets: readSnippets(provisionTable.snippets, ['provision', 'snippets'], p, baseDir, foreign),
  };
  const nodeTables = (Array.isArray(t.nodes) ? t.nodes : []) as TomlTable[];

  const drafts = readNodes(t.nodes as TomlTable[] | undefined, os.baseKnown ? os.base : undefined, p);
  const { network, ips } = readNetwork(section(t, 'network'), drafts, p);

  const nodes = drafts.map((d, i) => ({
    name: d.name ?? `nodes-${d.index}`,
    role: d.role ?? 'worker',
    hardware: d.hardware ?? 'pc',
    boot: d.boot,
    ...(d.mac !== undefined && { mac: d.mac }),
    ...(ips[i] !== undefined && { ip: ips[i] }),
    install: d.install,
    ...(d.sizeBytes !== undefined && { sizeBytes: d.sizeBytes }),
    arch: archOf(d.hardware ?? 'pc', os.base),
    line: p.lines.lineOf(['nodes', d.index]),
    ...readRamLimit(nodeTables[d.index]?.ram_limit_3gb, d, os.base, p),
    ...nonEmpty('kernelArgs', readKernelArgs(nodeTables[d.index]?.kernel_args, ['nodes', d.index, 'kernel_args'], p)),
    ...nonEmpty('snippets', readSnippets(nodeTables[d.index]?.snippets, ['nodes', d.index, 'snippets'], p, baseDir, foreign)),
  }));

  const firstNode = readFirstNode(section(t, 'first_node'), nodes, os.base, registry.mirror !== false, p);

  return {
    spec: {
      name,
      source: file,
      os: { base: os.base, channel: os.channel, version: os.version },
      kubernetes,
      network,
      ssh: { authorizedKeys },
      registry: { mirror: registry.mirror !== false, extraImages },
      ...(firstNode && { firstNode }),
      ...(provision.kernelArgs.length || provision.snippets.length ? { provision } : {}),
      nodes,
    },
    sources,
    foreign,
  };
}

function readOs(t: TomlTable, p: Problems) {
  let base: OsBase = 'flatcar';
  let baseKnown = true;
  if (typeof t.base === 'string') {
    if ((osBases as readonly string[]).includes(t.base)) base = t.base as OsBase;
    else {
      baseKnown = false;
      p.add(['os', 'base'], `base "${t.base}" is not one of ${osBases.join(', ')}`, suggest(t.base, osBases));
    }
  }
  let channel: FlatcarChannel = defaultFlatcarChannel;
  if (typeof t.channel === 'string') {
    if (base === 'hypriot') {
      p.add(['os', 'channel'], 'channel is a Flatcar setting; HypriotOS has no channels', 'remove channel, or pin a HypriotOS release with version = "1.12.3"');
    } else if ((flatcarChannels as readonly string[]).includes(t.channel)) channel = t.channel as FlatcarChannel;
    else p.add(['os', 'channel'], `channel "${t.channel}" is not one of ${flatcarChannels.join(', ')}`, suggest(t.channel, flatcarChannels));
  }
  let version = defaultOsVersion(base);
  if (typeof t.version === 'string') {
    if (base === 'flatcar') {
      if (t.version === currentVersion || flatcarVersionPattern.test(t.version)) version = t.version;
      else p.add(['os', 'version'], `"${t.version}" is not a Flatcar version`, `write "current" (the channel's latest) or a release such as "4593.2.5"`);
    } else {
      // HypriotOS is inactive: "current" is its last release.
      const m = hypriotVersionPattern.exec(t.version);
      if (t.version === currentVersion) version = defaultHypriotVersion;
      else if (m) version = m[1]!;
      else p.add(['os', 'version'], `"${t.version}" is not a HypriotOS version`, `write "current" or a release such as "${defaultHypriotVersion}"`);
    }
  }
  return { base, baseKnown, channel, version };
}

function readKubernetes(t: TomlTable, base: OsBase, p: Problems): ClusterSpec['kubernetes'] {
  let version = defaultKubernetesVersionFor(base);
  if (typeof t.version === 'string') {
    const k = parseKubernetesVersion(t.version);
    if (k) version = `v${k.major}.${k.minor}.${k.patch}`;
    else {
      const minorOnly = /^v?\d+\.\d+$/.test(t.version);
      p.add(
        ['kubernetes', 'version'],
        `"${t.version}" is not an exact Kubernetes release`,
        minorOnly ? `name the patch release too, e.g. "${t.version.startsWith('v') ? '' : 'v'}${t.version}.0"` : `write an exact patch release such as "${defaultKubernetesVersion}"`,
      );
    }
  }
  let cni: Cni = 'flannel';
  if (typeof t.cni === 'string') {
    if ((cnis as readonly string[]).includes(t.cni)) cni = t.cni as Cni;
    else p.add(['kubernetes', 'cni'], `cni "${t.cni}" is not one of ${cnis.join(', ')}`, suggest(t.cni, cnis));
  }
  return { version, cni };
}
