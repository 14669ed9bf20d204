// Pull images into the registry blob store (store.ts) and say what each consists of (types.ts
// PulledImage), for the bundle writers. For every reference: the top manifest or index (by tag, or by
// digest when the reference or `pinned` names one), the children for the cluster's platforms
// (attestations skipped, nested indexes followed), each child's config and layers. Every manifest and
// blob is checked against its descriptor (size, then sha256 of the exact bytes; Docker-Content-Digest
// when sent) before it is renamed into the store; layers are also scanned for unsafe tar paths
// (layer-check.ts). A blob already in the store is never fetched again, whatever image it belongs to,
// and with every digest pinned and present nothing touches the network (`--offline` rebuilds).
import { open, rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { BrambleError, HostError, InputError, InterruptedError, VerificationError } from '../../builders/errors.ts';
import type { StageContext } from '../../builders/events.ts';
import { hashFile } from '../download.ts';
import type { RegistryCredentials } from './auth.ts';
import { MANIFEST_ACCEPT, RegistryClient, registryErrorText } from './client.ts';
import { checkLayer } from './layer-check.ts';
import { configPlatform, MANIFEST_MAX_BYTES, parseManifest, type IndexChild, type ParsedManifest } from './manifest.ts';
import { formatPlatform, parsePlatform, platformMatch, type Platform } from './platform.ts';
import { formatImageRef, parseImageRef, registryEndpoint, type RegistryEndpoint } from './reference.ts';
import { BlobStore, digestHint, sha256Digest, verifyBytes } from './store.ts';
import type { Descriptor, Digest, ImageName, PulledImage, PulledPlatform } from './types.ts';

export interface PullImagesOptions extends StageContext {
  /** References as the cluster names them: `registry.k8s.io/pause:3.10`, `nginx:1.27`, `ghcr.io/x/y@sha256:…`. */
  refs: readonly string[];
  /** The cluster's platforms: `linux/amd64`, `linux/arm64`, `linux/arm/v7`. Every image must have all of them. */
  platforms: readonly string[];
  /** Blob store root, `<cacheDir>/registry/blobs`. */
  storeRoot: string;
  /** `[sources].registries`: registry host → base URL (a path in it is a repository prefix). */
  registries?: Readonly<Record<string, string>>;
  /** Credentials by host (auth.ts loadRegistryCredentials). */
  credentials?: RegistryCredentials;
  /** Recorded top-level digests (bramble.lock), by normalised or given reference: tags are not resolved again. */
  pinned?: Readonly<Record<string, Digest>>;
  /** No network: every manifest must be pinned and every blob present. */
  offline?: boolean;
  /** Blob downloads at once (default 4). */
  concurrency?: number;
}

const DEFAULT_CONCURRENCY = 4;
/** Attempts per blob download; each resumes the bytes earlier ones received. */
const BLOB_ATTEMPTS = 3;
/** Emit a progress event every this many bytes of one blob. */
const PROGRESS_STEP = 4 * 1024 * 1024;

const offlineHint = 'run `bramble fetch` online first (it fills the cache and records digests in bramble.lock), or drop --offline';

/** Where one image's manifests and blobs are requested. */
interface Source {
  ref: string;
  name: ImageName;
  endpoint: RegistryEndpoint;
  /** Repository path at the endpoint (remap prefix + repository). */
  repository: string;
  client: RegistryClient;
}

/** Pull `refs` for `platforms` into the store; one PulledImage per reference, in the given order. */
export async function pullImages(o: PullImagesOptions): Promise<PulledImage[]> {
  if (o.signal.aborted) throw new InterruptedError();
  const wanted = o.platforms.map(parsePlatform);
  if (wanted.length === 0) throw new InputError('no platforms to pull images for', { hint: 'pass at least one platform, e.g. linux/amd64' });
  const names = o.refs.map((ref) => ({ given: ref, name: parseImageRef(ref) }));
  // One failure stops the other transfers; all of them are settled before the error is thrown, so
  // nothing writes into the store after pullImages returns.
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort(o.signal.reason);
  o.signal.addEventListener('abort', onOuterAbort, { once: true });
  const puller = new Puller(o, abort.signal, wanted);
  try {
    const results = await settleAll(
      names.map(({ given, name }) => puller.pullImage(given, name)),
      () => abort.abort(),
    );
    return results;
  } finally {
    o.signal.removeEventListener('abort', onOuterAbort);
  }
}

/** Promise.all that, on the first rejection, calls `onFailure` and still waits for every promise. */
async function settleAll<T>(promises: Promise<T>[], onFailure: () => void): Promise<T[]> {
  let failed = false;
  const guarded = promises.map((p) =>
    p.catch((e: unknown) => {
      if (!failed) {
        failed = true;
        onFailure();
      }
      throw e;
    }),
  );
  const settled = await Promise.allSettled(guarded);
  const firstReal = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected' && !(s.reason instanceof InterruptedError));
  const first = firstReal ?? settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (first) throw first.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

/** A counting semaphore: at most `n` functions run at once. */
function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const queue: (() => void)[] = [];
  return async (fn) => {
    // A finishing task hands its slot straight to the next waiter, so no newcomer can slip in between.
    if (active >= n) await new Promise<void>((resolve) => queue.push(resolve));
    else active++;
    try {
      return await fn();
    } finally {
      const next = queue.shift();
      if (next) next();
      else active--;
    }
  };
}

class Puller {
  private readonly store: BlobStore;
  private readonly clients = new Map<string, RegistryClient>();
  /** One transfer per digest, shared by every image that needs it. */
  private readonly blobs = new Map<Digest, Promise<void>>();
  private readonly limit: <T>(fn: () => Promise<T>) => Promise<T>;
  private readonly ctx: StageContext;

  constructor(
    private readonly o: PullImagesOptions,
    signal: AbortSignal,
    private readonly wanted: Platform[],
  ) {
    this.store = new BlobStore(o.storeRoot);
    this.limit = limiter(Math.max(1, o.concurrency ?? DEFAULT_CONCURRENCY));
    this.ctx = { signal, events: o.events };
  }

  private source(name: ImageName): Source {
    const endpoint = registryEndpoint(name.registry, this.o.registries);
    let client = this.clients.get(endpoint.origin);
    if (!client) {
      client = new RegistryClient({ origin: endpoint.origin, credentials: this.o.credentials, signal: this.ctx.signal, events: this.ctx.events });
      this.clients.set(endpoint.origin, client);
    }
    return { ref: formatImageRef(name), name, endpoint, repository: `${endpoint.repositoryPrefix}${name.repository}`, client };
  }

  async pullImage(given: string, name: ImageName): Promise<PulledImage> {
    const src = this.source(name);
    const pinnedDigest = name.digest ?? this.o.pinned?.[src.ref] ?? this.o.pinned?.[given];
    const top = await this.manifest(src, pinnedDigest ? { digest: pinnedDigest } : { tag: name.tag! });
    const blobs = new Map<Digest, Descriptor>([[top.descriptor.digest, top.descriptor]]);
    let platforms: PulledPlatform[];
    if (top.parsed.kind === 'index') {
      const children = await this.flattenIndex(src, top.parsed.children, blobs);
      platforms = await this.choosePlatforms(src, children);
    } else {
      await this.blob(src, top.parsed.config, 'config');
      const platform = configPlatform(await this.store.read(top.parsed.config.digest), `${src.ref} config`);
      const missing = this.wanted.filter((w) => platformMatch(w, platform) === 0);
      if (missing.length > 0) throw missingPlatforms(src.ref, missing, [platform]);
      platforms = [await this.platformImage(src, top.descriptor, top.parsed, platform)];
    }
    for (const p of platforms) {
      blobs.set(p.digest, { mediaType: p.mediaType, digest: p.digest, size: p.size });
      blobs.set(p.config.digest, p.config);
      for (const l of p.layers) blobs.set(l.digest, l);
    }
    return {
      ref: src.ref,
      name,
      top: top.descriptor,
      platforms,
      blobs: [...blobs.values()].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0)),
    };
  }

  /** An index's children with nested indexes replaced by their own children (each fetched and kept in `blobs`). */
  private async flattenIndex(src: Source, children: IndexChild[], blobs: Map<Digest, Descriptor>): Promise<IndexChild[]> {
    const out: IndexChild[] = [];
    for (const child of children) {
      if (child.attestation) continue;
      const m = await this.manifestIfIndex(src, child);
      if (!m) {
        out.push(child);
        continue;
      }
      blobs.set(child.digest, { mediaType: child.mediaType, digest: child.digest, size: child.size });
      out.push(...(await this.flattenIndex(src, m, blobs)));
    }
    return out;
  }

  private async manifestIfIndex(src: Source, child: IndexChild): Promise<IndexChild[] | undefined> {
    if (!/index|manifest\.list/.test(child.mediaType)) return undefined;
    const m = await this.manifest(src, { digest: child.digest, size: child.size });
    return m.parsed.kind === 'index' ? m.parsed.children : undefined;
  }

  /** For each wanted platform the best child (exact variant first); all missing ones reported together. */
  private async choosePlatforms(src: Source, children: IndexChild[]): Promise<PulledPlatform[]> {
    const candidates = children.filter((c) => c.platform);
    const chosen: { child: IndexChild; platform: Platform }[] = [];
    const missing: Platform[] = [];
    for (const w of this.wanted) {
      let best: IndexChild | undefined;
      let bestScore = 0;
      for (const c of candidates) {
        const score = platformMatch(w, c.platform!);
        if (score > bestScore) {
          best = c;
          bestScore = score;
        }
      }
      if (best) chosen.push({ child: best, platform: best.platform! });
      else missing.push(w);
    }
    if (missing.length > 0) throw missingPlatforms(src.ref, missing, candidates.map((c) => c.platform!));
    const out: PulledPlatform[] = [];
    for (const { child, platform } of chosen) {
      if (out.some((p) => p.digest === child.digest)) continue;
      const m = await this.manifest(src, { digest: child.digest, size: child.size });
      if (m.parsed.kind !== 'manifest') throw new InputError(`${src.ref}: the ${formatPlatform(platform)} entry of its index is not an image manifest`, { hint: 'the image is broken; use another tag or image' });
      out.push(await this.platformImage(src, m.descriptor, m.parsed, platform));
    }
    return out;
  }

  /** Fetch (or find) a platform manifest's config and layers. */
  private async platformImage(src: Source, d: Descriptor, m: Extract<ParsedManifest, { kind: 'manifest' }>, platform: Platform): Promise<PulledPlatform> {
    // Every sibling transfer is let finish (committed or cleaned up) before a failure is thrown, so no
    // download is still writing into the store's tmp/ after the pull has reported its error.
    await settleAll([this.blob(src, m.config, 'config'), ...m.layers.map((l) => this.blob(src, l, 'layer'))], () => {});
    return {
      mediaType: d.mediaType,
      digest: d.digest,
      size: d.size,
      os: platform.os,
      architecture: platform.architecture,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: m.config,
      layers: m.layers,
    };
  }

  /**
   * A manifest by digest (from the store when present, no request) or by tag (always asked: tags move).
   * The bytes are checked against the descriptor and Docker-Content-Digest, then stored.
   */
  private async manifest(src: Source, want: { digest: Digest; size?: number } | { tag: string }): Promise<{ descriptor: Descriptor; parsed: ParsedManifest }> {
    const reference = 'digest' in want ? want.digest : want.tag;
    const subject = `${src.ref} manifest ${reference}`;
    if ('digest' in want && (await this.store.has(want.digest, want.size))) {
      const bytes = await this.store.read(want.digest);
      const parsed = parseManifest(bytes, subject);
      return { descriptor: { mediaType: parsed.mediaType, digest: want.digest, size: bytes.length }, parsed };
    }
    if (this.o.offline) {
      throw new HostError(`${subject} is not in the cache and --offline forbids asking ${src.endpoint.origin}`, { hint: offlineHint });
    }
    const path = `/v2/${src.repository}/manifests/${reference}`;
    const url = `${src.endpoint.origin}${path}`;
    const res = await src.client.request({ method: 'GET', path, headers: { accept: MANIFEST_ACCEPT }, scope: `repository:${src.repository}:pull` });
    if (res.status === 404) {
      throw new InputError(`${src.ref}: ${url} does not exist (${await registryErrorText(res)})`, {
        hint: src.endpoint.remappedFrom ? `check the image name and tag, and that the mirror ${src.endpoint.origin} holds it` : 'check the image name and tag',
      });
    }
    if (!res.ok) {
      throw new HostError(`${src.ref}: ${url} answered ${await registryErrorText(res)}`, { hint: 'the registry refused the request; try again later or check [sources].registries' });
    }
    const bytes = await readLimited(res, MANIFEST_MAX_BYTES, subject, this.ctx.signal);
    const digest = sha256Digest(bytes);
    if ('digest' in want) verifyBytes(subject, bytes, want);
    const announced = res.headers.get('docker-content-digest');
    if (announced && announced !== digest) {
      throw new VerificationError(`${subject} (Docker-Content-Digest)`, announced, digest, { hint: digestHint });
    }
    const parsed = parseManifest(bytes, subject, res.headers.get('content-type') ?? undefined);
    await this.store.putVerified(bytes, digest);
    this.ctx.events({ kind: 'download', url, cached: false });
    return { descriptor: { mediaType: parsed.mediaType, digest, size: bytes.length }, parsed };
  }

  /** Ensure a blob is in the store: one transfer per digest, at most `concurrency` at once. */
  private blob(src: Source, d: Descriptor, kind: 'config' | 'layer'): Promise<void> {
    let p = this.blobs.get(d.digest);
    if (!p) {
      p = this.limit(() => this.fetchBlob(src, d, kind));
      this.blobs.set(d.digest, p);
    }
    return p;
  }

  private async fetchBlob(src: Source, d: Descriptor, kind: 'config' | 'layer'): Promise<void> {
    const path = `/v2/${src.repository}/blobs/${d.digest}`;
    const url = `${src.endpoint.origin}${path}`;
    if (await this.store.has(d.digest, d.size)) {
      this.ctx.events({ kind: 'download', url, cached: true });
      return;
    }
    if (this.o.offline) throw new HostError(`${src.ref}: ${kind} ${d.digest} is not in the cache and --offline forbids downloading it`, { hint: offlineHint });
    await this.store.withLock(d.digest, this.ctx, async () => {
      if (await this.store.has(d.digest, d.size)) return; // another build brought it meanwhile
      this.ctx.events({ kind: 'download', url, cached: false });
      const subject = `${src.ref} ${kind} ${d.digest}`;
      const partial = this.store.partialPath(d.digest);
      await this.download(src, path, d, partial, subject);
      try {
        const got = await hashFile(partial, this.ctx.signal);
        if (got.size !== d.size) throw new VerificationError(subject, `${d.size} bytes`, `${got.size} bytes`, { hint: digestHint });
        if (`sha256:${got.sha256}` !== d.digest) throw new VerificationError(subject, d.digest, `sha256:${got.sha256}`, { hint: digestHint });
        if (kind === 'layer') await checkLayer(partial, subject, this.ctx.signal);
      } catch (e) {
        if (!(e instanceof InterruptedError)) await rm(partial, { force: true });
        throw e;
      }
      await this.store.commit(partial, d.digest);
    });
  }

  /**
   * Bring the blob's bytes into `partial`, resuming what an earlier attempt or run left there with a
   * Range request (blobs are immutable, so no validator is needed: the digest check follows).
   */
  private async download(src: Source, path: string, d: Descriptor, partial: string, subject: string): Promise<void> {
    let lastError: BrambleError | undefined;
    for (let attempt = 1; attempt <= BLOB_ATTEMPTS; attempt++) {
      let offset = await sizeOf(partial);
      if (offset > d.size) {
        await rm(partial, { force: true });
        offset = 0;
      }
      if (offset === d.size) return;
      const res = await src.client.request({
        method: 'GET',
        path,
        headers: offset > 0 ? { range: `bytes=${offset}-` } : {},
        scope: `repository:${src.repository}:pull`,
      });
      if (res.status === 404) {
        throw new InputError(`${subject}: ${src.endpoint.origin}${path} does not exist (${await registryErrorText(res)})`, {
          hint: 'the registry lists a blob it does not hold; the image is incomplete there',
        });
      }
      let append = false;
      if (res.status === 206) {
        const m = /^bytes (\d+)-\d+\/(?:\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
        if (!m || Number(m[1]) !== offset) {
          await res.body?.cancel();
          await rm(partial, { force: true });
          continue;
        }
        append = true;
      } else if (res.status === 416) {
        await res.body?.cancel();
        await rm(partial, { force: true });
        continue;
      } else if (res.status !== 200) {
        throw new HostError(`${subject}: ${src.endpoint.origin}${path} answered ${await registryErrorText(res)}`, { hint: 'the registry refused the request; try again later' });
      }
      const announced = res.headers.get('docker-content-digest');
      if (announced && announced !== d.digest) {
        await res.body?.cancel();
        throw new VerificationError(`${subject} (Docker-Content-Digest)`, d.digest, announced, { hint: digestHint });
      }
      try {
        await this.writeBody(res, partial, append ? offset : 0, d, subject);
        return;
      } catch (e) {
        if (this.ctx.signal.aborted) throw new InterruptedError();
        if (e instanceof VerificationError) throw e;
        const have = await sizeOf(partial);
        const why = e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e);
        lastError = new HostError(`${subject}: the connection closed after ${have} of ${d.size} bytes (${why})`, {
          cause: e,
          hint: 'check the network and try again; the bytes received are kept and the next run resumes them',
        });
        if (attempt < BLOB_ATTEMPTS) {
          this.ctx.events({ kind: 'warning', message: `${subject}: connection closed after ${have} of ${d.size} bytes; resuming (attempt ${attempt + 1} of ${BLOB_ATTEMPTS})` });
        }
      }
    }
    throw lastError ?? new HostError(`${subject}: the registry's range answers do not add up after ${BLOB_ATTEMPTS} attempts`, { hint: 'try again later' });
  }

  /** Append the body to `partial` from `offset`, each chunk on disk before the next is read; never past the size. */
  private async writeBody(res: Response, partial: string, offset: number, d: Descriptor, subject: string): Promise<void> {
    if (!res.body) throw new HostError(`${subject}: empty response body`);
    const fh = await open(partial, offset > 0 ? 'a' : 'w');
    let done = offset;
    let reported = offset;
    let oversized = false;
    try {
      for await (const chunk of Readable.fromWeb(res.body as WebReadableStream<Uint8Array>, { signal: this.ctx.signal }) as AsyncIterable<Buffer>) {
        if (done + chunk.length > d.size) {
          oversized = true;
          break;
        }
        await fh.write(chunk);
        done += chunk.length;
        if (done - reported >= PROGRESS_STEP) {
          reported = done;
          this.ctx.events({ kind: 'progress', stage: 'pull', what: subject, done, total: d.size, unit: 'bytes' });
        }
      }
    } finally {
      await fh.close();
    }
    if (oversized) {
      await rm(partial, { force: true });
      throw new VerificationError(subject, `${d.size} bytes`, `more than ${d.size} bytes`, { hint: digestHint });
    }
    if (done !== d.size) throw new Error('the body ended early');
  }
}

