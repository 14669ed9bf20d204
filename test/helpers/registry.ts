// Debian's `docker-registry` (distribution 2.8), the one way tests start a real registry: an
// ephemeral 127.0.0.1 port, filesystem storage (a new directory, or a tree to serve), optionally
// read-only with the config the first node's mirror gets (overlays/registry/mirror.ts), behind
// htpasswd (bcrypt, written by `htpasswd -B`) or token auth; its log kept for the test to read.
// Images are seeded with `skopeo copy --all --preserve-digests` from OCI layouts the test builds,
// so what the registry serves is byte-for-byte what the test expects.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { run } from '../../builders/exec.ts';
import type { Digest } from '../../images/registry/types.ts';
import { MIRROR_PORT, REGISTRY_ROOT_ON_NODE, registryConfigYml } from '../../overlays/registry/mirror.ts';
import type { FixtureImage } from '../../scripts/fixtures/registry.ts';

export interface DockerRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** The storage driver's rootdirectory. */
  storage: string;
  /** Everything the registry wrote (JSON log lines and its access log). */
  log(): string;
  /** Every request path the registry logged, in order (from its JSON log). */
  requestedPaths(): string[];
  stop(): Promise<void>;
}

export interface DockerRegistryOptions {
  /** The tree to serve (distribution's filesystem driver layout); a new `storage` directory in `dir` otherwise. */
  storage?: string;
  /** Serve read-only with the first node's registry config, only its rootdirectory and address replaced. */
  readOnly?: boolean;
  htpasswd?: { username: string; password: string };
  /** Token auth (distribution docs/content/spec/auth/token.md): realm, service, issuer and the signing certificate. */
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
}

/** A port nobody listens on right now (the registry needs one in its config). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

interface RegistryConfig {
  log?: Record<string, unknown>;
  storage: { filesystem: { rootdirectory: string } } & Record<string, unknown>;
  http: { addr: string; secret?: string };
  auth?: Record<string, unknown>;
}

/** The read-only config the first node's registry gets, with the node's storage path and port checked before they are replaced. */
function nodeRegistryConfig(): RegistryConfig {
  const config = parseYaml(registryConfigYml()) as RegistryConfig;
  if (config.storage?.filesystem?.rootdirectory !== REGISTRY_ROOT_ON_NODE || config.http?.addr !== `:${MIRROR_PORT}`) {
    throw new Error(`the node's registry config no longer has rootdirectory ${REGISTRY_ROOT_ON_NODE} and addr :${MIRROR_PORT}:\n${registryConfigYml()}`);
  }
  return config;
}

/** Start docker-registry in `dir` (config, storage, htpasswd there) and wait until /v2/ answers. */
export async function startDockerRegistry(dir: string, o: DockerRegistryOptions = {}): Promise<DockerRegistry> {
  const storage = o.storage ?? join(dir, 'storage');
  await mkdir(dir, { recursive: true });
  await mkdir(storage, { recursive: true });
  const config: RegistryConfig = o.readOnly
    ? nodeRegistryConfig()
    : { storage: { filesystem: { rootdirectory: storage }, maintenance: { uploadpurging: { enabled: false } } }, http: { addr: '' } };
  config.log = { level: 'info', formatter: 'json' };
  config.storage.filesystem.rootdirectory = storage;
  config.http.secret = 'bramble-test-secret';
  if (o.htpasswd) {
    const file = join(dir, 'htpasswd');
    const r = await run('htpasswd', ['-B', '-b', '-n', o.htpasswd.username, o.htpasswd.password]);
    await writeFile(file, r.stdout.trim() + '\n');
    config.auth = { htpasswd: { realm: 'bramble-test', path: file } };
  }
  if (o.token) {
    const t = o.token;
    config.auth = { token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.rootCertBundle } };
  }
  // The port is chosen before the registry binds it; another process may take it first, so retry.
  for (let attempt = 1; ; attempt++) {
    const host = `127.0.0.1:${await freePort()}`;
    config.http.addr = host;
    const configFile = join(dir, 'config.yml');
    await writeFile(configFile, stringifyYaml({ version: '0.1', ...config }));
    const child = spawn('docker-registry', ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    const collect = (chunk: Buffer) => (log += chunk.toString('utf8'));
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const stop = async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
    };
    if (await waitReady(`http://${host}/v2/`, child)) {
      return { host, url: `http://${host}`, storage, log: () => log, requestedPaths: () => requestPaths(log), stop };
    }
    child.kill('SIGKILL');
    await exited;
    if (attempt === 3) throw new Error(`docker-registry did not start:\n${log.slice(-3000)}`);
  }
}

/**
 * An answer from a distribution registry (200, or 401 with auth; either carries the API version
 * header) while our child still runs means it serves: another server that took the port first would
 * answer too. False when it exits or 20 s pass.
 */
async function waitReady(url: string, child: ChildProcess): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < 20_000) {
    if (child.exitCode !== null) return false;
    try {
      const res = await fetch(url);
      await res.body?.cancel();
      if (!res.headers.has('docker-distribution-api-version')) return false;
      await sleep(50); // a registry whose bind failed exits at once: give it the moment to show that
      return child.exitCode === null;
    } catch {
      await sleep(100);
    }
  }
  return false;
}

/** The request URIs in the registry's JSON log (one `http.request.uri` per finished request). */
function requestPaths(log: string): string[] {
  const out: string[] = [];
  for (const line of log.split('\n')) {
    try {
      const entry = JSON.parse(line) as Record<string, unknown>;
      if (entry.msg === 'response completed' && typeof entry['http.request.uri'] === 'string') out.push(entry['http.request.uri']);
    } catch {
      /* not a JSON log line */
    }
  }
  return out;
}

/** Where distribution keeps a blob's bytes (kubernetes-and-registry.md §4). */
export function registryBlobData(storage: string, digest: Digest): string {
  const hex = digest.slice('sha256:'.length);
  return join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

/** An OCI image layout holding one image's index and every blob, tagged `tag` (image-spec image-layout.md). */
export async function writeOciLayout(dir: string, image: FixtureImage, tag: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  for (const b of image.blobs.values()) await writeFile(join(dir, 'blobs', 'sha256', b.digest.slice(7)), b.bytes);
  const index = { schemaVersion: 2, manifests: [{ mediaType: image.index.mediaType, digest: image.index.digest, size: image.index.size, annotations: { 'org.opencontainers.image.ref.name': tag } }] };
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
}

/** Push `image` (every platform and the attestation) to `registry` as `repository:tag`, digests preserved. */
export async function seedImage(registry: DockerRegistry, workDir: string, image: FixtureImage, repository: string, tag: string, creds?: { username: string; password: string }): Promise<void> {
  const layout = join(workDir, `layout-${repository.replaceAll('/', '_')}-${tag}`);
  await writeOciLayout(layout, image, tag);
  const args = ['copy', '--quiet', '--all', '--preserve-digests', '--dest-tls-verify=false'];
  if (creds) args.push('--dest-creds', `${creds.username}:${creds.password}`);
  await run('skopeo', [...args, `oci:${layout}:${tag}`, `docker://${registry.host}/${repository}:${tag}`], { env: { HOME: workDir } });
}
