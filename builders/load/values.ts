// Rules for single values: names, MACs, sizes, SSH keys, image references, URLs. Each returns either the
// normalised value or a problem with a hint; the caller attaches the key path and line.

export type Checked<T> = { ok: true; value: T } | { ok: false; problem: string; hint: string };

const ok = <T>(value: T): Checked<T> => ({ ok: true, value });
const bad = <T>(problem: string, hint: string): Checked<T> => ({ ok: false, problem, hint });

/** RFC 1123 label, as Kubernetes node names and hostnames need (max 63 chars). */
const labelPattern = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function checkLabel(v: string, what: string): Checked<string> {
  if (labelPattern.test(v)) return ok(v);
  const fixed = v
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  const why =
    v.length === 0 ? 'is empty' : v.length > 63 ? `is ${v.length} characters long (at most 63)` : 'is not an RFC 1123 label';
  return bad(
    `${what} "${v}" ${why}`,
    `use lower-case letters, digits and "-", starting and ending with a letter or digit${fixed ? `, e.g. "${fixed}"` : ''}`,
  );
}

/** A unicast MAC in colon or hyphen notation; returned lower-case with colons. */
export function checkMac(v: string): Checked<string> {
  if (!/^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$/.test(v)) {
    return bad(`"${v}" is not a MAC address`, 'write six hex byte pairs separated by colons, e.g. "52:54:00:12:34:56"');
  }
  const mac = v.toLowerCase().replaceAll('-', ':');
  const first = parseInt(mac.slice(0, 2), 16);
  // IEEE 802: the least significant bit of the first octet marks a group (multicast/broadcast) address.
  if (first & 0x01) {
    return bad(`"${v}" is a multicast MAC address (first octet is odd), which no network card has`, 'copy the MAC printed on the node or its NIC; the first octet must be even');
  }
  if (mac === '00:00:00:00:00:00') return bad(`"${v}" is the all-zero MAC address`, 'copy the MAC printed on the node or its NIC');
  return ok(mac);
}

const sizeUnits: Record<string, number> = {
  '': 1,
  B: 1,
  K: 2 ** 10, KIB: 2 ** 10, KB: 1e3,
  M: 2 ** 20, MIB: 2 ** 20, MB: 1e6,
  G: 2 ** 30, GIB: 2 ** 30, GB: 1e9,
  T: 2 ** 40, TIB: 2 ** 40, TB: 1e12,
};
/** Disk images are written in whole 512-byte sectors (the logical block size of GPT/MBR). */
const sectorSize = 512;

/** "16GiB", "8G" (binary, as truncate and qemu-img read it), "8GB" (decimal), or a byte count. */
export function checkSize(v: string | number): Checked<number> {
  const hint = 'write a size such as "16GiB", "8G" (= 8 GiB), "32GB" or a whole number of bytes';
  let bytes: number;
  if (typeof v === 'number') {
    bytes = v;
  } else {
    const m = /^\s*(\d+)\s*([A-Za-z]*)\s*$/.exec(v);
    const unit = m ? sizeUnits[m[2]!.toUpperCase()] : undefined;
    if (!m || unit === undefined) return bad(`"${v}" is not a size`, hint);
    bytes = Number(m[1]) * unit;
  }
  if (!Number.isSafeInteger(bytes) || bytes <= 0) return bad(`size ${JSON.stringify(v)} is out of range`, hint);
  if (bytes % sectorSize !== 0) {
    return bad(`size ${JSON.stringify(v)} is not a whole number of 512-byte sectors`, `round it to a multiple of 512 bytes, e.g. ${Math.ceil(bytes / sectorSize) * sectorSize}`);
  }
  return ok(bytes);
}

/** Key types OpenSSH accepts in authorized_keys (sshd(8) AUTHORIZED_KEYS FILE FORMAT). */
export const sshKeyTypes = [
  'ssh-ed25519',
  'ssh-rsa',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
] as const;

