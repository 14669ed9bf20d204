// `bramble verify --json` and `bramble pull --json`: stdout is one JSON event per line, the summary
// included, with its fields (cluster, file count, signature) as data. A small build output stands in
// for a real build; it is published unsigned to a directory and to Debian's docker-registry on 127.0.0.1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { explainCli, runBramble, type CliResult } from './helpers/build.ts';
import { startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';

let tmp: string;
let out: string;
let registry: DockerRegistry;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-verify-json-'));
  out = join(tmp, 'out');
  const files: Record<string, string> = { 'pxe/boot.ipxe': '#!ipxe\nchain nodes/${mac:hexhyp}.ipxe\n', 'pxe/dnsmasq.conf': 'port=0\n' };
  const artefacts = [];
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(out, path, '..'), { recursive: true });
    await writeFile(join(out, path), text);
    const kind = path.endsWith('.conf') ? 'dnsmasq-conf' : 'pxe-script';
    artefacts.push({ path, kind, secret: false, size: Buffer.byteLength(text), sha256: createHash('sha256').update(text).digest('hex') });
  }
  await writeFile(join(out, 'SHA256SUMS'), artefacts.map((a) => `${a.sha256}  ${a.path}\n`).join(''));
  await writeFile(join(out, 'manifest.json'), JSON.stringify({ manifestVersion: 1, cluster: 'jsondemo', generator: 'test', sourceDateEpoch: 1735689600, nodes: [], artefacts, inputs: [] }));
  registry = await startDockerRegistry(join(tmp, 'registry'));
});
after(async () => {
  await registry?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Every stdout line parsed as JSON (failing on the first that is not), and the summary event: the last one. */
function jsonEvents(r: CliResult): { events: Array<Record<string, unknown>>; summary: Record<string, unknown> } {
  assert.equal(r.code, 0, explainCli(r));
  const lines = r.stdout.split('\n').filter((l) => l !== '');
  assert.ok(lines.length > 0, explainCli(r));
  const events = lines.map((l) => {
    try {
      return JSON.parse(l) as Record<string, unknown>;
    } catch {
      assert.fail(`stdout line is not JSON: ${l}`);
    }
  });
  for (const e of events) assert.equal(typeof e.kind, 'string', JSON.stringify(e));
  return { events, summary: events.at(-1)! };
}

test('verify --json of a build output and of an unsigned dir:// release: JSON lines only, the summary as data', async () => {
  let { summary } = jsonEvents(await runBramble(['verify', out, '--json']));
  assert.equal(summary.kind, 'info');
  assert.equal(summary.cluster, 'jsondemo');
  assert.equal(summary.files, 2);
  assert.equal(summary.contents, 'build');
  assert.equal(summary.target, out);
  assert.match(String(summary.message), /2 files of cluster jsondemo match/);

  const rel = join(tmp, 'release');
  const p = await runBramble(['publish', out, '--to', `dir://${rel}`, '--unsigned']);
  assert.equal(p.code, 0, explainCli(p));
  ({ summary } = jsonEvents(await runBramble(['verify', rel, '--allow-unsigned', '--json'])));
  assert.equal(summary.contents, 'release');
  assert.equal(summary.cluster, 'jsondemo');
  assert.equal(summary.signer, undefined);
  assert.match(String(summary.message), /unsigned/);
});

test('pull --json and verify oci:// --json: JSON lines only, the summary with the manifest digest', async () => {
  const ref = `oci://${registry.host}/clusters/jsondemo:v1`;
  const p = await runBramble(['publish', out, '--to', ref, '--unsigned']);
  assert.equal(p.code, 0, explainCli(p));
  const dest = join(tmp, 'pulled');
  let { summary } = jsonEvents(await runBramble(['pull', ref, '--out', dest, '--allow-unsigned', '--json']));
  assert.equal(summary.cluster, 'jsondemo');
  assert.equal(summary.contents, 'release');
  assert.equal(summary.out, dest);
  assert.match(String(summary.digest), /^sha256:[0-9a-f]{64}$/);
  const digest = summary.digest;
  ({ summary } = jsonEvents(await runBramble(['verify', ref, '--allow-unsigned', '--json'])));
  assert.equal(summary.digest, digest);
  assert.equal(summary.target, ref);
  assert.equal(typeof summary.files, 'number');
});
