// Address allocation properties, over many generated networks (seeded, so every run checks the same
// cases): no duplicates, never a reserved or unusable address, inside the subnet, lowest-free order,
// stable across runs, and appending a node never moves earlier nodes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { allocateAddresses, formatAddress, parseAddress, parseCidr, size, type AllocationRequest, type Cidr } from '../builders/allocate.ts';
import { parseCluster } from '../builders/load.ts';

/** mulberry32: a tiny deterministic PRNG, so a failing case can be replayed by its seed. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function cidrOf(text: string): Cidr {
  const r = parseCidr(text);
  assert.ok('cidr' in r, text);
  return r.cidr;
}

const value = (s: string) => parseAddress(s)!.value;

interface Case {
  seed: number;
  req: AllocationRequest;
}

function randomCase(seed: number): Case {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const v6 = rnd() < 0.3;
  const prefix = v6 ? 120 + int(7) : 22 + int(9); // IPv4 /22../30, IPv6 /120../126
  const base = v6 ? `fd00:${int(0xffff).toString(16)}::` : `10.${int(256)}.${int(256)}.0`;
  // A random base with host bits set comes back with the network it meant.
  const parsed = parseCidr(`${base}/${prefix}`);
  const cidr = cidrOf('cidr' in parsed ? parsed.cidr.text : parsed.suggestion!);
  const span = Number(size(cidr));
  const addr = (i: number) => formatAddress(cidr.family, cidr.base + BigInt(i));
  // Reserved addresses inside the subnet and outside it (a public DNS server).
  const reserved = [addr(1), ...(rnd() < 0.5 ? [addr(1 + int(span - 2))] : []), v6 ? '2001:db8::53' : '1.1.1.1'];
  const nodes = 1 + int(Math.min(span, 40));
  const requested: (string | undefined)[] = [];
  for (let i = 0; i < nodes; i++) {
    const explicit = rnd() < 0.25 ? addr(1 + int(span - 2)) : undefined;
    requested.push(explicit && !requested.includes(explicit) && !reserved.includes(explicit) ? explicit : undefined);
  }
  return { seed, req: { nodeCidr: cidr, reserved, requested } };
}

const cases = Array.from({ length: 400 }, (_, i) => randomCase(i + 1));

describe('allocateAddresses', () => {
  it('never hands out a duplicate, a reserved, a network or a broadcast address, and stays in the subnet', () => {
    for (const { seed, req } of cases) {
      const ips = allocateAddresses(req);
      const given = ips.filter((ip): ip is string => ip !== undefined).map(value);
      assert.equal(new Set(given).size, given.length, `seed ${seed}: duplicate`);
      const c = req.nodeCidr;
      const last = c.base + size(c) - 1n;
      for (const [i, ip] of ips.entries()) {
        if (ip === undefined || req.requested[i] !== undefined) continue;
        const v = value(ip);
        assert.ok(v > c.base && v <= last, `seed ${seed}: ${ip} outside ${c.text} or its network address`);
        if (c.family === 4) assert.notEqual(v, last, `seed ${seed}: broadcast ${ip}`);
        assert.ok(!req.reserved.map(value).includes(v), `seed ${seed}: reserved ${ip}`);
      }
    }
  });

  it('gives each unaddressed node the lowest free address, in node order, and runs out only when full', () => {
    for (const { seed, req } of cases) {
      const ips = allocateAddresses(req);
      const c = req.nodeCidr;
      const taken = new Set([...req.reserved, ...req.requested.filter((x): x is string => !!x)].map(value));
      const last = c.base + size(c) - 1n;
      const free: bigint[] = [];
      for (let v = c.base + 1n; v < (c.family === 4 ? last : last + 1n); v++) if (!taken.has(v)) free.push(v);
      const wanted = req.requested.filter((x) => x === undefined).length;
      const expected = free.slice(0, wanted).map((v) => formatAddress(c.family, v));
      while (expected.length < wanted) expected.push(undefined as unknown as string);
      const allocated = ips.filter((_, i) => req.requested[i] === undefined);
      assert.deepEqual(allocated, expected, `seed ${seed}`);
      // Explicit addresses come back unchanged.
      req.requested.forEach((r, i) => r !== undefined && assert.equal(ips[i], r));
    }
  });

  it('is stable across runs and appending a node never moves the earlier ones', () => {
    for (const { seed, req } of cases) {
      const first = allocateAddresses(req);
      assert.deepEqual(allocateAddresses({ ...req, requested: [...req.requested] }), first, `seed ${seed}`);
      const grown = allocateAddresses({ ...req, requested: [...req.requested, undefined] });
      assert.deepEqual(grown.slice(0, first.length), first, `seed ${seed}`);
    }
  });
});

describe('allocation through cluster.toml', () => {
  const config = (nodes: string[]) =>
    `name = "c"\n[network]\nnode_cidr = "192.168.7.0/28"\ngateway = "192.168.7.1"\ndns = ["192.168.7.2", "9.9.9.9"]\napi_vip = "192.168.7.3"\n` +
    nodes.map((n, i) => `[[nodes]]\nname = "${n}"\nrole = "${i === 0 ? 'control-plane' : 'worker'}"\nhardware = "pc"\n`).join('');

  it('skips gateway, DNS and VIP and is the same every time', () => {
    const ips = () => parseCluster(config(['a', 'b', 'c']), 'c.toml').nodes.map((n) => n.ip);
    assert.deepEqual(ips(), ['192.168.7.4', '192.168.7.5', '192.168.7.6']);
    assert.deepEqual(ips(), ips());
  });

  it('fills a /28 exactly and reports the first node that does not fit', () => {
    // 14 usable addresses minus gateway, DNS and VIP leaves 11.
    const names = Array.from({ length: 11 }, (_, i) => `n${i}`);
    assert.equal(parseCluster(config(names), 'c.toml').nodes.at(-1)!.ip, '192.168.7.14');
    assert.throws(
      () => parseCluster(config([...names, 'n11']), 'c.toml'),
      (e: Error & { exitCode?: number }) => e.exitCode === 2 && /c\.toml:51: nodes\[11\]: no free address left in node_cidr 192\.168\.7\.0\/28 for node "n11"/.test(e.message),
    );
  });
});
