// The shape of cluster.toml: every table, every key and its TOML type. The first validation pass checks
// the document against this (unknown keys with a suggestion, wrong types); value rules come after.
import type { KeyPath } from './positions.ts';
import { Problems, isTable, show, suggest, tomlType, type TomlTable, type TomlValue } from './problems.ts';

export type KeyKind = 'string' | 'boolean' | 'string-array' | 'string-table' | 'size' | 'table' | 'table-array';

export interface KeySpec {
  kind: KeyKind;
  /** A TOML line showing a correct value; used in hints (and checked against the docs by a test). */
  example: string;
  /** For 'table' and 'table-array': the keys inside. */
  keys?: Record<string, KeySpec>;
}

const sourcesKeys: Record<string, KeySpec> = {
  flatcar: { kind: 'string', example: 'flatcar = "https://{channel}.release.flatcar-linux.net"' },
  hypriot: { kind: 'string', example: 'hypriot = "https://github.com/hypriot/image-builder-rpi/releases/download"' },
  kubernetes: { kind: 'string', example: 'kubernetes = "https://dl.k8s.io/release"' },
  github: { kind: 'string', example: 'github = "https://github.com"' },
  ipxe: { kind: 'string', example: 'ipxe = "https://boot.ipxe.org"' },
  firmware: { kind: 'string', example: 'firmware = "https://github.com/pftf/RPi4/releases/download"' },
  registries: { kind: 'string-table', example: 'registries = { "registry.k8s.io" = "http://127.0.0.1:5000" }' },
  trusted_keys: { kind: 'string-array', example: 'trusted_keys = ["keys/mirror.asc"]' },
};

export const sourcesSection: KeySpec = { kind: 'table', example: '[sources]', keys: sourcesKeys };

export const clusterSchema: KeySpec = {
  kind: 'table',
  example: '',
  keys: {
    name: { kind: 'string', example: 'name = "homelab"' },
    os: {
      kind: 'table',
      example: '[os]',
      keys: {
        base: { kind: 'string', example: 'base = "flatcar"' },
        channel: { kind: 'string', example: 'channel = "stable"' },
        version: { kind: 'string', example: 'version = "current"' },
      },
    },
    kubernetes: {
      kind: 'table',
      example: '[kubernetes]',
      keys: {
        version: { kind: 'string', example: 'version = "v1.33.4"' },
        cni: { kind: 'string', example: 'cni = "flannel"' },
      },
    },
    network: {
      kind: 'table',
      example: '[network]',
      keys: {
        node_cidr: { kind: 'string', example: 'node_cidr = "192.168.50.0/24"' },
        gateway: { kind: 'string', example: 'gateway = "192.168.50.1"' },
        dns: { kind: 'string-array', example: 'dns = ["192.168.50.1"]' },
        pod_cidr: { kind: 'string', example: 'pod_cidr = "10.244.0.0/16"' },
        service_cidr: { kind: 'string', example: 'service_cidr = "10.96.0.0/12"' },
        api_vip: { kind: 'string', example: 'api_vip = "192.168.50.5"' },
      },
    },
    ssh: {
      kind: 'table',
      example: '[ssh]',
      keys: {
        authorized_keys: { kind: 'string-array', example: 'authorized_keys = ["ssh-ed25519 AAAAC3Nza... you@laptop"]' },
      },
    },
    registry: {
      kind: 'table',
      example: '[registry]',
      keys: {
        mirror: { kind: 'boolean', example: 'mirror = true' },
        extra_images: { kind: 'string-array', example: 'extra_images = ["docker.io/library/nginx:1.27"]' },
      },
    },
    first_node: {
      kind: 'table',
      example: '[first_node]',
      keys: {
        serve: { kind: 'boolean', example: 'serve = true' },
        dhcp: { kind: 'string', example: 'dhcp = "proxy"' },
        interface: { kind: 'string', example: 'interface = "eth1"' },
      },
    },
    provision: {
      kind: 'table',
      example: '[provision]',
      keys: {
        kernel_args: { kind: 'string-array', example: 'kernel_args = ["flatcar.autologin"]' },
        snippets: { kind: 'string-array', example: 'snippets = ["snippets/motd.yaml"]' },
      },
    },
    sources: sourcesSection,
    nodes: {
      kind: 'table-array',
      example: '[[nodes]]',
      keys: {
        name: { kind: 'string', example: 'name = "cp-1"' },
        role: { kind: 'string', example: 'role = "control-plane"' },
        hardware: { kind: 'string', example: 'hardware = "rpi4"' },
        boot: { kind: 'string', example: 'boot = "disk"' },
        mac: { kind: 'string', example: 'mac = "52:54:00:12:34:56"' },
        ip: { kind: 'string', example: 'ip = "192.168.50.10"' },
        install: { kind: 'boolean', example: 'install = true' },
        size: { kind: 'size', example: 'size = "16GiB"' },
        kernel_args: { kind: 'string-array', example: 'kernel_args = ["usbcore.autosuspend=-1"]' },
        ram_limit_3gb: { kind: 'boolean', example: 'ram_limit_3gb = true' },
        snippets: { kind: 'string-array', example: 'snippets = ["snippets/cp-1.yaml"]' },
      },
    },
  },
};

