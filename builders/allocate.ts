// Address arithmetic (through ipaddr.js) and the deterministic allocation of node addresses.
import ipaddr from 'ipaddr.js';

export type Family = 4 | 6;

export interface Cidr {
  family: Family;
  /** The network address as an integer. */
  base: bigint;
  prefix: number;
  /** The CIDR as written canonically, e.g. "192.168.50.0/24". */
  text: string;
}

const bits = (family: Family) => (family === 4 ? 32 : 128);

/** A single IPv4 (dotted quad) or IPv6 address, no prefix, no zone. */
export function parseAddress(s: string): { family: Family; value: bigint } | undefined {
  if (ipaddr.IPv4.isValidFourPartDecimal(s)) return { family: 4, value: toBig(ipaddr.IPv4.parse(s).toByteArray()) };
  if (!s.includes('%') && ipaddr.IPv6.isValid(s)) return { family: 6, value: toBig(ipaddr.IPv6.parse(s).toByteArray()) };
  return undefined;
}

export type CidrResult = { cidr: Cidr } | { error: string; suggestion?: string };

/** Parse "a.b.c.d/n" or "x::/n"; host bits must be zero (the suggestion is the network it meant). */
export function parseCidr(s: string): CidrResult {
  const [addr, len, ...rest] = s.split('/');
  if (rest.length || len === undefined || !/^\d{1,3}$/.test(len)) return { error: 'is not in CIDR form address/prefix' };
  const a = parseAddress(addr!);
  if (!a) return { error: `"${addr}" is not an IP address` };
  const prefix = Number(len);
  if (prefix > bits(a.family)) return { error: `prefix /${prefix} is longer than ${bits(a.family)} bits` };
  const mask = ((1n << BigInt(prefix)) - 1n) << BigInt(bits(a.family) - prefix);
  const base = a.value & mask;
  const text = `${formatAddress(a.family, base)}/${prefix}`;
  if (base !== a.value) return { error: 'has host bits set', suggestion: text };
  return { cidr: { family: a.family, base, prefix, text } };
}

export function formatAddress(family: Family, value: bigint): string {
  const bytes: number[] = [];
  for (let i = bits(family) / 8 - 1; i >= 0; i--) bytes.push(Number((value >> BigInt(i * 8)) & 0xffn));
  return ipaddr.fromByteArray(bytes).toString();
}

/** Canonical text of an address ("10.0.0.1", "fd00::1"). */
export function canonicalAddress(s: string): string | undefined {
  const a = parseAddress(s);
  return a && formatAddress(a.family, a.value);
}

function toBig(bytes: number[]): bigint {
  return bytes.reduce((acc, b) => (acc << 8n) | BigInt(b), 0n);
}

export function size(c: Cidr): bigint {
  return 1n << BigInt(bits(c.family) - c.prefix);
}

export function lastAddress(c: Cidr): bigint {
  return c.base + size(c) - 1n;
}

export function contains(c: Cidr, a: { family: Family; value: bigint }): boolean {
  return a.family === c.family && a.value >= c.base && a.value <= lastAddress(c);
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.base <= lastAddress(b) && b.base <= lastAddress(a);
}

/** The n-th address of a CIDR (0 = the network address). */
export function nthAddress(c: Cidr, n: number): string {
  return formatAddress(c.family, c.base + BigInt(n));
}

/**
 * Addresses of a node subnet no host may use: the network address (IPv4 and the IPv6 subnet-router
 * anycast address, RFC 4291 §2.6.1) and, for IPv4, the broadcast address (RFC 919).
 */
export function unusableAddresses(c: Cidr): bigint[] {
  return c.family === 4 ? [c.base, lastAddress(c)] : [c.base];
}

export interface AllocationRequest {
  nodeCidr: Cidr;
  /** Addresses that must never be handed to a node: gateway, API VIP, DNS servers. */
  reserved: string[];
  /** Per node in file order: its explicit address, or undefined to allocate one. */
  requested: (string | undefined)[];
}

/**
 * Give every node without an explicit address the lowest free address of the node CIDR, in node order,
 * skipping unusable and reserved addresses and every explicit address. Deterministic; adding a node at
 * the end never moves earlier nodes. A node gets undefined when the subnet has no address left.
 */
export function allocateAddresses(req: AllocationRequest): (string | undefined)[] {
  const { nodeCidr } = req;
  const taken = new Set<bigint>(unusableAddresses(nodeCidr));
  for (const s of [...req.reserved, ...req.requested]) {
    const a = s === undefined ? undefined : parseAddress(s);
    if (a && a.family === nodeCidr.family) taken.add(a.value);
  }
  const last = lastAddress(nodeCidr);
  let next = nodeCidr.base;
  return req.requested.map((explicit) => {
    if (explicit !== undefined) return canonicalAddress(explicit) ?? explicit;
    while (next <= last && taken.has(next)) next++;
    if (next > last) return undefined;
    taken.add(next);
    return formatAddress(nodeCidr.family, next);
  });
}
