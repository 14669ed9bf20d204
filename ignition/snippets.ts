// User snippets: a Butane-style YAML subset (storage.files, storage.links, systemd.units,
// passwd.users) merged into a node's provisioning spec. Every problem is a ConfigError naming the
// snippet file, the key path (storage.files[1].mode) and the line, all found in one pass.
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { posix } from 'node:path';
import { ConfigError, ConfigErrors } from '../builders/errors.ts';
import {
  cloneSpec,
  type ProvisionedDropin,
  type ProvisionedFile,
  type ProvisionedLink,
  type ProvisionedUnit,
  type ProvisionedUser,
  type ProvisioningSpec,
  type SpecOrigin,
} from '../overlays/provision.ts';
import { ALLOWED_SOURCE_SCHEMES, HASH_PATTERN, UNIT_NAME_PATTERN } from './validate.ts';

export interface Snippet {
  file: string;
  files: ProvisionedFile[];
  links: ProvisionedLink[];
  units: ProvisionedUnit[];
  users: ProvisionedUser[];
}

/** Butane's default file mode. */
export const SNIPPET_DEFAULT_FILE_MODE = 0o644;
const PERMISSION_MAX = 0o7777;
/** POSIX-ish account names, as useradd accepts them by default. */
const ACCOUNT_NAME = /^[a-z_][a-z0-9_-]{0,31}\$?$/;

class Reader {
  readonly errors: ConfigError[] = [];
  constructor(
    readonly file: string,
    private readonly lines: LineCounter,
  ) {}

  line(node: YamlNode | null | undefined): number | undefined {
    const offset = node?.range?.[0];
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }

  fail(keyPath: string, node: YamlNode | null | undefined, problem: string, hint?: string): undefined {
    this.errors.push(new ConfigError(this.file, keyPath, this.line(node), problem, hint));
    return undefined;
  }

  origin(keyPath: string, node: YamlNode | null | undefined): SpecOrigin {
    const line = this.line(node);
    return { file: this.file, keyPath, ...(line ? { line } : {}) };
  }

