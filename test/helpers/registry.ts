// Real registries for the registry client's tests: Debian's `docker-registry` (distribution 2.8) on an
// ephemeral 127.0.0.1 port with filesystem storage in a temp dir, optionally behind htpasswd (bcrypt,
// written by `htpasswd -B`) or token auth; images seeded with `skopeo copy --all --preserve-digests`
// from OCI layouts the test builds, so what the registry serves is byte-for-byte what the test expects.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../../builders/exec.ts';
import type { Digest } from '../../images/registry/types.ts';
import type { FixtureImage } from '../../scripts/fixtures/registry.ts';

export interface DockerRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** The storage driver's rootdirectory. */
  storage: string;
  /** Every request path the registry logged, in order (from its access log). */
  requestedPaths(): string[];
  close(): Promise<void>;
}

export interface RegistryAuthOptions {
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

/** Start docker-registry in `dir` (config, storage, htpasswd there) and wait until /v2/ answers. */
export async function startDockerRegistry(dir: string, auth: RegistryAuthOptions = {}): Promise<DockerRegistry> {
  const storage = join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const config = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  formatter: json',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(storage)}`,
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    '  addr: ADDR',
    '  secret: bramble-test-secret',
  ];
  if (auth.htpasswd) {
    const file = join(dir, 'htpasswd');
    const r = await run('htpasswd', ['-B', '-b', '-n', auth.htpasswd.username, auth.htpasswd.password]);
    await writeFile(file, r.stdout.trim() + '\n');
    config.push('auth:', '  htpasswd:', '    realm: bramble-test', `    path: ${JSON.stringify(file)}`);
  }
  if (auth.token) {
    const t = auth.token;
    config.push('auth:', '  token:', `    realm: ${JSON.stringify(t.realm)}`, `    service: ${JSON.stringify(t.service)}`, `    issuer: ${JSON.stringify(t.issuer)}`, `    rootcertbundle: ${JSON.stringify(t.rootCertBundle)}`);
  }
  // The port is chosen before the registry binds it; another process may take it first, so retry.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const configFile = join(dir, 'config.yml');
    await writeFile(configFile, config.join('\n').replace('ADDR', host) + '\n');
    const child = spawn('docker-registry', ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    const log: string[] = [];
    const collect = (chunk: Buffer) => log.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    if (await waitReady(`http://${host}/v2/`, child)) {
      return {
        host,
        url: `http://${host}`,
        storage,
        requestedPaths: () => requestPaths(log),
        close: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
          await exited;
        },
      };
    }
    child.kill('SIGKILL');
    await exited;
    if (attempt === 3) throw new Error(`docker-registry did not start:\n${log.slice(-10).join('\n')}`);
  }
}

async function waitReady(url: string, child: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) return false;
    try {
      const res = await fetch(url);
      await res.body?.cancel();
      return true;
    } catch {
      await sleep(100);
    }
  }
  return false;
}

/** The request URIs in the registry's JSON access log (one `http.request.uri` per finished request). */
function requestPaths(log: string[]): string[] {
  const out: string[] = [];
  for (const line of log) {
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
