// The first node's units and every node's firewall, checked by the tools that will run them:
// systemd-analyze verify parses the units (with the bundle's import unit they require), nft -c
// checks each ruleset, and the ruleset loaded into a network namespace of its own is read back as
// nft's JSON to compare the ports it accepts with the ports the units and configs listen on: every
// service the other nodes need is open, nothing else is. Also: defaults of [first_node], the plan's
// view and the selection a build of the first node implies.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCluster } from '../builders/load.ts';
import { run } from '../builders/exec.ts';
import { planBuild } from '../builders/plan.ts';
import { firstNodeDnsmasqConf, servedPorts, withFirstNode } from '../builders/first-node.ts';
import type { ClusterSpec, NodeSpec } from '../builders/spec.ts';
import { provisionNode, type ProvisioningSpec } from '../overlays/provision.ts';
import { FIREWALL_RULES_PATH } from '../overlays/first-node/firewall.ts';
import { DNSMASQ_UNIT, FIREWALL_UNIT, firstNodeImages, PXE_HTTP_UNIT } from '../overlays/first-node/services.ts';
import { controlPlaneEndpoint } from '../overlays/kubernetes/kubeadm.ts';
import { importUnit, registryConfigYml, registryUnit, IMPORT_UNIT, REGISTRY_UNIT } from '../overlays/registry/mirror.ts';
import { NetworkNamespace } from './helpers/netns.ts';
import { tempDir } from './helpers/tmp.ts';

const skipRoot = process.getuid?.() === 0 ? undefined : 'needs root: it loads the ruleset into a network namespace';

function cluster(firstNode: string, extra = ''): ClusterSpec {
  return parseCluster(
    [
      'name = "lab"',
      '[network]',
      'node_cidr = "10.77.0.0/24"',
      extra,
      firstNode,
      '[[nodes]]',
      'name = "cp-1"',
      'role = "control-plane"',
      'hardware = "pc"',
      'ip = "10.77.0.2"',
      '[[nodes]]',
      'name = "w-1"',
      'role = "worker"',
      'hardware = "pc"',
      '[[nodes]]',
      'name = "w-2"',
      'role = "worker"',
      'hardware = "pc"',
      'boot = "pxe"',
      'mac = "52:54:00:77:00:12"',
      '',
    ].join('\n'),
    'cluster.toml',
  );
}
const full = () => cluster('[first_node]\ndhcp = "full"\ninterface = "lan0"');
const proxy = () => cluster('');
const node = (spec: ClusterSpec, name: string) => spec.nodes.find((n) => n.name === name)!;
const provisioned = (spec: ClusterSpec, n: NodeSpec): ProvisioningSpec => withFirstNode(spec, n, provisionNode(spec, n));
const unitText = (p: ProvisioningSpec, name: string) => p.units.find((u) => u.name === name)?.contents;

/** `ExecStart=` split into words (the units quote nothing). */
const execStart = (unit: string) => unit.split('\n').find((l) => l.startsWith('ExecStart='))!.slice('ExecStart='.length).split(' ');

/**
 * What the first node listens on for others, derived from what runs there: busybox httpd's -p,
 * dnsmasq's config (DHCP with a dhcp-range, proxyDHCP's 4011 when the range is a proxy one, TFTP
 * with enable-tftp), the registry config's http.addr; Kubernetes' from its endpoint and its
 * documented defaults (etcd 2379-2380, kubelet 10250, flannel's VXLAN 8472).
 */
function listeningPorts(spec: ClusterSpec, n: NodeSpec, p: ProvisioningSpec): string[] {
  const out = ['tcp 22', 'tcp 10250', 'udp 8472'];
  if (n.role === 'control-plane') out.push(`tcp ${controlPlaneEndpoint(spec).port}`, 'tcp 2379-2380');
  const http = unitText(p, PXE_HTTP_UNIT);
  if (http) {
    const argv = execStart(http);
    out.push(`tcp ${argv[argv.indexOf('-p') + 1]}`);
    const conf = firstNodeDnsmasqConf(spec);
    const range = /^dhcp-range=(.*)$/m.exec(conf)?.[1] ?? '';
    if (range) out.push('udp 67');
    if (range.split(',').includes('proxy')) out.push('udp 4011');
    if (/^enable-tftp$/m.test(conf)) out.push('udp 69');
    out.push(`tcp ${/^\s*addr: :(\d+)$/m.exec(registryConfigYml())![1]}`);
  }
  return out.sort();
}