  /** A mapping with only `allowed` keys; returns its values by key. */
  map(node: unknown, keyPath: string, allowed: readonly string[]): Map<string, YamlNode | null> | undefined {
    if (!isMap(node)) return this.fail(keyPath, node as YamlNode, 'must be a mapping');
    const out = new Map<string, YamlNode | null>();
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
      const at = keyPath ? `${keyPath}.${key}` : String(key);
      if (key === undefined || !allowed.includes(key)) {
        this.fail(at, pair.key as YamlNode, 'unknown key', `allowed here: ${allowed.join(', ')}`);
        continue;
      }
      out.set(key, (pair.value as YamlNode | null) ?? null);
    }
    return out;
  }

  seq(node: YamlNode | null | undefined, keyPath: string): Array<YamlNode | null> | undefined {
    if (!isSeq(node)) return this.fail(keyPath, node, 'must be a list');
    return node.items as Array<YamlNode | null>;
  }

  str(node: YamlNode | null | undefined, keyPath: string): string | undefined {
    if (!isScalar(node) || typeof node.value !== 'string') return this.fail(keyPath, node, 'must be a string');
    return node.value;
  }

  bool(node: YamlNode | null | undefined, keyPath: string): boolean | undefined {
    if (!isScalar(node) || typeof node.value !== 'boolean') return this.fail(keyPath, node, 'must be true or false');
    return node.value;
  }

  strings(node: YamlNode | null | undefined, keyPath: string): string[] | undefined {
    const items = this.seq(node, keyPath);
    if (!items) return undefined;
    const out = items.map((n, i) => this.str(n, `${keyPath}[${i}]`));
    return out.every((s) => s !== undefined) ? (out as string[]) : undefined;
  }

  /** Modes as Butane reads them: a leading 0 (0644) or 0o means octal, otherwise decimal (420). */
  mode(node: YamlNode | null | undefined, keyPath: string): number | undefined {
    const src = isScalar(node) ? (node.source ?? String(node.value)) : undefined;
    let mode: number | undefined;
    if (src !== undefined && /^0o?[0-7]+$/.test(src)) mode = parseInt(src.replace(/^0o?/, '') || '0', 8);
    else if (src !== undefined && /^[0-9]+$/.test(src)) {
      mode = parseInt(src, 10);
      if (mode > 0o777 && /^[0-7]{3,4}$/.test(src)) {
        return this.fail(keyPath, node, `mode ${src} is decimal (= 0o${mode.toString(8)})`, `write octal modes with a leading zero, e.g. 0${src}`);
      }
    } else return this.fail(keyPath, node, 'must be a file mode such as 0644');
    if (mode > PERMISSION_MAX) return this.fail(keyPath, node, `mode ${src} is outside 0..07777`);
    return mode;
  }

  path(node: YamlNode | null | undefined, keyPath: string): string | undefined {
    const p = this.str(node, keyPath);
    if (p === undefined) return undefined;
    if (!p.startsWith('/') || posix.normalize(p) !== p || (p.endsWith('/') && p !== '/')) {
      return this.fail(keyPath, node, `"${p}" must be an absolute, normalised path`, `e.g. ${posix.normalize(`/${p}`).replace(/\/$/, '') || '/etc/example'}`);
    }
    return p;
  }

  account(node: YamlNode | null | undefined, keyPath: string): string | undefined {
    const name = this.str(node, keyPath);
    if (name !== undefined && !ACCOUNT_NAME.test(name)) return this.fail(keyPath, node, `"${name}" is not a valid user or group name`);
    return name;
  }

  /** `user: {name: core}` / `group: {name: core}`: bramble accepts names only, as the ids differ per image. */
  owner(node: YamlNode | null | undefined, keyPath: string): string | undefined {
    const m = this.map(node, keyPath, ['name']);
    const name = m?.get('name');
    if (m && !m.has('name')) return this.fail(keyPath, node, 'needs a name');
    return m && name !== undefined ? this.account(name, `${keyPath}.name`) : undefined;
  }
}

function readFile(r: Reader, node: YamlNode | null, at: string): ProvisionedFile | undefined {
  const m = r.map(node, at, ['path', 'mode', 'overwrite', 'contents', 'user', 'group']);
  if (!m) return undefined;
  if (!m.has('path')) return r.fail(at, node, 'needs a path');
  const path = r.path(m.get('path'), `${at}.path`);
  const mode = m.has('mode') ? r.mode(m.get('mode'), `${at}.mode`) : SNIPPET_DEFAULT_FILE_MODE;
  const overwrite = m.has('overwrite') ? r.bool(m.get('overwrite'), `${at}.overwrite`) : undefined;
  const user = m.has('user') ? r.owner(m.get('user'), `${at}.user`) : undefined;
  const group = m.has('group') ? r.owner(m.get('group'), `${at}.group`) : undefined;
  let contents: ProvisionedFile['contents'] | undefined = '';
  if (m.has('contents')) {
    const c = r.map(m.get('contents'), `${at}.contents`, ['inline', 'source', 'verification']);
    if (!c) return undefined;
    if (c.has('inline') && c.has('source')) return r.fail(`${at}.contents`, m.get('contents'), 'has both inline and source', 'keep one of them');
    if (c.has('inline')) {
      contents = r.str(c.get('inline'), `${at}.contents.inline`);
      if (c.has('verification')) r.fail(`${at}.contents.verification`, c.get('verification'), 'applies only to contents.source');
    } else if (c.has('source')) {
      const source = r.str(c.get('source'), `${at}.contents.source`);
      const scheme = source && /^([a-z][a-z0-9+.-]*):/i.exec(source)?.[1]?.toLowerCase();
      if (source !== undefined && (!scheme || !ALLOWED_SOURCE_SCHEMES.includes(scheme))) {
        r.fail(`${at}.contents.source`, c.get('source'), `"${source}" has no supported URL scheme`, `use one of ${ALLOWED_SOURCE_SCHEMES.join(', ')}, or contents.inline`);
      }
      let hash: string | undefined;
      if (c.has('verification')) {
        const v = r.map(c.get('verification'), `${at}.contents.verification`, ['hash']);
        hash = v?.has('hash') ? r.str(v.get('hash'), `${at}.contents.verification.hash`) : undefined;
        if (hash !== undefined && !HASH_PATTERN.test(hash)) {
          hash = r.fail(`${at}.contents.verification.hash`, v?.get('hash'), `"${hash}" is not a hash Ignition understands`, 'write sha512-<128 hex digits> or sha256-<64 hex digits>');
        }
      }
      contents = source === undefined ? undefined : { source, ...(hash ? { verification: { hash } } : {}) };
    }
  }
  if (path === undefined || mode === undefined || contents === undefined) return undefined;
  return {
    path,
    mode,
    contents,
    ...(overwrite !== undefined ? { overwrite } : {}),
    ...(user ? { user } : {}),
    ...(group ? { group } : {}),
    origin: r.origin(at, node),
  };
}

