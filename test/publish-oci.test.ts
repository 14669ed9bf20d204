// `bramble publish --to oci://` against Debian's docker-registry (distribution 2.8) on 127.0.0.1:
// the artifact manifest as skopeo reads it (artifactType, empty config, titled and annotated layers),
// skopeo copy of the whole artifact, `bramble pull` and `bramble verify oci://` back, monolithic and
// chunked blob uploads (seen in the registry's access log), skipping blobs the registry has, htpasswd
// auth with Docker-config credentials, and a damaged blob in the registry's storage → exit 3.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { discardEvents } from '../builders/events.ts';
import { run } from '../builders/exec.ts';
import { publishRelease } from '../builders/publish.ts';
import type { ReleaseManifest } from '../builders/publish-format.ts';
import { loadSigningKey } from '../builders/publish-sign.ts';
import { startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';
import { explainCli, runBramble } from './helpers/build.ts';
import { buildReleaseCluster, makeGpgKey, type BuiltCluster, type GpgKey } from './helpers/release.ts';

let tmp: string;
let built: BuiltCluster;
let key: GpgKey;
let registry: DockerRegistry;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-publish-oci-'));
  key = await makeGpgKey(join(tmp, 'key'));
  built = await buildReleaseCluster(join(tmp, 'cluster'), 'pubreg');
  registry = await startDockerRegistry(join(tmp, 'registry'));
});
after(async () => {
  await registry?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

interface ArtifactManifest {
  mediaType: string;
  artifactType: string;
  config: { mediaType: string; digest: string; size: number };
  layers: Array<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }>;
  annotations: Record<string, string>;
}

const skopeoRaw = async (ref: string, extra: string[] = []) =>
  JSON.parse((await run('skopeo', ['inspect', '--raw', '--tls-verify=false', ...extra, `docker://${ref}`])).stdout) as ArtifactManifest;

test('publish to docker-registry: skopeo reads the artifact manifest; skopeo copy, bramble pull and bramble verify get the release back', async () => {
  const ref = `${registry.host}/clusters/pubreg:v1`;
  let r = await runBramble(['publish', built.clusterDir, '--to', `oci://${ref}`, '--public-only', '--sign-key', key.secretFile]);
  assert.equal(r.code, 0, explainCli(r));

  const m = await skopeoRaw(ref);
  assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
  assert.equal(m.artifactType, 'application/vnd.bramble.release.v1');
  assert.deepEqual(m.config, { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 });
  const titles = m.layers.map((l) => l.annotations['org.opencontainers.image.title']);
  assert.deepEqual(titles, ['SHA256SUMS', 'SHA256SUMS.asc', 'amd64.oci.tar', 'cp-1.img.bmap', 'manifest.json', 'registry.tar', 'signing-key.asc']);
  const bmap = m.layers.find((l) => l.annotations['org.opencontainers.image.title'] === 'cp-1.img.bmap')!;
  assert.deepEqual(bmap.annotations, {
    'org.opencontainers.image.title': 'cp-1.img.bmap',
    'dev.bramble.kind': 'bmap',
    'dev.bramble.node': 'cp-1',
    'dev.bramble.target': 'pc',
    'dev.bramble.arch': 'amd64',
  });
  assert.equal(m.annotations['dev.bramble.cluster'], 'pubreg');
  assert.match(m.annotations['dev.bramble.versions']!, /flatcar=4593\.2\.5/);
  assert.match(m.annotations['dev.bramble.versions']!, /kubernetes=/);
  assert.equal(m.annotations['org.opencontainers.image.created'], '2025-01-01T00:00:00Z');
  assert.equal(m.annotations['dev.bramble.signer'], key.fingerprint);

  // skopeo copies the artifact (manifest, config and every layer) into a dir: transport.
  const copied = join(tmp, 'skopeo-dir');
  await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `dir:${copied}`]);
  const copiedNames = await readdir(copied);
  for (const l of m.layers) assert.ok(copiedNames.includes(l.digest.slice('sha256:'.length)), l.digest);

  const out = join(tmp, 'pulled');
  r = await runBramble(['pull', `oci://${ref}`, '--out', out, '--key', key.publicFile]);
  assert.equal(r.code, 0, explainCli(r));
  assert.deepEqual((await readdir(out)).sort(), titles.sort());
  const g = await key.gpg(['--verify', join(out, 'SHA256SUMS.asc'), join(out, 'SHA256SUMS')]);
  assert.match(g.stderr, /Good signature/);
  const pulledManifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8')) as ReleaseManifest;
  assert.equal(pulledManifest.cluster, 'pubreg');
  assert.equal((await stat(join(out, 'registry.tar'))).mode & 0o777, 0o644);

  r = await runBramble(['verify', `oci://${ref}`, '--key', key.publicFile]);
  assert.equal(r.code, 0, explainCli(r));
  assert.match(r.stdout, /: 4 files of cluster pubreg match/);

  // Pushing the same release again sends nothing: the registry has every blob (the signature is deterministic too).
  r = await runBramble(['publish', built.clusterDir, '--to', `oci://${ref}`, '--public-only', '--sign-key', key.secretFile]);
  assert.equal(r.code, 0, explainCli(r));
  assert.match(r.stdout, /sent 0, already there 7/);

  // pull refuses a non-empty directory.
  r = await runBramble(['pull', `oci://${ref}`, '--out', out]);
  assert.equal(r.code, 2, explainCli(r));
});

