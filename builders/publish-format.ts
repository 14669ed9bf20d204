// The published release: a flat set of files, the same at every destination (a directory, an OCI
// artifact's layers, a GitHub release's assets), described by its own manifest.json and SHA256SUMS.
// docs/decisions/014-publishing-releases.md explains the choices; README "Publishing" documents the format.
//
// From out/<cluster>/ to the release: the files of images/ and oci/ are published one by one under
// their own names (disk images compressed: images/cp-1.img → cp-1.img.zst, beside cp-1.img.bmap),
// a file at the top level as it is, and every other directory (pxe/, registry/, pki/, configs/) as
// one deterministic tar of its selected files (pxe.tar unpacks to pxe/…).
//
// The exact set of a release is:
//   - every file in manifest.json's `files` (and signing-key.asc among them when signed),
//   - manifest.json and SHA256SUMS,
//   - SHA256SUMS.asc when the manifest names a signer.
// SHA256SUMS lists every file of `files` plus manifest.json, sorted by name, in `sha256sum` format.
import type { ArtefactKind, Manifest } from './output.ts';
import type { Arch, Target } from './spec.ts';
import type { Compression } from '../images/compress.ts';

export const RELEASE_FORMAT = 'bramble-release';
export const RELEASE_FORMAT_VERSION = 1;

export const releaseNames = {
  manifest: 'manifest.json',
  checksums: 'SHA256SUMS',
  signature: 'SHA256SUMS.asc',
  signingKey: 'signing-key.asc',
} as const;

/** A published file name: one path component, no leading dot (what GitHub keeps as an asset name). */
export const RELEASE_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

/** One out/<cluster>/ file inside a release archive. */
export interface ArchiveMember {
  path: string;
  size: number;
  sha256: string;
  kind: ArtefactKind;
  node?: string;
  secret: boolean;
}

export interface ReleaseFile {
  /** File name in the release (flat). */
  name: string;
  size: number;
  sha256: string;
  kind: ArtefactKind | 'archive' | 'signing-key';
  node?: string;
  target?: Target;
  arch?: Arch;
  secret: boolean;
  /** The artefact's path in out/<cluster>/ it was made from. */
  source?: string;
  /** For compressed disk images: the format, and the image as the build listed it. */
  compression?: Compression;
  uncompressed?: { size: number; sha256: string };
  /** For archives: the files inside, as the build listed them. */
  members?: ArchiveMember[];
}

export interface ReleaseManifest {
  format: typeof RELEASE_FORMAT;
  formatVersion: typeof RELEASE_FORMAT_VERSION;
  cluster: string;
  generator: string;
  sourceDateEpoch: number;
  /** Published with --private: secret artefacts may be in `files`. */
  private: boolean;
  /** Fingerprint of the key that signed SHA256SUMS, or null for a release published --unsigned. */
  signer: string | null;
  /** The tool that compressed the disk images (`zstd 1.5.4`), when any was. */
  compressor: string | null;
  /** OS and Kubernetes versions, from the build's inputs. */
  versions: Record<string, string>;
  nodes: Manifest['nodes'];
  inputs: Manifest['inputs'];
  files: ReleaseFile[];
}

/** Directories of out/<cluster>/ whose files are published one by one: each is a deliverable on its own. */
const FLAT_DIRS = new Set(['images', 'oci']);

/** Where an out/<cluster>/ file goes: a release file of its own, or a member of `<dir>.tar`. */
export function releasePlacement(outPath: string): { name: string; archived: boolean } {
  const [first, ...rest] = outPath.split('/');
  if (rest.length === 0) return { name: first!, archived: false };
  if (FLAT_DIRS.has(first!) && rest.length === 1) return { name: rest[0]!, archived: false };
  return { name: `${first}.tar`, archived: true };
}

export const byName = <T extends { name: string }>(a: T, b: T) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** SHA256SUMS text: one `<hex>  <name>` line per entry, sorted by name. */
export function formatChecksums(entries: ReadonlyArray<{ name: string; sha256: string }>): string {
  return [...entries].sort(byName).map((e) => `${e.sha256}  ${e.name}\n`).join('');
}

/** Parse SHA256SUMS; malformed lines are reported by line number. */
export function parseChecksums(text: string): { entries: Map<string, string>; problems: string[] } {
  const entries = new Map<string, string>();
  const problems: string[] = [];
  text.split('\n').forEach((line, i) => {
    if (line === '') return;
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
    if (!m) problems.push(`line ${i + 1} is not "<sha256>  <name>"`);
    else if (entries.has(m[2]!)) problems.push(`line ${i + 1}: ${m[2]} is listed twice`);
    else entries.set(m[2]!, m[1]!);
  });
  return { entries, problems };
}

/** The names a release must hold and nothing else. */
export function expectedReleaseNames(m: ReleaseManifest): Set<string> {
  const names = new Set(m.files.map((f) => f.name));
  names.add(releaseNames.manifest);
  names.add(releaseNames.checksums);
  if (m.signer) names.add(releaseNames.signature);
  return names;
}

/** Versions of a build's upstream inputs by family (`flatcar-image-amd64` 4593.2.5 → flatcar: 4593.2.5); container images left out. */
export function versionsOf(inputs: Manifest['inputs']): Record<string, string> {
  const versions: Record<string, string> = {};
  for (const i of inputs) {
    if (i.id.startsWith('image:')) continue;
    const family = i.id.split('-')[0]!;
    if (!versions[family] && i.version) versions[family] = i.version;
  }
  return Object.fromEntries(Object.entries(versions).sort(([a], [b]) => (a < b ? -1 : 1)));
}