function readLink(r: Reader, node: YamlNode | null, at: string): ProvisionedLink | undefined {
  const m = r.map(node, at, ['path', 'target', 'hard', 'overwrite', 'user', 'group']);
  if (!m) return undefined;
  if (!m.has('path')) return r.fail(at, node, 'needs a path');
  if (!m.has('target')) return r.fail(at, node, 'needs a target');
  const path = r.path(m.get('path'), `${at}.path`);
  const target = r.str(m.get('target'), `${at}.target`);
  const hard = m.has('hard') ? r.bool(m.get('hard'), `${at}.hard`) : undefined;
  if (hard && target !== undefined && !target.startsWith('/')) r.fail(`${at}.target`, m.get('target'), 'a hard link needs an absolute target');
  const overwrite = m.has('overwrite') ? r.bool(m.get('overwrite'), `${at}.overwrite`) : undefined;
  const user = m.has('user') ? r.owner(m.get('user'), `${at}.user`) : undefined;
  const group = m.has('group') ? r.owner(m.get('group'), `${at}.group`) : undefined;
  if (path === undefined || !target) return target === '' ? r.fail(`${at}.target`, m.get('target'), 'is empty') : undefined;
  return {
    path,
    target,
    ...(hard !== undefined ? { hard } : {}),
    ...(overwrite !== undefined ? { overwrite } : {}),
    ...(user ? { user } : {}),
    ...(group ? { group } : {}),
    origin: r.origin(at, node),
  };
}

function readUnit(r: Reader, node: YamlNode | null, at: string): ProvisionedUnit | undefined {
  const m = r.map(node, at, ['name', 'enabled', 'mask', 'contents', 'dropins']);
  if (!m) return undefined;
  if (!m.has('name')) return r.fail(at, node, 'needs a name');
  let name = r.str(m.get('name'), `${at}.name`);
  if (name !== undefined && !UNIT_NAME_PATTERN.test(name)) {
    name = r.fail(`${at}.name`, m.get('name'), `"${name}" is not a systemd unit name`, 'e.g. example.service, example.timer');
  }
  const enabled = m.has('enabled') ? r.bool(m.get('enabled'), `${at}.enabled`) : undefined;
  const mask = m.has('mask') ? r.bool(m.get('mask'), `${at}.mask`) : undefined;
  const contents = m.has('contents') ? r.str(m.get('contents'), `${at}.contents`) : undefined;
  const dropins: ProvisionedDropin[] = [];
  if (m.has('dropins')) {
    const seen = new Set<string>();
    (r.seq(m.get('dropins'), `${at}.dropins`) ?? []).forEach((d, i) => {
      const dat = `${at}.dropins[${i}]`;
      const dm = r.map(d, dat, ['name', 'contents']);
      if (!dm) return;
      if (!dm.has('name')) return r.fail(dat, d, 'needs a name');
      const dname = r.str(dm.get('name'), `${dat}.name`);
      const dcontents = dm.has('contents') ? r.str(dm.get('contents'), `${dat}.contents`) : '';
      if (dname === undefined || dcontents === undefined) return;
      if (!dname.endsWith('.conf') || dname.includes('/')) return r.fail(`${dat}.name`, dm.get('name'), `"${dname}" must be a file name ending in .conf`);
      if (seen.has(dname)) return r.fail(`${dat}.name`, dm.get('name'), `drop-in "${dname}" is listed twice`);
      seen.add(dname);
      dropins.push({ name: dname, contents: dcontents });
    });
  }
  if (name === undefined) return undefined;
  return {
    name,
    ...(enabled !== undefined ? { enabled } : {}),
    ...(mask !== undefined ? { mask } : {}),
    ...(contents !== undefined ? { contents } : {}),
    ...(dropins.length > 0 ? { dropins } : {}),
    origin: r.origin(at, node),
  };
}

