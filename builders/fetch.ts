// The fetch stage: decide which upstream inputs the selected nodes need, bring each into the cache
// verified in its upstream's own format (or against bramble.lock), derive the sparse disk images, and
// return what was resolved as the new lock. With a lock and a warm cache it makes no request at all.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import * as openpgp from 'openpgp';
import { HostError, InputError, VerificationError, withContext } from './errors.ts';
import type { EventSink } from './events.ts';
import type { LockedInput, LockFile } from './lockfile.ts';
import type { Arch, ClusterSpec, NodeSpec, Target } from './spec.ts';
import { Cache } from '../images/cache.ts';
import { fetchBlob, fetchSmall, fetchText, NotFoundError, type CandidateFile, type FetchContext } from '../images/download.ts';
import { deriveImage, type DerivedImage } from '../images/derived.ts';
import {
  expectDigest,
  FLATCAR_KEY_FILE,
  loadTrustedKeys,
  parseChecksumFile,
  parseFlatcarDigests,
  verifyCleartext,
  verifyDetachedSignature,
  type TrustedKeys,
} from '../images/verify.ts';
import { checkFlatcarVersion, flatcarInput, flatcarInputId, flatcarVersionTxtUrl, parseVersionTxt } from '../images/catalog/flatcar.ts';
import { hypriotInput, hypriotVersion } from '../images/catalog/hypriot.ts';
import type { InputSource } from '../images/catalog/input.ts';
import { ipxeInputs, rpi4FirmwareInput } from '../images/catalog/boot-firmware.ts';
import { kubernetesInputs } from '../images/catalog/kubernetes.ts';
import { rpi4FirmwareVersion } from './versions.ts';
import type { PulledImage } from '../images/registry/types.ts';
import { IMAGE_LOCK_PREFIX, planRegistryBundle, pullBundleImages, type RegistryBundleDecision } from './registry-content.ts';
import { treeServesInstallImage } from './assemble-pxe.ts';

export interface FetchedInput {
  id: string;
  url: string;
  version: string;
  sha256: string;
  size: number;
  /** Cache path of the verified blob. */
  path: string;
  /** How the bytes were verified, as recorded in the lock. */
  verifiedWith: string;
  /** The decompressed sparse disk image, for image inputs. */
  derivedPath?: string;
  /** [start, end) byte ranges of data in derivedPath. */
  dataRanges?: Array<[number, number]>;
  /** A Flatcar image install = true nodes fetch from the PXE tree: its upstream `.sig`, verified. */
  signature?: DetachedSignature;
}

/** A detached signature kept beside an image for flatcar-install, which verifies with gpg. */
export interface DetachedSignature {
  /** The `.sig` bytes as upstream published them. */
  data: Buffer;
  /** Fingerprint of the (sub)key that made the signature. */
  signer: string;
  /** The armored trusted public key holding that signer (flatcar-install -k). */
  publicKey: string;
}

export interface FetchOptions {
  cacheDir: string;
  lock?: LockFile;
  offline: boolean;
  /** Only the inputs of nodes built for these targets (all nodes when absent or empty). */
  targets?: readonly Target[];
  /** Also fetch the Kubernetes node binaries (kubelet, kubeadm, kubectl, crictl, CNI plugins) per arch. */
  kubernetes?: boolean;
  signal: AbortSignal;
  events: EventSink;
}

export interface FetchResult {
  lock: LockFile;
  inputs: Map<string, FetchedInput>;
  /** Whether the cluster's container images are bundled (with the Kubernetes bootstrap), and which. */
  registry: RegistryBundleDecision;
  /** The bundled images, pulled into the registry blob store; empty when not bundled. */
  images: PulledImage[];
}

export const LOCK_VERSION = 1;

/** The target a node is built by: its hardware's disk image, or the PXE tree. */
export function targetOf(node: NodeSpec): Target {
  return node.boot === 'pxe' ? 'pxe' : node.hardware;
}

