// Images from the local Docker daemon: `registry.extra_images` entries `docker-daemon:NAME[:TAG]` are
// exported with `docker save` (dockerode `getImage(name).get()`, the daemon's /images/{name}/get) and
// stored in the registry blob store like pulled images (types.ts), so the bundle writers cannot tell
// them apart.
//
// The archive comes in one of two layouts. Docker >= 25 writes an OCI image layout (`oci-layout`,
// `index.json`, `blobs/sha256/<hex>`) with the manifest bytes Docker itself made: those are kept as
// they are. Older Docker writes only the legacy `manifest.json` with a config `<hex>.json` and one
// uncompressed `<dir>/layer.tar` per layer: the layers are stored as they are (their digest is then
// the config's diff_id, nothing is recompressed) under Docker schema 2's uncompressed layer type
// `application/vnd.docker.image.rootfs.diff.tar`, which distribution serves and containerd unpacks,
// and bramble writes the Docker schema 2 manifest itself, as compact JSON with fixed key order, so
// the same image always gets the same manifest digest.
//
// Every file of the archive is hashed as it streams to disk; a blob enters the store only after its
// sha256 (and size) match what names it — the OCI descriptor, or for the legacy layout the image ID
// (the config's digest) and the diff_ids — and after every layer's tar entries were checked for paths
// that climb out of the root (layer-check.ts). The archive's own entry names are checked the same way.
//
// Naming: the mirror serves the image under the normalised form of NAME:TAG (`myapp:1.0` →
// `docker.io/library/myapp:1.0`, `registry.example.com/team/app` → `registry.example.com/team/app:latest`),
// which is what containerd resolves the same name in a pod spec to, so pods that name it pull it
// from the mirror.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import Dockerode from 'dockerode';
import { extract as tarExtract } from 'tar-stream';
import { BrambleError, HostError, InputError, InterruptedError, VerificationError } from '../../builders/errors.ts';
import { dockerDaemonPrefix } from '../../builders/load/values.ts';
import { hashingPassThrough } from '../hashing-stream.ts';
import { checkLayer, unsafeTarPath } from './layer-check.ts';
import { configPlatform, MANIFEST_MAX_BYTES, MediaType, parseManifest } from './manifest.ts';
import { formatPlatform, normalisePlatform, parsePlatform, platformMatch, type Platform } from './platform.ts';
import { formatImageRef, parseImageRef } from './reference.ts';
import { BlobStore, sha256Digest } from './store.ts';
import type { Descriptor, Digest, ImageName, PulledImage, PulledPlatform } from './types.ts';

/** Where the Docker daemon listens when DOCKER_HOST is not set (dockerd's default). */
export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';

/** Docker schema 2 media types of what the legacy `docker save` layout holds (distribution manifest-v2-2.md). */
export const DockerMediaType = {
  config: 'application/vnd.docker.container.image.v1+json',
  /** An uncompressed layer tar: its digest is its diff_id. */
  uncompressedLayer: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

/** The most bytes read into memory from one JSON file of the archive (manifest.json, index.json, configs). */
const JSON_MAX_BYTES = MANIFEST_MAX_BYTES;

export interface DockerDaemonOptions {
  /** The registry blob store root (`<root>/sha256/<hex>`). */
  storeRoot: string;
  /** The cluster's platforms (`linux/amd64`, `linux/arm64`, `linux/arm/v7`): the image must be one of them. */
  platforms: readonly string[];
  /** How to reach the daemon; by default DOCKER_HOST (unix:// or tcp://), else /var/run/docker.sock. */
  docker?: Dockerode.DockerOptions;
  signal: AbortSignal;
}

/** A `docker-daemon:` entry split into what the daemon is asked for and the name the mirror serves. */
export interface DockerDaemonRef {
  /** NAME:TAG as the daemon knows it. */
  daemonName: string;
  /** Normalised: registry, repository and tag. */
  name: ImageName;
  /** `docker.io/library/myapp:1.0`. */
  ref: string;
}

/** Parse `docker-daemon:NAME[:TAG]` (or NAME[:TAG] alone); a digest cannot be exported by name. */
export function parseDockerDaemonRef(entry: string): DockerDaemonRef {
  const given = entry.startsWith(dockerDaemonPrefix) ? entry.slice(dockerDaemonPrefix.length) : entry;
  const name = parseImageRef(given);
  if (name.digest) {
    throw new InputError(`"${entry}" names a digest; the Docker daemon exports images by name`, { hint: `write ${dockerDaemonPrefix}NAME:TAG, e.g. ${dockerDaemonPrefix}myapp:1.0` });
  }
  const tag = name.tag ?? 'latest';
  const daemonName = /:[^/]+$/.test(given) ? given : `${given}:${tag}`;
  return { daemonName, name: { ...name, tag }, ref: formatImageRef({ ...name, tag }) };
}

/** The daemon's address from DOCKER_HOST, as dockerode takes it. */
export function dockerOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): Dockerode.DockerOptions {
  const host = env.DOCKER_HOST;
  if (!host) return { socketPath: DEFAULT_DOCKER_SOCKET };
  if (host.startsWith('unix://')) return { socketPath: host.slice('unix://'.length) };
  if (host.startsWith('tcp://') || host.startsWith('http://')) {
    const url = new URL(host.replace(/^tcp:/, 'http:'));
    return { host: url.hostname, port: Number(url.port || 2375), protocol: 'http' };
  }
  throw new HostError(`DOCKER_HOST=${host} is not an address bramble can reach the Docker daemon at`, {
    hint: 'set DOCKER_HOST to unix:///path/to/docker.sock or tcp://host:port, or unset it for /var/run/docker.sock',
  });
}