describe('[first_node] defaults', () => {
  it('serves by default when a node netboots, with proxyDHCP on every interface', () => {
    assert.deepEqual(proxy().firstNode, { dhcp: 'proxy' });
    assert.deepEqual(full().firstNode, { dhcp: 'full', interface: 'lan0' });
  });
  it('serves nothing without netbooted nodes, or when the first control-plane node has no static address', () => {
    const noPxe = parseCluster('name = "c"\n[network]\nnode_cidr = "10.0.0.0/24"\n[[nodes]]\nname = "cp-1"\nrole = "control-plane"\nhardware = "pc"\n', 'c.toml');
    assert.equal(noPxe.firstNode, undefined);
    const dhcp = parseCluster('name = "c"\n[[nodes]]\nname = "cp-1"\nrole = "control-plane"\nhardware = "pc"\n[[nodes]]\nname = "w"\nrole = "worker"\nhardware = "pc"\nboot = "pxe"\nmac = "52:54:00:00:00:01"\n', 'c.toml');
    assert.equal(dhcp.firstNode, undefined);
    assert.equal(cluster('[first_node]\nserve = false').firstNode, undefined);
    // The services' images travel in the registry bundle.
    assert.equal(cluster('', '[registry]\nmirror = false').firstNode, undefined);
  });
});

describe('plan', () => {
  it('says which node serves what on which address and port, and which ports each node opens', () => {
    const plan = planBuild(full());
    assert.equal(plan.firstNode?.node, 'cp-1');
    assert.equal(plan.firstNode?.address, '10.77.0.2');
    assert.deepEqual(plan.firstNode?.images, firstNodeImages(full()));
    assert.deepEqual(
      plan.firstNode?.services.map((s) => `${s.service} ${s.protocol}/${s.port} ${s.unit}`),
      [`pxe-http tcp/8080 ${PXE_HTTP_UNIT}`, `dhcp udp/67 ${DNSMASQ_UNIT}`, `tftp udp/69 ${DNSMASQ_UNIT}`, `registry tcp/5000 ${REGISTRY_UNIT}`],
    );
    assert.deepEqual(plan.firewall?.['w-2'], ['tcp 22', 'tcp 10250', 'udp 8472']);
    assert.equal(planBuild(proxy()).firstNode?.services.find((s) => s.port === '4011')?.service, 'proxy-dhcp');
  });
  it('building the first node builds the netbooted nodes whose tree its image carries, and nothing else', () => {
    assert.deepEqual(planBuild(full(), { targets: ['pc'] }).nodes.map((n) => n.name), ['cp-1', 'w-1', 'w-2']);
    assert.deepEqual(planBuild(full(), { nodes: ['cp-1'] }).nodes.map((n) => n.name), ['cp-1', 'w-2']);
    assert.deepEqual(planBuild(full(), { nodes: ['w-1'] }).nodes.map((n) => n.name), ['w-1']);
  });
});