/** Whether a lock was made for this spec's OS choice (a pinned version must equal the locked one). */
export function lockMatches(spec: ClusterSpec, lock: LockFile | undefined): lock is LockFile {
  if (!lock || lock.lockVersion !== LOCK_VERSION) return false;
  if (lock.os.base !== spec.os.base || lock.os.channel !== spec.os.channel) return false;
  if (spec.os.version === 'current') return true;
  const pinned = spec.os.base === 'hypriot' ? hypriotVersion(spec.os.version) : spec.os.version;
  return pinned === lock.os.version;
}

/** Which upstream inputs the selected nodes need, for OS `version` (already resolved). */
export function neededInputs(spec: ClusterSpec, version: string, targets?: readonly Target[], opts: { kubernetes?: boolean } = {}): InputSource[] {
  const nodes = spec.nodes.filter((n) => !targets?.length || targets.includes(targetOf(n)));
  if (spec.os.base === 'hypriot') {
    if (!nodes.length) return [];
    // HypriotOS is 32-bit arm: one image for every node, and the arm binaries when Kubernetes rides along.
    return [hypriotInput(spec.sources, version), ...(opts.kubernetes ? kubernetesInputs(spec.sources, spec.kubernetes.version, 'arm') : [])];
  }
  const out: InputSource[] = [];
  for (const arch of archesOf(nodes)) {
    const mine = nodes.filter((n) => n.arch === arch);
    if (mine.some((n) => n.boot === 'disk')) out.push(flatcarInput(spec.sources, spec.os.channel, arch, version, 'image'));
    // Only installers read it, as the compressed file: nothing to derive.
    else if (treeServesInstallImage(spec, mine, arch)) out.push({ ...flatcarInput(spec.sources, spec.os.channel, arch, version, 'image'), derive: undefined });
    if (mine.some((n) => n.boot === 'pxe')) {
      out.push(flatcarInput(spec.sources, spec.os.channel, arch, version, 'pxe-kernel'));
      out.push(flatcarInput(spec.sources, spec.os.channel, arch, version, 'pxe-cpio'));
      out.push(...ipxeInputs(spec.sources, arch));
    }
    if (opts.kubernetes && mine.length) out.push(...kubernetesInputs(spec.sources, spec.kubernetes.version, arch));
  }
  if (nodes.some((n) => n.hardware === 'rpi4' && n.boot === 'disk')) out.push(rpi4FirmwareInput(spec.sources, rpi4FirmwareVersion));
  return out;
}

function archesOf(nodes: NodeSpec[]): Arch[] {
  return [...new Set(nodes.map((n) => n.arch))].sort();
}

/** Fetch and verify every input the selected nodes need; returns the inputs and the lock to write. */
export async function fetchInputs(spec: ClusterSpec, opts: FetchOptions): Promise<FetchResult> {
  const cache = new Cache(opts.cacheDir);
  await cache.sweepTemp();
  const ctx: FetchContext = { signal: opts.signal, events: opts.events, offline: opts.offline };
  const lock = lockMatches(spec, opts.lock) ? opts.lock : undefined;
  if (opts.lock && !lock) {
    const l = opts.lock.os;
    const problem = `bramble.lock was made for ${l.base} ${l.channel} ${l.version}, but cluster.toml asks for ${spec.os.base} ${spec.os.channel} ${spec.os.version}`;
    if (opts.offline && spec.os.version === 'current') {
      throw new InputError(problem, { hint: 'run `bramble fetch` online to re-resolve and rewrite the lock' });
    }
    opts.events({ kind: 'warning', message: `${problem}; resolving again` });
  }
  const keys = lazyKeys(spec.sources.trustedKeys);
  try {
    const version = await resolveOsVersion(spec, lock, opts.targets, ctx);
    const nodes = spec.nodes.filter((n) => !opts.targets?.length || opts.targets.includes(targetOf(n)));
    const inputs = new Map<string, FetchedInput>();
    for (const source of neededInputs(spec, version, opts.targets, { kubernetes: opts.kubernetes })) {
      const locked = lock?.inputs.find((i) => i.id === source.id);
      const fetched = await fetchInput(cache, source, { ...ctx, keys, locked });
      const installed = spec.os.base === 'flatcar' && archesOf(nodes).some((a) => source.id === flatcarInputId('image', a) && treeServesInstallImage(spec, nodes, a));
      if (installed) fetched.signature = await keepDetachedSignature(cache, source, fetched, { ...ctx, keys }, spec.sources.trustedKeys);
      inputs.set(source.id, fetched);
    }
    // Container images for the registry mirror, pinned by digest in the lock (even one made for another OS).
    const registry: RegistryBundleDecision = opts.kubernetes ? planRegistryBundle(spec, nodes) : { ok: false, reason: 'the build carries no Kubernetes' };
    const pulled = registry.ok
      ? await pullBundleImages(registry.plan, { spec, cacheDir: opts.cacheDir, lock: opts.lock, offline: opts.offline, signal: opts.signal, events: opts.events })
      : undefined;
    return { lock: nextLock(spec, version, lock, inputs, pulled?.locked), inputs, registry, images: pulled?.images ?? [] };
  } catch (e) {
    return withContext(e, 'fetch');
  }
}

