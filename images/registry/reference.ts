// Image references as the cluster names them, and where their registry is reached. Parsing follows the
// distribution/reference grammar (kubernetes-and-registry.md §3.1): a first path component with a dot,
// a colon or `localhost` is a registry host, anything else is on docker.io, where one-component names
// get `library/` (`nginx` → `docker.io/library/nginx:latest`, §3.3). A reference keeps the name the
// cluster uses (`docker.io`); only the endpoint knows Docker Hub's API host `registry-1.docker.io`.
import { InputError } from '../../builders/errors.ts';
import type { Digest, ImageName } from './types.ts';

export const DOCKER_HUB = 'docker.io';
/** Docker Hub's registry API host (containerd's DefaultHost). */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
/** Names Docker Hub is also known by in references and credential files. */
const dockerHubAliases = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

// distribution/reference grammar (reference.go).
const pathComponent = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const repositoryPattern = new RegExp(`^${pathComponent}(?:/${pathComponent})*$`);
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const hostPattern = new RegExp(`^(?:${domainComponent}(?:\\.${domainComponent})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?$`);
const tagPattern = /^[\w][\w.-]{0,127}$/;
const digestPattern = /^sha256:[a-f0-9]{64}$/;
/** Longest name (host + repository) clients accept (distribution/reference NameTotalLengthMax). */
const NAME_MAX = 255;

const refHint = 'write an image reference like "registry.k8s.io/pause:3.10", "nginx:1.27" or "ghcr.io/owner/name@sha256:<64 hex>"';

/** Parse and normalise an image reference; a malformed one is an InputError naming it. */
export function parseImageRef(ref: string): ImageName {
  const bad = (why: string) => new InputError(`image reference "${ref}": ${why}`, { hint: refHint });
  let rest = ref.trim();
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestPattern.test(digest)) throw bad(`"${digest}" is not a sha256 digest (sha256:<64 lowercase hex>)`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagPattern.test(tag)) throw bad(`"${tag}" is not a valid tag`);
  }
  const slash = rest.indexOf('/');
  const first = slash < 0 ? '' : rest.slice(0, slash);
  let registry: string;
  let repository: string;
  if (first && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    if (!hostPattern.test(first)) throw bad(`"${first}" is not a registry host`);
    registry = first.toLowerCase();
    repository = rest.slice(slash + 1);
  } else {
    registry = DOCKER_HUB;
    repository = rest;
  }
  if (!repositoryPattern.test(repository)) {
    throw bad(`"${repository}" is not a repository name (lowercase letters, digits and . _ - separators, components joined by /)`);
  }
  if (dockerHubAliases.has(registry)) {
    registry = DOCKER_HUB;
    if (!repository.includes('/')) repository = `library/${repository}`;
  }
  if (registry.length + 1 + repository.length > NAME_MAX) throw bad(`the name is longer than ${NAME_MAX} characters`);
  if (!tag && !digest) tag = 'latest';
  return { registry, repository, ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) };
}

/** `registry/repository[:tag][@digest]`: the normalised form of a reference. */
export function formatImageRef(name: ImageName): string {
  return `${name.registry}/${name.repository}${name.tag ? `:${name.tag}` : ''}${name.digest ? `@${name.digest}` : ''}`;
}

/** Where a registry's API is reached: an origin and a repository prefix taken from a remap's path. */
export interface RegistryEndpoint {
  /** `https://registry.k8s.io`, `http://127.0.0.1:5000` (no trailing slash). */
  origin: string;
  /** `''`, or `prefix/` when the remap URL had a path (`http://mirror/proxy` → repositories under `proxy/`). */
  repositoryPrefix: string;
  /** The remap that produced it, when one did. */
  remappedFrom?: string;
}

/** True for hosts that only this machine can reach (served over plain HTTP by default, as Docker does). */
function isLoopbackHost(host: string): boolean {
  const name = host.replace(/:\d+$/, '');
  return name === 'localhost' || name === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(name);
}

/**
 * The endpoint of `registry` (a host as references name it). `[sources].registries` maps a host to a
 * base URL; a path in that URL is a repository prefix (how proxy-cache projects of Harbor, Nexus and
 * Artifactory name upstream repositories). Without a remap: Docker Hub's API host for docker.io,
 * plain HTTP for loopback hosts, HTTPS for every other host.
 */
export function registryEndpoint(registry: string, remaps: Readonly<Record<string, string>> = {}): RegistryEndpoint {
  const remap = remaps[registry];
  if (remap !== undefined) {
    const url = new URL(remap);
    const path = url.pathname.replace(/^\/+|\/+$/g, '');
    return { origin: url.origin, repositoryPrefix: path ? `${path}/` : '', remappedFrom: registry };
  }
  if (registry === DOCKER_HUB) return { origin: `https://${DOCKER_HUB_API_HOST}`, repositoryPrefix: '' };
  return { origin: `${isLoopbackHost(registry) ? 'http' : 'https'}://${registry}`, repositoryPrefix: '' };
}

/** Docker Hub under any of its names becomes `docker.io`; other hosts are lower-cased. */
export function canonicalRegistryHost(host: string): string {
  const h = host.toLowerCase();
  return dockerHubAliases.has(h) ? DOCKER_HUB : h;
}
