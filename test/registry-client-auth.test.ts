// Registry authentication against the real docker-registry: htpasswd (Basic) and token auth (Bearer
// tokens from a realm; the token server is a small loopback peer signing JWTs with an openssl-made
// certificate that the registry trusts), credentials read from a Docker config.json, wrong or missing
// credentials as clear exit-4 errors that never show the secret, and a cross-host redirect that never
// carries the Authorization header to the other host.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ExitCode, type BrambleError } from '../builders/errors.ts';
import type { BrambleEvent } from '../builders/events.ts';
import { run } from '../builders/exec.ts';
import { loadRegistryCredentials, type RegistryCredentials } from '../images/registry/auth.ts';
import { pullImages } from '../images/registry/pull.ts';
import type { PulledImage } from '../images/registry/types.ts';
import { buildFixtureImage } from '../scripts/fixtures/registry.ts';
import { seedImage, startDockerRegistry, type DockerRegistry } from './helpers/registry.ts';
import { tempDir } from './helpers/tmp.ts';

const USER = 'bramble';
const PASSWORD = 'Tr0ub4dor-test-only';
const alpha = buildFixtureImage('example.test/test/alpha:1');

let work: string;
let basic: DockerRegistry;
let tokenRegistry: DockerRegistry;
let tokenServer: { url: string; requests: { scopes: string[]; service: string | null; authorized: boolean }[]; server: Server };
const cleanups: (() => Promise<void>)[] = [];
const hooks = { after: (fn: () => Promise<void>) => cleanups.push(fn) };

const closeServer = (s: Server) =>
  new Promise<void>((resolve) => {
    s.closeAllConnections();
    s.close(() => resolve());
  });

async function listen(server: Server, host = '127.0.0.1'): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, host, () => resolve()));
  cleanups.unshift(() => closeServer(server));
  return `${host}:${(server.address() as AddressInfo).port}`;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/**
 * A token server as distribution's token.md describes: Basic credentials in, a JWT out, signed with the
 * key of a certificate the registry's rootcertbundle holds (carried in the x5c header). Known users get
 * what they ask for; anonymous callers get a token granting nothing; wrong passwords get a 401.
 */
async function startTokenServer(keyPem: string, certPem: string, issuer: string, service: string) {
  const key = createPrivateKey(keyPem);
  const certDer = new X509Certificate(certPem).raw;
  const requests: { scopes: string[]; service: string | null; authorized: boolean }[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const scopes = url.searchParams.getAll('scope');
    const auth = req.headers.authorization;
    requests.push({ scopes, service: url.searchParams.get('service'), authorized: auth !== undefined });
    let grant = false;
    if (auth) {
      const [user, pass] = Buffer.from(auth.replace(/^Basic /, ''), 'base64').toString().split(':');
      if (user !== USER || pass !== PASSWORD) {
        res.writeHead(401, { 'Content-Type': 'application/json' }).end('{"details":"bad credentials"}');
        return;
      }
      grant = true;
    }
    const now = Math.floor(Date.now() / 1000);
    const access = grant
      ? scopes.map((s) => {
          const [type, name, actions] = s.split(':');
          return { type, name, actions: actions!.split(',') };
        })
      : [];
    const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] }));
    const claims = b64url(JSON.stringify({ iss: issuer, sub: grant ? USER : '', aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access }));
    const signature = b64url(sign('sha256', Buffer.from(`${header}.${claims}`), key));
    res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ token: `${header}.${claims}.${signature}`, expires_in: 300, issued_at: new Date().toISOString() }));
  });
  const host = await listen(server);
  return { url: `http://${host}/token`, requests, server };
}

before(async () => {
  work = await tempDir(hooks, 'registry-auth');
  basic = await startDockerRegistry(join(work, 'basic'), { htpasswd: { username: USER, password: PASSWORD } });
  cleanups.unshift(() => basic.stop());
  await seedImage(basic, work, alpha, 'test/alpha', '1', { username: USER, password: PASSWORD });

  const keyFile = join(work, 'token.key');
  const certFile = join(work, 'token.crt');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-subj', '/CN=bramble-test-token-issuer', '-days', '2']);
  const issuer = 'bramble-test-issuer';
  const service = 'bramble-test-registry';
  tokenServer = await startTokenServer(await readFile(keyFile, 'utf8'), await readFile(certFile, 'utf8'), issuer, service);
  tokenRegistry = await startDockerRegistry(join(work, 'token'), { token: { realm: tokenServer.url, service, issuer, rootCertBundle: certFile } });
  cleanups.unshift(() => tokenRegistry.stop());
  await seedImage(tokenRegistry, work, alpha, 'test/alpha', '1', { username: USER, password: PASSWORD });
});

after(async () => {
  for (const fn of cleanups) await fn();
});

async function pull(storeRoot: string, ref: string, credentials?: RegistryCredentials): Promise<{ images: PulledImage[]; events: BrambleEvent[] }> {
  const events: BrambleEvent[] = [];
  const images = await pullImages({ refs: [ref], platforms: ['linux/arm64'], storeRoot, credentials, signal: new AbortController().signal, events: (e) => events.push(e) });
  return { images, events };
}

