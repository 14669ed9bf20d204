// Check a rendered Ignition config the two ways Ignition itself does: the official JSON schema of
// the chosen spec version (ajv, draft-04 as the schema files declare) and the semantic rules that
// live in Ignition's Go code (paths, duplicates, modes, data URLs, hashes). A failure caused by a
// user snippet is a ConfigError naming the snippet's key and line; any other failure is our bug.
import AjvModule from 'ajv-draft-04';
import type { ValidateFunction } from 'ajv';
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { ConfigError, ConfigErrors } from '../builders/errors.ts';
import type { ProvisioningSpec, SpecOrigin } from '../overlays/provision.ts';
import type { IgnitionConfig, IgnitionVersion } from './model.ts';
import { IGNITION_VERSIONS } from './model.ts';

// ajv-draft-04 is CommonJS; under NodeNext its default export arrives as the module object.
type AjvClass = typeof AjvModule.default;
const Ajv: AjvClass = (AjvModule as unknown as { default?: AjvClass }).default ?? (AjvModule as unknown as AjvClass);

const schemaFile: Record<IgnitionVersion, string> = { '3.3.0': 'v3_3.json', '3.4.0': 'v3_4.json', '3.5.0': 'v3_5.json' };
const validators = new Map<IgnitionVersion, ValidateFunction>();

function schemaValidator(version: IgnitionVersion): ValidateFunction {
  let v = validators.get(version);
  if (!v) {
    const schema = JSON.parse(readFileSync(new URL(`./schema/${schemaFile[version]}`, import.meta.url), 'utf8'));
    // allowUnionTypes: the schemas use ["string", "null"] throughout.
    v = new Ajv({ allErrors: true, allowUnionTypes: true, strict: true }).compile(schema);
    validators.set(version, v);
  }
  return v;
}

/** Source schemes Ignition fetches (plus Flatcar's oem://, base-images.md §6.3). */
export const ALLOWED_SOURCE_SCHEMES = ['data', 'http', 'https', 'tftp', 's3', 'gs', 'arn', 'oem'];
/** Ignition's verification.hash form: `<function>-<hex digest>`. */
export const HASH_PATTERN = /^(sha512-[0-9a-f]{128}|sha256-[0-9a-f]{64})$/;
/** systemd unit types Ignition can write. */
export const UNIT_NAME_PATTERN = /^[A-Za-z0-9:_.\\@-]+\.(service|socket|device|mount|automount|swap|target|path|timer|slice|scope)$/;
const PERMISSION_MAX = 0o7777;

