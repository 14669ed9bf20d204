// Reading manifests and indexes (OCI image-spec, Docker manifest v2 schema 2 and manifest lists) from the
// exact bytes a registry served. They are parsed only to learn descriptors; the bytes are never
// re-serialised (that would change their digest, §3.6).
import { InputError } from '../../builders/errors.ts';
import { normalisePlatform, type Platform } from './platform.ts';
import type { Descriptor } from './types.ts';

export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** Largest manifest accepted (distribution's own default limit for manifest payloads, 4 MiB). */
export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;

/** BuildKit's annotation on attestation manifests (moby/buildkit docs/attestations/attestation-storage.md). */
const REFERENCE_TYPE_ANNOTATION = 'vnd.docker.reference.type';

export interface IndexChild extends Descriptor {
  platform?: Platform;
  /** A BuildKit attestation (`unknown/unknown`), never pulled. */
  attestation: boolean;
}

export type ParsedManifest =
  | { kind: 'index'; mediaType: string; children: IndexChild[] }
  | { kind: 'manifest'; mediaType: string; config: Descriptor; layers: Descriptor[] };

const digestPattern = /^sha256:[a-f0-9]{64}$/;

/** Parse manifest bytes; `contentType` is the registry's Content-Type, used when the JSON names no mediaType. */
export function parseManifest(bytes: Uint8Array, subject: string, contentType?: string): ParsedManifest {
  const bad = (why: string) => new InputError(`${subject}: ${why}`, { hint: 'bramble pulls OCI and Docker schema 2 images; use another tag or image' });
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('the manifest is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('the manifest is not a JSON object');
  const declared = typeof doc.mediaType === 'string' ? doc.mediaType : (contentType ?? '').split(';')[0]!.trim();
  if (doc.schemaVersion === 1 || declared === MediaType.dockerSchema1 || declared === MediaType.dockerSchema1Signed) {
    throw bad('Docker schema 1 manifests are not supported (deprecated since 2017)');
  }
  if (doc.schemaVersion !== 2) throw bad(`unknown manifest schemaVersion ${JSON.stringify(doc.schemaVersion)}`);
  const isIndex = declared === MediaType.ociIndex || declared === MediaType.dockerList || (!doc.mediaType && Array.isArray(doc.manifests));
  if (isIndex) {
    if (!Array.isArray(doc.manifests)) throw bad('the index has no "manifests" list');
    const children = doc.manifests.map((m, i): IndexChild => {
      const d = descriptor(m, `manifests[${i}]`, bad);
      const raw = m as { platform?: { os?: string; architecture?: string; variant?: string }; annotations?: Record<string, string> };
      const platform = raw.platform ? normalisePlatform(raw.platform) : undefined;
      const attestation = raw.annotations?.[REFERENCE_TYPE_ANNOTATION] === 'attestation-manifest' || (platform?.os === 'unknown' && platform.architecture === 'unknown');
      return { ...d, ...(platform ? { platform } : {}), attestation };
    });
    return { kind: 'index', mediaType: declared || MediaType.ociIndex, children };
  }
  const isManifest = declared === MediaType.ociManifest || declared === MediaType.dockerManifest || (!doc.mediaType && doc.config !== undefined);
  if (!isManifest) throw bad(`unsupported manifest media type "${declared}"`);
  const config = descriptor(doc.config, 'config', bad);
  if (!Array.isArray(doc.layers)) throw bad('the manifest has no "layers" list');
  const layers = doc.layers.map((l, i) => descriptor(l, `layers[${i}]`, bad));
  return { kind: 'manifest', mediaType: declared || MediaType.ociManifest, config, layers };
}

function descriptor(v: unknown, where: string, bad: (why: string) => InputError): Descriptor {
  const d = v as { mediaType?: unknown; digest?: unknown; size?: unknown } | null;
  if (typeof d !== 'object' || d === null) throw bad(`${where} is not a descriptor`);
  if (typeof d.digest !== 'string' || !digestPattern.test(d.digest)) {
    throw bad(`${where} has digest ${JSON.stringify(d.digest)}; bramble verifies sha256 digests only`);
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw bad(`${where} has no valid size`);
  return { mediaType: typeof d.mediaType === 'string' ? d.mediaType : '', digest: d.digest, size: d.size };
}

/** The platform an image config names (`architecture`, `os`, `variant`), for single-manifest images. */
export function configPlatform(bytes: Uint8Array, subject: string): Platform {
  let doc: { os?: unknown; architecture?: unknown; variant?: unknown };
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as typeof doc;
  } catch {
    throw new InputError(`${subject}: the image config is not JSON`, { hint: 'the image is broken; use another tag or image' });
  }
  const str = (x: unknown) => (typeof x === 'string' ? x : undefined);
  return normalisePlatform({ os: str(doc.os), architecture: str(doc.architecture), variant: str(doc.variant) });
}