function daemonAddress(o: Dockerode.DockerOptions): string {
  return o.socketPath ? `unix://${o.socketPath}` : `${o.protocol ?? 'http'}://${o.host}:${o.port}`;
}

/** dockerode errors: connection failures carry a code, API errors a statusCode. */
function daemonError(e: unknown, what: string, address: string, daemonName: string): never {
  if (e instanceof BrambleError) throw e;
  const err = e as { code?: string; statusCode?: number; json?: { message?: string }; message?: string };
  if (err.statusCode === 404) {
    throw new InputError(`${dockerDaemonPrefix}${daemonName}: the Docker daemon at ${address} has no image ${daemonName}`, {
      hint: `build or tag it there first (docker build -t ${daemonName} .), or correct the name in registry.extra_images`,
    });
  }
  if (err.statusCode !== undefined) {
    throw new HostError(`${what} ${daemonName} from the Docker daemon at ${address} failed: ${err.json?.message ?? err.message ?? `HTTP ${err.statusCode}`}`, {
      hint: 'check the daemon (docker info) and try again',
    });
  }
  const code = err.code ?? '';
  const hint =
    code === 'EACCES' || code === 'EPERM'
      ? `this user may not use ${address}: run bramble as a member of the docker group, or as root`
      : 'start the Docker daemon (sudo systemctl start docker), or point DOCKER_HOST at the one that has the image (unix:///path/to/docker.sock)';
  throw new HostError(`cannot reach the Docker daemon at ${address} to export ${daemonName}: ${err.message ?? code}`, { hint, cause: e });
}

/** The parts of `docker image inspect` (the Engine API's ImageInspect) bramble checks the archive against. */
export interface DaemonImage {
  Id: string;
  Os?: string;
  Architecture?: string;
  Variant?: string;
  RootFS?: { Layers?: string[] };
}

/** A file of the `docker save` archive, on disk with its digest, or a link to another entry. */
type ArchiveEntry = { kind: 'file'; path: string; digest: Digest; size: number } | { kind: 'link'; target: string };

/**
 * Export `entry` (`docker-daemon:NAME[:TAG]`) from the Docker daemon into the blob store, verified,
 * and describe it as a PulledImage named by the normalised NAME:TAG.
 */
export async function exportFromDockerDaemon(entry: string, o: DockerDaemonOptions): Promise<PulledImage> {
  const parsed = parseDockerDaemonRef(entry);
  const dockerOptions = o.docker ?? dockerOptionsFromEnv();
  const address = daemonAddress(dockerOptions);
  const image = new Dockerode(dockerOptions).getImage(parsed.daemonName);
  const subject = `${dockerDaemonPrefix}${parsed.daemonName}`;

  let daemon: DaemonImage;
  try {
    daemon = (await image.inspect()) as unknown as DaemonImage;
  } catch (e) {
    if (o.signal.aborted) throw new InterruptedError();
    daemonError(e, 'inspecting', address, parsed.daemonName);
  }
  // Before the export: a wrong platform is known from the daemon's answer alone.
  checkPlatform(subject, normalisePlatform({ os: daemon.Os, architecture: daemon.Architecture, variant: daemon.Variant }), o.platforms.map(parsePlatform));
  let archive: Readable;
  try {
    archive = (await image.get()) as unknown as Readable;
  } catch (e) {
    if (o.signal.aborted) throw new InterruptedError();
    daemonError(e, 'exporting', address, parsed.daemonName);
  }
  return storeSavedImage(archive, { ref: parsed, daemon, platforms: o.platforms, storeRoot: o.storeRoot, signal: o.signal });
}

