// Wires the bundled registry mirror into a build (kubernetes-and-registry.md §2, §4–§6, §9):
//   plan   — which images the cluster pulls (kubeadm's for the exact patch version, the CNI's,
//            kube-vip with a VIP, the registry server and the first node's services,
//            registry.extra_images), for which arches (those of the cluster's nodes);
//   fetch  — pulls them into the blob store (`docker-daemon:` entries exported from the local Docker
//            daemon), pinned by bramble.lock so `--offline` needs no network;
//   bundle — writes out/<cluster>/registry (distribution storage, blobs hardlinked from the store)
//            and out/<cluster>/oci/<arch>.oci.tar, and the first control-plane node's ROOT files;
//   render — every node's hosts.toml, the serving node's registry config and units.
// The mirror is the first control-plane node's static address, port 5000. Nothing is bundled without
// the Kubernetes bootstrap (a DHCP-only cluster has none: no node could be told where the mirror is),
// with registry.mirror = false, or when the first control-plane node has no disk to carry it; the
// plan says which.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Ext4Entry } from '../images/ext4.ts';
import {
  distributionTreeFiles,
  linkFileText,
  mirrorNamespace,
  mirrorRepository,
  placeTreeFile,
  REGISTRY_V2_ROOT,
  treeFileSha256,
  treePaths,
  uniqueBlobs,
  type TreeFile,
} from '../images/registry/distribution-tree.ts';
import { ociArchiveContent, ociArchiveSize, writeOciArchive } from '../images/registry/oci-archive.ts';
import { loadRegistryCredentials } from '../images/registry/auth.ts';
import { pullImages } from '../images/registry/pull.ts';
import { formatImageRef, parseImageRef } from '../images/registry/reference.ts';
import { formatPlatform, parsePlatform, platformMatch, type Platform } from '../images/registry/platform.ts';
import type { PulledImage } from '../images/registry/types.ts';
import { cniImages, kubeadmImages, kubeVipImage } from '../overlays/kubernetes/images.ts';
import { firstNodeImages } from '../overlays/first-node/services.ts';
import { firstControlPlane } from '../overlays/kubernetes/kubeadm.ts';
import type { ProvisioningSpec } from '../overlays/provision.ts';
import {
  addMirrorClient,
  addMirrorServer,
  imagesArchiveOnNode,
  mirrorAddress,
  MIRRORED_REGISTRIES,
  REGISTRY_ROOT_ON_NODE,
  REGISTRY_SERVER_IMAGE,
  servicesArchiveOnNode,
} from '../overlays/registry/mirror.ts';
import { BrambleError, HostError, InterruptedError, VerificationError } from './errors.ts';
import type { StageContext } from './events.ts';
import { kubernetesApplies } from './kubernetes-content.ts';
import { layout } from './layout.ts';
import type { LockedInput, LockFile } from './lockfile.ts';
import { sha256File, type Manifest, type OutputWriter } from './output.ts';
import type { Arch, ClusterSpec, NodeSpec } from './spec.ts';
import { dockerDaemonPrefix } from './load/values.ts';

export type ImageOrigin = 'kubeadm' | 'cni' | 'kube-vip' | 'registry-server' | 'first-node' | 'extra';

export interface BundledImageRef {
  /** As the cluster names it (extra images as written in cluster.toml). */
  ref: string;
  origin: ImageOrigin;
}

/** The node serving the mirror: the first control-plane node (`node`, of `arch`) at `address` (`ip:5000`). */
export interface MirrorServer {
  node: string;
  arch: Arch;
  address: string;
}

export interface RegistryBundlePlan {
  images: BundledImageRef[];
  /** The arches of the cluster's nodes (all of them: the mirror serves the whole cluster). */
  arches: Arch[];
  server: MirrorServer;
}

export type RegistryBundleDecision = { ok: true; plan: RegistryBundlePlan } | { ok: false; reason: string };

/** containerd platform strings for the cluster's arches. */
export function platformsOf(arches: readonly Arch[]): string[] {
  return arches.map((a) => (a === 'arm' ? 'linux/arm/v7' : `linux/${a}`));
}

