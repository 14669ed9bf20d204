// Pushing blobs and manifests to a registry (OCI distribution-spec "push"): a blob the repository
// already has is skipped (HEAD), a small one goes up in one request (POST an upload session, then
// PUT ?digest= with the bytes), a large one in chunks (PATCH with Content-Range per chunk, then
// PUT ?digest= with no body), and the manifest last, so a tag never names missing blobs. Requests go
// through the shared RegistryClient (auth challenges, redirects, retries); chunk bodies are opened
// per attempt, so a retried request sends the same bytes again.
import { sha256Digest } from './store.ts';
import { createReadStream } from 'node:fs';
import { HostError, VerificationError } from '../../builders/errors.ts';
import { registryErrorText, type RegistryClient } from './client.ts';
import type { Descriptor, Digest } from './types.ts';

/** Blobs up to this size go up in one PUT; larger ones in chunks of this size. */
const DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024;

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** The OCI empty descriptor (image-spec manifest.md, "Guidance for an Empty Descriptor"): the two bytes `{}`. */
export const EMPTY_CONFIG = {
  mediaType: 'application/vnd.oci.empty.v1+json',
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
} as const;
export const EMPTY_CONFIG_BYTES = Buffer.from('{}');

export interface BlobSource {
  digest: Digest;
  size: number;
  /** A file holding the blob, or its bytes. */
  file?: string;
  bytes?: Uint8Array;
}

export interface PushOptions {
  /** Blobs larger than this go up in chunks of this size. */
  chunkSize?: number;
}

const scopeOf = (repository: string) => `repository:${repository}:pull,push`;

async function fail(what: string, res: Response): Promise<never> {
  throw new HostError(`${what}: ${await registryErrorText(res)}`, { hint: 'check the repository name and that the credentials may push to it' });
}

/** True when the repository already holds the blob. */
async function hasBlob(client: RegistryClient, repository: string, digest: Digest): Promise<boolean> {
  const res = await client.request({ method: 'HEAD', path: `/v2/${repository}/blobs/${digest}`, scope: scopeOf(repository) });
  await res.body?.cancel();
  if (res.status === 200) return true;
  if (res.status === 404) return false;
  return fail(`HEAD blob ${digest} in ${repository}`, res);
}

function bodyOf(blob: BlobSource, start: number, end: number) {
  if (blob.bytes) return blob.bytes.subarray(start, end);
  const file = blob.file!;
  return () => createReadStream(file, { start, end: end - 1, highWaterMark: 1 << 20 });
}

/** The upload URL with `digest` added to whatever query the registry put in it (`_state`). */
function withDigest(location: string, digest: Digest, origin: string): string {
  const url = new URL(location, `${origin}/`);
  url.searchParams.set('digest', digest);
  return url.href;
}

async function startUpload(client: RegistryClient, repository: string): Promise<string> {
  const res = await client.request({ method: 'POST', path: `/v2/${repository}/blobs/uploads/`, scope: scopeOf(repository), headers: { 'content-length': '0' } });
  if (res.status !== 202) return fail(`start an upload to ${repository}`, res);
  await res.body?.cancel();
  const location = res.headers.get('location');
  if (!location) throw new HostError(`${client.origin}: upload to ${repository} started without a Location`, { hint: 'the registry misbehaves' });
  return location;
}

async function finishUpload(client: RegistryClient, repository: string, blob: BlobSource, res: Response): Promise<void> {
  if (res.status !== 201) return fail(`upload of ${blob.digest} to ${repository}`, res);
  await res.body?.cancel();
  const stored = res.headers.get('docker-content-digest');
  if (stored && stored !== blob.digest) throw new VerificationError(`${client.origin}/${repository} blob`, blob.digest, stored);
}

/** Push one blob unless the repository has it; returns whether bytes were sent. */
export async function pushBlob(client: RegistryClient, repository: string, blob: BlobSource, o: PushOptions = {}): Promise<boolean> {
  if (await hasBlob(client, repository, blob.digest)) return false;
  const chunk = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
  let location = await startUpload(client, repository);
  const octets = { 'content-type': 'application/octet-stream' };
  if (blob.size <= chunk) {
    const res = await client.request({
      method: 'PUT',
      path: withDigest(location, blob.digest, client.origin),
      scope: scopeOf(repository),
      headers: { ...octets, 'content-length': String(blob.size) },
      body: bodyOf(blob, 0, blob.size),
    });
    await finishUpload(client, repository, blob, res);
    return true;
  }
  for (let start = 0; start < blob.size; start += chunk) {
    const end = Math.min(blob.size, start + chunk);
    const res = await client.request({
      method: 'PATCH',
      path: location,
      scope: scopeOf(repository),
      // Content-Range of an upload chunk is inclusive and has no unit (distribution-spec, "Pushing a blob in chunks").
      headers: { ...octets, 'content-length': String(end - start), 'content-range': `${start}-${end - 1}` },
      body: bodyOf(blob, start, end),
    });
    if (res.status !== 202) return fail(`upload chunk ${start}-${end - 1} of ${blob.digest} to ${repository}`, res);
    await res.body?.cancel();
    location = res.headers.get('location') ?? location;
  }
  const res = await client.request({
    method: 'PUT',
    path: withDigest(location, blob.digest, client.origin),
    scope: scopeOf(repository),
    headers: { 'content-length': '0' },
  });
  await finishUpload(client, repository, blob, res);
  return true;
}

/** PUT a manifest under `reference` (a tag); returns the digest the registry stored it under. */
export async function pushManifest(client: RegistryClient, repository: string, reference: string, bytes: Uint8Array): Promise<Descriptor> {
  const mediaType = OCI_MANIFEST;
  const res = await client.request({
    method: 'PUT',
    path: `/v2/${repository}/manifests/${reference}`,
    scope: scopeOf(repository),
    headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
    body: bytes,
  });
  if (res.status !== 201) return fail(`push manifest ${repository}:${reference}`, res);
  await res.body?.cancel();
  const digest = sha256Digest(bytes);
  const stored = res.headers.get('docker-content-digest');
  if (stored && stored !== digest) throw new VerificationError(`${client.origin}/${repository}:${reference} manifest`, digest, stored);
  return { mediaType, digest, size: bytes.length };
}
