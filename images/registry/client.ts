// A small authenticated HTTP client for one registry (OCI distribution-spec, Docker v2 API), shared by
// the pull into the blob store and by `bramble publish`'s push. It answers 401 challenges (Bearer
// tokens from the realm, anonymous or with basic credentials; plain Basic), follows redirects itself so
// that an Authorization header never crosses to another host (§3.1: registry.k8s.io 307s every request
// to another host, blobs go to CDNs), and retries network errors, 5xx and 429 with backoff. It returns
// the Response: reading bodies, digests and status codes stays with the caller.
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { BrambleError, HostError, InterruptedError } from '../../builders/errors.ts';
import type { EventSink } from '../../builders/events.ts';
import { basicAuthorization, credentialFor, parseChallenges, type Challenge, type RegistryCredentials } from './auth.ts';

/** Manifest types a pull accepts (§3.2): distribution 404s an OCI index unless the OCI types are listed. */
export const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** Attempts per request for network errors, 5xx and 429. */
const MAX_ATTEMPTS = 4;
/** First backoff; doubled per attempt, with jitter. */
const BACKOFF_MS = 250;
/** Longest Retry-After we honour; longer waits are capped. */
const RETRY_AFTER_MAX_MS = 30_000;
/** Redirect hops per request (the fetch standard's limit). */
const MAX_REDIRECTS = 20;
/** Tokens are renewed this long before the registry says they expire. */
const TOKEN_MARGIN_S = 10;
/** Token lifetime when the token server does not say (token.md: 60 s). */
const TOKEN_DEFAULT_S = 60;

export interface RegistryClientOptions {
  /** `https://registry.k8s.io`, `http://127.0.0.1:5000`. */
  origin: string;
  /** Credentials by host; consulted only for the host that challenges. */
  credentials?: RegistryCredentials;
  signal: AbortSignal;
  events: EventSink;
  /** Override the attempt count (tests of the retry path use 1). */
  maxAttempts?: number;
}

export interface RegistryRequest {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** A path below the origin (`/v2/<name>/manifests/<ref>`) or an absolute URL (an upload Location). */
  path: string;
  headers?: Record<string, string>;
  /** Bytes, or a function giving a fresh stream per attempt (a stream cannot be replayed). */
  body?: Uint8Array | (() => Readable);
  /** The token scope this request needs, e.g. `repository:library/nginx:pull` (`pull,push` for uploads). */
  scope?: string;
}

interface TokenEntry {
  value: string;
  expiresAt: number;
}

/** Per host: the last challenge it sent, so later scopes get a token before the first request. */
interface HostAuth {
  challenge?: Challenge;
}

/** What a 401 or 403 after authentication means for the user. */
export class RegistryAuthError extends HostError {}

export class RegistryClient {
  readonly origin: string;
  private readonly credentials: RegistryCredentials;
  private readonly hosts = new Map<string, HostAuth>();
  private readonly tokens = new Map<string, TokenEntry>();
  private readonly pendingTokens = new Map<string, Promise<string>>();

  constructor(private readonly opts: RegistryClientOptions) {
    this.origin = opts.origin.replace(/\/+$/, '');
    this.credentials = opts.credentials ?? {};
  }