export interface StoreSavedImageOptions {
  ref: DockerDaemonRef;
  /** What the daemon said of the image (`docker image inspect`): the archive must agree. */
  daemon: DaemonImage;
  platforms: readonly string[];
  storeRoot: string;
  signal: AbortSignal;
}

/**
 * Store the image of a `docker save` archive (either layout) in the blob store: every file hashed as
 * it streams in, every blob checked against what names it, every layer scanned for unsafe paths, and
 * only then anything renamed into the store, so a refused image leaves nothing behind.
 */
export async function storeSavedImage(stream: Readable, o: StoreSavedImageOptions): Promise<PulledImage> {
  const subject = `${dockerDaemonPrefix}${o.ref.daemonName}`;
  const wanted = o.platforms.map(parsePlatform);
  const store = new BlobStore(o.storeRoot);
  await mkdir(join(o.storeRoot, 'tmp'), { recursive: true });
  const work = join(o.storeRoot, 'tmp', `docker-save.${process.pid}.${randomBytes(6).toString('hex')}`);
  await mkdir(work);
  try {
    const files = await unpackArchive(stream, work, subject, o.signal);
    const archive = new SavedArchive(files, subject);
    const found = archive.has('index.json') && archive.has('oci-layout') ? await fromOciLayout(archive, o.ref, wanted) : await fromLegacyLayout(archive, o.ref);
    for (const p of found.platforms) checkPlatform(subject, p, wanted);
    const daemonPlatform = normalisePlatform({ os: o.daemon.Os, architecture: o.daemon.Architecture, variant: o.daemon.Variant });
    checkAgainstInspect(subject, found, o.daemon, daemonPlatform);
    for (const p of found.platforms) {
      for (const [i, layer] of p.layers.entries()) {
        // The archive's bytes match the digest; whether they are safe to unpack is another question.
        await checkLayer(archive.file(layer.digest).path, `${subject}: layer ${i + 1} (${layer.digest})`, o.signal);
      }
    }

    const blobs = new Map<Digest, Descriptor>();
    const remember = (d: Descriptor) => blobs.set(d.digest, { mediaType: d.mediaType, digest: d.digest, size: d.size });
    for (const p of found.platforms) {
      for (const d of [p.config, ...p.layers]) {
        await storeFile(store, archive.file(d.digest), d);
        remember(d);
      }
    }
    // Manifests last: a stored manifest always finds its blobs.
    for (const m of found.manifests) {
      if (!(await store.has(m.digest, m.bytes.length))) await store.putVerified(m.bytes, m.digest);
      remember(m.descriptor);
    }
    return {
      ref: o.ref.ref,
      name: o.ref.name,
      top: found.top,
      platforms: found.platforms,
      blobs: [...blobs.values()].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0)),
    };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function checkPlatform(subject: string, p: Platform, wanted: readonly Platform[]): void {
  if (wanted.some((w) => platformMatch(w, p) > 0)) return;
  const nodes = wanted.map(formatPlatform).join(', ');
  throw new InputError(`${subject} is a ${formatPlatform(p)} image, but the cluster's nodes are ${nodes}`, {
    hint: `build it for a node platform, e.g. docker buildx build --platform ${formatPlatform(wanted[0] ?? { os: 'linux', architecture: 'amd64' })} --load -t NAME:TAG .`,
  });
}

/**
 * The daemon's own account of the image must match the archive: its ID is the config digest (or, with
 * Docker's containerd image store, the top manifest's), its RootFS layers the config's diff_ids.
 */
function checkAgainstInspect(subject: string, found: FoundImage, inspected: DaemonImage, daemonPlatform: Platform): void {
  const byConfig = found.platforms.find((p) => p.config.digest === inspected.Id);
  const byTop = inspected.Id === found.top.digest ? found.platforms.find((p) => platformMatch(daemonPlatform, p) > 0) : undefined;
  const p = byConfig ?? byTop;
  if (!p) throw new VerificationError(`${subject}: the exported image`, `the image ID ${inspected.Id}`, found.platforms.map((x) => x.config.digest).join(', '));
  const diffIds = found.diffIds.get(p.config.digest) ?? [];
  const layers = inspected.RootFS?.Layers ?? [];
  if (diffIds.join(',') !== layers.join(',')) {
    throw new VerificationError(`${subject}: the exported layers`, `the daemon's RootFS layers ${layers.join(', ') || '(none)'}`, diffIds.join(', ') || '(none)');
  }
}