/**
 * Whether and what to bundle. Pure: the image list follows from the cluster's Kubernetes version,
 * CNI, VIP and registry.extra_images; nothing is bundled without the Kubernetes bootstrap (whose
 * images are most of the list) or with registry.mirror = false.
 */
export function planRegistryBundle(spec: ClusterSpec, selected: readonly NodeSpec[]): RegistryBundleDecision {
  if (!spec.registry.mirror) return { ok: false, reason: 'registry.mirror = false' };
  const k8s = kubernetesApplies(spec, selected);
  if (!k8s.ok) return { ok: false, reason: `there is no Kubernetes bootstrap (${k8s.reason})` };
  // With the bootstrap, load's rules give the first control-plane node a static ip (the API or the
  // VIP's subnet needs one); it must also boot from disk to carry the tree.
  const first = firstControlPlane(spec);
  if (first.boot !== 'disk' || !first.ip) {
    return { ok: false, reason: `the mirror is served from the first control-plane node's disk at its static ip, and "${first.name}" ${first.boot !== 'disk' ? 'netboots' : 'has none'}` };
  }
  const images: BundledImageRef[] = [];
  const add = (ref: string, origin: ImageOrigin) => {
    if (!images.some((i) => i.ref === ref)) images.push({ ref, origin });
  };
  for (const i of kubeadmImages(spec.kubernetes.version).images) add(i.upstream, 'kubeadm');
  for (const i of cniImages(spec.kubernetes.cni)) add(i.upstream, 'cni');
  if (spec.network.vip) add(kubeVipImage().upstream, 'kube-vip');
  add(REGISTRY_SERVER_IMAGE, 'registry-server');
  for (const ref of firstNodeImages(spec)) add(ref, 'first-node');
  for (const ref of spec.registry.extraImages) add(ref, 'extra');
  const arches = [...new Set(spec.nodes.map((n) => n.arch))].sort();
  return { ok: true, plan: { images, arches, server: { node: first.name, arch: first.arch, address: mirrorAddress(first.ip!) } } };
}

/** The blob store the pulls fill: `<cacheDir>/registry/blobs`. */
export function registryStoreRoot(cacheDir: string): string {
  return join(cacheDir, 'registry', 'blobs');
}

/** bramble.lock ids of pinned images: `image:<reference as the cluster names it>`. */
export const IMAGE_LOCK_PREFIX = 'image:';
const IMAGE_VERIFIED_WITH = 'sha256:manifest-bytes';
/** A daemon image's bytes were checked against the daemon's image ID and diff_ids (docker-daemon.ts). */
const DAEMON_IMAGE_VERIFIED_WITH = 'sha256:manifest-bytes+docker-daemon:image-id';

/** Pulls one `docker-daemon:NAME:TAG` image from the local Docker daemon into the blob store. */
export type DockerDaemonSource = (ref: string, o: StageContext & { storeRoot: string; platforms: readonly string[] }) => Promise<PulledImage>;

/** The Docker daemon at DOCKER_HOST (else /var/run/docker.sock), through dockerode. */
// Loaded on demand: only `docker-daemon:` entries need dockerode, and every command imports this module.
const localDockerDaemon: DockerDaemonSource = async (ref, o) =>
  (await import('../images/registry/docker-daemon.ts')).exportFromDockerDaemon(ref, { storeRoot: o.storeRoot, platforms: o.platforms, signal: o.signal });

/**
 * The warning for a `docker-daemon:` image that some nodes cannot run, or undefined when every node's
 * platform is among the image's. The daemon exports the one platform it built (the export refuses a
 * platform no node has), so in a cluster of several arches the image reaches every node's mirror but
 * runs only on some: this names the image, its platforms and the other nodes, grouped by platform.
 */