  /**
   * Send a request, answering auth challenges and following redirects (method and body kept for 307/308;
   * 301/302/303 turn a GET-less method into GET as browsers do). Returns the final response, whatever its
   * status: the caller decides what 404 means. Network failures after all attempts are HostErrors.
   */
  async request(req: RegistryRequest): Promise<Response> {
    let url = new URL(req.path, `${this.origin}/`);
    let method: string = req.method;
    let body = req.body;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await this.authorizedSend(url, method, req, body);
      if (![301, 302, 303, 307, 308].includes(res.status)) return res;
      const location = res.headers.get('location');
      await res.body?.cancel();
      if (!location) throw new HostError(`${url.href}: HTTP ${res.status} redirect without a Location`, { hint: 'the registry misbehaves; check [sources].registries' });
      url = new URL(location, url);
      if (res.status === 303 || ((res.status === 301 || res.status === 302) && method !== 'GET' && method !== 'HEAD')) {
        method = method === 'HEAD' ? 'HEAD' : 'GET';
        body = undefined;
      }
    }
    throw new HostError(`${req.path}: more than ${MAX_REDIRECTS} redirects from ${this.origin}`, { hint: 'the registry redirects in a loop; check [sources].registries' });
  }

  /** One hop: send, and on a 401 answer the challenge once and send again. */
  private async authorizedSend(url: URL, method: string, req: RegistryRequest, body: RegistryRequest['body']): Promise<Response> {
    const first = await this.send(url, method, req.headers, body, await this.authorization(url.host, req.scope, false));
    if (first.status !== 401) return first;
    const challenges = parseChallenges(first.headers.get('www-authenticate'));
    await first.body?.cancel();
    const challenge = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!challenge) throw this.authFailure(url, 401, 'without a Bearer or Basic challenge');
    this.hosts.set(url.host, { challenge });
    const authorization = await this.authorization(url.host, req.scope, true);
    if (!authorization) throw this.authFailure(url, 401, 'and no credentials are configured for it');
    const second = await this.send(url, method, req.headers, body, authorization);
    if (second.status === 401 || second.status === 403) {
      await second.body?.cancel();
      throw this.authFailure(url, second.status, credentialFor(this.credentials, url.host) ? 'with the configured credentials' : 'anonymously');
    }
    return second;
  }

  private authFailure(url: URL, status: number, how: string): RegistryAuthError {
    return new RegistryAuthError(`${url.host} refused ${url.pathname} (HTTP ${status}) ${how}`, {
      hint: `put credentials for ${url.host} in a Docker config.json (docker login ${url.host}); bramble reads $BRAMBLE_REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json, else ~/.docker/config.json. Some registries answer this way for a repository that does not exist: check the name too`,
    });
  }

  /**
   * The Authorization header for `host`, from what its last challenge asked for: a Bearer token for
   * the scope (fetched when missing or expired), or Basic credentials. Nothing for a host that never
   * challenged, so redirect targets (CDNs, object stores) never see credentials meant for the registry.
   */
  private async authorization(host: string, scope: string | undefined, afterChallenge: boolean): Promise<string | undefined> {
    const challenge = this.hosts.get(host)?.challenge;
    if (!challenge) return undefined;
    const credential = credentialFor(this.credentials, host);
    if (challenge.scheme === 'basic') return credential ? basicAuthorization(credential) : undefined;
    const scopes = (afterChallenge && challenge.params.scope ? challenge.params.scope : scope ?? '').split(' ').filter(Boolean);
    const key = `${host} ${challenge.params.realm} ${challenge.params.service ?? ''} ${scopes.join(' ')}`;
    // After a fresh 401 the cached token is what the registry just refused: fetch another.
    const cached = afterChallenge ? undefined : this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return `Bearer ${cached.value}`;
    let pending = this.pendingTokens.get(key);
    if (!pending) {
      pending = this.fetchToken(host, challenge, scopes).finally(() => this.pendingTokens.delete(key));
      this.pendingTokens.set(key, pending);
    }
    const token = await pending;
    return `Bearer ${token}`;
  }

  /** distribution token.md: GET realm?service=…&scope=… (one scope parameter each), Basic credentials if any. */
  private async fetchToken(host: string, challenge: Challenge, scopes: string[]): Promise<string> {
    const realm = challenge.params.realm;
    if (!realm) throw new RegistryAuthError(`${host} sent a Bearer challenge without a realm`, { hint: 'the registry misbehaves; check [sources].registries' });
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new RegistryAuthError(`${host} sent a Bearer realm that is not a URL`, { hint: 'the registry misbehaves; check [sources].registries' });
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const credential = credentialFor(this.credentials, host);
    const headers: Record<string, string> = credential ? { authorization: basicAuthorization(credential) } : {};
    const res = await this.send(url, 'GET', headers, undefined, undefined);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw new RegistryAuthError(`the token server of ${host} (${url.host}) refused ${credential ? 'the configured credentials' : 'an anonymous token'} (HTTP ${res.status})`, {
        hint: `check the credentials for ${host} in the Docker config.json bramble reads (docker login ${host})`,
      });
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new HostError(`the token server of ${host} (${url.host}) answered HTTP ${res.status}`, { hint: 'try again later' });
    }
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = (await res.json()) as typeof doc;
    } catch (e) {
      throw this.networkError(url, e);
    }
    const token = typeof doc.token === 'string' && doc.token ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : '';
    if (!token) throw new RegistryAuthError(`the token server of ${host} (${url.host}) sent no token`, { hint: 'the registry misbehaves; check [sources].registries' });
    const lifetime = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : TOKEN_DEFAULT_S;
    const key = `${host} ${realm} ${challenge.params.service ?? ''} ${scopes.join(' ')}`;
    this.tokens.set(key, { value: token, expiresAt: Date.now() + Math.max(1, lifetime - TOKEN_MARGIN_S) * 1000 });
    return token;
  }

  /** One HTTP exchange with retries for network errors, 5xx and 429 (Retry-After honoured, capped). */
  private async send(url: URL, method: string, headers: Record<string, string> | undefined, body: RegistryRequest['body'], authorization: string | undefined): Promise<Response> {
    const attempts = this.opts.maxAttempts ?? MAX_ATTEMPTS;
    let lastError: unknown;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (this.opts.signal.aborted) throw new InterruptedError();
      const h: Record<string, string> = { 'accept-encoding': 'identity', ...headers };
      if (authorization) h.authorization = authorization;
      const init: RequestInit & { duplex?: 'half' } = { method, headers: h, redirect: 'manual', signal: this.opts.signal };
      if (body) {
        if (body instanceof Uint8Array) init.body = body;
        else {
          init.body = Readable.toWeb(body()) as ReadableStream;
          init.duplex = 'half';
        }
      }
      let res: Response | undefined;
      try {
        res = await fetch(url, init);
      } catch (e) {
        lastError = e;
      }
      const retryable = res === undefined || res.status >= 500 || res.status === 429;
      if (!retryable || attempt === attempts) {
        if (res) return res;
        break;
      }
      let wait = BACKOFF_MS * 2 ** (attempt - 1) * (0.75 + Math.random() / 2);
      if (res) {
        const after = Number(res.headers.get('retry-after'));
        if (Number.isFinite(after) && after > 0) wait = Math.min(after * 1000, RETRY_AFTER_MAX_MS);
        await res.body?.cancel();
        this.opts.events({ kind: 'warning', message: `${url.host}${url.pathname}: HTTP ${res.status}; retrying (attempt ${attempt + 1} of ${attempts})` });
      } else {
        this.opts.events({ kind: 'warning', message: `${url.host}${url.pathname}: ${describe(lastError)}; retrying (attempt ${attempt + 1} of ${attempts})` });
      }
      try {
        await sleep(wait, undefined, { signal: this.opts.signal });
      } catch {
        throw new InterruptedError();
      }
    }
    throw this.networkError(url, lastError);
  }

  private networkError(url: URL, e: unknown): BrambleError {
    if (this.opts.signal.aborted) return new InterruptedError();
    if (e instanceof BrambleError) return e;
    return new HostError(`cannot reach ${url.host}${url.pathname}: ${describe(e)}`, {
      cause: e,
      hint: 'check the network and [sources].registries; with bramble.lock and a warm cache, --offline needs no registry',
    });
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) return e.cause instanceof Error ? e.cause.message : e.message;
  return String(e);
}

/** distribution's error body `{"errors":[{"code","message"}]}` as one line, or the HTTP status. */
export async function registryErrorText(res: Response): Promise<string> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* the status is enough */
  }
  try {
    const doc = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
    const parts = (doc.errors ?? []).map((e) => [e.code, e.message].filter(Boolean).join(': ')).filter(Boolean);
    if (parts.length > 0) return `HTTP ${res.status} ${parts.join('; ')}`;
  } catch {
    /* not JSON */
  }
  return `HTTP ${res.status}`;
}
