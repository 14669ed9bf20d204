// ProvisioningSpec → cloud-init NoCloud seed (user-data, meta-data, network-config) for HypriotOS.
// cloud-init reads YAML 1.1 (PyYAML), so everything is written in YAML 1.1 and strings such as
// "yes" or "0644" come out quoted. Files owned by users that cloud-init itself creates are chowned
// in runcmd: write_files runs before users exist, and HypriotOS's cloud-init predates `defer`.
import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import { Document, isSeq, parse, stringify } from 'yaml';
import { ConfigError, InputError } from '../builders/errors.ts';
import type { ClusterSpec, NodeSpec } from '../builders/spec.ts';
import { networkConfigV2 } from './network.ts';
import { isRemote, type ProvisionedFile, type ProvisioningSpec } from './provision.ts';

export interface CloudInitSeed {
  userData: string;
  metaData: string;
  networkConfig: string;
}

/** First line cloud-init requires to treat user-data as cloud-config. */
export const CLOUD_CONFIG_HEADER = '#cloud-config';
/** Where unit files and drop-ins go on a systemd distribution. */
export const SYSTEMD_UNIT_DIR = '/etc/systemd/system';
/** Passwordless sudo, as HypriotOS configures its default user. */
export const SUDO_NOPASSWD = 'ALL=(ALL) NOPASSWD:ALL';
export const DEFAULT_SHELL = '/bin/bash';

const yaml11 = (value: unknown) => stringify(value, { version: '1.1', lineWidth: 0 });
const octal = (mode: number) => `0${mode.toString(8).padStart(3, '0')}`;
const ownerOf = (user?: string, group?: string) => `${user ?? 'root'}:${group ?? user ?? 'root'}`;

interface WriteFile {
  path: string;
  permissions: string;
  owner: string;
  encoding?: 'b64';
  content: string;
}