export function daemonImageArchWarning(entry: string, imagePlatforms: readonly Platform[], nodes: readonly Pick<NodeSpec, 'name' | 'arch'>[]): string | undefined {
  const missing = new Map<string, string[]>();
  for (const node of nodes) {
    const wanted = parsePlatform(platformsOf([node.arch])[0]!);
    if (imagePlatforms.some((p) => platformMatch(wanted, p) > 0)) continue;
    const key = formatPlatform(wanted);
    missing.set(key, [...(missing.get(key) ?? []), node.name]);
  }
  if (missing.size === 0) return undefined;
  const groups = [...missing.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([platform, names]) => `${names.length > 1 ? 'nodes' : 'node'} ${names.sort().join(', ')} (${platform})`);
  const has = imagePlatforms.map(formatPlatform);
  return (
    `registry.extra_images "${entry}" is ${has.join(', ')} only: ${groups.join(', ')} cannot run it; ` +
    `build it for every node platform and push it to a registry to list it from there (a Docker daemon image has one platform), ` +
    `or keep its pods on the nodes that can (kubernetes.io/arch: ${[...new Set(imagePlatforms.map((p) => p.architecture))].join(' or ')} in a nodeSelector or node affinity)`
  );
}

/** The image digests bramble.lock pins, by the reference cluster.toml gives (`sha256:<hex>`). */
function pinnedImages(lock: LockFile | undefined): Record<string, string> {
  const pinned: Record<string, string> = {};
  for (const i of lock?.inputs ?? []) if (i.id.startsWith(IMAGE_LOCK_PREFIX)) pinned[i.id.slice(IMAGE_LOCK_PREFIX.length)] = `sha256:${i.sha256}`;
  return pinned;
}

export interface PulledBundle {
  images: PulledImage[];
  /** Lock entries for every image: its top manifest's digest and size. */
  locked: LockedInput[];
}

/**
 * Pull every image of the plan into the blob store. Images the lock pins are fetched by digest (tags
 * are not resolved again), so with a warm store an `--offline` rebuild makes no request. Images of
 * the local Docker daemon are exported again on every build (the daemon is local, `--offline` or not);
 * one the lock pins must export to the pinned digest, so a rebuild never silently bundles a changed image.
 */
export async function pullBundleImages(
  plan: RegistryBundlePlan,
  o: StageContext & { spec: ClusterSpec; cacheDir: string; lock?: LockFile; offline: boolean; dockerDaemon?: DockerDaemonSource },
): Promise<PulledBundle> {
  const storeRoot = registryStoreRoot(o.cacheDir);
  const platforms = platformsOf(plan.arches);
  const pinned = pinnedImages(o.lock);
  const daemonRefs = plan.images.filter((i) => i.ref.startsWith(dockerDaemonPrefix)).map((i) => i.ref);
  const registryRefs = plan.images.filter((i) => !i.ref.startsWith(dockerDaemonPrefix)).map((i) => i.ref);
  // The daemon first: it is local, so a missing image or a stopped daemon shows before any download.
  const exportFromDaemon = o.dockerDaemon ?? localDockerDaemon;
  const exported: PulledImage[] = [];
  for (const ref of daemonRefs) {
    const image = await exportFromDaemon(ref, { storeRoot, platforms, signal: o.signal, events: o.events });
    const pin = pinned[ref];
    if (pin && pin !== image.top.digest) {
      throw new VerificationError(`registry.extra_images "${ref}" (${image.ref} from the Docker daemon)`, `${pin}, pinned in bramble.lock`, image.top.digest, {
        hint: `the image changed in the daemon since bramble.lock was written. To bundle the new one, remove the entry "${IMAGE_LOCK_PREFIX}${ref}" from bramble.lock and run \`bramble fetch\`; to keep the pinned one, tag it back in the daemon`,
      });
    }
    const warning = daemonImageArchWarning(ref, image.platforms, o.spec.nodes);
    if (warning) o.events({ kind: 'warning', message: warning });
    exported.push(image);
  }
  const pulled = await pullImages({
    refs: registryRefs,
    platforms,
    storeRoot,
    registries: o.spec.sources.registries,
    credentials: loadRegistryCredentials(),
    pinned,
    offline: o.offline,
    signal: o.signal,
    events: o.events,
  });
  pulled.push(...exported);
  const given = [...registryRefs, ...daemonRefs];
  const locked = pulled.map((img, i): LockedInput => {
    const ref = given[i]!;
    return {
      id: `${IMAGE_LOCK_PREFIX}${ref}`,
      url: img.ref,
      version: img.name.tag ?? img.name.digest ?? img.top.digest,
      sha256: img.top.digest.slice('sha256:'.length),
      size: img.top.size,
      verifiedWith: ref.startsWith(dockerDaemonPrefix) ? DAEMON_IMAGE_VERIFIED_WITH : IMAGE_VERIFIED_WITH,
    };
  });
  return { images: pulled, locked };
}

