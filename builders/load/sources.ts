// The [sources] table: upstream base URLs, registry remaps and extra trusted OpenPGP keys, either in
// cluster.toml or in a separate file given with --sources (merged over the cluster's own).
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { defaultSources, type Sources } from '../spec.ts';
import type { KeyPath } from './positions.ts';
import { Problems, isTable, parseToml, type TomlTable } from './problems.ts';
import { checkShape, sourcesSection } from './schema.ts';
import { checkBaseUrl, checkRegistryHost } from './values.ts';

type UrlKey = 'flatcar' | 'hypriot' | 'kubernetes' | 'github' | 'ipxe' | 'firmware';
const urlKeys: readonly UrlKey[] = ['flatcar', 'hypriot', 'kubernetes', 'github', 'ipxe', 'firmware'];

/** RFC 4880 §6.2 armor header line of a public key block. */
const armoredPublicKeyHeader = '-----BEGIN PGP PUBLIC KEY BLOCK-----';

/** Read a shape-checked [sources] table. Key file paths are relative to `baseDir`. */
export function readSourcesTable(table: TomlTable, path: KeyPath, p: Problems, baseDir: string): Partial<Sources> {
  const out: Partial<Sources> = {};
  for (const key of urlKeys) {
    const v = table[key];
    if (typeof v !== 'string') continue;
    const r = checkBaseUrl(v, key === 'flatcar');
    if (r.ok) out[key] = r.value;
    else p.add([...path, key], r.problem, r.hint);
  }
  const registries = table.registries;
  if (isTable(registries)) {
    const map: Record<string, string> = {};
    for (const [host, url] of Object.entries(registries)) {
      const at = [...path, 'registries', host];
      const h = checkRegistryHost(host);
      if (!h.ok) p.add(at, h.problem, h.hint);
      const u = checkBaseUrl(String(url), false);
      if (!u.ok) p.add(at, u.problem, u.hint);
      if (h.ok && u.ok) map[h.value] = u.value;
    }
    out.registries = map;
  }
  const keys = table.trusted_keys;
  if (Array.isArray(keys)) {
    out.trustedKeys = [];
    keys.forEach((file, i) => {
      const text = readTrustedKey(String(file), baseDir, [...path, 'trusted_keys', i], p);
      if (text !== undefined) out.trustedKeys!.push(text);
    });
  }
  return out;
}

function readTrustedKey(file: string, baseDir: string, at: KeyPath, p: Problems): string | undefined {
  const full = isAbsolute(file) ? file : resolve(baseDir, file);
  let text: string;
  try {
    text = readFileSync(full, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    p.add(at, `cannot read key file ${full}${code ? ` (${code})` : ''}`, 'give the path of an armored OpenPGP public key, relative to this file');
    return undefined;
  }
  if (!text.includes(armoredPublicKeyHeader)) {
    p.add(at, `${full} is not an armored OpenPGP public key`, 'export it with `gpg --armor --export KEYID > key.asc`');
    return undefined;
  }
  return text;
}

/**
 * Parse a --sources file: a TOML document holding only a [sources] table (as `npm run fixtures -- serve`
 * prints). Key file paths are relative to that file. Throws ConfigErrors.
 */
export function parseSources(text: string, file: string): Partial<Sources> {
  const { table, lines } = parseToml(text, file);
  const p = new Problems(file, lines);
  const out = readSourcesDocument(table, p, dirname(file));
  p.throwIfAny();
  return out;
}

/** The body of parseSources, reporting into `p` (so a caller can gather problems of several files). */
export function readSourcesDocument(table: TomlTable, p: Problems, baseDir: string): Partial<Sources> {
  for (const key of Object.keys(table)) {
    if (key !== 'sources') {
      p.add([key], `unknown key "${key}" in a sources file`, 'a --sources file holds only a [sources] table; put other settings in cluster.toml');
    }
  }
  const sources = table.sources;
  if (sources === undefined) return {};
  if (!isTable(sources)) {
    p.add(['sources'], 'expected a table', 'start the file with a [sources] line');
    return {};
  }
  return readSourcesTable(checkShape(sources, sourcesSection, ['sources'], p), ['sources'], p, baseDir);
}

/** `over` wins key by key; registry maps are merged (over wins per host); trusted keys are appended. */
export function mergeSourceValues(base: Sources, over: Partial<Sources>): Sources {
  const merged: Sources = { ...base, registries: { ...base.registries }, trustedKeys: [...base.trustedKeys] };
  for (const key of urlKeys) if (over[key] !== undefined) merged[key] = over[key]!;
  Object.assign(merged.registries, over.registries ?? {});
  merged.trustedKeys.push(...(over.trustedKeys ?? []));
  merged.registries = sortedRecord(merged.registries);
  return merged;
}

/** The built-in sources with a cluster's [sources] applied. */
export function resolveSources(fromCluster: Partial<Sources>): Sources {
  return mergeSourceValues(defaultSources, fromCluster);
}

function sortedRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
