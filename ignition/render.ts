// ProvisioningSpec → Ignition config. Deterministic: entries sorted by path/name, keys in a fixed
// (sorted) order, contents inlined as data: URLs, no compression.
import {
  isRemote,
  FLATCAR_USER,
  type FileContents,
  type ProvisionedUser,
  type ProvisioningSpec,
} from '../overlays/provision.ts';
import { renderTemplate } from '../overlays/render-templates.ts';
import {
  DEFAULT_IGNITION_VERSION,
  type IgnitionConfig,
  type IgnitionDirectory,
  type IgnitionFile,
  type IgnitionLink,
  type IgnitionVersion,
  type PasswdUser,
  type Resource,
  type Unit,
} from './model.ts';
import { originIndex, validateIgnition } from './validate.ts';

export interface RenderIgnitionOptions {
  version?: IgnitionVersion;
}

/** The unit that runs ProvisioningSpec.commands once; the stamp file keeps it from running again. */
export const FIRST_BOOT_UNIT = 'bramble-first-boot.service';
export const FIRST_BOOT_STAMP = '/var/lib/bramble-first-boot.done';
/** Flatcar grants passwordless sudo to group `sudo` (core is already a member). */
const FLATCAR_SUDO_GROUP = 'sudo';

/** RFC 3986 unreserved characters; everything else is percent-encoded. */
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/**
 * RFC 2397 data URL for `data`: percent-encoded (readable for text) or base64, whichever is shorter,
 * percent-encoding on a tie. Both forms are what Ignition's data-URL parser accepts.
 */
export function toDataUrl(data: Buffer | string): string {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const base64 = `data:;base64,${buf.toString('base64')}`;
  let pct = 'data:,';
  for (const byte of buf) {
    const ch = String.fromCharCode(byte);
    pct += byte < 0x80 && UNRESERVED.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    if (pct.length > base64.length) return base64;
  }
  return pct;
}

function resource(c: FileContents): Resource {
  if (isRemote(c)) {
    return { source: c.source, ...(c.verification ? { verification: { hash: c.verification.hash } } : {}) };
  }
  return { source: toDataUrl(c) };
}

const owner = (user?: string, group?: string) => ({
  ...(user ? { user: { name: user } } : {}),
  ...(group ? { group: { name: group } } : {}),
});

/** Quote one argument for a systemd Exec line: `%` specifiers and `$` expansion are escaped. */
export function systemdQuote(arg: string): string {
  const escaped = arg.replaceAll('%', '%%').replaceAll('$', () => '$$');
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped)) return escaped;
  return `"${escaped.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`;
}

export function firstBootUnit(commands: string[][]): string {
  return renderTemplate('first-boot.service', {
    commands: commands.map((argv) => argv.map(systemdQuote).join(' ')),
    stamp: FIRST_BOOT_STAMP,
  });
}

function passwdUser(u: ProvisionedUser): PasswdUser {
  const groups = [...(u.groups ?? [])];
  if (u.sudo && u.name !== FLATCAR_USER && !groups.includes(FLATCAR_SUDO_GROUP)) groups.push(FLATCAR_SUDO_GROUP);
  return {
    name: u.name,
    ...(u.sshAuthorizedKeys.length > 0 ? { sshAuthorizedKeys: [...new Set(u.sshAuthorizedKeys)] } : {}),
    ...(groups.length > 0 ? { groups } : {}),
  };
}

const byKey = <T>(key: (t: T) => string) => (a: T, b: T) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);

/** Render a node's provisioning spec as an Ignition config of the chosen spec version (default 3.4.0). */
export function renderIgnition(p: ProvisioningSpec, options: RenderIgnitionOptions = {}): IgnitionConfig {
  const files: IgnitionFile[] = p.files.map((f) => ({
    path: f.path,
    mode: f.mode,
    contents: resource(f.contents),
    ...(f.overwrite !== undefined ? { overwrite: f.overwrite } : {}),
    ...owner(f.user, f.group),
  }));
  const directories: IgnitionDirectory[] = p.directories.map((d) => ({ path: d.path, mode: d.mode, ...owner(d.user, d.group) }));
  const links: IgnitionLink[] = p.links.map((l) => ({
    path: l.path,
    target: l.target,
    ...(l.hard !== undefined ? { hard: l.hard } : {}),
    ...(l.overwrite !== undefined ? { overwrite: l.overwrite } : {}),
    ...owner(l.user, l.group),
  }));
  const units: Unit[] = p.units.map((u) => ({
    name: u.name,
    ...(u.enabled !== undefined ? { enabled: u.enabled } : {}),
    ...(u.mask !== undefined ? { mask: u.mask } : {}),
    ...(u.contents !== undefined ? { contents: u.contents } : {}),
    ...(u.dropins && u.dropins.length > 0
      ? { dropins: u.dropins.map((d) => ({ name: d.name, contents: d.contents })).sort(byKey((d) => d.name)) }
      : {}),
  }));
  if (p.commands.length > 0) units.push({ name: FIRST_BOOT_UNIT, enabled: true, contents: firstBootUnit(p.commands) });
  const users = p.users.map(passwdUser);

  const cfg: IgnitionConfig = { ignition: { version: options.version ?? DEFAULT_IGNITION_VERSION } };
  if (files.length + directories.length + links.length > 0) {
    cfg.storage = {
      ...(files.length > 0 ? { files: files.sort(byKey((f) => f.path)) } : {}),
      ...(directories.length > 0 ? { directories: directories.sort(byKey((d) => d.path)) } : {}),
      ...(links.length > 0 ? { links: links.sort(byKey((l) => l.path)) } : {}),
    };
  }
  if (units.length > 0) cfg.systemd = { units: units.sort(byKey((u) => u.name)) };
  if (users.length > 0) cfg.passwd = { users: users.sort(byKey((u) => u.name)) };
  return cfg;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  return value;
}

/** Serialise with sorted keys and two-space indentation; same config → same bytes. */
export function ignitionToJson(cfg: IgnitionConfig): string {
  return `${JSON.stringify(sortKeys(cfg), null, 2)}\n`;
}

/**
 * Render, validate (official schema + semantic checks, blaming user snippets by origin) and
 * serialise: the one call the build needs per node.
 */
export function renderIgnitionJson(p: ProvisioningSpec, options: RenderIgnitionOptions = {}): string {
  const version = options.version ?? DEFAULT_IGNITION_VERSION;
  const cfg = renderIgnition(p, { version });
  validateIgnition(cfg, { version, origins: originIndex(p) });
  return ignitionToJson(cfg);
}
