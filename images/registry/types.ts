// The contract between the registry client (pull into the blob store) and the bundle writers
// (distribution storage tree, per-arch OCI archives). Everything an image needs is in the blob
// store under its digest, manifests as the exact bytes upstream served; a PulledImage says which
// digests form the image and which children of an index the cluster keeps.

/** `sha256:<64 lowercase hex>`. */
export type Digest = string;

/** A normalised reference: docker.io short names resolved (`library/`), registry host explicit. */
export interface ImageName {
  /** `docker.io`, `registry.k8s.io`, `ghcr.io`, `127.0.0.1:5000`, … (as the cluster names it, never `registry-1.docker.io`). */
  registry: string;
  /** `library/registry`, `kube-apiserver`, `coredns/coredns`, `flannel-io/flannel`. */
  repository: string;
  /** The tag, when the reference had one. */
  tag?: string;
  /** The digest, when the reference pinned one. */
  digest?: Digest;
}

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
}

/** One platform-specific image manifest kept from an index (or the only manifest of a single-arch image). */
export interface PulledPlatform extends Descriptor {
  os: string;
  /** Normalised: amd64, arm64, arm. */
  architecture: string;
  variant?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface PulledImage {
  /** The full normalised reference the cluster pulls, e.g. `docker.io/library/registry:2.8.3`. */
  ref: string;
  name: ImageName;
  /** The top-level manifest or index exactly as upstream served it (its digest is what `@sha256:` pulls get). */
  top: Descriptor;
  /** The kept children (only the cluster's arches; attestation manifests skipped). For a single manifest, one entry describing it. */
  platforms: PulledPlatform[];
  /** Every blob of this image in the store: top, kept children, configs, layers; sorted by digest, no duplicates. */
  blobs: Descriptor[];
}

/** Where a blob lives in a blob store root: `<root>/sha256/<hex>` (immutable, verified before it appears). */
export function blobPath(storeRoot: string, digest: Digest): string {
  const m = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (!m) throw new Error(`not a sha256 digest: ${digest}`);
  return `${storeRoot}/sha256/${m[1]}`;
}
