// What a catalogue says about one upstream input: where it is, which version, how upstream vouches
// for it, and what the cache derives from it. Catalogues build these; builders/fetch.ts consumes them.

/** How upstream vouches for the bytes, in upstream's own format. */
export type InputCheck =
  /** Flatcar: `<file>.DIGESTS` (SHA512 section) plus a detached `<file>.sig`, or a clearsigned `.DIGESTS.asc`. */
  | { kind: 'flatcar-digests'; digestsUrl: string; signatureUrl: string; digestsAscUrl: string }
  /** A checksum file: bare hex (dl.k8s.io, crictl) or sha256sum lines (HypriotOS, CNI plugins). */
  | { kind: 'checksum-file'; url: string; algorithm: 'sha256' | 'sha512' }
  /**
   * Upstream publishes no checksum (boot.ipxe.org, the pftf/RPi4 zip): the first download's sha256 is
   * pinned in bramble.lock, and every later fetch must match it.
   */
  | { kind: 'first-use' };

/** A file the cache derives from the verified blob: a decompressed, sparse disk image. */
export type DeriveKind = 'bz2-sparse' | 'zip-sparse';

export interface InputSource {
  /** Stable id, e.g. flatcar-image-amd64; also the key in bramble.lock. */
  id: string;
  url: string;
  version: string;
  check: InputCheck;
  derive?: DeriveKind;
}

/** Join a configurable base URL and a path, tolerating a trailing slash on the base. */
export function joinUrl(base: string, ...parts: string[]): string {
  return [base.replace(/\/+$/, ''), ...parts].join('/');
}

/** A version without its `v` prefix: cluster.toml may say either. */
export function bareVersion(v: string): string {
  return v.replace(/^v/, '');
}
