// A typed model of the Ignition config, spec 3.4.0 (coreos/ignition config/v3_4/schema/ignition.json).
// 3.3.0 has the same shape minus a few fields bramble never writes; 3.5.0 adds `storage.luks[].cex`.
// Optional fields are omitted rather than null, as Ignition treats both alike.

export const IGNITION_VERSIONS = ['3.3.0', '3.4.0', '3.5.0'] as const;
export type IgnitionVersion = (typeof IGNITION_VERSIONS)[number];
/** Works on every Flatcar channel including LTS 4081 (Ignition 2.19), base-images.md §10. */
export const DEFAULT_IGNITION_VERSION: IgnitionVersion = '3.4.0';

export interface Verification {
  /** `sha512-<128 hex>` or `sha256-<64 hex>`. */
  hash?: string;
}

export interface HttpHeader {
  name: string;
  value?: string;
}

export interface Resource {
  source?: string;
  /** Only "gzip" is defined; bramble leaves it empty. */
  compression?: string;
  httpHeaders?: HttpHeader[];
  verification?: Verification;
}

export interface NodeUser {
  id?: number;
  name?: string;
}

export interface NodeGroup {
  id?: number;
  name?: string;
}

interface NodeBase {
  path: string;
  overwrite?: boolean;
  user?: NodeUser;
  group?: NodeGroup;
}

export interface IgnitionFile extends NodeBase {
  mode?: number;
  contents?: Resource;
  append?: Resource[];
}

export interface IgnitionDirectory extends NodeBase {
  mode?: number;
}

export interface IgnitionLink extends NodeBase {
  target?: string;
  hard?: boolean;
}

export interface Partition {
  label?: string;
  number?: number;
  sizeMiB?: number;
  startMiB?: number;
  typeGuid?: string;
  guid?: string;
  wipePartitionEntry?: boolean;
  shouldExist?: boolean;
  resize?: boolean;
}

export interface Disk {
  device: string;
  wipeTable?: boolean;
  partitions?: Partition[];
}

export interface Filesystem {
  device: string;
  path?: string;
  format?: string;
  options?: string[];
  mountOptions?: string[];
  wipeFilesystem?: boolean;
  label?: string;
  uuid?: string;
}

export interface Storage {
  disks?: Disk[];
  filesystems?: Filesystem[];
  files?: IgnitionFile[];
  directories?: IgnitionDirectory[];
  links?: IgnitionLink[];
}

export interface Dropin {
  name: string;
  contents?: string;
}

export interface Unit {
  name: string;
  enabled?: boolean;
  mask?: boolean;
  contents?: string;
  dropins?: Dropin[];
}

export interface Systemd {
  units?: Unit[];
}

export interface PasswdUser {
  name: string;
  passwordHash?: string;
  sshAuthorizedKeys?: string[];
  uid?: number;
  gecos?: string;
  homeDir?: string;
  noCreateHome?: boolean;
  primaryGroup?: string;
  groups?: string[];
  noUserGroup?: boolean;
  system?: boolean;
  noLogInit?: boolean;
  shell?: string;
  shouldExist?: boolean;
}

export interface PasswdGroup {
  name: string;
  gid?: number;
  passwordHash?: string;
  system?: boolean;
  shouldExist?: boolean;
}

export interface Passwd {
  users?: PasswdUser[];
  groups?: PasswdGroup[];
}

export interface KernelArguments {
  shouldExist?: string[];
  shouldNotExist?: string[];
}

export interface IgnitionSection {
  version: IgnitionVersion;
  config?: { merge?: Resource[]; replace?: Resource };
  timeouts?: { httpResponseHeaders?: number; httpTotal?: number };
  security?: { tls?: { certificateAuthorities?: Resource[] } };
  proxy?: { httpProxy?: string; httpsProxy?: string; noProxy?: string[] };
}

export interface IgnitionConfig {
  ignition: IgnitionSection;
  storage?: Storage;
  systemd?: Systemd;
  passwd?: Passwd;
  kernelArguments?: KernelArguments;
}
