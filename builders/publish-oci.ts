// A release as an OCI artifact: one image manifest whose `artifactType` says what it is, whose config
// is the empty descriptor, and whose layers are the release's files, each titled with its file name
// (`org.opencontainers.image.title`, as oras names files) and annotated with the node, target and
// arch it is for; the manifest carries the cluster and its OS and Kubernetes versions. Pushed with
// the shared registry client: blobs first (skipped when present), the manifest last.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { registryEndpoint } from '../images/registry/reference.ts';
import { RegistryClient } from '../images/registry/client.ts';
import { loadRegistryCredentials } from '../images/registry/auth.ts';
import { EMPTY_CONFIG, EMPTY_CONFIG_BYTES, OCI_MANIFEST, pushBlob, pushManifest } from '../images/registry/push.ts';
import type { Descriptor } from '../images/registry/types.ts';
import { InterruptedError } from './errors.ts';
import type { EventSink } from './events.ts';
import { releaseNames, type ReleaseManifest } from './publish-format.ts';
import { sha256File } from './output.ts';

export interface OciDestination {
  kind: 'oci';
  /** `HOST[:PORT]` */
  host: string;
  repository: string;
  tag: string;
}

export const RELEASE_ARTIFACT_TYPE = 'application/vnd.bramble.release.v1';
export const TITLE_ANNOTATION = 'org.opencontainers.image.title';
/** Annotation keys bramble sets, under its own prefix. */
export const annotationKeys = {
  kind: 'dev.bramble.kind',
  node: 'dev.bramble.node',
  target: 'dev.bramble.target',
  arch: 'dev.bramble.arch',
  secret: 'dev.bramble.secret',
  cluster: 'dev.bramble.cluster',
  versions: 'dev.bramble.versions',
  signer: 'dev.bramble.signer',
} as const;

export interface OciManifest {
  schemaVersion: 2;
  mediaType: string;
  artifactType?: string;
  config: Descriptor;
  layers: Array<Descriptor & { annotations?: Record<string, string> }>;
  annotations?: Record<string, string>;
}

/** A layer's media type, from the file's name. */
export function layerMediaType(name: string): string {
  if (name === releaseNames.checksums) return 'text/plain; charset=utf-8';
  if (name === releaseNames.signature) return 'application/pgp-signature';
  if (name === releaseNames.signingKey) return 'application/pgp-keys';
  if (name.endsWith('.zst')) return 'application/zstd';
  if (name.endsWith('.xz')) return 'application/x-xz';
  if (name.endsWith('.json') || name.endsWith('.ign')) return 'application/json';
  if (name.endsWith('.bmap')) return 'application/xml';
  return 'application/octet-stream';
}

/** The artifact manifest for a staged release (deterministic: same files, same bytes). */
export async function releaseOciManifest(stageDir: string, m: ReleaseManifest): Promise<OciManifest> {
  const byName = new Map(m.files.map((f) => [f.name, f]));
  const layers: OciManifest['layers'] = [];
  for (const name of (await readdir(stageDir)).sort()) {
    const f = byName.get(name);
    const size = f?.size ?? (await stat(join(stageDir, name))).size;
    const sha256 = f?.sha256 ?? (await sha256File(join(stageDir, name)));
    const annotations: Record<string, string> = { [TITLE_ANNOTATION]: name };
    if (f) {
      annotations[annotationKeys.kind] = f.kind;
      if (f.node) annotations[annotationKeys.node] = f.node;
      if (f.target) annotations[annotationKeys.target] = f.target;
      if (f.arch) annotations[annotationKeys.arch] = f.arch;
      if (f.secret) annotations[annotationKeys.secret] = 'true';
    }
    layers.push({ mediaType: layerMediaType(name), digest: `sha256:${sha256}`, size, annotations });
  }
  const annotations: Record<string, string> = {
    'org.opencontainers.image.created': new Date(m.sourceDateEpoch * 1000).toISOString().replace('.000Z', 'Z'),
    [annotationKeys.cluster]: m.cluster,
    [annotationKeys.versions]: Object.entries(m.versions).map(([k, v]) => `${k}=${v}`).join(','),
  };
  if (m.signer) annotations[annotationKeys.signer] = m.signer;
  return { schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: RELEASE_ARTIFACT_TYPE, config: { ...EMPTY_CONFIG }, layers, annotations };
}

export function registryClientFor(host: string, signal: AbortSignal, events: EventSink): RegistryClient {
  return new RegistryClient({ origin: registryEndpoint(host).origin, credentials: loadRegistryCredentials(), signal, events });
}

export async function publishToOci(
  stageDir: string,
  m: ReleaseManifest,
  dest: OciDestination,
  o: { chunkSize?: number; signal: AbortSignal; events: EventSink },
): Promise<{ location: string; uploaded: string[]; skipped: string[] }> {
  const client = registryClientFor(dest.host, o.signal, o.events);
  const manifest = await releaseOciManifest(stageDir, m);
  const uploaded: string[] = [];
  const skipped: string[] = [];
  await pushBlob(client, dest.repository, { ...EMPTY_CONFIG, bytes: EMPTY_CONFIG_BYTES });
  for (const [i, layer] of manifest.layers.entries()) {
    if (o.signal.aborted) throw new InterruptedError();
    const name = layer.annotations![TITLE_ANNOTATION]!;
    o.events({ kind: 'progress', stage: 'publish', what: `push ${name}`, done: i, total: manifest.layers.length, unit: 'items' });
    const sent = await pushBlob(client, dest.repository, { digest: layer.digest, size: layer.size, file: join(stageDir, name) }, { chunkSize: o.chunkSize });
    (sent ? uploaded : skipped).push(name);
  }
  const bytes = Buffer.from(JSON.stringify(manifest));
  const pushed = await pushManifest(client, dest.repository, dest.tag, bytes);
  return { location: `${dest.host}/${dest.repository}@${pushed.digest}`, uploaded, skipped };
}
