// kubeadm bootstrap content: exact image lists per patch version (CoreDNS path rule included), the
// v1beta4 documents parsed back with `yaml`, each node's first-boot content for a 3-node cluster
// (rpi4 control plane on disk, pc worker on disk, pc worker on PXE) rendered to Ignition and
// checked against the official schema, and no key material on workers.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import TOML from '@ltd/j-toml';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { InputError } from '../builders/errors.ts';
import { parseCluster } from '../builders/load.ts';
import type { ClusterSpec, NodeSpec } from '../builders/spec.ts';
import type { IgnitionConfig } from '../ignition/model.ts';
import { renderIgnitionJson } from '../ignition/render.ts';
import { decodeDataUrl } from '../ignition/validate.ts';
import { cniImages, kubeadmCoreDnsImage, kubeadmImages, mirrorRef } from '../overlays/kubernetes/images.ts';
import { bootstrapRole, controlPlaneEndpoint, renderKubeadmConfig } from '../overlays/kubernetes/kubeadm.ts';
import { addKubernetes, CONTAINERD_CONFIG_PATH, FLANNEL_MANIFEST_PATH, KUBEADM_UNIT, type SysextSource } from '../overlays/kubernetes/node-content.ts';
import { ensurePki, type Pki } from '../overlays/kubernetes/pki.ts';
import { planKubernetes } from '../overlays/kubernetes/plan.ts';
import { provisionNode } from '../overlays/provision.ts';

const MIRROR = '192.168.50.10:5000';
const CLUSTER_TOML = `
name = "demo"
[kubernetes]
version = "v1.33.4"
cni = "flannel"
[network]
node_cidr = "192.168.50.0/24"
gateway = "192.168.50.1"
dns = ["192.168.50.1"]
pod_cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/12"
api_vip = "192.168.50.5"
[ssh]
authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM864DBcKF0A/DWKtqo+8DyYiDG/b9FQ5GxoyacdaZpj test@example.invalid"]
[[nodes]]
name = "cp-1"
role = "control-plane"
hardware = "rpi4"
ip = "192.168.50.10"
[[nodes]]
name = "worker-1"
role = "worker"
hardware = "pc"
ip = "192.168.50.11"
[[nodes]]
name = "worker-pxe-1"
role = "worker"
hardware = "pc"
boot = "pxe"
mac = "52:54:00:50:00:12"
`;

let work: string;
let pki: Pki;
let spec: ClusterSpec;
const SYSEXT_SHA512 = 'ab'.repeat(64);
const SYSEXT_URL = 'http://192.168.50.2:8080/pxe/extensions/kubernetes-v1.33.4-x86-64.raw';

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'bramble-kubeadm-test-'));
  pki = await ensurePki(join(work, 'pki'), { cluster: 'demo' });
  spec = parseCluster(CLUSTER_TOML, 'cluster.toml');
});
after(() => rm(work, { recursive: true, force: true }));

const nodeNamed = (s: ClusterSpec, name: string) => s.nodes.find((n) => n.name === name)!;
const sysextFor = (n: NodeSpec): SysextSource => (n.boot === 'pxe' ? { kind: 'http', url: SYSEXT_URL, sha512: SYSEXT_SHA512 } : { kind: 'root' });
const docsOf = (yamlText: string) => parseAllDocuments(yamlText).map((d) => {
  assert.deepEqual(d.errors, []);
  return d.toJS() as Record<string, any>;
});

