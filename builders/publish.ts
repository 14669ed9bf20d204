// `bramble publish`: stage the release from out/<cluster>/ (publish-stage.ts), then deliver the
// staged directory to one destination: a local directory (dir://), an OCI registry (oci://) or a
// GitHub release (github://). Every destination gets the same files, so SHA256SUMS and its signature
// verify wherever the release is fetched from.
import { mkdtemp, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Compression } from '../images/compress.ts';
import { InputError } from './errors.ts';
import type { EventSink } from './events.ts';
import { publishToGithub, type GithubDestination } from './publish-github.ts';
import { publishToOci, type OciDestination } from './publish-oci.ts';
import { RELEASE_FORMAT, releaseNames, type ReleaseManifest } from './publish-format.ts';
import type { SigningKey } from './publish-sign.ts';
import { stageRelease } from './publish-stage.ts';

export type Destination = { kind: 'dir'; path: string } | OciDestination | GithubDestination;

/** Repository path components (distribution-spec "name"): lowercase alphanumerics joined by `.`, `_`, `__` or `-`. */
const OCI_REPOSITORY = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const OCI_TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const GITHUB_NAME = /^[A-Za-z0-9_.-]+$/;

const destinationHint = 'use dir://PATH, oci://HOST[:PORT]/REPOSITORY:TAG or github://OWNER/REPO@TAG';

/** Parse `--to`. */
export function parseDestination(to: string): Destination {
  const m = /^([a-z]+):\/\/(.*)$/.exec(to);
  if (!m) throw new InputError(`--to ${to}: not a destination URL`, { hint: destinationHint });
  const [, scheme, rest] = m as unknown as [string, string, string];
  if (scheme === 'dir') {
    if (!rest) throw new InputError(`--to ${to}: no path`, { hint: 'e.g. dir://./release or dir:///srv/releases/demo' });
    return { kind: 'dir', path: resolve(rest) };
  }
  if (scheme === 'oci') return { kind: 'oci', ...parseOciReference(rest, `--to ${to}`) };
  if (scheme === 'github') {
    const g = /^([^/@]+)\/([^/@]+)@(.+)$/.exec(rest);
    if (!g || !GITHUB_NAME.test(g[1]!) || !GITHUB_NAME.test(g[2]!) || /\s/.test(g[3]!)) {
      throw new InputError(`--to ${to}: not github://OWNER/REPO@TAG`, { hint: 'e.g. github://example/cluster-images@v1.0.0' });
    }
    return { kind: 'github', owner: g[1]!, repo: g[2]!, tag: g[3]! };
  }
  throw new InputError(`--to ${to}: unknown destination scheme "${scheme}"`, { hint: destinationHint });
}

/** `HOST[:PORT]/REPOSITORY:TAG` (no scheme). */
export function parseOciReference(ref: string, subject: string): { host: string; repository: string; tag: string } {
  const slash = ref.indexOf('/');
  const colon = ref.lastIndexOf(':');
  const hint = 'e.g. oci://127.0.0.1:5000/clusters/demo:v1 or oci://ghcr.io/OWNER/demo:v1';
  if (slash <= 0 || colon <= slash) throw new InputError(`${subject}: not HOST/REPOSITORY:TAG`, { hint });
  const host = ref.slice(0, slash);
  const repository = ref.slice(slash + 1, colon);
  const tag = ref.slice(colon + 1);
  if (!OCI_REPOSITORY.test(repository)) throw new InputError(`${subject}: "${repository}" is not a valid repository name (lowercase letters, digits, separators)`, { hint });
  if (!OCI_TAG.test(tag)) throw new InputError(`${subject}: "${tag}" is not a valid tag`, { hint });
  return { host, repository, tag };
}

export function describeDestination(d: Destination): string {
  if (d.kind === 'dir') return `dir://${d.path}`;
  if (d.kind === 'oci') return `oci://${d.host}/${d.repository}:${d.tag}`;
  return `github://${d.owner}/${d.repo}@${d.tag}`;
}

