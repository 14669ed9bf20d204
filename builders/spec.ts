// The typed cluster description produced by `load` from cluster.toml. Every later stage reads this,
// never the TOML. Keys in TOML are snake_case; here they are camelCase.

export type OsBase = 'flatcar' | 'hypriot';
export type FlatcarChannel = 'stable' | 'beta' | 'alpha' | 'lts';
export type Hardware = 'rpi4' | 'rpi3' | 'pc' | 'arm64-uefi';
export type BootMode = 'disk' | 'pxe';
export type Role = 'control-plane' | 'worker';
/** Debian/Go architecture names, as upstream release trees use them. */
export type Arch = 'amd64' | 'arm64' | 'arm';
export type Cni = 'flannel' | 'calico' | 'cilium' | 'none';
/** What `--target` selects: a disk image kind or the PXE tree. */
export type Target = 'rpi4' | 'rpi3' | 'pc' | 'arm64-uefi' | 'pxe';

export interface Sources {
  /** Flatcar release server; `{channel}` is replaced by the channel, e.g. https://{channel}.release.flatcar-linux.net */
  flatcar: string;
  /** HypriotOS releases: {base}/v{version}/hypriotos-rpi-v{version}.img.zip */
  hypriot: string;
  /** dl.k8s.io release tree: {base}/v{version}/bin/linux/{arch}/{name} */
  kubernetes: string;
  /** GitHub release downloads, for crictl and the CNI plugins: {base}/{owner}/{repo}/releases/download/{tag}/{file} */
  github: string;
  /** iPXE binaries: {base}/{file} */
  ipxe: string;
  /** Raspberry Pi 4 UEFI firmware releases (pftf/RPi4): {base}/v{version}/RPi4_UEFI_Firmware_v{version}.zip */
  firmware: string;
  /** Registry host remaps, e.g. { "registry.k8s.io": "http://127.0.0.1:5000" } */
  registries: Record<string, string>;
  /** Extra trusted OpenPGP public keys (armored text), besides the pinned Flatcar key. */
  trustedKeys: string[];
}

export interface NodeSpec {
  name: string;
  role: Role;
  hardware: Hardware;
  boot: BootMode;
  /** Lower-case colon-separated MAC, when given. Required for pxe nodes. */
  mac?: string;
  /** Static IPv4/IPv6 address without prefix; undefined when the cluster uses DHCP and none was given. */
  ip?: string;
  /** pxe nodes: install Flatcar to disk on first netboot, then boot from disk. */
  install: boolean;
  /** Optional disk image size in bytes (grows the image and ROOT). */
  sizeBytes?: number;
  /** Derived from hardware and base. */
  arch: Arch;
  /** 1-based line of the node's [[nodes]] table in the source file, for messages from later stages. */
  line?: number;
  /** rpi4 with Flatcar: keep the UEFI firmware's 3 GB RAM limit (default: lifted). */
  ramLimit3GB?: boolean;
  /** Extra kernel arguments for this node (after the cluster's provision.kernelArgs). */
  kernelArgs?: string[];
  /** Butane-style YAML snippets merged into this node's config (after the cluster's). */
  snippets?: SnippetSource[];
}

/** A user snippet file, read at load time (its path names it in messages). */
export interface SnippetSource {
  file: string;
  text: string;
}

/** Cluster-wide additions to every node's first-boot config. */
export interface ProvisionSettings {
  kernelArgs: string[];
  snippets: SnippetSource[];
}

export interface NetworkSpec {
  /** Node subnet in CIDR form; undefined means DHCP for every node. */
  nodeCidr?: string;
  gateway?: string;
  dns: string[];
  podCidr: string;
  serviceCidr: string;
  /** Optional API virtual IP (kube-vip). */
  vip?: string;
}

/** How dnsmasq on the first node hands out boot information: as the network's DHCP server, or beside one. */
export type FirstNodeDhcp = 'full' | 'proxy';

/** [first_node]: the first control-plane node serves what the netbooted nodes need (PXE tree, DHCP/TFTP). */
export interface FirstNodeSettings {
  dhcp: FirstNodeDhcp;
  /** The first node's interface dnsmasq answers on; required for full DHCP (a dedicated network). */
  interface?: string;
}

export interface ClusterSpec {
  name: string;
  /** Where the spec came from: a file path or '<built-in default>'. */
  source: string;
  os: { base: OsBase; channel: FlatcarChannel; version: string /* 'current' or a pinned version */ };
  kubernetes: { version: string; cni: Cni };
  network: NetworkSpec;
  ssh: { authorizedKeys: string[] };
  registry: { mirror: boolean; extraImages: string[] };
  /** Set when the first control-plane node serves the netbooted nodes; absent when it serves nothing. */
  firstNode?: FirstNodeSettings;
  /** Optional: kernel arguments and snippets for every node (absent means none). */
  provision?: ProvisionSettings;
  sources: Sources;
  nodes: NodeSpec[];
}

export const defaultSources: Sources = {
  flatcar: 'https://{channel}.release.flatcar-linux.net',
  hypriot: 'https://github.com/hypriot/image-builder-rpi/releases/download',
  kubernetes: 'https://dl.k8s.io/release',
  github: 'https://github.com',
  ipxe: 'https://boot.ipxe.org',
  firmware: 'https://github.com/pftf/RPi4/releases/download',
  registries: {},
  trustedKeys: [],
};

/** Architecture a node runs, given its hardware and base OS. */
export function archOf(hardware: Hardware, base: OsBase): Arch {
  if (base === 'hypriot') return 'arm';
  return hardware === 'pc' ? 'amd64' : 'arm64';
}

/** Flatcar's board name for an arch, as used in release URLs. */
export function flatcarBoard(arch: Arch): string {
  if (arch === 'amd64') return 'amd64-usr';
  if (arch === 'arm64') return 'arm64-usr';
  throw new Error(`Flatcar has no board for ${arch}`);
}