test('kubeadm images for an exact patch, upstream and through the mirror (CoreDNS keeps its path)', () => {
  const plain = kubeadmImages('1.33.4');
  assert.equal(plain.version, 'v1.33.4');
  assert.deepEqual(plain.images.map((i) => i.ref), [
    'registry.k8s.io/kube-apiserver:v1.33.4',
    'registry.k8s.io/kube-controller-manager:v1.33.4',
    'registry.k8s.io/kube-scheduler:v1.33.4',
    'registry.k8s.io/kube-proxy:v1.33.4',
    'registry.k8s.io/coredns/coredns:v1.12.0',
    'registry.k8s.io/pause:3.10',
    'registry.k8s.io/etcd:3.5.21-0',
  ]);
  assert.equal(plain.imageRepository, 'registry.k8s.io');
  assert.equal(plain.dnsImageRepository, undefined);
  assert.equal(plain.pause, 'registry.k8s.io/pause:3.10');

  const mirrored = kubeadmImages('v1.33.4', { mirror: MIRROR });
  assert.equal(mirrored.imageRepository, '192.168.50.10:5000/registry.k8s.io');
  assert.equal(mirrored.dnsImageRepository, '192.168.50.10:5000/registry.k8s.io/coredns');
  for (const i of mirrored.images) assert.equal(i.ref, mirrorRef(i.upstream, MIRROR));
  assert.equal(mirrored.images.find((i) => i.name === 'coredns')!.ref, '192.168.50.10:5000/registry.k8s.io/coredns/coredns:v1.12.0');
  assert.equal(mirrored.pause, '192.168.50.10:5000/registry.k8s.io/pause:3.10');

  // etcd changes within a minor (kubernetes-and-registry.md §2.2).
  assert.equal(kubeadmImages('v1.32.9').images.at(-1)!.ref, 'registry.k8s.io/etcd:3.5.16-0');
  assert.equal(kubeadmImages('v1.32.10').images.at(-1)!.ref, 'registry.k8s.io/etcd:3.5.24-0');
  assert.equal(kubeadmImages('v1.36.0').pause, 'registry.k8s.io/pause:3.10.2');
});

test('kubeadm\'s CoreDNS repository rule, and unknown versions fail at plan time naming the known ones', () => {
  assert.equal(kubeadmCoreDnsImage('registry.k8s.io', undefined, 'v1.12.0'), 'registry.k8s.io/coredns/coredns:v1.12.0');
  // The pitfall: a custom imageRepository alone loses the /coredns level.
  assert.equal(kubeadmCoreDnsImage('my.repo/sub', undefined, 'v1.12.0'), 'my.repo/sub/coredns:v1.12.0');
  assert.equal(kubeadmCoreDnsImage('my.repo/sub', 'my.repo/sub/coredns', 'v1.12.0'), 'my.repo/sub/coredns/coredns:v1.12.0');

  assert.throws(() => kubeadmImages('v1.30.2'), (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.equal(e.exitCode, 2);
    assert.equal(e.message, 'no kubeadm image list is known for Kubernetes v1.30.2');
    assert.match(e.hint!, /^set \[kubernetes\] version to one of: v1\.31\.0–v1\.31\.14, v1\.32\.0–v1\.32\.13, v1\.33\.0–v1\.33\.13, .*v1\.36\.0–v1\.36\.3$/);
    return true;
  });
  assert.throws(() => kubeadmImages('1.33'), /not an exact release version/);
  assert.deepEqual(cniImages('flannel').map((i) => i.ref), ['ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3', 'ghcr.io/flannel-io/flannel:v0.28.9']);
  assert.deepEqual(cniImages('none'), []);
  assert.throws(() => cniImages('calico'), (e: unknown) => e instanceof InputError && /not bundled by bramble/.test(e.message));
});