/** The mirror's size for `bramble plan`, known when the cache already holds every image bramble.lock pins. */
export type CachedMirrorSize =
  | {
      /** Each unique blob once: the number `bramble inspect` prints after the build. */
      uniqueBytes: number;
      blobs: number;
      /** `docker-daemon:` images, left out of the count (their blobs come from the daemon at build time). */
      notCounted: string[];
    }
  | { unknown: string };

/**
 * What the mirror will store, from the blob store alone: each image the lock pins is read back by its
 * digest (no request is made; `offline`), for the cluster's arches only, and the unique blobs of the
 * resulting storage tree are summed, as the build does.
 */
export async function cachedMirrorSize(
  bundle: { images: ReadonlyArray<{ ref: string }>; arches: readonly Arch[] },
  o: { spec: ClusterSpec; cacheDir: string; lock?: LockFile; signal: AbortSignal },
): Promise<CachedMirrorSize> {
  const pinned = pinnedImages(o.lock);
  const notCounted = bundle.images.map((i) => i.ref).filter((r) => r.startsWith(dockerDaemonPrefix));
  const refs = bundle.images.map((i) => i.ref).filter((r) => !r.startsWith(dockerDaemonPrefix));
  const unpinned = refs.filter((r) => !pinned[r]);
  if (unpinned.length > 0) {
    return { unknown: `${unpinned.length} of ${refs.length} images are not pinned in bramble.lock yet (first: ${unpinned[0]}); \`bramble fetch\` pulls and pins them` };
  }
  try {
    const images = await pullImages({
      refs,
      platforms: platformsOf(bundle.arches),
      storeRoot: registryStoreRoot(o.cacheDir),
      registries: o.spec.sources.registries,
      credentials: {},
      pinned,
      offline: true,
      signal: o.signal,
      events: () => {},
    });
    const blobs = uniqueBlobs(distributionTreeFiles(images));
    return { uniqueBytes: blobs.reduce((n, b) => n + b.size, 0), blobs: blobs.length, notCounted };
  } catch (e) {
    // Offline, a blob or manifest missing from the store is a HostError: the cache is just not filled yet.
    if (e instanceof HostError) return { unknown: 'the cache does not hold every pinned image yet; `bramble fetch` pulls them' };
    if (e instanceof BrambleError && !(e instanceof InterruptedError)) return { unknown: e.message };
    throw e;
  }
}

export interface MirrorBundle {
  plan: RegistryBundlePlan;
  images: PulledImage[];
  /** Upstream registry → its namespace in the mirror: the four defaults and every bundled image's. */
  registries: Map<string, string>;
  /** out/-relative per-arch archives. */
  archives: Map<Arch, string>;
  /** Bytes the mirror stores: each unique blob once. */
  uniqueBytes: number;
  /** ROOT files of the serving node (the tree, its arch's archive and its services' archive); none when it is not built. */
  serverRootEntries: Ext4Entry[];
}

/** Every upstream a node sends to the mirror: docker.io, ghcr.io, quay.io, registry.k8s.io and the bundled images' registries. */
export function mirroredRegistries(images: readonly PulledImage[]): Map<string, string> {
  const hosts = new Set<string>([...MIRRORED_REGISTRIES, ...images.map((i) => i.name.registry)]);
  return new Map([...hosts].sort().map((h) => [h, mirrorNamespace(h)]));
}

/**
 * Write out/<cluster>/registry and out/<cluster>/oci/<arch>.oci.tar. Files whose bytes did not change
 * are left alone; every file is listed in the manifest (kind "bundle") so SHA256SUMS covers the tree.
 */