/** Move an archive file into the store under `d`'s digest (its bytes were hashed on the way in). */
async function storeFile(store: BlobStore, file: { path: string; digest: Digest; size: number }, d: Descriptor): Promise<void> {
  if (file.digest !== d.digest) throw new VerificationError(file.path, d.digest, file.digest);
  if (file.size !== d.size) throw new VerificationError(file.path, `${d.size} bytes`, `${file.size} bytes`);
  if (await store.has(d.digest, d.size)) return;
  await store.commit(file.path, d.digest);
}

/**
 * Stream the tar into `dir`, one file per regular entry (named by its position, so no archive name
 * ever becomes a host path), each hashed on the way. Names that are absolute or climb out with `..`
 * are refused; links are recorded, resolved later within the archive.
 */
async function unpackArchive(stream: Readable, dir: string, subject: string, signal: AbortSignal): Promise<Map<string, ArchiveEntry>> {
  const files = new Map<string, ArchiveEntry>();
  const extract = tarExtract();
  const onAbort = () => stream.destroy(new InterruptedError());
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const feeding = pipeline(stream, extract).catch((e: unknown) => extract.destroy(e as Error));
    let n = 0;
    for await (const entry of extract) {
      const name = posix.normalize(entry.header.name).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      const bad = unsafeTarPath(entry.header.name);
      if (bad) {
        entry.resume();
        throw new VerificationError(`${subject}: the docker save archive`, 'entries inside the archive', `entry "${entry.header.name}" which ${bad}`, {
          hint: 'the daemon sent an archive that must not be unpacked; check which image this name points to',
        });
      }
      if (entry.header.type === 'file' || entry.header.type === 'contiguous-file') {
        const path = join(dir, `entry-${n++}`);
        const hashed = hashingPassThrough();
        await pipeline(entry, hashed.stream, createWriteStream(path, { mode: 0o644 }), { signal });
        const { size, sha256 } = hashed.result();
        files.set(name, { kind: 'file', path, digest: `sha256:${sha256}`, size });
      } else if (entry.header.type === 'symlink' || entry.header.type === 'link') {
        const linkname = entry.header.linkname ?? '';
        const target = entry.header.type === 'symlink' ? posix.normalize(posix.join(posix.dirname(name), linkname)) : posix.normalize(linkname);
        const badLink = unsafeTarPath(target);
        if (badLink) {
          entry.resume();
          throw new VerificationError(`${subject}: the docker save archive`, 'links inside the archive', `link "${name}" to "${linkname}" which ${badLink}`);
        }
        files.set(name, { kind: 'link', target });
        entry.resume();
      } else {
        entry.resume();
      }
    }
    await feeding;
  } catch (e) {
    stream.destroy();
    extract.destroy();
    if (signal.aborted) throw new InterruptedError();
    if (e instanceof BrambleError) throw e;
    throw new VerificationError(`${subject}: the docker save archive`, 'a complete tar archive', `unreadable data (${(e as Error).message})`, {
      hint: 'the export was cut short or damaged; try again',
    });
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  return files;
}

/** Lookups into the unpacked archive: by name (following links) or by digest. */
class SavedArchive {
  constructor(
    private readonly entries: Map<string, ArchiveEntry>,
    private readonly subject: string,
  ) {}

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The file an archive name stands for, following links (at most a few hops). */
  named(name: string): { path: string; digest: Digest; size: number } {
    let current = posix.normalize(name).replace(/^(\.\/)+/, '');
    for (let hops = 0; hops < 8; hops++) {
      const e = this.entries.get(current);
      if (!e) break;
      if (e.kind === 'file') return e;
      current = e.target;
    }
    throw new VerificationError(`${this.subject}: the docker save archive`, `a file named ${name}`, 'none');
  }

