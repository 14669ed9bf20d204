// Parse TOML into plain values and collect every problem found in it, each naming its key path and line.
import TOML from '@ltd/j-toml';
import { ConfigError, ConfigErrors } from '../errors.ts';
import { formatPath, scanKeyLines, type KeyLines, type KeyPath } from './positions.ts';

export type TomlTable = { [key: string]: TomlValue };
export type TomlValue = string | number | boolean | TomlValue[] | TomlTable | object;

/** Collects ConfigErrors for one file; `throwIfAny` raises them all at once, ordered by line. */
export class Problems {
  readonly errors: ConfigError[] = [];
  constructor(
    readonly file: string,
    readonly lines: KeyLines,
  ) {}

  add(path: KeyPath, problem: string, hint: string) {
    this.errors.push(new ConfigError(this.file, formatPath(path), this.lines.lineOf(path), problem, hint));
  }

  /** Whether the file has this key at all (even with a value of the wrong type, which shape checks drop). */
  has(path: KeyPath): boolean {
    return this.lines.exact(path) !== undefined;
  }

  /** The problems ordered by line, then key path. */
  sorted(): ConfigError[] {
    return [...this.errors].sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || a.keyPath.localeCompare(b.keyPath));
  }

  throwIfAny() {
    if (this.errors.length) throw new ConfigErrors(this.sorted());
  }
}

const lineInMessage = /\bat line (\d+)/;

/** Parse TOML 1.0 text; a syntax error becomes a ConfigError carrying the line j-toml reports. */
export function parseToml(source: string, file: string): { table: TomlTable; lines: KeyLines } {
  // Editors on Windows like to start files with a byte-order mark, which j-toml refuses.
  const text = source.replace(/^\uFEFF/, '');
  let table: TomlTable;
  try {
    // bigint=false: integers outside the safe range are a parse error rather than a silent BigInt.
    table = TOML.parse(text, 1.0, '\n', false) as unknown as TomlTable;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const line = Number(lineInMessage.exec(message)?.[1]) || undefined;
    // j-toml appends ": <source line>" to its messages; the line number already points there.
    const problem = message
      .replace(/ at line \d+: .*$/s, '')
      .replace(/(,? which is found| meet)$/, '')
      .replace(/\beuqal\b/g, 'equal');
    throw new ConfigErrors([
      new ConfigError(file, '', line, `TOML syntax error: ${problem}`, 'fix the TOML syntax on that line (https://toml.io/en/v1.0.0)'),
    ]);
  }
  return { table, lines: scanKeyLines(text) };
}

/** What a TOML value is, in the words of the TOML spec. */
export function tomlType(v: unknown): string {
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'float';
  if (Array.isArray(v)) return 'array';
  if (v && typeof v === 'object' && Symbol.toStringTag in v) return 'date-time';
  if (v && typeof v === 'object') return 'table';
  return typeof v;
}

export function isTable(v: unknown): v is TomlTable {
  return tomlType(v) === 'table';
}

/** A short rendering of a value for messages. */
export function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v) || isTable(v)) return '';
  if (tomlType(v) === 'date-time') return (v as { toISOString(): string }).toISOString();
  return String(v);
}

/** Levenshtein distance, for "did you mean" suggestions. */
export function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The closest candidate when it is close enough to be a plausible typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

/** "did you mean X?" or the list of choices. */
export function suggest(word: string, candidates: readonly string[], what = 'one of'): string {
  const near = closest(word, candidates);
  return near ? `did you mean "${near}"? (${what}: ${candidates.join(', ')})` : `use ${what}: ${candidates.join(', ')}`;
}