test('first control plane: InitConfiguration + ClusterConfiguration (v1beta4) with the fields kubeadm needs', () => {
  const cp = nodeNamed(spec, 'cp-1');
  assert.equal(bootstrapRole(spec, cp), 'init');
  const docs = docsOf(renderKubeadmConfig({ spec, node: cp, pki, images: kubeadmImages(spec.kubernetes.version, { mirror: MIRROR }) }));
  assert.deepEqual(docs.map((d) => `${d.apiVersion} ${d.kind}`), ['kubeadm.k8s.io/v1beta4 InitConfiguration', 'kubeadm.k8s.io/v1beta4 ClusterConfiguration']);
  const [init, cluster] = docs;
  assert.deepEqual(init!.bootstrapTokens[0].token, pki.token.token);
  assert.deepEqual(init!.bootstrapTokens[0].usages, ['signing', 'authentication']);
  assert.deepEqual(init!.bootstrapTokens[0].groups, ['system:bootstrappers:kubeadm:default-node-token']);
  assert.deepEqual(init!.nodeRegistration, {
    name: 'cp-1',
    criSocket: 'unix:///run/containerd/containerd.sock',
    imagePullPolicy: 'IfNotPresent',
    kubeletExtraArgs: [{ name: 'node-ip', value: '192.168.50.10' }],
  });
  assert.deepEqual(init!.localAPIEndpoint, { advertiseAddress: '192.168.50.10', bindPort: 6443 });
  assert.equal(cluster!.kubernetesVersion, 'v1.33.4');
  assert.equal(cluster!.controlPlaneEndpoint, '192.168.50.5:6443');
  assert.deepEqual(cluster!.networking, { podSubnet: '10.244.0.0/16', serviceSubnet: '10.96.0.0/12' });
  assert.equal(cluster!.imageRepository, '192.168.50.10:5000/registry.k8s.io');
  assert.deepEqual(cluster!.dns, { imageRepository: '192.168.50.10:5000/registry.k8s.io/coredns' });
  assert.deepEqual(cluster!.apiServer.certSANs, ['192.168.50.5', '192.168.50.10']);
  assert.equal(cluster!.clusterName, 'demo');
});

test('workers join with token and CA pin only; extra control planes join with controlPlane set', () => {
  const images = kubeadmImages(spec.kubernetes.version);
  for (const name of ['worker-1', 'worker-pxe-1']) {
    const node = nodeNamed(spec, name);
    const [join, ...rest] = docsOf(renderKubeadmConfig({ spec, node, pki, images }));
    assert.equal(rest.length, 0);
    assert.equal(join!.apiVersion, 'kubeadm.k8s.io/v1beta4');
    assert.equal(join!.kind, 'JoinConfiguration');
    assert.deepEqual(join!.discovery, { bootstrapToken: { apiServerEndpoint: '192.168.50.5:6443', token: pki.token.token, caCertHashes: [pki.caCertHash] } });
    assert.equal(join!.controlPlane, undefined);
    assert.equal(join!.caCertPath, undefined);
    assert.equal(join!.nodeRegistration.name, name);
  }
  const withCp2 = parseCluster(`${CLUSTER_TOML}\n[[nodes]]\nname = "cp-2"\nrole = "control-plane"\nhardware = "pc"\nip = "192.168.50.20"\n`, 'cluster.toml');
  const cp2 = nodeNamed(withCp2, 'cp-2');
  assert.equal(bootstrapRole(withCp2, cp2), 'join-control-plane');
  const [join] = docsOf(renderKubeadmConfig({ spec: withCp2, node: cp2, pki, images }));
  assert.deepEqual(join!.controlPlane, { localAPIEndpoint: { advertiseAddress: '192.168.50.20', bindPort: 6443 } });
  assert.deepEqual(join!.discovery.bootstrapToken.caCertHashes, [pki.caCertHash]);
});

test('the API endpoint: the VIP, else the first control plane\'s IP, else a plan-time error', () => {
  assert.equal(controlPlaneEndpoint(spec).address, '192.168.50.5:6443');
  const noVip = parseCluster(CLUSTER_TOML.replace('api_vip = "192.168.50.5"\n', ''), 'cluster.toml');
  assert.equal(controlPlaneEndpoint(noVip).address, '192.168.50.10:6443');
  const dhcp: ClusterSpec = { ...noVip, network: { ...noVip.network, nodeCidr: undefined }, nodes: noVip.nodes.map((n) => ({ ...n, ip: undefined })) };
  assert.throws(() => controlPlaneEndpoint(dhcp), (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.match(e.message, /the Kubernetes API endpoint is unknown: network\.api_vip is not set and control-plane node "cp-1" has no static ip/);
    return true;
  });
});