/** The OS version to build: the lock's, the pinned one, or the channel's current version.txt. */
async function resolveOsVersion(spec: ClusterSpec, lock: LockFile | undefined, targets: readonly Target[] | undefined, ctx: FetchContext): Promise<string> {
  if (lock) return lock.os.version;
  if (spec.os.base === 'hypriot') return hypriotVersion(spec.os.version);
  if (spec.os.version !== 'current') return checkFlatcarVersion(spec.os.version);
  const nodes = spec.nodes.filter((n) => !targets?.length || targets.includes(targetOf(n)));
  const arch = archesOf(nodes.length ? nodes : spec.nodes)[0] ?? 'amd64';
  const url = flatcarVersionTxtUrl(spec.sources, spec.os.channel, arch);
  if (ctx.offline) {
    throw new HostError(`os.version is "current" and there is no bramble.lock for it: resolving it needs ${url}, and --offline forbids requests`, {
      hint: 'run `bramble fetch` first, online (it writes bramble.lock), or pin os.version in cluster.toml',
    });
  }
  const version = parseVersionTxt(await fetchText(url, ctx), url);
  ctx.events({ kind: 'info', message: `Flatcar ${spec.os.channel} current is ${version}` });
  return version;
}

function nextLock(spec: ClusterSpec, version: string, previous: LockFile | undefined, fetched: Map<string, FetchedInput>, images?: LockedInput[]): LockFile {
  const byId = new Map<string, LockedInput>();
  // Inputs of nodes outside this run's targets stay pinned; pulled images replace the old image list.
  for (const i of previous?.inputs ?? []) if (!images || !i.id.startsWith(IMAGE_LOCK_PREFIX)) byId.set(i.id, i);
  for (const i of images ?? []) byId.set(i.id, i);
  for (const f of fetched.values()) {
    byId.set(f.id, { id: f.id, url: f.url, version: f.version, sha256: f.sha256, size: f.size, verifiedWith: f.verifiedWith });
  }
  return {
    lockVersion: LOCK_VERSION,
    cluster: spec.name,
    os: { base: spec.os.base, channel: spec.os.channel, version },
    inputs: [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
  };
}

type KeyLoader = () => Promise<TrustedKeys>;

function lazyKeys(extra: readonly string[]): KeyLoader {
  let loaded: Promise<TrustedKeys> | undefined;
  return () => (loaded ??= loadTrustedKeys(extra));
}

export interface InputContext extends FetchContext {
  keys: KeyLoader;
  /** The lock's entry for this input: its sha256 is required of the bytes. */
  locked?: LockedInput;
}

/**
 * Bring one input into the cache verified, plus its derived image. A locked input already in the cache
 * is a hit by digest with no request; otherwise upstream's checksum files and signatures are checked
 * (and the locked digest too, when there is one).
 */
export async function fetchInput(cache: Cache, source: InputSource, ctx: InputContext): Promise<FetchedInput> {
  // A lock entry for another version (the config moved on) pins nothing: the input is resolved afresh.
  const locked = ctx.locked?.version === source.version ? ctx.locked : undefined;
  if (ctx.locked && !locked) {
    ctx.events({ kind: 'warning', message: `${source.id}: bramble.lock pins version ${ctx.locked.version}, the config asks for ${source.version}; resolving again` });
  }
  if (locked && locked.url !== source.url) {
    // The lock pins bytes, not hosts: a mirror from [sources] may serve them.
    ctx.events({ kind: 'info', message: `${source.id}: bramble.lock names ${locked.url}; using ${source.url} from [sources] (digest still pinned)` });
  }
  const blob = await fetchBlob(cache, source.url, ctx, {
    sha256: locked?.sha256,
    verify: async (file) => {
      if (file.fresh) return verifyUpstream(source, file, ctx, { signature: true });
      // A hit was verified (signature included) when it entered the cache. Online, still compare it with
      // upstream's current checksum file, which catches a re-published file; offline there is nothing to ask.
      if (!ctx.offline) await verifyUpstream(source, file, ctx, { signature: false });
      return file.verifiedWith;
    },
  });
  const verifiedWith = blob.verifiedWith ?? locked?.verifiedWith ?? `sha256:${blob.sha256}`;
  const fetched: FetchedInput = {
    id: source.id,
    url: source.url,
    version: source.version,
    sha256: blob.sha256,
    size: blob.size,
    path: blob.path,
    verifiedWith,
  };
  if (source.derive) {
    const derived: DerivedImage = await deriveImage(cache, source.derive, blob, { signal: ctx.signal, events: ctx.events, what: `${basename(source.url)} → sparse image` });
    fetched.derivedPath = derived.path;
    fetched.dataRanges = derived.dataRanges;
  }
  return fetched;
}

/** Check a candidate against upstream's checksum file or DIGESTS + signature; returns how. */
async function verifyUpstream(source: InputSource, file: CandidateFile, ctx: InputContext, opts: { signature: boolean }): Promise<string> {
  const check = source.check;
  const name = basename(source.url);
  if (check.kind === 'first-use') {
    // Only reached for a fresh download or an online re-check; a lock entry was already enforced by fetchBlob.
    if (ctx.locked) return ctx.locked.verifiedWith;
    ctx.events({ kind: 'warning', message: `${source.url} has no upstream checksum; its sha256 ${file.sha256} is pinned in bramble.lock from now on` });
    return 'sha256:first-use';
  }
  if (check.kind === 'checksum-file') {
    const text = (await fetchSmall(check.url, ctx)).toString('utf8');
    const expected = parseChecksumFile(text, name, check.algorithm, check.url);
    expectDigest(source.url, check.algorithm, expected, check.algorithm === 'sha256' ? file.sha256 : file.sha512, basename(check.url));
    return `${check.algorithm}:${basename(check.url)}`;
  }
  const digestsText = (await fetchSmall(check.digestsUrl, ctx)).toString('utf8');
  const listed = parseFlatcarDigests(digestsText, name, check.digestsUrl);
  expectDigest(source.url, 'sha512', listed.sha512!, file.sha512, basename(check.digestsUrl));
  if (!opts.signature) return `sha512:${basename(check.digestsUrl)}`;
  let signature: Buffer | undefined;
  try {
    signature = await fetchSmall(check.signatureUrl, ctx);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
  }
  const keys = await ctx.keys();
  if (signature) {
    const signer = await verifyDetachedSignature(source.url, file.path, signature, keys);
    return `sha512:${basename(check.digestsUrl)}+openpgp:${signer}`;
  }
  // No detached signature: accept the DIGESTS file when it is clearsigned (.DIGESTS.asc) by a trusted key.
  let armored: string;
  try {
    armored = (await fetchSmall(check.digestsAscUrl, ctx)).toString('utf8');
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
    throw new VerificationError(source.url, `an OpenPGP signature (${basename(check.signatureUrl)} or ${basename(check.digestsAscUrl)})`, 'neither exists', {
      hint: 'bramble does not use unsigned Flatcar images; check sources.flatcar',
    });
  }
  const signed = await verifyCleartext(check.digestsAscUrl, armored, keys);
  const signedDigests = parseFlatcarDigests(signed.text, name, check.digestsAscUrl);
  expectDigest(source.url, 'sha512', signedDigests.sha512!, file.sha512, basename(check.digestsAscUrl));
  return `sha512:${basename(check.digestsAscUrl)}+openpgp:${signed.signer}`;
}

/** The cache's record of a verified detached signature, under the digest of the blob it signs. */
const SIGNATURE_KIND = 'detached-signature';
interface SignatureRecord {
  url: string;
  signer: string;
  signature: string;
}

/**
 * The image's upstream `.sig`, verified over the cached image against the trusted keys, kept in the
 * cache so that a later (or offline) build serves the same bytes. flatcar-install checks it with gpg
 * and the key returned here, so a mirror that publishes only a clearsigned DIGESTS cannot feed installers.
 */
async function keepDetachedSignature(cache: Cache, source: InputSource, image: FetchedInput, ctx: InputContext, trustedArmored: readonly string[]): Promise<DetachedSignature> {
  if (source.check.kind !== 'flatcar-digests') throw new Error(`keepDetachedSignature: ${source.id} is not a Flatcar release file`);
  const url = source.check.signatureUrl;
  const recordPath = cache.derivedPath(SIGNATURE_KIND, image.sha256);
  let record: SignatureRecord | undefined;
  try {
    record = JSON.parse(await readFile(recordPath, 'utf8')) as SignatureRecord;
  } catch {
    record = undefined;
  }
  // A record is trusted as the blob is (verified when it entered), as long as its signer is still trusted.
  const cachedKey = record && (await armoredKeyHolding(record.signer, trustedArmored));
  if (record && cachedKey) return { data: Buffer.from(record.signature, 'base64'), signer: record.signer, publicKey: cachedKey };
  if (ctx.offline) {
    throw new HostError(`${url} is needed for install = true nodes (flatcar-install verifies the image with it), is not in the cache, and --offline forbids the request`, {
      hint: 'run `bramble fetch` first, online, or drop --offline',
    });
  }
  let data: Buffer;
  try {
    data = await fetchSmall(url, ctx);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
    throw new InputError(`install = true needs ${url}: flatcar-install verifies the image it downloads with that detached signature, and the source does not publish it`, {
      hint: 'point sources.flatcar at a release server or mirror that publishes .sig files, or flash these nodes a disk image instead (boot = "disk")',
    });
  }
  const signer = await verifyDetachedSignature(source.url, image.path, data, await ctx.keys());
  const publicKey = await armoredKeyHolding(signer, trustedArmored);
  if (!publicKey) throw new Error(`keepDetachedSignature: no trusted key holds signer ${signer}`);
  await cache.writeAtomic(recordPath, JSON.stringify({ url, signer, signature: data.toString('base64') } satisfies SignatureRecord, null, 2) + '\n');
  return { data, signer, publicKey };
}

/** The armored trusted key (Flatcar's shipped key or one of sources.trustedKeys) whose primary key or subkey is `fingerprint`. */
async function armoredKeyHolding(fingerprint: string, trustedArmored: readonly string[]): Promise<string | undefined> {
  for (const armored of [await readFile(FLATCAR_KEY_FILE, 'utf8'), ...trustedArmored]) {
    let keys: openpgp.Key[];
    try {
      keys = await openpgp.readKeys({ armoredKeys: armored });
    } catch {
      continue;
    }
    if (keys.some((k) => [k, ...k.subkeys].some((s) => s.getFingerprint() === fingerprint))) return armored;
  }
  return undefined;
}