/** One OpenSSH public key line: type, base64 blob whose embedded type matches, optional comment. */
export function checkSshKey(v: string): Checked<string> {
  const line = v.trim();
  const [type, blob] = line.split(/\s+/);
  const hint = 'paste one line of a .pub file, e.g. the output of `cat ~/.ssh/id_ed25519.pub`';
  if (type === 'ssh-dss') return bad('DSA keys (ssh-dss) are refused by current OpenSSH', 'use an ed25519 key: ssh-keygen -t ed25519');
  if (!type || !(sshKeyTypes as readonly string[]).includes(type)) {
    return bad(`"${short(line)}" does not start with an SSH public key type`, `${hint}; known types: ${sshKeyTypes.join(', ')}`);
  }
  if (!blob || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) return bad(`the ${type} key has no base64 key data`, hint);
  // RFC 4253 §6.6: the blob starts with the key type as an SSH string (uint32 length + bytes).
  const raw = Buffer.from(blob, 'base64');
  const len = raw.length >= 4 ? raw.readUInt32BE(0) : -1;
  const embedded = len > 0 && raw.length >= 4 + len ? raw.subarray(4, 4 + len).toString('latin1') : undefined;
  if (embedded !== type) {
    return bad(`the key data does not match its type ${type}${embedded ? ` (it holds a ${embedded} key)` : ''}`, hint);
  }
  return ok(line);
}

function short(s: string): string {
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

// distribution/reference grammar (reference.go): domain, path components, tag, digest.
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const domain = `${domainComponent}(?:\\.${domainComponent})*(?::[0-9]+)?`;
const pathComponent = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const name = `(?:${domain}/)?${pathComponent}(?:/${pathComponent})*`;
const tag = '[\\w][\\w.-]{0,127}';
const digest = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const referencePattern = new RegExp(`^(${name})(?::(${tag}))?(?:@(${digest}))?$`);
/** Name length limit of distribution/reference (NameTotalLengthMax). */
const nameTotalLengthMax = 255;
/** skopeo's transport for images in the local Docker daemon (containers-transports(5)). */
export const dockerDaemonPrefix = 'docker-daemon:';

/** An image reference to mirror: `[registry/]repo[:tag][@digest]`, or `docker-daemon:NAME:TAG`. */
export function checkImageRef(v: string): Checked<string> {
  const daemon = v.startsWith(dockerDaemonPrefix);
  const ref = daemon ? v.slice(dockerDaemonPrefix.length) : v;
  const hint = daemon
    ? 'write docker-daemon:NAME:TAG, e.g. "docker-daemon:myapp:1.0" (an image in the local Docker daemon)'
    : 'write [registry/]repository[:tag][@sha256:digest], e.g. "docker.io/library/nginx:1.27"';
  const m = referencePattern.exec(ref);
  if (!m) {
    if (referencePattern.test(ref.toLowerCase())) {
      return bad(`"${v}" is not a valid image reference: repository names must be lower-case`, hint);
    }
    return bad(`"${v}" is not a valid image reference`, hint);
  }
  if (m[1]!.length > nameTotalLengthMax) return bad(`"${v}": the repository name is longer than 255 characters`, hint);
  if (m[3]?.startsWith('sha256:') && m[3].length !== 'sha256:'.length + 64) {
    return bad(`"${v}": a sha256 digest has exactly 64 hex digits`, hint);
  }
  if (daemon && !m[2] && !m[3]) return bad(`"${v}" names no tag`, hint);
  return ok(v);
}

/** An http(s) base URL; `{channel}` may be allowed as a placeholder. Returned without a trailing slash. */
export function checkBaseUrl(v: string, allowChannel: boolean): Checked<string> {
  const hint = `write an http:// or https:// URL${allowChannel ? ' (it may contain {channel})' : ''}, e.g. "http://127.0.0.1:8080/mirror"`;
  if (!allowChannel && v.includes('{channel}')) return bad(`"${v}": {channel} is only understood in sources.flatcar`, hint);
  let url: URL;
  try {
    url = new URL(v.replaceAll('{channel}', 'stable'));
  } catch {
    return bad(`"${v}" is not a URL`, hint);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return bad(`"${v}" uses ${url.protocol.replace(/:$/, '')}, not http or https`, hint);
  if (url.search || url.hash) return bad(`"${v}" has a query or fragment, which a base URL cannot carry`, hint);
  return ok(v.replace(/\/+$/, ''));
}

/** A registry host as image references name it: `registry.k8s.io`, `localhost:5000`. */
export function checkRegistryHost(v: string): Checked<string> {
  if (new RegExp(`^${domain}$`).test(v)) return ok(v.toLowerCase());
  return bad(`"${v}" is not a registry host name`, 'use the host part of image references, e.g. "registry.k8s.io" or "docker.io"');
}