  /** A blob by digest: `blobs/sha256/<hex>` (OCI layout), else any file with those bytes (legacy layout). */
  file(digest: Digest): { path: string; digest: Digest; size: number } {
    const hex = digest.slice('sha256:'.length);
    if (this.entries.has(`blobs/sha256/${hex}`)) return this.named(`blobs/sha256/${hex}`);
    for (const e of this.entries.values()) if (e.kind === 'file' && e.digest === digest) return e;
    throw new VerificationError(`${this.subject}: the docker save archive`, `a blob ${digest}`, 'none');
  }

  async json(name: string): Promise<{ bytes: Buffer; doc: unknown; digest: Digest }> {
    const f = this.named(name);
    if (f.size > JSON_MAX_BYTES) throw new VerificationError(`${this.subject}: ${name}`, `at most ${JSON_MAX_BYTES} bytes`, `${f.size} bytes`);
    const bytes = await readFile(f.path);
    try {
      return { bytes, doc: JSON.parse(bytes.toString('utf8')) as unknown, digest: f.digest };
    } catch {
      throw new VerificationError(`${this.subject}: ${name}`, 'JSON', 'something else');
    }
  }
}

/** A manifest or index to store as these exact bytes. */
interface ManifestBlob {
  descriptor: Descriptor;
  digest: Digest;
  bytes: Buffer;
}

interface FoundImage {
  top: Descriptor;
  manifests: ManifestBlob[];
  platforms: PulledPlatform[];
  /** Config digest → its rootfs.diff_ids. */
  diffIds: Map<Digest, string[]>;
}

async function configOf(archive: SavedArchive, subject: string, config: Descriptor): Promise<{ platform: Platform; diffIds: string[] }> {
  const file = archive.file(config.digest);
  if (file.size > JSON_MAX_BYTES) throw new VerificationError(`${subject}: config ${config.digest}`, `at most ${JSON_MAX_BYTES} bytes`, `${file.size} bytes`);
  const bytes = await readFile(file.path);
  // configPlatform refuses a config that is not JSON, so the parse below cannot fail.
  const platform = configPlatform(bytes, `${subject}: config ${config.digest}`);
  const doc = (JSON.parse(bytes.toString('utf8')) ?? {}) as { rootfs?: { diff_ids?: unknown } };
  const ids = doc.rootfs?.diff_ids;
  const diffIds = Array.isArray(ids) && ids.every((d) => typeof d === 'string') ? (ids as string[]) : [];
  return { platform, diffIds };
}

/** Docker >= 25: the manifest (or index) index.json names for this image, as Docker wrote it. */
async function fromOciLayout(archive: SavedArchive, ref: DockerDaemonRef, wanted: readonly Platform[]): Promise<FoundImage> {
  const subject = `${dockerDaemonPrefix}${ref.daemonName}`;
  const index = (await archive.json('index.json')).doc as { manifests?: Array<Descriptor & { annotations?: Record<string, string> }> };
  const candidates = index.manifests ?? [];
  const names = new Set([ref.ref, ref.daemonName, ref.name.tag]);
  const chosen =
    candidates.find((m) => names.has(m.annotations?.['io.containerd.image.name'] ?? '') || names.has(m.annotations?.['org.opencontainers.image.ref.name'] ?? '')) ??
    (candidates.length === 1 ? candidates[0] : undefined);
  if (!chosen) throw new VerificationError(`${subject}: index.json of the docker save archive`, `a manifest for ${ref.ref}`, `${candidates.length} unnamed manifests`);

  const read = async (d: Descriptor): Promise<ManifestBlob> => {
    const file = archive.file(d.digest);
    if (file.digest !== d.digest || file.size !== d.size) throw new VerificationError(`${subject}: manifest ${d.digest}`, `${d.digest} (${d.size} bytes)`, `${file.digest} (${file.size} bytes)`);
    if (file.size > MANIFEST_MAX_BYTES) throw new VerificationError(`${subject}: manifest ${d.digest}`, `at most ${MANIFEST_MAX_BYTES} bytes`, `${file.size} bytes`);
    const bytes = await readFile(file.path);
    return { descriptor: { mediaType: d.mediaType, digest: d.digest, size: d.size }, digest: d.digest, bytes };
  };
  const top = await read(chosen);
  const parsed = parseManifest(top.bytes, `${subject}: manifest ${chosen.digest}`, chosen.mediaType);
  const manifests = [top];
  const platforms: PulledPlatform[] = [];
  const diffIds = new Map<Digest, string[]>();
  const addPlatform = async (m: ManifestBlob, config: Descriptor, layers: Descriptor[]) => {
    const c = await configOf(archive, subject, config);
    diffIds.set(config.digest, c.diffIds);
    // An uncompressed layer's digest is its diff_id: a second check that the layers are the config's.
    layers.forEach((l, i) => {
      if (/\.tar$/.test(l.mediaType) && c.diffIds[i] !== l.digest) throw new VerificationError(`${subject}: layer ${i + 1}`, `diff_id ${c.diffIds[i]}`, l.digest);
    });
    platforms.push({ ...m.descriptor, ...c.platform, config, layers });
  };
  if (parsed.kind === 'manifest') {
    await addPlatform(top, parsed.config, parsed.layers);
  } else {
    // An index (Docker's containerd image store): keep the children of the cluster's platforms the archive holds.
    for (const child of parsed.children) {
      if (child.attestation || !child.platform || !wanted.some((w) => platformMatch(w, child.platform!) > 0)) continue;
      let m: ManifestBlob;
      try {
        m = await read(child);
      } catch (e) {
        if (e instanceof VerificationError && e.actual === 'none') continue; // not exported for this platform
        throw e;
      }
      const inner = parseManifest(m.bytes, `${subject}: manifest ${child.digest}`, child.mediaType);
      if (inner.kind !== 'manifest') continue;
      manifests.push(m);
      await addPlatform(m, inner.config, inner.layers);
    }
    if (platforms.length === 0) throw new InputError(`${subject}: the exported index has no image for ${wanted.map(formatPlatform).join(', ')}`, { hint: 'build the image for a node platform' });
  }
  return { top: top.descriptor, manifests, platforms, diffIds };
}

