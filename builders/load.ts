// The load stage: cluster.toml (and an optional --sources file) → a validated ClusterSpec. Every problem
// of both files is collected and thrown at once as ConfigErrors (exit 2), before anything is fetched.
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ConfigError, ConfigErrors, InputError } from './errors.ts';
import { readCluster } from './load/cluster.ts';
import { Problems, parseToml } from './load/problems.ts';
import { checkShape, clusterSchema } from './load/schema.ts';
import { mergeSourceValues, parseSources, readSourcesDocument, resolveSources } from './load/sources.ts';
import type { ClusterSpec, Sources } from './spec.ts';

export { parseSources, mergeSourceValues } from './load/sources.ts';

export interface LoadOptions {
  /** A TOML file holding a [sources] table, merged over the cluster's own [sources]. */
  sourcesFile?: string;
}

/** Read and validate a cluster file (and a --sources file). Throws ConfigErrors or InputError (exit 2). */
export async function loadClusterFile(path: string, opts: LoadOptions = {}): Promise<ClusterSpec> {
  const text = await readText(path, 'cluster file', 'check the path given with -c');
  const sourcesText = opts.sourcesFile === undefined ? undefined : await readText(opts.sourcesFile, 'sources file', 'check the path given with --sources');
  return parseCluster(text, path, { sourcesText, sourcesFile: opts.sourcesFile });
}

/**
 * Validate cluster.toml text. `file` names it in messages and anchors relative paths (trusted_keys).
 * `sourcesText` is the content of a --sources file named `sourcesFile`.
 */
export function parseCluster(text: string, file: string, opts: { sourcesText?: string; sourcesFile?: string } = {}): ClusterSpec {
  const errors: ConfigError[] = [];
  let spec: ClusterSpec | undefined;
  try {
    const { table, lines } = parseToml(text, file);
    const p = new Problems(file, lines);
    const clean = checkShape(table, clusterSchema, [], p);
    const draft = readCluster(clean, p, file, dirname(file));
    errors.push(...p.sorted(), ...draft.foreign);
    spec = { ...draft.spec, sources: resolveSources(draft.sources) };
  } catch (e) {
    if (!(e instanceof ConfigErrors)) throw e;
    errors.push(...e.errors);
  }
  let over: Partial<Sources> = {};
  if (opts.sourcesText !== undefined) {
    const sourcesFile = opts.sourcesFile ?? '<sources>';
    try {
      over = parseSources(opts.sourcesText, sourcesFile);
    } catch (e) {
      if (!(e instanceof ConfigErrors)) throw e;
      errors.push(...e.errors);
    }
  }
  if (errors.length || !spec) throw new ConfigErrors(errors);
  return { ...spec, sources: mergeSourceValues(spec.sources, over) };
}

/** Apply a --sources file to a spec that did not come from a file (the built-in default cluster). */
export async function applySourcesFile(spec: ClusterSpec, sourcesFile: string): Promise<ClusterSpec> {
  const text = await readText(sourcesFile, 'sources file', 'check the path given with --sources');
  const { table, lines } = parseToml(text, sourcesFile);
  const p = new Problems(sourcesFile, lines);
  const over = readSourcesDocument(table, p, dirname(sourcesFile));
  p.throwIfAny();
  return { ...spec, sources: mergeSourceValues(spec.sources, over) };
}

async function readText(path: string, what: string, hint: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`cannot read ${what} ${path}${code ? ` (${code})` : ''}`, { cause: e, hint });
  }
}