/** Decode an RFC 2397 data URL (percent-encoded or ;base64); throws on anything malformed. */
export function decodeDataUrl(url: string): Buffer {
  if (!url.startsWith('data:')) throw new Error('not a data: URL');
  const comma = url.indexOf(',');
  if (comma < 0) throw new Error('data: URL has no comma');
  const header = url.slice(5, comma);
  const body = url.slice(comma + 1);
  if (/[\s"<>\\^`{|}]/.test(header)) throw new Error('data: URL media type has illegal characters');
  if (header.split(';').at(-1) === 'base64') {
    if (body.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(body)) throw new Error('data: URL has invalid base64');
    return Buffer.from(body, 'base64');
  }
  if (/[^\x21-\x7e]/.test(body)) throw new Error('data: URL has unencoded spaces, controls or non-ASCII bytes');
  const bytes: number[] = [];
  for (let i = 0; i < body.length; i++) {
    if (body[i] === '%') {
      const hex = body.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new Error(`data: URL has a bad escape at ${i}`);
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(body.charCodeAt(i));
    }
  }
  return Buffer.from(bytes);
}

/** Where each path, unit and user of a spec came from, for entries a user snippet added. */
export interface OriginIndex {
  path: Map<string, SpecOrigin>;
  unit: Map<string, SpecOrigin>;
  user: Map<string, SpecOrigin>;
}

export function originIndex(p: ProvisioningSpec): OriginIndex {
  const idx: OriginIndex = { path: new Map(), unit: new Map(), user: new Map() };
  for (const e of [...p.files, ...p.directories, ...p.links]) if (e.origin) idx.path.set(e.path, e.origin);
  for (const u of p.units) if (u.origin) idx.unit.set(u.name, u.origin);
  for (const u of p.users) if (u.origin) idx.user.set(u.name, u.origin);
  return idx;
}

interface Problem {
  where: string;
  problem: string;
  origin?: SpecOrigin;
}

function checkSource(where: string, source: string | undefined, hash: string | undefined, compression: string | undefined, out: Problem[], origin?: SpecOrigin): void {
  if (compression !== undefined && compression !== '' && compression !== 'gzip') out.push({ where, problem: `compression "${compression}" is not "gzip"`, origin });
  if (hash !== undefined && !HASH_PATTERN.test(hash)) out.push({ where, problem: `verification.hash "${hash}" is not sha512-<128 hex> or sha256-<64 hex>`, origin });
  if (source === undefined) return;
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(source)?.[1]?.toLowerCase();
  if (!scheme || !ALLOWED_SOURCE_SCHEMES.includes(scheme)) {
    out.push({ where, problem: `source "${source.slice(0, 60)}" has no supported scheme (${ALLOWED_SOURCE_SCHEMES.join(', ')})`, origin });
  } else if (scheme === 'data') {
    try {
      decodeDataUrl(source);
    } catch (e) {
      out.push({ where, problem: `contents do not decode: ${(e as Error).message}`, origin });
    }
  } else if (scheme === 'http' || scheme === 'https' || scheme === 'tftp') {
    try {
      new URL(source);
    } catch {
      out.push({ where, problem: `source "${source}" is not a valid URL`, origin });
    }
  }
}

function semanticProblems(cfg: IgnitionConfig, version: IgnitionVersion, origins: OriginIndex): Problem[] {
  const out: Problem[] = [];
  if (cfg.ignition?.version !== version) out.push({ where: 'ignition.version', problem: `is ${cfg.ignition?.version}, expected ${version}` });
  const kinds = new Map<string, string>();
  const storage = cfg.storage ?? {};
  const nodes = [
    ...(storage.files ?? []).map((n, i) => ({ n, kind: 'file', where: `storage.files[${i}]`, mode: n.mode })),
    ...(storage.directories ?? []).map((n, i) => ({ n, kind: 'directory', where: `storage.directories[${i}]`, mode: n.mode })),
    ...(storage.links ?? []).map((n, i) => ({ n, kind: 'link', where: `storage.links[${i}]`, mode: undefined })),
  ];
  for (const { n, kind, where, mode } of nodes) {
    const origin = origins.path.get(n.path);
    if (!n.path.startsWith('/') || posix.normalize(n.path) !== n.path || (n.path.endsWith('/') && n.path !== '/')) {
      out.push({ where: `${where}.path`, problem: `"${n.path}" is not an absolute, normalised path`, origin });
    }
    const seen = kinds.get(n.path);
    if (seen) out.push({ where: `${where}.path`, problem: `"${n.path}" is already a ${seen}`, origin });
    else kinds.set(n.path, kind);
    if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > PERMISSION_MAX)) {
      out.push({ where: `${where}.mode`, problem: `mode ${mode} is outside 0..0o7777`, origin });
    }
  }
  // Ignition refuses to write through a path it was asked to make a file or a link.
  for (const { n, where } of nodes) {
    for (let dir = posix.dirname(n.path); dir !== '/' && dir !== '.'; dir = posix.dirname(dir)) {
      const k = kinds.get(dir);
      if (k === 'file' || k === 'link') out.push({ where: `${where}.path`, problem: `"${n.path}" lies under the ${k} ${dir}`, origin: origins.path.get(n.path) });
    }
  }
  (storage.files ?? []).forEach((f, i) => {
    const origin = origins.path.get(f.path);
    for (const [j, r] of [f.contents, ...(f.append ?? [])].entries()) {
      if (r) checkSource(`storage.files[${i}].${j === 0 ? 'contents' : `append[${j - 1}]`}`, r.source ?? undefined, r.verification?.hash, r.compression, out, origin);
    }
  });
  (storage.links ?? []).forEach((l, i) => {
    const origin = origins.path.get(l.path);
    if (!l.target) out.push({ where: `storage.links[${i}].target`, problem: 'is empty', origin });
    else if (l.hard && !l.target.startsWith('/')) out.push({ where: `storage.links[${i}].target`, problem: 'a hard link needs an absolute target', origin });
  });
  const unitNames = new Set<string>();
  (cfg.systemd?.units ?? []).forEach((u, i) => {
    const origin = origins.unit.get(u.name);
    if (!UNIT_NAME_PATTERN.test(u.name)) out.push({ where: `systemd.units[${i}].name`, problem: `"${u.name}" is not a systemd unit name with a known type suffix`, origin });
    if (unitNames.has(u.name)) out.push({ where: `systemd.units[${i}].name`, problem: `unit "${u.name}" is defined twice`, origin });
    unitNames.add(u.name);
    const dropins = new Set<string>();
    (u.dropins ?? []).forEach((d, j) => {
      if (!d.name.endsWith('.conf') || d.name.includes('/')) out.push({ where: `systemd.units[${i}].dropins[${j}].name`, problem: `"${d.name}" must be a file name ending in .conf`, origin });
      if (dropins.has(d.name)) out.push({ where: `systemd.units[${i}].dropins[${j}].name`, problem: `drop-in "${d.name}" is defined twice`, origin });
      dropins.add(d.name);
    });
  });
  const userNames = new Set<string>();
  (cfg.passwd?.users ?? []).forEach((u, i) => {
    const origin = origins.user.get(u.name);
    if (userNames.has(u.name)) out.push({ where: `passwd.users[${i}].name`, problem: `user "${u.name}" is listed twice`, origin });
    userNames.add(u.name);
    (u.sshAuthorizedKeys ?? []).forEach((k, j) => {
      if (!k.trim() || /[\r\n]/.test(k)) out.push({ where: `passwd.users[${i}].sshAuthorizedKeys[${j}]`, problem: 'must be one non-empty line', origin });
    });
  });
  return out;
}