function readUser(r: Reader, node: YamlNode | null, at: string): ProvisionedUser | undefined {
  const m = r.map(node, at, ['name', 'ssh_authorized_keys', 'groups']);
  if (!m) return undefined;
  if (!m.has('name')) return r.fail(at, node, 'needs a name');
  const name = r.account(m.get('name'), `${at}.name`);
  let keys = m.has('ssh_authorized_keys') ? r.strings(m.get('ssh_authorized_keys'), `${at}.ssh_authorized_keys`) : [];
  keys?.forEach((k, i) => {
    if (!k.trim() || /[\r\n]/.test(k)) keys = r.fail(`${at}.ssh_authorized_keys[${i}]`, m.get('ssh_authorized_keys'), 'must be one non-empty line');
  });
  const groups = m.has('groups') ? r.strings(m.get('groups'), `${at}.groups`) : undefined;
  groups?.forEach((g, i) => {
    if (!ACCOUNT_NAME.test(g)) r.fail(`${at}.groups[${i}]`, m.get('groups'), `"${g}" is not a valid group name`);
  });
  if (name === undefined || keys === undefined) return undefined;
  return { name, sshAuthorizedKeys: keys, ...(groups ? { groups } : {}), origin: r.origin(at, node) };
}

function readList<T>(r: Reader, node: YamlNode | null | undefined, at: string, read: (r: Reader, n: YamlNode | null, at: string) => T | undefined): T[] {
  const out: T[] = [];
  (r.seq(node, at) ?? []).forEach((n, i) => {
    const v = read(r, n, `${at}[${i}]`);
    if (v !== undefined) out.push(v);
  });
  return out;
}

/** Parse and check one snippet; throws ConfigError (one problem) or ConfigErrors (several). */
export function parseSnippet(text: string, file: string): Snippet {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines });
  const r = new Reader(file, lines);
  for (const e of doc.errors) r.errors.push(new ConfigError(file, '', e.linePos?.[0]?.line, `YAML: ${e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '')}`));
  const snippet: Snippet = { file, files: [], links: [], units: [], users: [] };
  if (r.errors.length === 0 && doc.contents !== null) {
    const top = r.map(doc.contents, '', ['variant', 'version', 'storage', 'systemd', 'passwd']);
    if (top?.has('variant')) {
      const variant = r.str(top.get('variant'), 'variant');
      if (variant !== undefined && variant !== 'flatcar') r.fail('variant', top.get('variant'), `"${variant}" is not flatcar`);
    }
    if (top?.has('version')) r.str(top.get('version'), 'version');
    if (top?.has('storage')) {
      const storage = r.map(top.get('storage'), 'storage', ['files', 'links']);
      if (storage?.has('files')) snippet.files = readList(r, storage.get('files'), 'storage.files', readFile);
      if (storage?.has('links')) snippet.links = readList(r, storage.get('links'), 'storage.links', readLink);
    }
    if (top?.has('systemd')) {
      const systemd = r.map(top.get('systemd'), 'systemd', ['units']);
      if (systemd?.has('units')) snippet.units = readList(r, systemd.get('units'), 'systemd.units', readUnit);
    }
    if (top?.has('passwd')) {
      const passwd = r.map(top.get('passwd'), 'passwd', ['users']);
      if (passwd?.has('users')) snippet.users = readList(r, passwd.get('users'), 'passwd.users', readUser);
    }
  }
  if (r.errors.length === 1) throw r.errors[0];
  if (r.errors.length > 1) throw new ConfigErrors(r.errors);
  return snippet;
}

