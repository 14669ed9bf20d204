// Registry credentials and the `WWW-Authenticate` challenges registries answer with
// (kubernetes-and-registry.md §3.3). Credentials come from one place, a Docker-format `config.json`
// (`auths.<host>.auth` = base64 `user:password`, what `docker login`, `podman login` and `skopeo login`
// write): `$BRAMBLE_REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
// `~/.docker/config.json` (docs/decisions/011-registry-remaps-and-credentials.md). Secrets never
// reach an event, an error message or a log line.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../builders/errors.ts';
import { canonicalRegistryHost, DOCKER_HUB } from './reference.ts';

export interface RegistryCredential {
  username: string;
  password: string;
}

/** Credentials by registry host as clients reach it (`docker.io` for Docker Hub, `host:port` otherwise). */
export type RegistryCredentials = Readonly<Record<string, RegistryCredential>>;

/** The credentials file bramble reads, and why that one. */
export function registryAuthFile(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BRAMBLE_REGISTRY_AUTH_FILE) return env.BRAMBLE_REGISTRY_AUTH_FILE;
  if (env.DOCKER_CONFIG) return join(env.DOCKER_CONFIG, 'config.json');
  return join(env.HOME || homedir(), '.docker', 'config.json');
}

/** `https://index.docker.io/v1/` → `docker.io`; `http://127.0.0.1:5000/` → `127.0.0.1:5000`. */
function authKeyHost(key: string): string {
  const noScheme = key.replace(/^[a-z]+:\/\//i, '');
  return canonicalRegistryHost(noScheme.split('/')[0]!);
}

/**
 * Read the credentials file. A missing file means no credentials; an unreadable or malformed one is an
 * InputError naming the file (never its content). Entries without a usable `auth` or username/password
 * (credential helpers, identity tokens) are left out: bramble does not run credential helpers.
 */
export function loadRegistryCredentials(env: NodeJS.ProcessEnv = process.env): RegistryCredentials {
  const file = registryAuthFile(env);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new InputError(`cannot read the registry credentials file ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      hint: 'make it readable, or point BRAMBLE_REGISTRY_AUTH_FILE at another Docker-format config.json',
    });
  }
  const formatHint = 'it must be a Docker config.json: {"auths": {"HOST": {"auth": "<base64 of user:password>"}}} (docker login writes it)';
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new InputError(`the registry credentials file ${file} is not valid JSON`, { hint: formatHint });
  }
  const auths = (doc as { auths?: unknown } | null)?.auths;
  if (auths === undefined) return {};
  if (typeof auths !== 'object' || auths === null || Array.isArray(auths)) {
    throw new InputError(`${file}: "auths" is not an object`, { hint: formatHint });
  }
  const out: Record<string, RegistryCredential> = {};
  for (const [key, entry] of Object.entries(auths as Record<string, unknown>)) {
    const e = (entry ?? {}) as { auth?: unknown; username?: unknown; password?: unknown };
    let credential: RegistryCredential | undefined;
    if (typeof e.auth === 'string' && e.auth !== '') {
      const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
      const sep = decoded.indexOf(':');
      if (sep <= 0) throw new InputError(`${file}: auths."${key}".auth does not decode to user:password`, { hint: formatHint });
      credential = { username: decoded.slice(0, sep), password: decoded.slice(sep + 1) };
    } else if (typeof e.username === 'string' && typeof e.password === 'string') {
      credential = { username: e.username, password: e.password };
    }
    if (credential) out[authKeyHost(key)] = credential;
  }
  return out;
}

/** The credential for the host a request goes to (`registry-1.docker.io` finds Docker Hub's). */
export function credentialFor(credentials: RegistryCredentials, host: string): RegistryCredential | undefined {
  const h = canonicalRegistryHost(host);
  return credentials[h] ?? (h === DOCKER_HUB ? credentials['registry-1.docker.io'] : undefined);
}

export function basicAuthorization(c: RegistryCredential): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

export interface Challenge {
  scheme: 'bearer' | 'basic';
  /** Lower-cased parameter names: realm, service, scope, error, … */
  params: Record<string, string>;
}

/**
 * Parse `WWW-Authenticate` (RFC 9110 §11.6.1): `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
 * Several challenges in one header are split at each scheme token; unknown schemes are skipped.
 */
export function parseChallenges(header: string | null): Challenge[] {
  if (!header) return [];
  const out: Challenge[] = [];
  const re = /\s*([A-Za-z][\w-]*)(?:\s+|$)((?:[\w-]+\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^\s,"]+)\s*,?\s*)*)/g;
  for (const m of header.matchAll(re)) {
    const scheme = m[1]!.toLowerCase();
    if (scheme !== 'bearer' && scheme !== 'basic') continue;
    const params: Record<string, string> = {};
    for (const p of m[2]!.matchAll(/([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))/g)) {
      params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
    }
    out.push({ scheme, params });
  }
  return out;
}