export async function writeMirrorBundle(o: {
  plan: RegistryBundlePlan;
  images: PulledImage[];
  cacheDir: string;
  /** Whether this build builds the serving node (its ROOT gets the tree and archives). */
  serverBuilt: boolean;
  out: OutputWriter;
  workDir: string;
  epoch: number;
  signal: AbortSignal;
}): Promise<MirrorBundle> {
  const storeRoot = registryStoreRoot(o.cacheDir);
  const tree = distributionTreeFiles(o.images);
  for (const f of tree) {
    const rel = `${layout.registryDir}/${f.path}`;
    await placeTreeFile(f, o.out.path(rel), storeRoot, o.signal);
    // A blob's name is its digest, a link file's bytes are known: neither is read back.
    await o.out.recordFile(rel, { kind: 'bundle', secret: false }, { sha256: treeFileSha256(f) });
  }
  const archives = new Map<Arch, string>();
  for (const arch of o.plan.arches) {
    const rel = layout.ociArchive(arch);
    await writeArchiveIfChanged(o.out, rel, o.images, arch, storeRoot, o.epoch, o.signal);
    archives.set(arch, rel);
  }
  const bundle: MirrorBundle = {
    plan: o.plan,
    images: o.images,
    registries: mirroredRegistries(o.images),
    archives,
    uniqueBytes: uniqueBlobs(tree).reduce((n, b) => n + b.size, 0),
    serverRootEntries: [],
  };
  if (o.serverBuilt) {
    bundle.serverRootEntries = await serverRootEntries(tree, { out: o.out, plan: o.plan, images: o.images, arch: o.plan.server.arch, storeRoot, workDir: o.workDir, epoch: o.epoch, signal: o.signal });
  }
  return bundle;
}

/**
 * Write an arch's OCI archive unless the one already there has the same bytes. An archive of another
 * size is rewritten at once (its size is known from the content); one of the same size is compared by
 * hashing the archive stream without writing it, so an unchanged archive costs reads only.
 */
async function writeArchiveIfChanged(out: OutputWriter, rel: string, images: PulledImage[], arch: Arch, storeRoot: string, epoch: number, signal: AbortSignal): Promise<void> {
  const meta = { kind: 'bundle', arch, secret: false } as const;
  const content = ociArchiveContent(images, arch);
  const existingSize = (await stat(out.path(rel)).catch(() => undefined))?.size;
  if (existingSize === ociArchiveSize(content)) {
    const [wanted, existing] = await Promise.all([writeOciArchive(content, { storeRoot, epoch, signal }), sha256File(out.path(rel), signal).catch(() => undefined)]);
    if (existing === wanted.sha256) {
      await out.recordFile(rel, meta, { sha256: wanted.sha256 });
      return;
    }
  }
  const tmp = await out.tempPathFor(rel);
  const written = await writeOciArchive(content, { storeRoot, dest: tmp, epoch, signal });
  await out.adoptFile(rel, tmp, meta, { sha256: written.sha256 });
}

/** The serving node's ROOT: the storage tree under /var/lib/registry and the two archives it imports at boot. */
async function serverRootEntries(
  tree: TreeFile[],
  o: { out: OutputWriter; plan: RegistryBundlePlan; images: PulledImage[]; arch: Arch; storeRoot: string; workDir: string; epoch: number; signal: AbortSignal },
): Promise<Ext4Entry[]> {
  const entries: Ext4Entry[] = tree.map((f) =>
    'blob' in f
      ? { path: `${REGISTRY_ROOT_ON_NODE}/${f.path}`, type: 'file', source: o.out.path(`${layout.registryDir}/${f.path}`), mode: 0o644 }
      : { path: `${REGISTRY_ROOT_ON_NODE}/${f.path}`, type: 'file', data: linkFileText(f.link), mode: 0o644 },
  );
  entries.push({ path: imagesArchiveOnNode(o.arch), type: 'file', source: o.out.path(layout.ociArchive(o.arch)), mode: 0o644 });
  // The node's own services' images (registry server, PXE services) go to their own containerd namespace.
  const serviceRefs = new Set(o.plan.images.filter((i) => i.origin === 'registry-server' || i.origin === 'first-node').map((i) => formatImageRef(parseImageRef(i.ref))));
  const services = o.images.filter((i) => serviceRefs.has(i.ref));
  if (services.length !== serviceRefs.size) throw new Error(`registry bundle: not every service image was pulled (${[...serviceRefs].join(', ')})`);
  const servicesArchive = join(o.workDir, `services-${o.arch}.oci.tar`);
  await writeOciArchive(ociArchiveContent(services, o.arch), { storeRoot: o.storeRoot, dest: servicesArchive, epoch: o.epoch, signal: o.signal });
  entries.push({ path: servicesArchiveOnNode(o.arch), type: 'file', source: servicesArchive, mode: 0o644 });
  return entries;
}

