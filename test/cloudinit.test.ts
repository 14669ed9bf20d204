// Provisioning spec → cloud-init NoCloud seed for HypriotOS: user-data passes `cloud-init schema`,
// PyYAML (what cloud-init parses with) reads back exactly what was meant, network-config is a
// valid version 2, instance-id follows the config, malformed snippets are ConfigErrors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, ExitCode, InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { defaultSources, type ClusterSpec, type NodeSpec } from '../builders/spec.ts';
import { mergeSnippet, parseSnippet } from '../ignition/snippets.ts';
import { checkNetworkConfigV2, renderCloudInit, runcmdFor } from '../overlays/cloudinit.ts';
import { provisionNode, type ProvisioningSpec } from '../overlays/provision.ts';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJyYW1ibGV0ZXN0a2V5 admin@example';

function cluster(nodeCidr?: string): ClusterSpec {
  return {
    name: 'ceil',
    source: 'test',
    os: { base: 'hypriot', channel: 'stable', version: '1.12.3' },
    kubernetes: { version: '1.33.2', cni: 'flannel' },
    network: { nodeCidr, gateway: nodeCidr ? '192.168.1.1' : undefined, dns: nodeCidr ? ['192.168.1.1'] : [], podCidr: '10.244.0.0/16', serviceCidr: '10.96.0.0/12' },
    ssh: { authorizedKeys: [KEY] },
    registry: { mirror: false, extraImages: [] },
    sources: defaultSources,
    nodes: [],
  };
}

const pi = (over: Partial<NodeSpec> = {}): NodeSpec => ({ name: 'pi1', role: 'control-plane', hardware: 'rpi3', boot: 'disk', mac: 'b8:27:eb:00:00:01', ip: '192.168.1.21', install: false, arch: 'arm', ...over });
const binary = Buffer.from([0x00, 0xff, 0x10, 0x80, 0x0a]);

function richSpec(p: ProvisioningSpec): ProvisioningSpec {
  p.files.push(
    { path: '/etc/motd', mode: 0o644, contents: 'yes\non: 0644\n' }, // YAML 1.1 traps: must stay text
    { path: '/usr/local/bin/blob', mode: 0o755, contents: binary },
    { path: '/home/pirate/.kube/token', mode: 0o600, contents: 'abcdef.0123456789abcdef', user: 'pirate' },
  );
  p.directories.push({ path: '/var/lib/bramble', mode: 0o750 });
  p.links.push({ path: '/usr/local/bin/kubectl', target: '/opt/bin/kubectl', overwrite: true });
  p.units.push(
    { name: 'kubelet.service', enabled: true, contents: '[Service]\nExecStart=/usr/bin/kubelet\n', dropins: [{ name: '10-args.conf', contents: '[Service]\nEnvironment=A=1\n' }] },
    { name: 'triggerhappy.service', mask: true },
  );
  p.commands.push(['kubeadm', 'init', '--config', '/etc/kubeadm.yaml']);
  return p;
}

async function pyyaml(text: string): Promise<any> {
  const r = await run('python3', ['-c', 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))'], { input: text });
  return JSON.parse(r.stdout);
}

test('user-data passes `cloud-init schema` and reads back through PyYAML exactly as meant', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-ci-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cases: Array<{ name: string; spec: ProvisioningSpec }> = [
    { name: 'static, plain', spec: provisionNode(cluster('192.168.1.0/24'), pi()) },
    { name: 'dhcp, everything', spec: richSpec(provisionNode(cluster(), pi({ mac: undefined, ip: undefined, hardware: 'rpi4' }))) },
  ];
  for (const c of cases) {
    const seed = renderCloudInit(c.spec, { cluster: 'ceil', node: 'pi1' });
    assert.ok(seed.userData.startsWith('#cloud-config\n'), c.name);
    const file = join(dir, `${c.name.replace(/\W+/g, '-')}.yaml`);
    await writeFile(file, seed.userData);
    const r = await run('cloud-init', ['schema', '--config-file', file]);
    assert.match(r.stdout, /Valid cloud-config/, c.name);

    const ud = await pyyaml(seed.userData);
    assert.equal(ud.hostname, 'pi1');
    assert.deepEqual(ud.users, [{ name: 'pirate', groups: ['users', 'docker', 'video'], shell: '/bin/bash', sudo: 'ALL=(ALL) NOPASSWD:ALL', lock_passwd: true, ssh_authorized_keys: [KEY] }]);
    assert.equal(ud.ssh_pwauth, false);
    for (const f of c.spec.files) {
      const w = ud.write_files.find((x: { path: string }) => x.path === f.path);
      assert.equal(w.permissions, `0${f.mode.toString(8)}`, `${f.path}: permissions stay an octal string`);
      const got = w.encoding === 'b64' ? Buffer.from(w.content, 'base64') : Buffer.from(w.content, 'utf8');
      assert.deepEqual(got, Buffer.isBuffer(f.contents) ? f.contents : Buffer.from(f.contents as string), f.path);
    }
    assert.deepEqual(ud.runcmd ?? [], runcmdFor(c.spec), `${c.name}: runcmd survives YAML 1.1`);
  }
  const rich = await pyyaml(renderCloudInit(cases[1].spec, { cluster: 'ceil', node: 'pi1' }).userData);
  assert.equal(rich.write_files.find((w: { path: string }) => w.path === '/usr/local/bin/blob').encoding, 'b64');
  assert.equal(rich.write_files.find((w: { path: string }) => w.path === '/etc/systemd/system/kubelet.service.d/10-args.conf').content, '[Service]\nEnvironment=A=1\n');
  assert.deepEqual(rich.runcmd, [
    ['install', '-d', '-m', '0750', '-o', 'root', '-g', 'root', '/var/lib/bramble'],
    ['ln', '-sfn', '/opt/bin/kubectl', '/usr/local/bin/kubectl'],
    ['chown', 'pirate:pirate', '/home/pirate/.kube/token'],
    ['systemctl', 'daemon-reload'],
    ['systemctl', 'enable', 'kubelet.service'],
    ['systemctl', 'start', '--no-block', 'kubelet.service'],
    ['systemctl', 'mask', 'triggerhappy.service'],
    ['kubeadm', 'init', '--config', '/etc/kubeadm.yaml'],
  ]);
  // The schema check can fail.
  const bad = join(dir, 'bad.yaml');
  await writeFile(bad, '#cloud-config\nusers: 4\n');
  await assert.rejects(run('cloud-init', ['schema', '--config-file', bad]), /is not of type/);
});