function authFailure(pattern: RegExp) {
  return (e: unknown) => {
    assert.equal((e as BrambleError).exitCode, ExitCode.hostEnvironment, String(e));
    const text = `${(e as Error).message} ${(e as BrambleError).hint}`;
    assert.match(text, pattern);
    assert.ok(!text.includes(PASSWORD), 'the password never appears in an error');
    assert.match(text, /docker login/);
    return true;
  };
}

test('Basic auth (htpasswd): credentials from a Docker config.json pull; wrong or missing ones are exit 4 without the secret', async (t) => {
  const dir = await tempDir(t, 'reg-auth');
  await writeFile(join(dir, 'config.json'), JSON.stringify({ auths: { [`http://${basic.host}/`]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') } } }));
  const credentials = loadRegistryCredentials({ DOCKER_CONFIG: dir });
  assert.deepEqual(Object.keys(credentials), [basic.host]);
  const { images, events } = await pull(join(dir, 'store'), `${basic.host}/test/alpha:1`, credentials);
  assert.equal(images[0]!.top.digest, alpha.index.digest);
  assert.equal(images[0]!.platforms[0]!.digest, alpha.children[1]!.manifest.digest);
  assert.ok(!JSON.stringify(events).includes(PASSWORD));

  await assert.rejects(
    pull(join(dir, 'store2'), `${basic.host}/test/alpha:1`, { [basic.host]: { username: USER, password: 'wrong-password' } }),
    authFailure(new RegExp(`${basic.host} refused /v2/test/alpha/manifests/1 \\(HTTP 401\\) with the configured credentials`)),
  );
  await assert.rejects(pull(join(dir, 'store3'), `${basic.host}/test/alpha:1`), authFailure(/\(HTTP 401\) and no credentials are configured for it/));
});

test('token auth: a Bearer token per repository scope from the realm, fetched once and reused for every blob', async (t) => {
  const dir = await tempDir(t, 'reg-auth');
  tokenServer.requests.length = 0;
  const { images } = await pull(join(dir, 'store'), `${tokenRegistry.host}/test/alpha:1`, { [tokenRegistry.host]: { username: USER, password: PASSWORD } });
  assert.equal(images[0]!.top.digest, alpha.index.digest);
  assert.deepEqual(tokenServer.requests, [{ scopes: ['repository:test/alpha:pull'], service: 'bramble-test-registry', authorized: true }]);
  const paths = tokenRegistry.requestedPaths();
  assert.ok(paths.filter((p) => p.includes('/blobs/')).length >= 3, 'config and layers came through the token-protected registry');

  await assert.rejects(
    pull(join(dir, 'store2'), `${tokenRegistry.host}/test/alpha:1`, { [tokenRegistry.host]: { username: USER, password: 'wrong-password' } }),
    authFailure(new RegExp(`the token server of ${tokenRegistry.host} \\(127\\.0\\.0\\.1:\\d+\\) refused the configured credentials \\(HTTP 401\\)`)),
  );
  // Anonymous: the token server issues a token that grants nothing, and the registry refuses it.
  await assert.rejects(pull(join(dir, 'store3'), `${tokenRegistry.host}/test/alpha:1`), authFailure(/refused \/v2\/test\/alpha\/manifests\/1 \(HTTP 401\) anonymously/));
});

test('a redirect to another host is followed without the Authorization header', async (t) => {
  const dir = await tempDir(t, 'reg-auth');
  const basicAuth = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
  const seenByCdn: { path: string; authorization?: string }[] = [];
  const seenByFront: { path: string; authorization: boolean }[] = [];
  const forward = (req: IncomingMessage, target: string, headers: Record<string, string>, res: import('node:http').ServerResponse) => {
    const upstream = httpRequest(`${target}${req.url}`, { method: req.method, headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.end();
  };
  const pick = (req: IncomingMessage, names: string[]) => Object.fromEntries(names.filter((n) => req.headers[n] !== undefined).map((n) => [n, String(req.headers[n])]));
  // A stand-in for an object store or CDN on another host: it holds its own access to the blobs (as a
  // presigned URL would) and records what the client sent it.
  const cdnHost = await listen(
    createServer((req, res) => {
      seenByCdn.push({ path: req.url ?? '', authorization: req.headers.authorization });
      forward(req, basic.url, { ...pick(req, ['range', 'accept']), authorization: basicAuth }, res);
    }),
    '127.0.0.2',
  );
  // The registry's front: authenticated blob reads are sent elsewhere with a 307, the rest passes through.
  const frontHost = await listen(
    createServer((req, res) => {
      seenByFront.push({ path: req.url ?? '', authorization: req.headers.authorization !== undefined });
      if (req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '') && req.headers.authorization) {
        res.writeHead(307, { Location: `http://${cdnHost}${req.url}` }).end();
        return;
      }
      forward(req, basic.url, pick(req, ['authorization', 'accept', 'range']), res);
    }),
  );
  const { images } = await pull(join(dir, 'store'), `${frontHost}/test/alpha:1`, { [frontHost]: { username: USER, password: PASSWORD } });
  assert.equal(images[0]!.top.digest, alpha.index.digest);
  const blobCount = 1 + images[0]!.platforms[0]!.layers.length;
  assert.equal(seenByCdn.length, blobCount, 'every blob came through the redirect');
  assert.deepEqual(seenByCdn.filter((r) => r.authorization !== undefined), [], 'no Authorization crossed to the other host');
  assert.ok(seenByFront.some((r) => r.authorization && r.path.includes('/blobs/')), 'the registry host itself got the credentials');
});