export interface PublishOptions {
  clusterDir: string;
  destination: Destination;
  private: boolean;
  publicOnly: boolean;
  compression: Compression;
  signingKey: SigningKey | undefined;
  /** GitHub API base URL (tests point it at a loopback stand-in). */
  githubApi?: string;
  /** GitHub token. */
  githubToken?: string;
  /** OCI blobs larger than this are pushed in chunks of this size. */
  ociChunkSize?: number;
  signal: AbortSignal;
  events: EventSink;
}

export interface PublishResult {
  manifest: ReleaseManifest;
  /** Where it went, and what the destination says about it (the OCI manifest digest, the release URL). */
  location: string;
  /** Files sent; the rest the destination already had. */
  uploaded: string[];
  skipped: string[];
}

/** True when `dir` does not exist, is empty, or holds an earlier release (which may be replaced). */
async function replaceable(dir: string): Promise<boolean> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw e;
  }
  if (names.length === 0) return true;
  try {
    const m = JSON.parse(await readFile(join(dir, releaseNames.manifest), 'utf8')) as { format?: string };
    return m.format === RELEASE_FORMAT;
  } catch {
    return false;
  }
}

export async function publishRelease(o: PublishOptions): Promise<PublishResult> {
  const dest = o.destination;
  const where = describeDestination(dest);
  if (dest.kind === 'github' && !o.githubToken) {
    throw new InputError(`publishing to ${where} needs a GitHub token`, { hint: 'set GITHUB_TOKEN to a token that may write releases of the repository' });
  }
  const stageOptions = { clusterDir: o.clusterDir, destination: where, private: o.private, publicOnly: o.publicOnly, compression: o.compression, signingKey: o.signingKey, signal: o.signal, events: o.events };

  if (dest.kind === 'dir') {
    if (resolve(dest.path) === resolve(o.clusterDir) || resolve(dest.path).startsWith(resolve(o.clusterDir) + '/')) {
      throw new InputError(`--to ${where}: the destination is inside the build output ${o.clusterDir}`, { hint: 'publish to a directory outside out/<cluster>/' });
    }
    if (!(await replaceable(dest.path))) {
      throw new InputError(`--to ${where}: ${dest.path} exists and is not an earlier bramble release`, { hint: 'choose a new or empty directory' });
    }
    // Staged beside the destination (same filesystem), then swapped in by rename: never half-written.
    await mkdir(dirname(dest.path), { recursive: true });
    const stage = join(dirname(dest.path), `.${basename(dest.path)}.tmp-${process.pid}`);
    await rm(stage, { recursive: true, force: true });
    await mkdir(stage, { recursive: true });
    try {
      const manifest = await stageRelease({ ...stageOptions, stageDir: stage });
      const old = join(dirname(dest.path), `.${basename(dest.path)}.old-${process.pid}`);
      const existed = await stat(dest.path).then(() => true, () => false);
      if (existed) await rename(dest.path, old);
      await rename(stage, dest.path);
      if (existed) await rm(old, { recursive: true, force: true });
      const names = await readdir(dest.path);
      return { manifest, location: dest.path, uploaded: names.sort(), skipped: [] };
    } finally {
      await rm(stage, { recursive: true, force: true });
    }
  }

  const stage = await mkdtemp(join(tmpdir(), 'bramble-publish-'));
  try {
    const manifest = await stageRelease({ ...stageOptions, stageDir: stage });
    const delivered =
      dest.kind === 'oci'
        ? await publishToOci(stage, manifest, dest, { chunkSize: o.ociChunkSize, signal: o.signal, events: o.events })
        : await publishToGithub(stage, manifest, dest, { api: o.githubApi, token: o.githubToken!, signal: o.signal, events: o.events });
    return { manifest, ...delivered };
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
}