/** A node's mirror content: hosts.toml on every node, and the serving node's registry config and units. */
export function withMirror(prov: ProvisioningSpec, node: NodeSpec, bundle: MirrorBundle): void {
  const server = bundle.plan.server;
  addMirrorClient(prov, { mirror: server.address, registries: bundle.registries });
  if (node.name === server.node) addMirrorServer(prov, { arch: node.arch });
}

/** The serving node's ROOT files, or none for any other node. */
export function serverRootEntriesFor(node: NodeSpec, bundle: MirrorBundle | undefined): Ext4Entry[] {
  return bundle?.plan.server.node === node.name ? bundle.serverRootEntries : [];
}

/** manifest.json inputs for the bundled images, from the lock: reference, tag and top manifest digest. */
export function bundledImageInputs(lock: LockFile): Array<{ id: string; url: string; version: string; sha256: string }> {
  return lock.inputs.filter((i) => i.id.startsWith(IMAGE_LOCK_PREFIX)).map((i) => ({ id: i.id, url: i.url, version: i.version, sha256: i.sha256 }));
}

export interface MirrorImageDescription {
  ref: string;
  /** The digest `@sha256:` pulls get: upstream's top manifest or index. */
  digest: string;
  /** The kept per-arch manifests (for a single-arch image, the top manifest itself). */
  platforms: Array<{ platform: string; digest: string }>;
}

export interface MirrorDescription {
  images: MirrorImageDescription[];
  arches: string[];
  blobs: number;
  /** Bytes of every unique blob in the tree. */
  uniqueBytes: number;
}

/**
 * What out/<cluster>/registry holds, read back from the tree itself (tag links, stored manifests,
 * revision links), for `bramble inspect`: each bundled image with its digest and kept arches.
 */
export async function describeMirror(clusterDir: string, manifest: Manifest): Promise<MirrorDescription | undefined> {
  const blobPrefix = `${layout.registryDir}/${REGISTRY_V2_ROOT}/blobs/`;
  const blobs = manifest.artefacts.filter((a) => a.path.startsWith(blobPrefix));
  if (blobs.length === 0) return undefined;
  const root = join(clusterDir, layout.registryDir);
  const exists = (rel: string) => stat(join(root, rel)).then(() => true, () => false);
  const images: MirrorImageDescription[] = [];
  const arches = new Set<string>();
  for (const input of manifest.inputs.filter((i) => i.id.startsWith(IMAGE_LOCK_PREFIX))) {
    const name = parseImageRef(input.url);
    const repo = mirrorRepository(name);
    const digest = name.tag ? (await readFile(join(root, treePaths.tagCurrent(repo, name.tag)), 'utf8')).trim() : `sha256:${input.sha256}`;
    const top = JSON.parse(await readFile(join(root, treePaths.blob(digest)), 'utf8')) as {
      manifests?: Array<{ digest: string; platform?: { os: string; architecture: string; variant?: string } }>;
      config?: { digest: string };
    };
    const platforms: MirrorImageDescription['platforms'] = [];
    for (const child of top.manifests ?? []) {
      if (!child.platform || !(await exists(treePaths.revision(repo, child.digest)))) continue;
      platforms.push({ platform: [child.platform.os, child.platform.architecture, child.platform.variant].filter(Boolean).join('/'), digest: child.digest });
      arches.add(child.platform.architecture);
    }
    if (top.config) {
      const config = JSON.parse(await readFile(join(root, treePaths.blob(top.config.digest)), 'utf8')) as { os: string; architecture: string; variant?: string };
      platforms.push({ platform: [config.os, config.architecture, config.variant].filter(Boolean).join('/'), digest });
      arches.add(config.architecture);
    }
    images.push({ ref: input.url, digest, platforms });
  }
  return { images, arches: [...arches].sort(), blobs: blobs.length, uniqueBytes: blobs.reduce((n, a) => n + a.size, 0) };
}