describe('units', () => {
  it('the first node has a unit for every service the others need, run from the bundled images, after the import', () => {
    const p = provisioned(full(), node(full(), 'cp-1'));
    for (const [name, image] of [
      [PXE_HTTP_UNIT, 'docker.io/library/busybox:1.37'],
      [DNSMASQ_UNIT, 'quay.io/poseidon/dnsmasq:v0.5.0'],
    ] as const) {
      const u = p.units.find((x) => x.name === name);
      assert.ok(u?.enabled && u.contents, name);
      const argv = execStart(u.contents);
      assert.deepEqual(argv.slice(0, 4), ['/usr/bin/ctr', '--namespace', 'bramble', 'run']);
      assert.ok(argv.includes(image), `${name} runs ${image}`);
      assert.ok(firstNodeImages(full()).includes(image), `${image} is one of the images the bundle carries`);
      assert.match(u.contents, new RegExp(`^After=.*${IMPORT_UNIT.replace('.', '\\.')}`, 'm'));
      assert.doesNotMatch(u.contents, /https?:\/\//, 'nothing is downloaded at runtime');
      for (const m of argv.filter((_, i) => argv[i - 1] === '--mount')) assert.match(m, /^type=bind,src=(\S+),dst=\1,options=rbind:ro$/, 'read-only, same path');
    }
    assert.ok(p.files.some((f) => f.path === FIREWALL_RULES_PATH));
    assert.ok(p.units.some((u) => u.name === FIREWALL_UNIT && u.enabled));
  });
  it('other nodes get the firewall and no serving unit', () => {
    const p = provisioned(full(), node(full(), 'w-2'));
    assert.deepEqual(p.units.map((u) => u.name).sort(), [FIREWALL_UNIT]);
  });
  it('the first node\'s dnsmasq config: full DHCP on its interface with a lease per node, TFTP from the tree on ROOT', async (t) => {
    const conf = firstNodeDnsmasqConf(full());
    assert.match(conf, /^interface=lan0$/m);
    assert.match(conf, /^tftp-root=\/var\/lib\/bramble\/pxe$/m);
    assert.deepEqual(conf.match(/^dhcp-host=.*$/gm), [`dhcp-host=52:54:00:77:00:12,${node(full(), 'w-2').ip},w-2,12h`], 'one lease per node with a MAC, at its address');
    assert.match(firstNodeDnsmasqConf(proxy()), /^dhcp-range=10\.77\.0\.0,proxy,255\.255\.255\.0$/m);
    const dir = await tempDir(t, 'first-node-dnsmasq');
    for (const [name, text] of [['full.conf', conf], ['proxy.conf', firstNodeDnsmasqConf(proxy())]]) {
      await writeFile(join(dir, name), text);
      const r = await run('dnsmasq', ['--test', `--conf-file=${join(dir, name)}`]);
      assert.match(r.stdout + r.stderr, /syntax check OK/, name);
    }
  });
  it('systemd-analyze verify accepts every unit, with the bundle\'s units they depend on', async (t) => {
    const dir = await tempDir(t, 'first-node-units');
    const p = provisioned(full(), node(full(), 'cp-1'));
    const units = [...p.units.map((u) => [u.name, u.contents!] as const), [IMPORT_UNIT, importUnit('amd64')] as const, [REGISTRY_UNIT, registryUnit()] as const];
    for (const [name, text] of units) await writeFile(join(dir, name), text);
    const r = await run('systemd-analyze', ['verify', ...units.map(([name]) => join(dir, name))], { okCodes: [1] });
    assert.equal(r.exitCode, 0, r.stderr);
  });
});

describe('firewall', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bramble-firewall-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  for (const [label, make] of [['full DHCP', full], ['proxyDHCP', proxy]] as const) {
    for (const name of ['cp-1', 'w-1', 'w-2']) {
      it(`${label}, ${name}: nft accepts the ruleset; loaded, it drops by default and accepts exactly the ports the node listens on`, async (t) => {
        const spec = make();
        const n = node(spec, name);
        const p = provisioned(spec, n);
        const file = join(dir, `${label.replace(/\W/g, '')}-${name}.nft`);
        await writeFile(file, p.files.find((f) => f.path === FIREWALL_RULES_PATH)!.contents as string);
        await run('nft', ['-c', '-f', file]);
        const expected = listeningPorts(spec, n, p);
        assert.deepEqual(servedPorts(spec, n).map((x) => `${x.protocol} ${typeof x.port === 'number' ? x.port : x.port.join('-')}`).sort(), expected);
        if (skipRoot) return t.skip(skipRoot);

        const created = await NetworkNamespace.create(`bramble-fw-${process.pid}-${randomBytes(3).toString('hex')}-${name}`);
        if (typeof created === 'string') return t.skip(created);
        const ns = created;
        t.after(() => ns.destroy());
        await ns.exec(['nft', '-f', file]);
        // Loading twice must work (ExecReload): the file replaces its own table.
        await ns.exec(['nft', '-f', file]);
        const listed = JSON.parse((await ns.exec(['nft', '-j', 'list', 'ruleset'])).stdout) as { nftables: Array<Record<string, any>> };
        const chains = listed.nftables.filter((o) => o.chain).map((o) => o.chain);
        assert.deepEqual(chains.map((c) => `${c.family} ${c.table} ${c.name} ${c.hook} ${c.policy}`), ['inet bramble input input drop']);
        const open: string[] = [];
        for (const { rule } of listed.nftables.filter((o) => o.rule)) {
          const exprs = rule.expr as Array<Record<string, any>>;
          if (!exprs.some((e) => 'accept' in e)) continue;
          const dport = exprs.find((e) => e.match?.left?.payload?.field === 'dport')?.match;
          if (!dport) continue;
          const right = dport.right;
          open.push(`${dport.left.payload.protocol} ${typeof right === 'number' ? right : right.range.join('-')}`);
        }
        assert.deepEqual(open.sort(), expected, 'every listening port is open, nothing else');
      });
    }
  }
});