function renderNode(s: ClusterSpec, name: string, mirrorHost?: string): { cfg: IgnitionConfig; json: string; files: Map<string, { mode: number; text?: string; source?: string; hash?: string }> } {
  const node = nodeNamed(s, name);
  const prov = addKubernetes(provisionNode(s, node), { spec: s, node, pki, sysext: sysextFor(node), mirrorHost });
  const json = renderIgnitionJson(prov); // validates against the official Ignition schema
  const cfg = JSON.parse(json) as IgnitionConfig;
  const files = new Map<string, { mode: number; text?: string; source?: string; hash?: string }>();
  for (const f of cfg.storage?.files ?? []) {
    const source = f.contents?.source ?? '';
    files.set(f.path, source.startsWith('data:')
      ? { mode: f.mode!, text: decodeDataUrl(source).toString('utf8') }
      : { mode: f.mode!, source, hash: f.contents?.verification?.hash });
  }
  return { cfg, json, files };
}

test('all three nodes\' Ignition configs pass the schema; workers carry no key and no ca.crt', () => {
  for (const name of ['cp-1', 'worker-1', 'worker-pxe-1']) {
    const { cfg, json, files } = renderNode(spec, name, MIRROR);
    const units = new Map((cfg.systemd?.units ?? []).map((u) => [u.name, u]));
    const kubeadmUnit = units.get(KUBEADM_UNIT)!;
    assert.equal(kubeadmUnit.enabled, true);
    assert.match(kubeadmUnit.contents!, /^ConditionPathExists=!\/etc\/kubernetes\/kubelet\.conf$/m);
    assert.match(kubeadmUnit.contents!, /^After=.*containerd\.service.*systemd-sysext\.service/m);
    assert.equal(files.get('/etc/kubernetes/kubeadm.yaml')!.mode, 0o600);
    const containerd = files.get(CONTAINERD_CONFIG_PATH)!.text!;
    const toml = TOML.parse(containerd, { joiner: '\n' }) as any;
    assert.equal(toml.plugins['io.containerd.grpc.v1.cri'].sandbox_image, '192.168.50.10:5000/registry.k8s.io/pause:3.10');
    assert.equal(toml.plugins['io.containerd.grpc.v1.cri'].registry.config_path, '/etc/containerd/certs.d');
    assert.match(units.get('containerd.service')!.dropins![0]!.contents!, /^Environment=CONTAINERD_CONFIG=\/etc\/containerd\/config\.toml$/m);
    const link = cfg.storage!.links!.find((l) => l.path === '/etc/extensions/kubernetes.raw')!;
    const arch = name === 'cp-1' ? 'arm64' : 'x86-64';
    assert.equal(link.target, `/opt/extensions/kubernetes/kubernetes-v1.33.4-${arch}.raw`);

    if (name === 'cp-1') {
      assert.match(kubeadmUnit.contents!, /^ExecStart=\/usr\/bin\/kubeadm init --config \/etc\/kubernetes\/kubeadm\.yaml$/m);
      for (const [rel, mode] of Object.entries({ 'ca.crt': 0o644, 'ca.key': 0o600, 'sa.key': 0o600, 'sa.pub': 0o644, 'front-proxy-ca.crt': 0o644, 'front-proxy-ca.key': 0o600, 'etcd/ca.crt': 0o644, 'etcd/ca.key': 0o600 })) {
        const f = files.get(`/etc/kubernetes/pki/${rel}`)!;
        assert.equal(f.mode, mode, rel);
        assert.equal(f.text, pki.files[rel as keyof Pki['files']]);
      }
      assert.deepEqual([...files.keys()].filter((p) => p.startsWith('/etc/kubernetes/pki/')).length, 8);
      const flannel = docsOf(files.get(FLANNEL_MANIFEST_PATH)!.text!);
      const cfgMap = flannel.find((d) => d.kind === 'ConfigMap')!;
      assert.deepEqual(JSON.parse(cfgMap.data['net-conf.json']), { Network: '10.244.0.0/16', Backend: { Type: 'vxlan' } });
      const ds = flannel.find((d) => d.kind === 'DaemonSet')!;
      assert.equal(ds.spec.template.spec.containers[0].image, '192.168.50.10:5000/ghcr.io/flannel-io/flannel:v0.28.9');
      assert.equal(ds.spec.template.spec.initContainers[0].image, '192.168.50.10:5000/ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3');
      assert.match(units.get('kubernetes-addons.service')!.contents!, /^ExecStart=\/usr\/bin\/kubectl --kubeconfig \/etc\/kubernetes\/admin\.conf apply --filename \/etc\/kubernetes\/manifests-addons\/kube-flannel\.yml$/m);
      const vip = parseYaml(files.get('/etc/kubernetes/manifests/kube-vip.yaml')!.text!);
      assert.equal(vip.spec.containers[0].image, '192.168.50.10:5000/ghcr.io/kube-vip/kube-vip:v1.2.3');
      assert.deepEqual(vip.spec.containers[0].env.find((e: { name: string }) => e.name === 'address'), { name: 'address', value: '192.168.50.5' });
      assert.equal(vip.spec.volumes[0].hostPath.path, '/etc/kubernetes/super-admin.conf');
    } else {
      assert.match(kubeadmUnit.contents!, /^ExecStart=\/usr\/bin\/kubeadm join --config \/etc\/kubernetes\/kubeadm\.yaml$/m);
      assert.doesNotMatch(json, /PRIVATE KEY/);
      for (const [path, f] of files) {
        assert.ok(!path.startsWith('/etc/kubernetes/pki'), `${path} on a worker`);
        assert.doesNotMatch(f.text ?? '', /PRIVATE KEY|BEGIN CERTIFICATE/, path);
      }
      assert.equal(cfg.storage?.directories?.some((d) => d.path.startsWith('/etc/kubernetes/pki')) ?? false, false);
      assert.equal(files.has(FLANNEL_MANIFEST_PATH), false);
      assert.equal(units.has('kubernetes-addons.service'), false);
    }
    const raw = files.get(`/opt/extensions/kubernetes/kubernetes-v1.33.4-${arch}.raw`);
    if (name === 'worker-pxe-1') {
      assert.deepEqual(raw, { mode: 0o644, source: SYSEXT_URL, hash: `sha512-${SYSEXT_SHA512}` });
    } else {
      assert.equal(raw, undefined, 'disk nodes carry the image on ROOT, not in Ignition');
    }
  }
});

