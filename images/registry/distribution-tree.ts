// The bundled mirror as distribution's (registry:2) filesystem storage, written directly instead of
// pushed: blobs under `docker/registry/v2/blobs/sha256/<hh>/<hex>/data`, and per repository the link
// files a GET needs (kubernetes-and-registry.md §4): a revision link for the top manifest or index
// AND for every kept child (a GET by child digest reads it), `_layers` links for configs and layers,
// and for a tag its `current` link plus the tag index entry. A link is `sha256:<hex>` with no newline.
// Index manifests are kept byte for byte; GET does no child validation, so an index listing arches
// the cluster does not run is served as upstream published it, with only the cluster's children present.
//
// Images keep their upstream path under the mirror: `registry.k8s.io/pause:3.10` is repository
// `registry.k8s.io/pause`, what containerd asks for with a per-upstream hosts.toml whose server is
// `http://<mirror>/v2/registry.k8s.io` (§6.2, design note (a)).
import { createHash } from 'node:crypto';
import { constants, copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { InputError } from '../../builders/errors.ts';
import { sha256File } from '../../builders/output.ts';
import { blobPath, type Descriptor, type Digest, type ImageName, type PulledImage } from './types.ts';

/** distribution's storagePathRoot + storagePathVersion under the filesystem driver's rootdirectory (paths.go). */
export const REGISTRY_V2_ROOT = 'docker/registry/v2';

/** One file of the storage tree, relative to the driver's rootdirectory: a blob's bytes or a link's digest. */
export type TreeFile = { path: string; blob: Descriptor } | { path: string; link: Digest };

/** Repository name grammar of the distribution spec (§3.1); each `/`-separated component. */
const repositoryComponent = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const tagPattern = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/**
 * The mirror path component for an upstream registry: its host, with a port's colon as `_`
 * (`localhost:5000` → `localhost_5000`), because a colon is not allowed in a repository name.
 */
export function mirrorNamespace(registry: string): string {
  return registry.toLowerCase().replace(':', '_');
}

/** The image's repository in the mirror: `registry.k8s.io/coredns/coredns`, `docker.io/library/registry`. */
export function mirrorRepository(name: ImageName): string {
  const repo = `${mirrorNamespace(name.registry)}/${name.repository}`;
  if (!repo.split('/').every((c) => repositoryComponent.test(c))) {
    throw new InputError(`image ${name.registry}/${name.repository} cannot be stored in the mirror: "${repo}" is not a valid repository name`, {
      hint: 'registry.extra_images takes lower-case references like "docker.io/library/nginx:1.27"',
    });
  }
  return repo;
}

/** The 64 hex digits of a sha256 digest. */
export function digestHex(digest: Digest): string {
  const m = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (!m) throw new Error(`not a sha256 digest: ${digest}`);
  return m[1]!;
}

/** A link file's exact bytes, as distribution's blobStore.link() writes them (no trailing newline). */
export function linkFileText(digest: Digest): string {
  return `sha256:${digestHex(digest)}`;
}

/** The sha256 (hex) of a tree file's bytes, without reading it: a blob's digest, or its link text's. */
export function treeFileSha256(file: TreeFile): string {
  return 'link' in file ? createHash('sha256').update(linkFileText(file.link)).digest('hex') : digestHex(file.blob.digest);
}

export const treePaths = {
  blob: (d: Digest) => `${REGISTRY_V2_ROOT}/blobs/sha256/${digestHex(d).slice(0, 2)}/${digestHex(d)}/data`,
  revision: (repo: string, d: Digest) => `${REGISTRY_V2_ROOT}/repositories/${repo}/_manifests/revisions/sha256/${digestHex(d)}/link`,
  layer: (repo: string, d: Digest) => `${REGISTRY_V2_ROOT}/repositories/${repo}/_layers/sha256/${digestHex(d)}/link`,
  tagCurrent: (repo: string, tag: string) => `${REGISTRY_V2_ROOT}/repositories/${repo}/_manifests/tags/${tag}/current/link`,
  tagIndexEntry: (repo: string, tag: string, d: Digest) => `${REGISTRY_V2_ROOT}/repositories/${repo}/_manifests/tags/${tag}/index/sha256/${digestHex(d)}/link`,
};

/**
 * Every file of the storage tree for `images`, sorted by path, each once. Two images naming the
 * same repository and tag with different digests are an InputError (one tag has one manifest).
 */
export function distributionTreeFiles(images: readonly PulledImage[]): TreeFile[] {
  const files = new Map<string, TreeFile>();
  const owner = new Map<string, string>();
  const add = (f: TreeFile, ref: string) => {
    const prior = files.get(f.path);
    if (prior) {
      const same = 'blob' in f ? 'blob' in prior && prior.blob.digest === f.blob.digest : 'link' in prior && prior.link === f.link;
      if (!same) {
        throw new InputError(`images ${owner.get(f.path)} and ${ref} are the same repository and tag with different content`, {
          hint: 'list each image once in registry.extra_images (a tag can name only one manifest)',
        });
      }
      return;
    }
    files.set(f.path, f);
    owner.set(f.path, ref);
  };
  for (const img of images) {
    const repo = mirrorRepository(img.name);
    for (const b of img.blobs) add({ path: treePaths.blob(b.digest), blob: { mediaType: b.mediaType, digest: b.digest, size: b.size } }, img.ref);
    add({ path: treePaths.revision(repo, img.top.digest), link: img.top.digest }, img.ref);
    for (const p of img.platforms) {
      add({ path: treePaths.revision(repo, p.digest), link: p.digest }, img.ref);
      for (const d of [p.config, ...p.layers]) add({ path: treePaths.layer(repo, d.digest), link: d.digest }, img.ref);
    }
    if (img.name.tag !== undefined) {
      if (!tagPattern.test(img.name.tag)) throw new InputError(`image ${img.ref}: "${img.name.tag}" is not a valid tag`);
      add({ path: treePaths.tagCurrent(repo, img.name.tag), link: img.top.digest }, img.ref);
      add({ path: treePaths.tagIndexEntry(repo, img.name.tag, img.top.digest), link: img.top.digest }, img.ref);
    }
    const inBlobs = new Set(img.blobs.map((b) => b.digest));
    for (const d of [img.top, ...img.platforms.flatMap((p) => [p, p.config, ...p.layers])]) {
      if (!inBlobs.has(d.digest)) throw new Error(`image ${img.ref}: ${d.digest} is referenced but not among its blobs`);
    }
  }
  return [...files.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The blobs of a tree, each once: the bytes a served registry holds. */
export function uniqueBlobs(files: readonly TreeFile[]): Descriptor[] {
  return files.flatMap((f) => ('blob' in f ? [f.blob] : []));
}

export type PlacedHow = 'unchanged' | 'hardlink' | 'copy' | 'written';

/**
 * Put one tree file at `dest`: a blob hardlinked from the store when both are on one filesystem
 * (else copied, reflinked where the filesystem can), a link file written. The file appears by
 * rename; a file already holding the right bytes is left alone (same inode and mtime).
 */
export async function placeTreeFile(file: TreeFile, dest: string, storeRoot: string, signal?: AbortSignal): Promise<PlacedHow> {
  const tmp = `${dest}.tmp-${process.pid}`;
  if ('link' in file) {
    const text = linkFileText(file.link);
    const old = await readFile(dest, 'utf8').catch(() => undefined);
    if (old === text) return 'unchanged';
    await mkdir(dirname(dest), { recursive: true });
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, dest);
    return 'written';
  }
  const source = blobPath(storeRoot, file.blob.digest);
  const [src, old] = await Promise.all([stat(source), stat(dest).catch(() => undefined)]);
  if (src.size !== file.blob.size) throw new Error(`blob store ${source}: ${src.size} bytes, the manifest says ${file.blob.size}`);
  if (old && old.ino === src.ino && old.dev === src.dev) return 'unchanged';
  if (old && old.size === file.blob.size && `sha256:${await sha256File(dest, signal)}` === file.blob.digest) return 'unchanged';
  await mkdir(dirname(dest), { recursive: true });
  await rm(tmp, { force: true });
  let how: PlacedHow = 'hardlink';
  try {
    await link(source, tmp);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw e;
    await copyFile(source, tmp, constants.COPYFILE_FICLONE);
    how = 'copy';
  }
  await rename(tmp, dest);
  return how;
}

/** Write a whole tree under `rootDir` (the registry's rootdirectory); returns how many files were placed how. */
export async function writeDistributionTree(
  files: readonly TreeFile[],
  o: { rootDir: string; storeRoot: string; signal?: AbortSignal },
): Promise<Record<PlacedHow, number>> {
  const counts: Record<PlacedHow, number> = { unchanged: 0, hardlink: 0, copy: 0, written: 0 };
  for (const f of files) {
    if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
    counts[await placeTreeFile(f, join(o.rootDir, f.path), o.storeRoot, o.signal)]++;
  }
  return counts;
}