const kindWords: Record<KeyKind, string> = {
  string: 'a string',
  boolean: 'a boolean (true or false)',
  'string-array': 'an array of strings',
  'string-table': 'a table of strings',
  size: 'a size string such as "16GiB" or a whole number of bytes',
  table: 'a table',
  'table-array': 'an array of tables ([[name]] sections)',
};

/**
 * Check a table against its spec: report unknown keys and wrong types. Returns a copy holding only the
 * well-typed values, so value rules never see a value of the wrong type.
 */
export function checkShape(table: TomlTable, spec: KeySpec, path: KeyPath, p: Problems): TomlTable {
  const keys = spec.keys ?? {};
  const known = Object.keys(keys);
  const clean: TomlTable = {};
  for (const [key, value] of Object.entries(table)) {
    const at = [...path, key];
    const sub = keys[key];
    if (!sub) {
      const where = path.length === 0 ? 'the top level' : typeof path[path.length - 1] === 'number' ? `[[${pathLabel(path)}]]` : `[${pathLabel(path)}]`;
      p.add(at, `unknown key "${key}" ${path.length ? 'in' : 'at'} ${where}`, suggest(key, known, 'known keys'));
      continue;
    }
    const checked = checkKind(value, sub, at, p);
    if (checked !== undefined) clean[key] = checked;
  }
  return clean;
}

function pathLabel(path: KeyPath): string {
  return path.filter((s) => typeof s === 'string').join('.');
}

function checkKind(value: TomlValue, spec: KeySpec, at: KeyPath, p: Problems): TomlValue | undefined {
  const wrong = () => {
    p.add(at, `expected ${kindWords[spec.kind]}, got ${`${tomlType(value)} ${show(value)}`.trim()}`, `write it like: ${spec.example}`);
    return undefined;
  };
  switch (spec.kind) {
    case 'string':
      return typeof value === 'string' ? value : wrong();
    case 'boolean':
      return typeof value === 'boolean' ? value : wrong();
    case 'size':
      return typeof value === 'string' || (typeof value === 'number' && Number.isInteger(value)) ? value : wrong();
    case 'string-array': {
      if (!Array.isArray(value)) return wrong();
      let ok = true;
      value.forEach((v, i) => {
        if (typeof v !== 'string') {
          ok = false;
          p.add([...at, i], `expected a string, got ${`${tomlType(v)} ${show(v)}`.trim()}`, `write it like: ${spec.example}`);
        }
      });
      return ok ? value : undefined;
    }
    case 'string-table': {
      if (!isTable(value)) return wrong();
      let ok = true;
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') {
          ok = false;
          p.add([...at, k], `expected a string, got ${`${tomlType(v)} ${show(v)}`.trim()}`, `write it like: ${spec.example}`);
        }
      }
      return ok ? value : undefined;
    }
    case 'table':
      return isTable(value) ? checkShape(value, spec, at, p) : wrong();
    case 'table-array':
      if (!Array.isArray(value) || !value.every(isTable)) return wrong();
      return value.map((t, i) => checkShape(t as TomlTable, spec, [...at, i], p));
  }
}

/** Every documented key path, e.g. 'network.node_cidr', 'nodes[].mac' (for the docs test). */
export function allKeyPaths(spec: KeySpec = clusterSchema, prefix = ''): string[] {
  const out: string[] = [];
  for (const [key, sub] of Object.entries(spec.keys ?? {})) {
    const here = prefix ? `${prefix}.${key}` : key;
    out.push(here);
    if (sub.kind === 'table') out.push(...allKeyPaths(sub, here));
    if (sub.kind === 'table-array') out.push(...allKeyPaths(sub, `${here}[]`));
  }
  return out;
}