test('the same inputs give the same Ignition bytes; the input spec is not changed', () => {
  const node = nodeNamed(spec, 'worker-1');
  const base = provisionNode(spec, node);
  const before = JSON.stringify(base);
  addKubernetes(base, { spec, node, pki, sysext: { kind: 'root' } });
  assert.equal(JSON.stringify(base), before);
  assert.equal(renderNode(spec, 'cp-1', MIRROR).json, renderNode(spec, 'cp-1', MIRROR).json);
});

test('plan: version, endpoint, bootstrap roles and images; HypriotOS and unbundled CNIs fail with exit 2', () => {
  const plan = planKubernetes(spec, { mirrorHost: MIRROR });
  assert.equal(plan.version, 'v1.33.4');
  assert.equal(plan.endpoint, '192.168.50.5:6443');
  assert.deepEqual(plan.nodes.map((n) => `${n.name}:${n.bootstrap}`), ['cp-1:init', 'worker-1:join-worker', 'worker-pxe-1:join-worker']);
  assert.deepEqual(plan.images.map((i) => i.name), ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kube-proxy', 'coredns', 'pause', 'etcd', 'flannel-cni-plugin', 'flannel', 'kube-vip']);

  const hypriot = parseCluster('name = "pi"\n[os]\nbase = "hypriot"\n[kubernetes]\nversion = "v1.33.4"\n[[nodes]]\nname = "pi-1"\nrole = "control-plane"\nhardware = "rpi3"\nip = "10.0.0.2"\n[network]\nnode_cidr = "10.0.0.0/24"\n', 'cluster.toml');
  assert.throws(() => planKubernetes(hypriot), (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.equal(e.exitCode, 2);
    assert.equal(e.message, 'node "pi-1": Kubernetes v1.33.4 publishes no linux/arm kubelet or kubeadm (32-bit arm builds ended with v1.26)');
    return true;
  });
  const calico: ClusterSpec = { ...spec, kubernetes: { ...spec.kubernetes, cni: 'calico' } };
  assert.throws(() => planKubernetes(calico), /cni = "calico" is not bundled by bramble/);
});
