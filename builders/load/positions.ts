// Where each key of a TOML document sits. @ltd/j-toml returns plain values without positions, so this
// scanner walks the (already successfully parsed, hence valid) text once and records the 1-based line
// of every table header, key and array element under the same path syntax the validator reports.

/** A key path as segments: table keys and array indices, e.g. ['nodes', 2, 'mac']. */
export type KeyPath = readonly (string | number)[];

const bareKey = /^[A-Za-z0-9_-]+$/;

/** `nodes[2].mac`, `sources.registries."registry.k8s.io"`. */
export function formatPath(path: KeyPath): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += (out ? '.' : '') + (bareKey.test(seg) ? seg : JSON.stringify(seg));
  }
  return out;
}

export class KeyLines {
  constructor(private readonly lines: ReadonlyMap<string, number>) {}

  /** The line of the path, or of its nearest recorded ancestor (a missing key points at its table). */
  lineOf(path: KeyPath): number {
    for (let n = path.length; n > 0; n--) {
      const line = this.lines.get(formatPath(path.slice(0, n)));
      if (line !== undefined) return line;
    }
    return 1;
  }

  /** The exact line of a path, without falling back to an ancestor. */
  exact(path: KeyPath): number | undefined {
    return this.lines.get(formatPath(path));
  }
}

/** Scan valid TOML text and record the line of every key path. */
export function scanKeyLines(text: string): KeyLines {
  return new Scanner(text).run();
}

class Scanner {
  private i = 0;
  private line = 1;
  private readonly lines = new Map<string, number>();
  /** Current index of each array of tables, keyed by its formatted path. */
  private readonly arrayTables = new Map<string, number>();

  constructor(private readonly s: string) {}

  run(): KeyLines {
    let table: (string | number)[] = [];
    for (;;) {
      this.skipBlank(true);
      if (this.i >= this.s.length) break;
      const before = this.i;
      if (this.s.startsWith('[[', this.i)) {
        this.i += 2;
        const keys = this.key();
        this.expect(']]');
        const parent = this.resolve(keys.slice(0, -1));
        const arrayPath = [...parent, keys[keys.length - 1]!];
        const id = formatPath(arrayPath);
        const index = (this.arrayTables.get(id) ?? -1) + 1;
        this.arrayTables.set(id, index);
        this.record(arrayPath);
        table = [...arrayPath, index];
        this.record(table);
      } else if (this.s[this.i] === '[') {
        this.i += 1;
        const keys = this.key();
        this.expect(']');
        table = this.resolve(keys);
        this.record(table);
      } else {
        this.keyValue(table);
      }
      // Never loop on text the scanner does not understand (it only sees valid TOML, but be safe).
      if (this.i === before) this.i++;
    }
    return new KeyLines(this.lines);
  }

  /** Map header keys onto the current element of every array of tables they pass through. */
  private resolve(keys: string[]): (string | number)[] {
    const out: (string | number)[] = [];
    for (const k of keys) {
      out.push(k);
      const index = this.arrayTables.get(formatPath(out));
      if (index !== undefined) out.push(index);
    }
    return out;
  }

  private record(path: KeyPath) {
    const id = formatPath(path);
    if (!this.lines.has(id)) this.lines.set(id, this.line);
  }

  private keyValue(table: KeyPath) {
    const keys = this.key();
    this.skipBlank(false);
    this.expect('=');
    for (let n = 1; n <= keys.length; n++) this.record([...table, ...keys.slice(0, n)]);
    this.skipBlank(false);
    this.value([...table, ...keys]);
  }

  private value(path: KeyPath) {
    const s = this.s;
    if (s.startsWith('"""', this.i)) return this.string('"""', true);
    if (s.startsWith("'''", this.i)) return this.string("'''", false);
    if (s[this.i] === '"') return this.string('"', true);
    if (s[this.i] === "'") return this.string("'", false);
    if (s[this.i] === '[') {
      this.i++;
      for (let index = 0; ; index++) {
        this.skipBlank(true);
        if (s[this.i] === ']' || this.i >= s.length) break;
        const before = this.i;
        this.record([...path, index]);
        this.value([...path, index]);
        this.skipBlank(true);
        if (s[this.i] === ',') this.i++;
        else if (this.i === before) this.i++;
      }
      this.i++;
      return;
    }
    if (s[this.i] === '{') {
      this.i++;
      for (;;) {
        this.skipBlank(true);
        if (s[this.i] === '}' || this.i >= s.length) break;
        const before = this.i;
        this.keyValue(path);
        this.skipBlank(true);
        if (s[this.i] === ',') this.i++;
        else if (this.i === before) this.i++;
      }
      this.i++;
      return;
    }
    // Numbers, booleans, dates: everything up to the next delimiter.
    while (this.i < s.length && !',]}\n#'.includes(s[this.i]!)) this.i++;
  }

  /** Skip a string body, counting the newlines of multi-line strings. */
  private string(quote: string, escapes: boolean) {
    this.i += quote.length;
    const s = this.s;
    while (this.i < s.length) {
      if (escapes && s[this.i] === '\\') {
        if (s[this.i + 1] === '\n') this.line++;
        this.i += 2;
        continue;
      }
      if (s.startsWith(quote, this.i)) {
        this.i += quote.length;
        // A multi-line string may end with up to two extra quote characters ("""a"""").
        while (quote.length === 3 && s[this.i] === quote[0]) this.i++;
        return;
      }
      if (s[this.i] === '\n') this.line++;
      this.i++;
    }
  }

  /** A (possibly dotted) key: bare, "basic" or 'literal' parts. */
  private key(): string[] {
    const parts: string[] = [];
    const s = this.s;
    for (;;) {
      this.skipBlank(false);
      if (s[this.i] === '"') {
        const start = this.i;
        this.string('"', true);
        parts.push(decodeBasicKey(s.slice(start, this.i)));
      } else if (s[this.i] === "'") {
        const start = this.i;
        this.string("'", false);
        parts.push(s.slice(start + 1, this.i - 1));
      } else {
        const start = this.i;
        while (this.i < s.length && /[A-Za-z0-9_-]/.test(s[this.i]!)) this.i++;
        parts.push(s.slice(start, this.i));
      }
      this.skipBlank(false);
      if (s[this.i] !== '.') return parts;
      this.i++;
    }
  }

  private expect(token: string) {
    if (this.s.startsWith(token, this.i)) this.i += token.length;
  }

  /** Skip spaces, tabs and comments; with `newlines`, also line breaks. */
  private skipBlank(newlines: boolean) {
    const s = this.s;
    while (this.i < s.length) {
      const c = s[this.i]!;
      if (c === ' ' || c === '\t' || c === '\r') this.i++;
      else if (c === '#') while (this.i < s.length && s[this.i] !== '\n') this.i++;
      else if (c === '\n' && newlines) {
        this.line++;
        this.i++;
      } else break;
    }
  }
}

function decodeBasicKey(quoted: string): string {
  try {
    return JSON.parse(quoted) as string;
  } catch {
    return quoted.slice(1, -1);
  }
}
