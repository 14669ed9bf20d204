// The bundled registry mirror on the nodes (kubernetes-and-registry.md §4, §5.2, §6, §9).
//
// Every node: containerd's `config_path` (already in the containerd config) holds one hosts.toml per
// upstream registry whose only `server` is the mirror, at the upstream's own path under it:
// `server = "http://<mirror>/v2/registry.k8s.io"` with `override_path = true`, so containerd
// pulling `registry.k8s.io/pause:3.10` asks `GET /v2/registry.k8s.io/pause/manifests/3.10`
// (path.Join of the server path, the repository, "manifests", the reference, §6.2) — the repository
// the distribution tree stores it under. Image references everywhere stay upstream's; no node ever
// falls back to the internet (no upstream entry, so no fallback timeouts).
//
// The first control-plane node serves the mirror: the storage tree on ROOT, the registry server
// image and the cluster's images pre-imported from OCI archives by a oneshot unit, then a unit
// running `registry:2` through ctr (no Docker on Flatcar) read-only on port 5000.
import ipaddr from 'ipaddr.js';
import { containerUnit } from '../containerd-run.ts';
import { CONTAINERD_CERTS_DIR } from '../kubernetes/node-content.ts';
import { addFile, addUnit, type ProvisioningSpec } from '../provision.ts';

/** The mirror's port (registry:2's default `http.addr`). */
export const MIRROR_PORT = 5000;
/** The registry server image, bundled like every other image. */
export const REGISTRY_SERVER_IMAGE = 'docker.io/library/registry:2.8.3';
/** registry:2.8.3 reads its config here (§4). */
export const REGISTRY_CONFIG_IN_IMAGE = '/etc/docker/registry/config.yml';
/** The filesystem driver's rootdirectory, on the node and in the container (registry:2's default). */
export const REGISTRY_ROOT_ON_NODE = '/var/lib/registry';
export const REGISTRY_CONFIG_ON_NODE = '/etc/bramble/registry/config.yml';
/** The per-arch OCI archives the first node imports at boot. */
export const IMAGES_DIR_ON_NODE = '/var/lib/bramble/images';
export const imagesArchiveOnNode = (arch: string) => `${IMAGES_DIR_ON_NODE}/${arch}.oci.tar`;
/** The images the first node's own services run (the registry server, and the PXE services' with [first_node]). */
export const servicesArchiveOnNode = (arch: string) => `${IMAGES_DIR_ON_NODE}/services-${arch}.oci.tar`;
export const IMPORT_STAMP = `${IMAGES_DIR_ON_NODE}/imported`;
export const IMPORT_UNIT = 'bramble-images-import.service';
export const REGISTRY_UNIT = 'bramble-registry.service';
/** The first node's service containers (the registry first) run in a namespace of their own, out of the CRI's (k8s.io) sight. */
export const REGISTRY_NAMESPACE = 'bramble';
export const REGISTRY_CONTAINER = 'bramble-registry';
/** CRI's pinned-image label (containerd ≥ 1.7.3, §5.2): kubelet's image GC never removes these. */
export const PINNED_LABEL = 'io.cri-containerd.pinned=pinned';

/** Registries every node sends to the mirror, besides those of registry.extra_images. */
export const MIRRORED_REGISTRIES = ['docker.io', 'ghcr.io', 'quay.io', 'registry.k8s.io'] as const;

/** `host:5000` for the mirror on `ip` (IPv6 in brackets). */
export function mirrorAddress(ip: string): string {
  return ipaddr.isValid(ip) && ipaddr.parse(ip).kind() === 'ipv6' ? `[${ip}]:${MIRROR_PORT}` : `${ip}:${MIRROR_PORT}`;
}

/** Under containerd's config_path (§6.1), one directory per upstream host (`host:port` as written). */
export const hostsTomlPath = (upstream: string) => `${CONTAINERD_CERTS_DIR}/${upstream}/hosts.toml`;

/**
 * One upstream's hosts.toml: the mirror, under the upstream's namespace, as a `[host]` entry and as
 * the `server`. The `[host]` table is there because containerd before the go-toml v2 parser (Debian's
 * 1.6, for one) rejects a hosts.toml without it ("invalid `host` tree") and then pulls from upstream;
 * the `server` keeps containerd from ever falling back to the internet when the mirror fails.
 */