const err = (o: SpecOrigin | undefined, file: string, problem: string, hint?: string) =>
  new ConfigError(o?.file ?? file, o?.keyPath ?? '', o?.line, problem, hint);

/**
 * Merge a snippet into a copy of `spec`. A snippet file or link replaces an existing entry at the
 * same path only with `overwrite: true`; units with contents may not redefine an existing unit
 * (add drop-ins instead); users gain keys and groups.
 */
export function mergeSnippet(spec: ProvisioningSpec, snippet: Snippet): ProvisioningSpec {
  const p = cloneSpec(spec);
  const errors: ConfigError[] = [];
  const added = new Set<string>();
  const place = <T extends ProvisionedFile | ProvisionedLink>(entry: T, list: T[], kind: 'file' | 'link') => {
    if (added.has(entry.path)) return errors.push(err(entry.origin, snippet.file, `"${entry.path}" is already defined earlier in this snippet`));
    added.add(entry.path);
    const other = kind === 'file' ? p.links : p.files;
    if (other.some((e) => e.path === entry.path) || p.directories.some((d) => d.path === entry.path)) {
      return errors.push(err(entry.origin, snippet.file, `"${entry.path}" is already a ${kind === 'file' ? 'link or directory' : 'file or directory'} on this node`));
    }
    const i = list.findIndex((e) => e.path === entry.path);
    if (i < 0) return list.push(entry);
    if (!entry.overwrite) {
      return errors.push(err(entry.origin, snippet.file, `"${entry.path}" is already written by bramble`, `set overwrite: true on this ${kind} to replace it`));
    }
    list[i] = entry;
  };
  for (const f of snippet.files) place(f, p.files, 'file');
  for (const l of snippet.links) place(l, p.links, 'link');
  for (const u of snippet.units) {
    const existing = p.units.find((e) => e.name === u.name);
    if (!existing) {
      p.units.push(u);
      continue;
    }
    if (u.contents !== undefined && existing.contents !== undefined) {
      errors.push(err(u.origin, snippet.file, `unit ${u.name} is already defined on this node`, 'change it with a drop-in (dropins: [{name: 10-override.conf, contents: ...}])'));
      continue;
    }
    const dropins = [...(existing.dropins ?? [])];
    for (const d of u.dropins ?? []) {
      if (dropins.some((e) => e.name === d.name)) errors.push(err(u.origin, snippet.file, `drop-in ${d.name} of ${u.name} already exists on this node`, 'give the drop-in another name'));
      else dropins.push(d);
    }
    Object.assign(existing, {
      ...(u.contents !== undefined ? { contents: u.contents } : {}),
      ...(u.enabled !== undefined ? { enabled: u.enabled } : {}),
      ...(u.mask !== undefined ? { mask: u.mask } : {}),
      ...(dropins.length > 0 ? { dropins } : {}),
      origin: existing.origin ?? u.origin,
    });
  }
  for (const u of snippet.users) {
    const existing = p.users.find((e) => e.name === u.name);
    if (!existing) {
      p.users.push(u);
      continue;
    }
    existing.sshAuthorizedKeys = [...new Set([...existing.sshAuthorizedKeys, ...u.sshAuthorizedKeys])];
    if (u.groups) existing.groups = [...new Set([...(existing.groups ?? []), ...u.groups])];
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new ConfigErrors(errors);
  return p;
}