test('blobs larger than the chunk size go up in PATCH chunks, smaller ones in one PUT', async () => {
  const before = registry.log().length;
  const signingKey = await loadSigningKey(key.secretFile);
  const ref = { kind: 'oci' as const, host: registry.host, repository: 'clusters/chunked', tag: 'v1' };
  const r = await publishRelease({
    clusterDir: built.clusterDir,
    destination: ref,
    private: false,
    publicOnly: true,
    compression: 'zstd',
    signingKey,
    ociChunkSize: 16 * 1024,
    signal: new AbortController().signal,
    events: discardEvents,
  });
  assert.equal(r.skipped.length, 0);
  const log = registry.log().slice(before);
  assert.ok((log.match(/"PATCH \/v2\/clusters\/chunked\/blobs\/uploads\//g) ?? []).length >= 10, log.slice(-2000));
  assert.match(log, /"PUT \/v2\/clusters\/chunked\/blobs\/uploads\/[^"]*digest=sha256%3A[^"]*" 201/);
  const out = join(tmp, 'pulled-chunked');
  const p = await runBramble(['pull', `oci://${registry.host}/clusters/chunked:v1`, '--out', out, '--key', key.publicFile]);
  assert.equal(p.code, 0, explainCli(p));
});

test('a damaged blob in the registry: pull and verify exit 3 and leave nothing behind', async () => {
  const ref = `${registry.host}/clusters/damaged:v1`;
  let r = await runBramble(['publish', built.clusterDir, '--to', `oci://${ref}`, '--public-only', '--unsigned']);
  assert.equal(r.code, 0, explainCli(r));
  const m = await skopeoRaw(ref);
  const layer = m.layers.find((l) => l.annotations['org.opencontainers.image.title'] === 'registry.tar')!;
  const hex = layer.digest.slice('sha256:'.length);
  const data = join(registry.storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
  const bytes = await readFile(data);
  bytes[1000] ^= 0xff;
  await writeFile(data, bytes);
  const out = join(tmp, 'pulled-damaged');
  r = await runBramble(['pull', `oci://${ref}`, '--out', out, '--allow-unsigned']);
  assert.equal(r.code, 3, explainCli(r));
  assert.match(r.stderr, /registry\.tar \(blob from the registry\): verification failed/);
  assert.deepEqual((await readdir(tmp)).filter((n) => n.startsWith('.pulled-damaged')), []);
  r = await runBramble(['verify', `oci://${ref}`, '--allow-unsigned']);
  assert.equal(r.code, 3, explainCli(r));
});

test('a registry with htpasswd auth: credentials from a Docker config.json; without them exit 4 with a hint', async (t) => {
  const secured = await startDockerRegistry(join(tmp, 'secured'), { htpasswd: { username: 'pusher', password: 's3cret-pass' } });
  t.after(() => secured.stop());
  const ref = `oci://${secured.host}/clusters/auth:v1`;
  let r = await runBramble(['publish', built.clusterDir, '--to', ref, '--public-only', '--unsigned'], { env: { HOME: tmp } });
  assert.equal(r.code, 4, explainCli(r));
  assert.match(r.stderr, /refused .* \(HTTP 401\)/);
  assert.match(r.stderr, /hint: put credentials for 127\.0\.0\.1:\d+ in a Docker config\.json/);
  const auth = join(tmp, 'auth.json');
  await writeFile(auth, JSON.stringify({ auths: { [secured.host]: { auth: Buffer.from('pusher:s3cret-pass').toString('base64') } } }));
  r = await runBramble(['publish', built.clusterDir, '--to', ref, '--public-only', '--unsigned'], { env: { HOME: tmp, BRAMBLE_REGISTRY_AUTH_FILE: auth } });
  assert.equal(r.code, 0, explainCli(r));
  assert.doesNotMatch(r.stdout + r.stderr, /s3cret-pass/);
  r = await runBramble(['pull', ref, '--out', join(tmp, 'pulled-auth'), '--allow-unsigned'], { env: { HOME: tmp, BRAMBLE_REGISTRY_AUTH_FILE: auth } });
  assert.equal(r.code, 0, explainCli(r));
});
