// `bramble publish --to github://` against a loopback stand-in of the GitHub REST endpoints it uses
// (test/helpers/github-stand-in.ts; GitHub itself is unreachable here): the release is created for
// the tag, the assets are exactly the release's files with sha256 labels, the downloaded assets pass
// `bramble verify`, a second run uploads nothing, a changed build replaces only what changed and
// removes what is gone, and token problems are exit 2.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { explainCli, runBramble } from './helpers/build.ts';
import { startGithubStandIn, type GithubStandIn } from './helpers/github-stand-in.ts';
import { makeGpgKey, type GpgKey } from './helpers/release.ts';

const TOKEN = 'ghp_standin_token';
let tmp: string;
let gh: GithubStandIn;
let key: GpgKey;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-publish-gh-'));
  key = await makeGpgKey(join(tmp, 'key'));
  gh = await startGithubStandIn({ owner: 'example', repo: 'clusters', token: TOKEN });
});
after(async () => {
  await gh?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** A small build output (as `bramble build` lays it out) with the given public files. */
async function buildOutput(dir: string, files: Record<string, string>): Promise<string> {
  const artefacts = [];
  for (const [path, text] of Object.entries(files).sort()) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), text);
    const kind = path.endsWith('.bmap') ? 'bmap' : path.endsWith('.conf') ? 'dnsmasq-conf' : 'pxe-script';
    artefacts.push({ path, kind, secret: false, size: Buffer.byteLength(text), sha256: createHash('sha256').update(text).digest('hex') });
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify({ manifestVersion: 1, cluster: 'ghdemo', generator: 'test', sourceDateEpoch: 1735689600, nodes: [], artefacts, inputs: [] }));
  return dir;
}

const publish = (dir: string, env: Record<string, string> = { GITHUB_TOKEN: TOKEN }) =>
  runBramble(['publish', dir, '--to', 'github://example/clusters@v1.0.0', '--sign-key', key.secretFile, '--github-api', gh.api], { env });

async function downloadRelease(dest: string): Promise<void> {
  await mkdir(dest, { recursive: true });
  for (const a of gh.releases[0]!.assets) await writeFile(join(dest, a.name), a.bytes);
}

test('publish creates the release, uploads exactly the release files with sha256 labels; the downloaded assets verify', async () => {
  const out = await buildOutput(join(tmp, 'out1'), { 'pxe/boot.ipxe': '#!ipxe\nchain nodes/${mac:hexhyp}.ipxe\n', 'pxe/dnsmasq.conf': 'port=0\n', 'images/n1.img.bmap': '<bmap/>\n' });
  const r = await publish(out);
  assert.equal(r.code, 0, explainCli(r));
  assert.equal(gh.releases.length, 1);
  assert.equal(gh.releases[0]!.tag_name, 'v1.0.0');
  const names = gh.releases[0]!.assets.map((a) => a.name);
  assert.deepEqual([...names].sort(), ['SHA256SUMS', 'SHA256SUMS.asc', 'manifest.json', 'n1.img.bmap', 'pxe.tar', 'signing-key.asc']);
  // SHA256SUMS and its signature go up last.
  assert.deepEqual(names.slice(-2), ['SHA256SUMS', 'SHA256SUMS.asc']);
  for (const a of gh.releases[0]!.assets) assert.equal(a.label, `sha256:${createHash('sha256').update(a.bytes).digest('hex')}`, a.name);
  const dl = join(tmp, 'download1');
  await downloadRelease(dl);
  const v = await runBramble(['verify', dl, '--key', key.publicFile]);
  assert.equal(v.code, 0, explainCli(v));
});

test('publishing the same release again uploads nothing', async () => {
  const before = gh.requests.length;
  const r = await publish(join(tmp, 'out1'));
  assert.equal(r.code, 0, explainCli(r));
  assert.match(r.stdout, /sent 0, already there 6/);
  const writes = gh.requests.slice(before).filter((q) => q.method !== 'GET');
  assert.deepEqual(writes, []);
});

test('a changed build replaces the changed assets and removes the ones no longer in the release', async () => {
  const out = await buildOutput(join(tmp, 'out2'), { 'pxe/boot.ipxe': '#!ipxe\nchain nodes/${mac:hexhyp}.ipxe\n', 'pxe/dnsmasq.conf': 'port=0\nlog-dhcp\n' });
  const before = gh.requests.length;
  const r = await publish(out);
  assert.equal(r.code, 0, explainCli(r));
  const uploads = gh.requests.slice(before).filter((q) => q.method === 'POST').map((q) => new URL(q.path, 'http://x').searchParams.get('name'));
  assert.deepEqual(uploads, ['pxe.tar', 'manifest.json', 'SHA256SUMS', 'SHA256SUMS.asc']);
  assert.deepEqual(gh.releases[0]!.assets.map((a) => a.name).sort(), ['SHA256SUMS', 'SHA256SUMS.asc', 'manifest.json', 'pxe.tar', 'signing-key.asc']);
  const dl = join(tmp, 'download2');
  await downloadRelease(dl);
  const v = await runBramble(['verify', dl, '--key', key.publicFile]);
  assert.equal(v.code, 0, explainCli(v));
  assert.deepEqual((await readdir(dl)).length, 5);
});

test('no GITHUB_TOKEN, or one GitHub refuses: exit 2 with a hint', async () => {
  let r = await publish(join(tmp, 'out1'), {});
  assert.equal(r.code, 2, explainCli(r));
  assert.match(r.stderr, /needs a GitHub token/);
  assert.match(r.stderr, /hint: set GITHUB_TOKEN/);
  r = await publish(join(tmp, 'out1'), { GITHUB_TOKEN: 'wrong' });
  assert.equal(r.code, 2, explainCli(r));
  assert.match(r.stderr, /HTTP 401 Bad credentials/);
  assert.doesNotMatch(r.stderr, /wrong/);
});
