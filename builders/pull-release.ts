// `bramble pull oci://HOST/REPO:TAG --out DIR`: fetch a release pushed by `bramble publish`, check
// every layer against its digest while writing it under its title, then run the same checks as
// `bramble verify` on the result. Everything is written into a temp directory beside DIR and renamed
// into place only once verified, so a failed pull leaves nothing behind.
import { sha256Digest } from '../images/registry/store.ts';
import { createWriteStream } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hashingPassThrough } from '../images/hashing-stream.ts';
import { registryErrorText } from '../images/registry/client.ts';
import { OCI_MANIFEST } from '../images/registry/push.ts';
import { HostError, InputError, VerificationError } from './errors.ts';
import type { EventSink } from './events.ts';
import { RELEASE_NAME, releaseNames, type ReleaseManifest } from './publish-format.ts';
import { RELEASE_ARTIFACT_TYPE, registryClientFor, TITLE_ANNOTATION, type OciManifest } from './publish-oci.ts';
import { parseOciReference } from './publish.ts';
import { verifyDirectory, type VerifyOptions, type VerifyReport } from './verify-release.ts';

export interface PullOptions extends VerifyOptions {
  /** Where the release's files go (must not exist, or be empty). */
  outDir: string;
}

/** `oci://HOST/REPO:TAG` → its parts. */
export function parseOciUrl(url: string): { host: string; repository: string; tag: string } {
  if (!url.startsWith('oci://')) throw new InputError(`${url}: not an oci:// reference`, { hint: 'e.g. oci://127.0.0.1:5000/clusters/demo:v1' });
  return parseOciReference(url.slice('oci://'.length), url);
}

/** Fetch the release into `o.outDir` and verify it. */
export async function pullRelease(url: string, o: PullOptions): Promise<VerifyReport & { files: number; digest: string }> {
  const ref = parseOciUrl(url);
  const existing = await readdir(o.outDir).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? [] : Promise.reject(e)));
  if (existing.length > 0) throw new InputError(`--out ${o.outDir} is not empty`, { hint: 'pull into a new or empty directory' });
  const client = registryClientFor(ref.host, o.signal, o.events);
  const scope = `repository:${ref.repository}:pull`;

  const res = await client.request({ method: 'GET', path: `/v2/${ref.repository}/manifests/${ref.tag}`, headers: { accept: OCI_MANIFEST }, scope });
  if (res.status === 404) {
    await res.body?.cancel();
    throw new InputError(`${url}: no such tag`, { hint: 'check the repository and tag (skopeo list-tags docker://HOST/REPO)' });
  }
  if (!res.ok) throw new HostError(`${url}: manifest: ${await registryErrorText(res)}`, { hint: 'check the reference and the credentials' });
  const bytes = Buffer.from(await res.arrayBuffer());
  const digest = sha256Digest(bytes);
  const served = res.headers.get('docker-content-digest');
  if (served && served !== digest) throw new VerificationError(`${url} manifest`, served, digest);
  let manifest: OciManifest;
  try {
    manifest = JSON.parse(bytes.toString('utf8')) as OciManifest;
  } catch {
    throw new VerificationError(`${url} manifest`, 'JSON', 'unparsable bytes');
  }
  if (manifest.artifactType !== RELEASE_ARTIFACT_TYPE || !Array.isArray(manifest.layers)) {
    throw new InputError(`${url} is not a bramble release (artifactType ${manifest.artifactType ?? 'missing'}, expected ${RELEASE_ARTIFACT_TYPE})`, {
      hint: 'pull only what `bramble publish --to oci://…` pushed',
    });
  }

  await mkdir(dirname(o.outDir), { recursive: true });
  const tmp = await mkdtemp(join(dirname(o.outDir), `.${basename(o.outDir)}.tmp-`));
  try {
    const seen = new Set<string>();
    for (const [i, layer] of manifest.layers.entries()) {
      const title = layer.annotations?.[TITLE_ANNOTATION];
      if (!title || !RELEASE_NAME.test(title) || seen.has(title)) {
        throw new VerificationError(`${url} layer ${layer.digest}`, 'a unique plain file name as its title', JSON.stringify(title ?? null));
      }
      seen.add(title);
      o.events({ kind: 'progress', stage: 'pull', what: title, done: i, total: manifest.layers.length, unit: 'items' });
      await fetchBlob(client, ref.repository, layer.digest, layer.size, join(tmp, title), scope, o.signal);
    }
    const report = await verifyDirectory(tmp, o);
    // Written owner-only while unverified; now the manifest says which files are not secret.
    const m = JSON.parse(await readFile(join(tmp, releaseNames.manifest), 'utf8')) as ReleaseManifest;
    const secret = new Set(m.files.filter((f) => f.secret).map((f) => f.name));
    for (const name of seen) if (!secret.has(name)) await chmod(join(tmp, name), 0o644);
    await rm(o.outDir, { recursive: true, force: true });
    await rename(tmp, o.outDir);
    return { ...report, digest };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function fetchBlob(client: ReturnType<typeof registryClientFor>, repository: string, digest: string, size: number, dest: string, scope: string, signal: AbortSignal): Promise<void> {
  const res = await client.request({ method: 'GET', path: `/v2/${repository}/blobs/${digest}`, scope });
  if (!res.ok || !res.body) throw new HostError(`blob ${digest}: ${await registryErrorText(res)}`, { hint: 'the registry lost a blob of this release; publish it again' });
  const tee = hashingPassThrough();
  await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), tee.stream, createWriteStream(dest, { mode: 0o600 }), { signal });
  const { size: n, sha256 } = tee.result();
  const actual = `sha256:${sha256}`;
  if (actual !== digest || n !== size) throw new VerificationError(`${basename(dest)} (blob from the registry)`, `${digest}, ${size} bytes`, `${actual}, ${n} bytes`);
}