/**
 * Docker < 25: `manifest.json` names a config file (named by the image ID) and uncompressed layer
 * tars in diff_id order. bramble writes the schema 2 manifest for them.
 */
async function fromLegacyLayout(archive: SavedArchive, ref: DockerDaemonRef): Promise<FoundImage> {
  const subject = `${dockerDaemonPrefix}${ref.daemonName}`;
  if (!archive.has('manifest.json')) {
    throw new VerificationError(`${subject}: the docker save archive`, 'manifest.json or an OCI layout (index.json)', 'neither');
  }
  const entries = (await archive.json('manifest.json')).doc as Array<{ Config?: string; RepoTags?: string[] | null; Layers?: string[] }>;
  if (!Array.isArray(entries)) throw new VerificationError(`${subject}: manifest.json`, 'a list of images', 'something else');
  const sameName = (tag: string) => {
    try {
      return formatImageRef(parseImageRef(tag)) === ref.ref;
    } catch {
      return false;
    }
  };
  const entry = entries.find((e) => (e.RepoTags ?? []).some(sameName)) ?? (entries.length === 1 ? entries[0] : undefined);
  if (!entry?.Config || !Array.isArray(entry.Layers)) throw new VerificationError(`${subject}: manifest.json`, `an entry for ${ref.ref} with Config and Layers`, 'none');

  const configFile = archive.named(entry.Config);
  const config: Descriptor = { mediaType: DockerMediaType.config, digest: configFile.digest, size: configFile.size };
  const c = await configOf(archive, subject, config);
  if (c.diffIds.length !== entry.Layers.length) {
    throw new VerificationError(`${subject}: manifest.json`, `${c.diffIds.length} layers (the config's diff_ids)`, `${entry.Layers.length}`);
  }
  const layers: Descriptor[] = entry.Layers.map((name, i) => {
    const f = archive.named(name);
    // The legacy layout's layers are the uncompressed tars whose sha256 the config lists as diff_ids.
    if (f.digest !== c.diffIds[i]) throw new VerificationError(`${subject}: layer ${i + 1} (${name})`, `diff_id ${c.diffIds[i]}`, f.digest);
    return { mediaType: DockerMediaType.uncompressedLayer, digest: f.digest, size: f.size };
  });
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.dockerManifest,
      config: { mediaType: config.mediaType, size: config.size, digest: config.digest },
      layers: layers.map((l) => ({ mediaType: l.mediaType, size: l.size, digest: l.digest })),
    }),
  );
  const digest = sha256Digest(bytes);
  const top: Descriptor = { mediaType: MediaType.dockerManifest, digest, size: bytes.length };
  return {
    top,
    manifests: [{ descriptor: top, digest, bytes }],
    platforms: [{ ...top, ...c.platform, config, layers }],
    diffIds: new Map([[config.digest, c.diffIds]]),
  };
}