test('network-config version 2: static matched by MAC, or DHCP; checked structurally', async () => {
  const cases: Array<{ name: string; c: ClusterSpec; n: NodeSpec; eth0: Record<string, unknown> }> = [
    {
      name: 'static with MAC',
      c: cluster('192.168.1.0/24'),
      n: pi(),
      eth0: { match: { macaddress: 'b8:27:eb:00:00:01' }, 'set-name': 'eth0', dhcp4: false, addresses: ['192.168.1.21/24'], gateway4: '192.168.1.1', nameservers: { addresses: ['192.168.1.1'] } },
    },
    { name: 'DHCP without MAC', c: cluster(), n: pi({ mac: undefined, ip: undefined }), eth0: { dhcp4: true } },
    { name: 'DHCP with MAC', c: cluster(), n: pi({ ip: undefined }), eth0: { match: { macaddress: 'b8:27:eb:00:00:01' }, 'set-name': 'eth0', dhcp4: true } },
  ];
  for (const c of cases) {
    const seed = renderCloudInit(provisionNode(c.c, c.n), { cluster: c.c, node: c.n });
    checkNetworkConfigV2(seed.networkConfig);
    assert.deepEqual(await pyyaml(seed.networkConfig), { version: 2, ethernets: { eth0: c.eth0 } }, c.name);
  }
  const bad: Array<[string, string, RegExp]> = [
    ['version 1', 'version: 1\nconfig: []\n', /version: must be 2/],
    ['no interfaces', 'version: 2\nethernets: {}\n', /ethernets: must map at least one interface/],
    ['neither static nor dhcp', 'version: 2\nethernets:\n  eth0: {dhcp4: false}\n', /ethernets\.eth0: needs dhcp4: true or static addresses/],
    ['address without prefix', 'version: 2\nethernets:\n  eth0: {addresses: [10.0.0.1]}\n', /ethernets\.eth0\.addresses: must be a list of CIDR addresses/],
    ['bad match', 'version: 2\nethernets:\n  eth0: {match: {name: eth0}, dhcp4: true}\n', /ethernets\.eth0\.match/],
  ];
  for (const [name, text, message] of bad) assert.throws(() => checkNetworkConfigV2(text), (e: unknown) => e instanceof ConfigError && message.test(e.message), name);
});

test('meta-data: instance-id derived from cluster, node and config — stable on rebuild, new when the config changes', async () => {
  const render = (cidr?: string, extra?: string) => {
    const p = provisionNode(cluster(cidr), pi());
    if (extra) p.files.push({ path: '/etc/extra', mode: 0o644, contents: extra });
    return renderCloudInit(p, { cluster: 'ceil', node: 'pi1' });
  };
  const a = render('192.168.1.0/24');
  assert.deepEqual(render('192.168.1.0/24'), a, 'byte-identical rebuild');
  const meta = await pyyaml(a.metaData);
  assert.match(meta['instance-id'], /^bramble-ceil-pi1-[0-9a-f]{16}$/);
  assert.equal(meta['local-hostname'], 'pi1');
  const ids = new Set([a, render('192.168.1.0/24', 'x'), render(undefined)].map((s) => s.metaData));
  assert.equal(ids.size, 3, 'a changed file or network gives a new instance-id');
});

test('HypriotOS: remote contents are refused; a malformed snippet is a ConfigError naming the key; a good one renders', async () => {
  const p = provisionNode(cluster(), pi());
  p.files.push({ path: '/opt/x.raw', mode: 0o644, contents: { source: 'http://10.0.0.2/x.raw' } });
  assert.throws(() => renderCloudInit(p, { cluster: 'ceil', node: 'pi1' }), (e: unknown) => e instanceof InputError && /remote contents/.test(e.message) && !!e.hint);

  assert.throws(
    () => parseSnippet('passwd:\n  users:\n    - name: pirate\n      ssh_keys: [x]\n', 'cluster.toml:nodes[0].snippet'),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.exitCode, ExitCode.badInput);
      assert.equal(e.keyPath, 'passwd.users[0].ssh_keys');
      assert.equal(e.line, 4);
      return true;
    },
  );
  const merged = mergeSnippet(provisionNode(cluster(), pi()), parseSnippet('passwd:\n  users:\n    - name: pirate\n      ssh_authorized_keys: [ssh-rsa AAAAB3 second]\nstorage:\n  files:\n    - path: /etc/hello\n      contents: {inline: hi}\n', 's.yaml'));
  const ud = await pyyaml(renderCloudInit(merged, { cluster: 'ceil', node: 'pi1' }).userData);
  assert.deepEqual(ud.users[0].ssh_authorized_keys, [KEY, 'ssh-rsa AAAAB3 second']);
  assert.deepEqual(ud.write_files, [{ path: '/etc/hello', permissions: '0644', owner: 'root:root', content: 'hi' }]);
});
