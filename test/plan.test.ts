// The plan stage: determinism (same config, same bytes), what node order changes, selection by target and
// node name, derived addresses, lock handling, artefacts and inputs per node kind.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { defaultCluster } from '../builders/defaults.ts';
import { UsageError } from '../builders/errors.ts';
import { layout } from '../builders/layout.ts';
import { parseCluster } from '../builders/load.ts';
import type { LockFile } from '../builders/lockfile.ts';
import { formatPlan, planBuild, planToJson, type BuildPlan } from '../builders/plan.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const exampleFile = join(root, 'examples/cluster.toml');
const exampleText = readFileSync(exampleFile, 'utf8');
const example = () => parseCluster(exampleText, 'examples/cluster.toml');

/** Split a config into its preamble and its [[nodes]] blocks. */
function nodeBlocks(text: string): { head: string; blocks: string[] } {
  const [head, ...rest] = text.split(/^(?=\[\[nodes\]\])/m);
  return { head: head!, blocks: rest };
}

describe('plan determinism', () => {
  it('gives byte-identical JSON for the same config, parsed and planned twice', () => {
    const a = planToJson(planBuild(example()));
    const b = planToJson(planBuild(parseCluster(exampleText, 'examples/cluster.toml')));
    assert.equal(a, b);
    assert.ok(a.endsWith('}\n'));
    assert.match(a, /^\{\n {2}"planVersion": 1,\n {2}"cluster": "demo",\n/);
  });

  it('does not depend on where the file is', () => {
    const a = planToJson(planBuild(parseCluster(exampleText, '/one/place/cluster.toml')));
    const b = planToJson(planBuild(parseCluster(exampleText, 'elsewhere.toml')));
    assert.equal(a, b);
  });

  it('reordering nodes with fixed addresses only reorders the node list', () => {
    const { head, blocks } = nodeBlocks(exampleText);
    const reversed = head + [...blocks].reverse().join('');
    const a = JSON.parse(planToJson(planBuild(example()))) as BuildPlan;
    const b = JSON.parse(planToJson(planBuild(parseCluster(reversed, 'examples/cluster.toml')))) as BuildPlan;
    assert.deepEqual(b.nodes.map((n) => n.name), ['worker-pxe-1', 'worker-1', 'cp-1']);
    assert.deepEqual([...b.nodes].reverse(), a.nodes);
    assert.deepEqual({ ...b, nodes: [] }, { ...a, nodes: [] });
  });

  it('reordering nodes without addresses swaps exactly their allocated addresses', () => {
    const text = (order: string[]) =>
      'name = "c"\n[network]\nnode_cidr = "10.1.0.0/24"\ngateway = "10.1.0.1"\n' +
      order.map((n) => `[[nodes]]\nname = "${n}"\nrole = "${n === 'cp' ? 'control-plane' : 'worker'}"\nhardware = "pc"\n`).join('');
    const a = planBuild(parseCluster(text(['cp', 'w1', 'w2']), 'c.toml'));
    const b = planBuild(parseCluster(text(['cp', 'w2', 'w1']), 'c.toml'));
    const ipOf = (p: BuildPlan) => Object.fromEntries(p.nodes.map((n) => [n.name, n.ip]));
    assert.deepEqual(ipOf(a), { cp: '10.1.0.2', w1: '10.1.0.3', w2: '10.1.0.4' });
    assert.deepEqual(ipOf(b), { cp: '10.1.0.2', w1: '10.1.0.4', w2: '10.1.0.3' });
    assert.deepEqual(b.artefacts, a.artefacts);
    assert.deepEqual(b.inputs, a.inputs);
  });
});

describe('plan contents', () => {
  const plan = planBuild(example());

  it('resolves versions, network and derived service addresses', () => {
    assert.deepEqual(plan.os, { base: 'flatcar', channel: 'stable', version: 'current', locked: false });
    assert.equal(plan.kubernetes.version, 'v1.33.4');
    assert.ok(plan.kubernetes.images.includes('registry.k8s.io/etcd:3.5.21-0'));
    assert.ok(plan.kubernetes.images.includes('registry.k8s.io/coredns/coredns:v1.12.0'));
    assert.equal(plan.network.addressing, 'static');
    assert.equal(plan.network.apiServiceIp, '10.96.0.1');
    assert.equal(plan.network.clusterDns, '10.96.0.10');
    assert.equal(plan.network.apiVip, '192.168.50.5');
    assert.deepEqual(plan.warnings, []);
  });

  it('derives the service addresses of an IPv6 service range', () => {
    const spec = parseCluster(
      'name = "c"\n[network]\npod_cidr = "fd00:10:244::/56"\nservice_cidr = "fd00:10:96::/108"\n[[nodes]]\nname = "a"\nrole = "control-plane"\nhardware = "pc"\n',
      'c.toml',
    );
    const p = planBuild(spec);
    assert.equal(p.network.apiServiceIp, 'fd00:10:96::1');
    assert.equal(p.network.clusterDns, 'fd00:10:96::a');
    assert.equal(p.nodes[0]!.ip, 'dhcp');
  });

  it('lists each node with target, arch, MAC and address', () => {
    assert.deepEqual(
      plan.nodes.map((n) => [n.name, n.target, n.arch, n.mac, n.ip]),
      [
        ['cp-1', 'rpi4', 'arm64', null, '192.168.50.10'],
        ['worker-1', 'pc', 'amd64', null, '192.168.50.11'],
        ['worker-pxe-1', 'pxe', 'amd64', '52:54:00:50:00:12', '192.168.50.2'],
      ],
    );
  });

  it('plans artefacts from layout.ts, sorted, with secrets marked', () => {
    const paths = plan.artefacts.map((a) => a.path);
    assert.deepEqual(paths, [...paths].sort());
    const find = (path: string) => plan.artefacts.find((a) => a.path === path);
    assert.deepEqual(find(layout.image('cp-1')), { path: 'images/cp-1.img', kind: 'disk-image', node: 'cp-1', target: 'rpi4', arch: 'arm64', secret: true });
    assert.equal(find(layout.bmap('worker-1'))?.secret, false);
    assert.equal(find(layout.ignition('worker-pxe-1'))?.secret, true);
    assert.equal(find(layout.pxeNodeCpio('52:54:00:50:00:12'))?.kind, 'pxe-initrd');
    assert.equal(find(layout.pxeNodeScript('52:54:00:50:00:12'))?.secret, true);
    assert.deepEqual(find(layout.dnsmasqConf), { path: 'pxe/dnsmasq.conf', kind: 'dnsmasq-conf', target: 'pxe', arch: null, secret: false });
    assert.ok(find(layout.pxeAsset('amd64', 'current', 'flatcar_production_pxe.vmlinuz')));
    assert.equal(find(layout.image('worker-pxe-1')), undefined);
  });

  it('plans the inputs the nodes need, sorted by id', () => {
    const ids = plan.inputs.map((i) => i.id);
    assert.deepEqual(ids, [...ids].sort());
    for (const id of ['flatcar-image-arm64', 'flatcar-image-amd64', 'flatcar-pxe-kernel-amd64', 'flatcar-pxe-cpio-amd64', 'rpi4-uefi-firmware-arm64', 'kubernetes-kubelet-arm64', 'ipxe-undionly.kpxe-amd64']) {
      assert.ok(ids.includes(id), id);
    }
    assert.ok(!ids.includes('flatcar-pxe-kernel-arm64'));
  });

  it('formats a readable summary', () => {
    const text = formatPlan(plan);
    assert.match(text, /^cluster demo\n/);
    assert.match(text, /worker-pxe-1 +worker +pc +pxe +amd64 +52:54:00:50:00:12 +192\.168\.50\.2\n/);
    assert.match(text, /services +10\.96\.0\.0\/12 \(api 10\.96\.0\.1, dns 10\.96\.0\.10\)/);
    assert.match(text, /images\/cp-1\.img +disk-image +cp-1 +yes\n/);
    assert.equal(formatPlan(planBuild(example())), text);
  });

  it('plans a HypriotOS cluster with cloud-init and a warning for missing image tags', () => {
    const spec = parseCluster(readFileSync(join(root, 'examples/hypriot-rpi3.toml'), 'utf8'), 'hypriot-rpi3.toml');
    const p = planBuild(spec);
    assert.deepEqual(p.os, { base: 'hypriot', channel: null, version: '1.12.3', locked: false });
    assert.ok(p.artefacts.some((a) => a.path === 'configs/pi-1/user-data' && a.secret));
    assert.ok(p.inputs.some((i) => i.id === 'hypriot-image-arm'));
    assert.ok(p.inputs.some((i) => i.id === 'kubernetes-kubelet-arm'));
    assert.match(p.warnings.join('\n'), /no known kubeadm image tags for Kubernetes v1\.26\.15/);
  });

  it('gives a HypriotOS cluster with no [kubernetes] version the last 32-bit arm release, v1.26.15', () => {
    const p = planBuild(defaultCluster('rpi3'));
    assert.equal(p.kubernetes.version, 'v1.26.15');
    assert.ok(p.inputs.some((i) => i.id === 'kubernetes-kubelet-arm' && i.version === '1.26.15'));
    assert.match(p.warnings.join('\n'), /no Kubernetes bootstrap: HypriotOS nodes get the Kubernetes v1\.26\.15 binaries/);
  });
});

describe('plan selection', () => {
  it('filters by target: a disk node by its hardware, a netbooted node by pxe', () => {
    const pxe = planBuild(example(), { targets: ['pxe'] });
    assert.deepEqual(pxe.nodes.map((n) => n.name), ['worker-pxe-1']);
    assert.ok(pxe.artefacts.every((a) => a.target === 'pxe'));
    assert.deepEqual(pxe.selection, { targets: ['pxe'], nodes: null });
    // Without [first_node] serving: building cp-1 would otherwise build the tree its image carries.
    const disks = planBuild({ ...example(), firstNode: undefined }, { targets: ['rpi4', 'pc'] });
    assert.deepEqual(disks.nodes.map((n) => n.name), ['cp-1', 'worker-1']);
    assert.ok(!disks.artefacts.some((a) => a.path.startsWith('pxe/')));
    assert.ok(!disks.inputs.some((i) => i.id.startsWith('flatcar-pxe')));
  });

  it('filters by node name', () => {
    const p = planBuild(example(), { nodes: ['worker-1'] });
    assert.deepEqual(p.nodes.map((n) => n.name), ['worker-1']);
    assert.ok(p.artefacts.every((a) => a.node === 'worker-1'));
    assert.ok(!p.inputs.some((i) => i.arch === 'arm64'));
  });

  it('refuses an unknown node name, listing the nodes there are', () => {
    assert.throws(
      () => planBuild(example(), { nodes: ['worker-9'] }),
      (e: unknown) =>
        e instanceof UsageError && e.exitCode === 2 && /no node named "worker-9"/.test(e.message) && /cp-1 \(rpi4\), worker-1 \(pc\), worker-pxe-1 \(pxe\)/.test(e.hint!),
    );
  });

  it('refuses a target no node is built by, listing the targets there are', () => {
    assert.throws(
      () => planBuild(example(), { targets: ['arm64-uefi'] }),
      (e: unknown) => e instanceof UsageError && /target "arm64-uefi"/.test(e.message) && /rpi4, pc, pxe/.test(e.hint!),
    );
  });

  it('refuses a target and node combination that selects nothing', () => {
    assert.throws(() => planBuild(example(), { targets: ['pxe'], nodes: ['cp-1'] }), UsageError);
  });
});

describe('plan and the lock file', () => {
  const lock = (os: LockFile['os'], cluster = 'demo'): LockFile => ({ lockVersion: 1, cluster, os, inputs: [] });

  it('takes the OS version from a matching lock, also into PXE asset paths', () => {
    const p = planBuild(example(), { lock: lock({ base: 'flatcar', channel: 'stable', version: '4593.2.5' }) });
    assert.deepEqual(p.os, { base: 'flatcar', channel: 'stable', version: '4593.2.5', locked: true });
    assert.ok(p.artefacts.some((a) => a.path === 'pxe/assets/flatcar/amd64/4593.2.5/flatcar_production_pxe.vmlinuz'));
    assert.ok(p.inputs.filter((i) => i.id.startsWith('flatcar-')).every((i) => i.version === '4593.2.5'));
    assert.deepEqual(p.warnings, []);
  });

  it('ignores a lock made for another channel, with a warning', () => {
    const p = planBuild(example(), { lock: lock({ base: 'flatcar', channel: 'beta', version: '4757.1.0' }) });
    assert.equal(p.os.version, 'current');
    assert.equal(p.os.locked, false);
    assert.match(p.warnings.join('\n'), /bramble\.lock was made for flatcar beta 4757\.1\.0/);
  });

  it('ignores a lock whose version differs from a pinned one', () => {
    const spec = example();
    const pinned = { ...spec, os: { ...spec.os, version: '4593.2.5' } };
    const p = planBuild(pinned, { lock: lock({ base: 'flatcar', channel: 'stable', version: '4593.2.4' }) });
    assert.equal(p.os.version, '4593.2.5');
    assert.equal(p.os.locked, false);
  });
});