export function hostsToml(upstream: string, mirror: string, namespace: string): string {
  const url = JSON.stringify(`http://${mirror}/v2/${namespace}`);
  return [
    `# Written by bramble: ${upstream} images come only from the cluster's bundled mirror on the first control-plane node.`,
    `server = ${url}`,
    'override_path = true',
    'capabilities = ["pull", "resolve"]',
    '',
    `[host.${url}]`,
    '  override_path = true',
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

/** registry:2 serving the tree read-only (§4): no uploads, no upload purging, no deletes. */
export function registryConfigYml(): string {
  return [
    '# Written by bramble: serve the bundled images read-only.',
    'version: 0.1',
    'log:',
    '  level: info',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${REGISTRY_ROOT_ON_NODE}`,
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    '    readonly:',
    '      enabled: true',
    '  delete:',
    '    enabled: false',
    'http:',
    `  addr: :${MIRROR_PORT}`,
    '',
  ].join('\n');
}

/**
 * Imports the bundled images before anything needs them: the cluster's images for this arch into
 * the CRI's namespace (pinned, so kubeadm init finds the control-plane images without the mirror),
 * and the images of the node's own services (the registry server first) into their namespace, out
 * of the kubelet's sight. Once: a stamp marks it done.
 */
export function importUnit(arch: string): string {
  return [
    '# Written by bramble: import the bundled container images once, before kubeadm and the mirror run.',
    '[Unit]',
    'Description=Import the bundled container images (bramble)',
    'Requires=containerd.service',
    'After=containerd.service',
    `Before=kubeadm.service kubelet.service ${REGISTRY_UNIT}`,
    `ConditionPathExists=!${IMPORT_STAMP}`,
    '',
    '[Service]',
    'Type=oneshot',
    'RemainAfterExit=yes',
    `ExecStart=/usr/bin/ctr --namespace k8s.io images import --platform linux/${arch} --label ${PINNED_LABEL} ${imagesArchiveOnNode(arch)}`,
    `ExecStart=/usr/bin/ctr --namespace ${REGISTRY_NAMESPACE} images import --platform linux/${arch} ${servicesArchiveOnNode(arch)}`,
    `ExecStartPost=/usr/bin/touch ${IMPORT_STAMP}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** Runs the registry server image through ctr, tree and config bind-mounted read-only, on the host network. */
export function registryUnit(): string {
  return containerUnit(
    { namespace: REGISTRY_NAMESPACE, importUnit: IMPORT_UNIT },
    {
      description: `Bundled registry mirror on port ${MIRROR_PORT}`,
      comment: `the cluster's registry mirror, read-only on port ${MIRROR_PORT}`,
      container: REGISTRY_CONTAINER,
      image: REGISTRY_SERVER_IMAGE,
      readOnlyPaths: [REGISTRY_ROOT_ON_NODE, { host: REGISTRY_CONFIG_ON_NODE, container: REGISTRY_CONFIG_IN_IMAGE }],
    },
  );
}

export interface MirrorClientOptions {
  /** `host:port` of the mirror. */
  mirror: string;
  /** Upstream registry host → its path component in the mirror (distribution-tree.ts mirrorNamespace). */
  registries: ReadonlyMap<string, string>;
}

/** Every node: one hosts.toml per upstream registry, pointing at the mirror. */
export function addMirrorClient(p: ProvisioningSpec, o: MirrorClientOptions): void {
  for (const [upstream, namespace] of [...o.registries].sort(([a], [b]) => (a < b ? -1 : 1))) {
    addFile(p, { path: hostsTomlPath(upstream), mode: 0o644, contents: hostsToml(upstream, o.mirror, namespace), overwrite: true });
  }
}

/** The first control-plane node: the registry config and the two units (the tree and archives go on ROOT). */
export function addMirrorServer(p: ProvisioningSpec, o: { arch: string }): void {
  addFile(p, { path: REGISTRY_CONFIG_ON_NODE, mode: 0o644, contents: registryConfigYml(), overwrite: true });
  addUnit(p, { name: IMPORT_UNIT, enabled: true, contents: importUnit(o.arch) });
  addUnit(p, { name: REGISTRY_UNIT, enabled: true, contents: registryUnit() });
}