function missingPlatforms(ref: string, missing: Platform[], available: Platform[]): InputError {
  const has = [...new Set(available.map(formatPlatform))].sort();
  return new InputError(`image ${ref} is not published for ${missing.map(formatPlatform).join(', ')} (it has ${has.length > 0 ? has.join(', ') : 'no platform entries'})`, {
    hint: 'use a tag or image published for every architecture of the cluster, or drop the nodes of the missing architecture',
  });
}

async function readLimited(res: Response, max: number, subject: string, signal: AbortSignal): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? '0');
  if (declared > max) {
    await res.body?.cancel();
    throw new VerificationError(subject, `at most ${max} bytes`, `${declared} bytes`, { hint: 'a manifest is never this large; check [sources].registries' });
  }
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of Readable.fromWeb(res.body as WebReadableStream<Uint8Array>, { signal }) as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > max) throw new VerificationError(subject, `at most ${max} bytes`, `more than ${max} bytes`, { hint: 'a manifest is never this large; check [sources].registries' });
      parts.push(chunk);
    }
  } catch (e) {
    if (signal.aborted) throw new InterruptedError();
    if (e instanceof BrambleError) throw e;
    throw new HostError(`${subject}: transfer failed: ${(e as Error).message}`, { cause: e, hint: 'check the network and try again' });
  }
  return Buffer.concat(parts);
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}
