// The registry client's small pure parts, table-driven: reference normalisation (docker.io, library/,
// hosts with ports, digests), where a registry is reached (remaps with a path prefix, Docker Hub's API
// host, plain HTTP only on loopback), WWW-Authenticate parsing, platform normalisation and matching,
// tar path safety, manifest parsing, and the Docker config.json credentials file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import { credentialFor, loadRegistryCredentials, parseChallenges, registryAuthFile } from '../images/registry/auth.ts';
import { unsafeTarPath } from '../images/registry/layer-check.ts';
import { parseManifest } from '../images/registry/manifest.ts';
import { formatPlatform, parsePlatform, platformMatch, normalisePlatform } from '../images/registry/platform.ts';
import { formatImageRef, parseImageRef, registryEndpoint } from '../images/registry/reference.ts';
import { tempDir } from './helpers/tmp.ts';

const D = `sha256:${'ab'.repeat(32)}`;

test('image references normalise as distribution/reference does', () => {
  const cases: [string, string][] = [
    ['nginx', 'docker.io/library/nginx:latest'],
    ['nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['library/nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['docker.io/nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['index.docker.io/library/nginx:1.27', 'docker.io/library/nginx:1.27'],
    ['registry-1.docker.io/bitnami/redis:7', 'docker.io/bitnami/redis:7'],
    ['bitnami/redis:7', 'docker.io/bitnami/redis:7'],
    ['registry.k8s.io/pause:3.10', 'registry.k8s.io/pause:3.10'],
    ['registry.k8s.io/coredns/coredns:v1.12.0', 'registry.k8s.io/coredns/coredns:v1.12.0'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/team/app:v1', 'localhost:5000/team/app:v1'],
    ['127.0.0.1:5000/app:v1', '127.0.0.1:5000/app:v1'],
    ['Quay.IO/poseidon/dnsmasq:v0.5.0', 'quay.io/poseidon/dnsmasq:v0.5.0'],
    [`ghcr.io/x/y@${D}`, `ghcr.io/x/y@${D}`],
    [`ghcr.io/x/y:v1@${D}`, `ghcr.io/x/y:v1@${D}`],
  ];
  for (const [input, expected] of cases) assert.equal(formatImageRef(parseImageRef(input)), expected, input);
  assert.deepEqual(parseImageRef(`ghcr.io/x/y@${D}`), { registry: 'ghcr.io', repository: 'x/y', digest: D });
});

test('malformed references are input errors saying what is wrong', () => {
  const cases: [string, RegExp][] = [
    ['Nginx:1', /"Nginx" is not a repository name/],
    ['ghcr.io/x/y@sha256:abc', /"sha256:abc" is not a sha256 digest/],
    ['ghcr.io/x/y@md5:' + 'a'.repeat(32), /is not a sha256 digest/],
    ['ghcr.io/x/y:-bad', /"-bad" is not a valid tag/],
    ['ghcr.io/x//y:1', /is not a repository name/],
    ['ghcr.io/:1', /is not a repository name/],
  ];
  for (const [input, pattern] of cases) {
    assert.throws(
      () => parseImageRef(input),
      (e: unknown) => (e as BrambleError).exitCode === ExitCode.badInput && pattern.test((e as Error).message) && /registry\.k8s\.io\/pause:3\.10/.test((e as BrambleError).hint ?? ''),
      input,
    );
  }
});

test('registry endpoints: remaps (a path is a repository prefix), Docker Hub API host, HTTP only for loopback', () => {
  const remaps = { 'docker.io': 'http://127.0.0.1:5000', 'ghcr.io': 'https://harbor.example/ghcr-proxy/' };
  assert.deepEqual(registryEndpoint('docker.io', remaps), { origin: 'http://127.0.0.1:5000', repositoryPrefix: '', remappedFrom: 'docker.io' });
  assert.deepEqual(registryEndpoint('ghcr.io', remaps), { origin: 'https://harbor.example', repositoryPrefix: 'ghcr-proxy/', remappedFrom: 'ghcr.io' });
  assert.deepEqual(registryEndpoint('docker.io'), { origin: 'https://registry-1.docker.io', repositoryPrefix: '' });
  assert.deepEqual(registryEndpoint('registry.k8s.io', remaps), { origin: 'https://registry.k8s.io', repositoryPrefix: '' });
  assert.equal(registryEndpoint('localhost:5000').origin, 'http://localhost:5000');
  assert.equal(registryEndpoint('127.0.0.1:5000').origin, 'http://127.0.0.1:5000');
  assert.equal(registryEndpoint('10.0.0.1:5000').origin, 'https://10.0.0.1:5000');
});

test('WWW-Authenticate challenges are parsed with quoted values, several schemes and odd spacing', () => {
  assert.deepEqual(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"'), [
    { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' } },
  ]);
  assert.deepEqual(parseChallenges('Basic realm="Registry Realm"'), [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
  assert.deepEqual(parseChallenges('bearer realm=https://x/t, service="a \\"b\\""'), [{ scheme: 'bearer', params: { realm: 'https://x/t', service: 'a "b"' } }]);
  assert.deepEqual(
    parseChallenges('Negotiate, Basic realm="r"').map((c) => c.scheme),
    ['basic'],
  );
  assert.deepEqual(parseChallenges(null), []);
});

test('platforms normalise like containerd and match exact variants first', () => {
  assert.deepEqual(parsePlatform('linux/arm'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(normalisePlatform({ os: 'linux', architecture: 'aarch64' }), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(normalisePlatform({ os: 'linux', architecture: 'x86_64' }), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(normalisePlatform({ os: 'linux', architecture: 'armhf' }), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(normalisePlatform({ os: 'linux', architecture: 'arm', variant: '6' }), { os: 'linux', architecture: 'arm', variant: 'v6' });
  assert.equal(formatPlatform(parsePlatform('linux/arm/v7')), 'linux/arm/v7');
  const arm7 = parsePlatform('linux/arm/v7');
  assert.equal(platformMatch(arm7, { os: 'linux', architecture: 'arm', variant: 'v7' }), 2);
  assert.equal(platformMatch(arm7, { os: 'linux', architecture: 'arm' }), 1);
  assert.equal(platformMatch(arm7, { os: 'linux', architecture: 'arm', variant: 'v6' }), 0);
  assert.equal(platformMatch(parsePlatform('linux/amd64'), { os: 'windows', architecture: 'amd64' }), 0);
  assert.throws(() => parsePlatform('amd64'), /is not os\/architecture\[\/variant\]/);
});

test('tar paths that are absolute or climb out with .. are unsafe; others are not', () => {
  const cases: [string, string | undefined][] = [
    ['etc/passwd', undefined],
    ['./etc/passwd', undefined],
    ['a/../b', undefined],
    ['a/b/../../c', undefined],
    ['usr/lib/..', undefined],
    ['../x', 'climbs out of the root with ".."'],
    ['a/../../x', 'climbs out of the root with ".."'],
    ['./..', 'climbs out of the root with ".."'],
    ['/etc/passwd', 'is absolute'],
  ];
  for (const [path, why] of cases) assert.equal(unsafeTarPath(path), why, path);
});

test('manifests: indexes with attestations marked, schema 1 refused, descriptors checked', () => {
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D, size: 10, platform: { os: 'linux', architecture: 'aarch64' } },
        { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D, size: 10, platform: { os: 'unknown', architecture: 'unknown' } },
      ],
    }),
  );
  const parsed = parseManifest(index, 'x');
  assert.equal(parsed.kind, 'index');
  assert.deepEqual(parsed.kind === 'index' && parsed.children.map((c) => [c.platform, c.attestation]), [
    [{ os: 'linux', architecture: 'arm64' }, false],
    [{ os: 'unknown', architecture: 'unknown' }, true],
  ]);
  assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":1,"fsLayers":[]}'), 'old'), /old: Docker schema 1 manifests are not supported/);
  assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":2,"config":{"digest":"sha512:aa","size":1},"layers":[]}'), 'm'), /config has digest "sha512:aa"; bramble verifies sha256 digests only/);
  assert.throws(() => parseManifest(Buffer.from('not json'), 'm'), /m: the manifest is not JSON/);
});

test('credentials come from one Docker config.json; hub aliases fold to docker.io; bad files are named, secrets never shown', async (t) => {
  const dir = await tempDir(t, 'reg-creds');
  assert.equal(registryAuthFile({ BRAMBLE_REGISTRY_AUTH_FILE: '/x/auth.json', DOCKER_CONFIG: '/y' }), '/x/auth.json');
  assert.equal(registryAuthFile({ DOCKER_CONFIG: '/y' }), '/y/config.json');
  assert.equal(registryAuthFile({ HOME: '/home/u' }), '/home/u/.docker/config.json');
  assert.deepEqual(loadRegistryCredentials({ DOCKER_CONFIG: join(dir, 'missing') }), {});

  const file = join(dir, 'auth.json');
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  await writeFile(
    file,
    JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hubuser:hub:pass') },
        'ghcr.io': { username: 'gh', password: 'token' },
        'quay.io': {},
      },
      credHelpers: { 'gcr.io': 'gcloud' },
    }),
  );
  const creds = loadRegistryCredentials({ BRAMBLE_REGISTRY_AUTH_FILE: file });
  assert.deepEqual(creds, { 'docker.io': { username: 'hubuser', password: 'hub:pass' }, 'ghcr.io': { username: 'gh', password: 'token' } });
  assert.deepEqual(credentialFor(creds, 'registry-1.docker.io'), { username: 'hubuser', password: 'hub:pass' });
  assert.equal(credentialFor(creds, 'quay.io'), undefined);

  await writeFile(file, '{"auths": {"h": {"auth": "' + b64('no-colon-secret') + '"}}}');
  assert.throws(
    () => loadRegistryCredentials({ BRAMBLE_REGISTRY_AUTH_FILE: file }),
    (e: unknown) => (e as BrambleError).exitCode === ExitCode.badInput && /auths\."h"\.auth does not decode to user:password/.test((e as Error).message) && !(e as Error).message.includes('no-colon-secret'),
  );
  await writeFile(file, '{"auths": ');
  assert.throws(() => loadRegistryCredentials({ BRAMBLE_REGISTRY_AUTH_FILE: file }), new RegExp(`the registry credentials file ${file} is not valid JSON`));
});
