// cluster.toml loading: the bad-config corpus (every file declares the errors it must produce, with key
// path and line), the examples, defaults, --sources merging and the docs covering every key.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultCluster } from '../builders/defaults.ts';
import { ConfigErrors, ExitCode, InputError } from '../builders/errors.ts';
import { applySourcesFile, loadClusterFile, parseCluster, parseSources } from '../builders/load.ts';
import { allKeyPaths } from '../builders/load/schema.ts';
import { defaultSources, type Target } from '../builders/spec.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const corpus = join(root, 'test/fixtures/bad-configs');

interface Expectation {
  path: string;
  line: number;
}

function expectationsOf(text: string): Expectation[] {
  return [...text.matchAll(/^# expect: (\S+) @ (\d+)$/gm)].map((m) => ({ path: m[1] === '<syntax>' ? '' : m[1]!, line: Number(m[2]) }));
}

function errorsOf(fn: () => unknown): ConfigErrors {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigErrors, `expected ConfigErrors, got ${String(e)}`);
    return e;
  }
  assert.fail('expected the config to be rejected');
}

describe('bad-config corpus', () => {
  const files = readdirSync(corpus).filter((f) => f.endsWith('.toml')).sort();

  it('has at least 45 configs', () => {
    assert.ok(files.length >= 45, `only ${files.length} bad configs`);
  });

  for (const name of files) {
    it(name, () => {
      const file = join(corpus, name);
      const text = readFileSync(file, 'utf8');
      const expected = expectationsOf(text);
      assert.ok(expected.length > 0, `${name} declares no "# expect:" line`);
      const err = errorsOf(() => parseCluster(text, file));
      assert.equal(err.exitCode, ExitCode.badInput);
      const got = err.errors.map((e) => ({ path: e.keyPath, line: e.line }));
      assert.deepEqual(
        [...got].sort((a, b) => a.line! - b.line! || a.path.localeCompare(b.path)),
        [...expected].sort((a, b) => a.line - b.line || a.path.localeCompare(b.path)),
      );
      for (const e of err.errors) {
        const where = e.keyPath ? `${file}:${e.line}: ${e.keyPath}: ` : `${file}:${e.line}: `;
        assert.ok(e.message.startsWith(where), `message "${e.message}" should start with "${where}"`);
        assert.ok(e.hint && e.hint.length > 10, `${e.keyPath} has no hint`);
        assert.ok(err.message.includes(e.message) && err.message.includes(`hint: ${e.hint}`));
      }
    });
  }
});