export interface ValidateOptions {
  version: IgnitionVersion;
  /** Origins of snippet-added entries (originIndex(spec)); problems with them become ConfigErrors. */
  origins?: OriginIndex;
}

/** Throws unless `cfg` passes the official schema and the semantic checks. */
export function validateIgnition(cfg: IgnitionConfig, options: ValidateOptions): void {
  if (!IGNITION_VERSIONS.includes(options.version)) throw new Error(`unsupported Ignition spec version ${options.version}`);
  const validate = schemaValidator(options.version);
  const problems: Problem[] = [];
  if (!validate(cfg)) {
    for (const e of validate.errors ?? []) problems.push({ where: e.instancePath || '/', problem: `schema: ${e.message ?? e.keyword}` });
  }
  problems.push(...semanticProblems(cfg, options.version, options.origins ?? { path: new Map(), unit: new Map(), user: new Map() }));
  if (problems.length === 0) return;
  if (problems.every((p) => p.origin)) {
    const errors = problems.map(
      (p) => new ConfigError(p.origin!.file, p.origin!.keyPath, p.origin!.line, `${p.problem} (Ignition ${p.where})`, 'fix or remove this entry of the snippet'),
    );
    throw errors.length === 1 ? errors[0] : new ConfigErrors(errors);
  }
  throw new Error(
    `internal error: the rendered Ignition config fails validation against spec ${options.version}:\n` +
      problems.map((p) => `  ${p.where}: ${p.problem}`).join('\n'),
  );
}