function writeFile(f: Pick<ProvisionedFile, 'path' | 'mode' | 'contents'>): WriteFile {
  if (isRemote(f.contents)) {
    throw new InputError(`${f.path}: remote contents (${f.contents.source}) cannot be provisioned with cloud-init`, {
      hint: 'HypriotOS nodes need inline contents; remote sources are an Ignition (Flatcar) feature',
    });
  }
  const buf = typeof f.contents === 'string' ? Buffer.from(f.contents, 'utf8') : f.contents;
  // Text stays readable; anything YAML cannot carry verbatim (invalid UTF-8, control bytes) is base64.
  const text = isUtf8(buf) && !/[\0-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(buf.toString('utf8'));
  return {
    path: f.path,
    permissions: octal(f.mode),
    owner: 'root:root',
    ...(text ? { content: buf.toString('utf8') } : { encoding: 'b64' as const, content: buf.toString('base64') }),
  };
}

/** The runcmd list: directories, links, ownership, units, then the spec's own commands, in that order. */
export function runcmdFor(p: ProvisioningSpec): string[][] {
  const cmds: string[][] = [];
  for (const d of [...p.directories].sort((a, b) => (a.path < b.path ? -1 : 1))) {
    cmds.push(['install', '-d', '-m', octal(d.mode), '-o', d.user ?? 'root', '-g', d.group ?? d.user ?? 'root', d.path]);
  }
  for (const l of [...p.links].sort((a, b) => (a.path < b.path ? -1 : 1))) {
    const flags = l.hard ? (l.overwrite ? ['-f'] : []) : [l.overwrite ? '-sfn' : '-s'];
    cmds.push(['ln', ...flags, l.target, l.path]);
    if (l.user || l.group) cmds.push(['chown', '-h', ownerOf(l.user, l.group), l.path]);
  }
  for (const f of [...p.files].sort((a, b) => (a.path < b.path ? -1 : 1))) {
    if (f.user || f.group) cmds.push(['chown', ownerOf(f.user, f.group), f.path]);
  }
  const units = [...p.units].sort((a, b) => (a.name < b.name ? -1 : 1));
  if (units.some((u) => u.contents !== undefined || (u.dropins ?? []).length > 0)) cmds.push(['systemctl', 'daemon-reload']);
  for (const u of units) {
    if (u.mask) cmds.push(['systemctl', 'mask', u.name]);
    else if (u.enabled === true) {
      cmds.push(['systemctl', 'enable', u.name]);
      // --no-block: a unit ordered after cloud-final would otherwise deadlock this very runcmd.
      cmds.push(['systemctl', 'start', '--no-block', u.name]);
    } else if (u.enabled === false) cmds.push(['systemctl', 'disable', u.name]);
  }
  cmds.push(...p.commands.map((c) => [...c]));
  return cmds;
}

function userDataObject(p: ProvisioningSpec): Record<string, unknown> {
  const files: WriteFile[] = p.files.map(writeFile);
  for (const u of p.units) {
    if (u.contents !== undefined) files.push(writeFile({ path: `${SYSTEMD_UNIT_DIR}/${u.name}`, mode: 0o644, contents: u.contents }));
    for (const d of u.dropins ?? []) files.push(writeFile({ path: `${SYSTEMD_UNIT_DIR}/${u.name}.d/${d.name}`, mode: 0o644, contents: d.contents }));
  }
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  const users = [...p.users]
    .sort((a, b) => (a.name < b.name ? -1 : 1))
    .map((u) => ({
      name: u.name,
      ...(u.groups && u.groups.length > 0 ? { groups: [...u.groups] } : {}),
      shell: DEFAULT_SHELL,
      ...(u.sudo ? { sudo: SUDO_NOPASSWD } : {}),
      lock_passwd: true,
      ...(u.sshAuthorizedKeys.length > 0 ? { ssh_authorized_keys: [...new Set(u.sshAuthorizedKeys)] } : {}),
    }));
  const runcmd = runcmdFor(p);
  return {
    hostname: p.hostname,
    preserve_hostname: false,
    manage_etc_hosts: true,
    users,
    ssh_pwauth: false,
    disable_root: true,
    ...(files.length > 0 ? { write_files: files } : {}),
    ...(runcmd.length > 0 ? { runcmd } : {}),
  };
}

/** instance-id: stable for the same cluster, node and config; a new id makes cloud-init run first boot again. */
export function instanceId(cluster: string, node: string, userData: string, networkConfig: string): string {
  const digest = createHash('sha256').update(userData).update('\0').update(networkConfig).digest('hex').slice(0, 16);
  return `bramble-${cluster}-${node}-${digest}`;
}

/** Render the NoCloud seed files for a HypriotOS node. */
export function renderCloudInit(p: ProvisioningSpec, context: { cluster: ClusterSpec | string; node: NodeSpec | string }): CloudInitSeed {
  const cluster = typeof context.cluster === 'string' ? context.cluster : context.cluster.name;
  const node = typeof context.node === 'string' ? context.node : context.node.name;
  const doc = new Document(userDataObject(p), { version: '1.1' });
  // One command per line: [systemctl, enable, x.service] reads better than a nested block list.
  const runcmd = doc.get('runcmd', true);
  if (isSeq(runcmd)) for (const item of runcmd.items) if (isSeq(item)) item.flow = true;
  const userData = `${CLOUD_CONFIG_HEADER}\n# Written by bramble for node ${node} of cluster ${cluster}.\n${doc.toString({ lineWidth: 0 })}`;
  const networkConfig = yaml11(networkConfigV2(p.network));
  const metaData = yaml11({ 'instance-id': instanceId(cluster, node, userData, networkConfig), 'local-hostname': p.hostname });
  return { userData, metaData, networkConfig };
}

/**
 * Structural check of a network-config version 2 document (cloud-init 22.4's `schema` command
 * cannot check network-config). Throws ConfigError naming the key.
 */
export function checkNetworkConfigV2(text: string, file = 'network-config'): void {
  const fail = (key: string, problem: string): never => {
    throw new ConfigError(file, key, undefined, problem);
  };
  let doc: unknown;
  try {
    doc = parse(text, { version: '1.1' });
  } catch (e) {
    fail('', `not YAML: ${(e as Error).message}`);
  }
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
  const root = isObj(doc) && isObj(doc.network) ? doc.network : doc;
  if (!isObj(root)) return fail('', 'must be a mapping');
  if (root.version !== 2) fail('version', `must be 2, not ${JSON.stringify(root.version)}`);
  for (const k of Object.keys(root)) if (!['version', 'ethernets', 'bonds', 'bridges', 'vlans', 'wifis', 'renderer'].includes(k)) fail(k, 'unknown key');
  if (!isObj(root.ethernets) || Object.keys(root.ethernets).length === 0) return fail('ethernets', 'must map at least one interface');
  for (const [name, eth] of Object.entries(root.ethernets)) {
    const at = `ethernets.${name}`;
    if (!isObj(eth)) return fail(at, 'must be a mapping');
    if (eth.match !== undefined && (!isObj(eth.match) || typeof eth.match.macaddress !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(eth.match.macaddress))) {
      fail(`${at}.match`, 'must be {macaddress: <lower-case MAC>}');
    }
    if (eth.dhcp4 !== undefined && typeof eth.dhcp4 !== 'boolean') fail(`${at}.dhcp4`, 'must be true or false');
    if (eth.addresses !== undefined && (!Array.isArray(eth.addresses) || !eth.addresses.every((a) => typeof a === 'string' && /\/\d+$/.test(a)))) {
      fail(`${at}.addresses`, 'must be a list of CIDR addresses');
    }
    if (eth.dhcp4 !== true && !(Array.isArray(eth.addresses) && eth.addresses.length > 0)) fail(at, 'needs dhcp4: true or static addresses');
    if (eth.nameservers !== undefined && (!isObj(eth.nameservers) || !Array.isArray(eth.nameservers.addresses))) fail(`${at}.nameservers`, 'must be {addresses: [...]}');
  }
}
