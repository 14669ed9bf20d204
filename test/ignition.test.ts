// Provisioning spec → Ignition: node defaults, deterministic JSON, the official schemas (ajv),
// semantic checks, and Butane-style user snippets with errors that name key and line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, ConfigErrors, ExitCode } from '../builders/errors.ts';
import { defaultSources, type ClusterSpec, type NodeSpec } from '../builders/spec.ts';
import { IGNITION_VERSIONS, type IgnitionConfig } from '../ignition/model.ts';
import { FIRST_BOOT_UNIT, ignitionToJson, renderIgnition, renderIgnitionJson, systemdQuote, toDataUrl } from '../ignition/render.ts';
import { mergeSnippet, parseSnippet } from '../ignition/snippets.ts';
import { decodeDataUrl, validateIgnition } from '../ignition/validate.ts';
import { NETWORKD_UNIT_PATH } from '../overlays/network.ts';
import { provisionNode, renderOemGrubCfg, type ProvisioningSpec } from '../overlays/provision.ts';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJyYW1ibGV0ZXN0a2V5 admin@example';

function cluster(over: Partial<ClusterSpec['network']> = {}, base: 'flatcar' | 'hypriot' = 'flatcar'): ClusterSpec {
  return {
    name: 'lab',
    source: 'test',
    os: { base, channel: 'stable', version: 'current' },
    kubernetes: { version: '1.33.2', cni: 'flannel' },
    network: { nodeCidr: '10.0.0.0/24', gateway: '10.0.0.1', dns: ['10.0.0.1', '9.9.9.9'], podCidr: '10.244.0.0/16', serviceCidr: '10.96.0.0/12', ...over },
    ssh: { authorizedKeys: [KEY] },
    registry: { mirror: false, extraImages: [] },
    sources: defaultSources,
    nodes: [],
  };
}

function node(over: Partial<NodeSpec> = {}): NodeSpec {
  return { name: 'cp1', role: 'control-plane', hardware: 'pc', boot: 'disk', mac: '52:54:00:aa:bb:01', ip: '10.0.0.11', install: false, arch: 'amd64', ...over };
}

const fileText = (p: ProvisioningSpec, path: string) => {
  const f = p.files.find((x) => x.path === path);
  assert.ok(f, `${path} present`);
  return String(f.contents);
};

test('provisionNode: hostname, core user with the cluster keys, networkd unit and consoles per hardware', () => {
  const cases: Array<{ name: string; c: ClusterSpec; n: NodeSpec; network: RegExp[]; absent: RegExp[]; args: string[] }> = [
    {
      name: 'static, matched by MAC',
      c: cluster(),
      n: node(),
      network: [/^MACAddress=52:54:00:aa:bb:01$/m, /^Address=10\.0\.0\.11\/24$/m, /^Gateway=10\.0\.0\.1$/m, /^DNS=10\.0\.0\.1$/m, /^DNS=9\.9\.9\.9$/m],
      absent: [/^DHCP=/m, /^Name=/m],
      args: ['console=ttyS0,115200n8', 'console=tty0'],
    },
    {
      name: 'static, no MAC: matched by name',
      c: cluster(),
      n: node({ mac: undefined, hardware: 'rpi4', arch: 'arm64' }),
      network: [/^Name=en\* eth\*$/m, /^Address=10\.0\.0\.11\/24$/m],
      absent: [/^MACAddress=/m, /^DHCP=/m],
      args: ['console=ttyAMA0,115200n8', 'console=tty0'],
    },
    {
      name: 'DHCP: cluster without node_cidr',
      c: cluster({ nodeCidr: undefined, gateway: undefined, dns: [] }),
      n: node({ ip: undefined }),
      network: [/^DHCP=yes$/m, /^MACAddress=52:54:00:aa:bb:01$/m],
      absent: [/^Address=/m, /^Gateway=/m, /^DNS=/m],
      args: ['console=ttyS0,115200n8', 'console=tty0'],
    },
    {
      name: 'DHCP: node without ip',
      c: cluster(),
      n: node({ ip: undefined, hardware: 'arm64-uefi', arch: 'arm64' }),
      network: [/^DHCP=yes$/m, /^DNS=9\.9\.9\.9$/m],
      absent: [/^Address=/m],
      args: ['console=ttyAMA0,115200n8', 'console=tty0'],
    },
  ];
  for (const c of cases) {
    const p = provisionNode(c.c, c.n);
    assert.equal(p.hostname, c.n.name, c.name);
    assert.deepEqual(p.users, [{ name: 'core', sshAuthorizedKeys: [KEY] }], c.name);
    assert.equal(fileText(p, '/etc/hostname'), 'cp1\n');
    const unit = fileText(p, NETWORKD_UNIT_PATH);
    for (const re of c.network) assert.match(unit, re, c.name);
    for (const re of c.absent) assert.doesNotMatch(unit, re, c.name);
    assert.deepEqual(p.kernelArgs, c.args, c.name);
  }
});

test('provisionNode for HypriotOS: pirate with keys and sudo, network as intent only, no console args', () => {
  const p = provisionNode(cluster({}, 'hypriot'), node({ hardware: 'rpi3', arch: 'arm' }));
  assert.deepEqual(p.users, [{ name: 'pirate', sshAuthorizedKeys: [KEY], groups: ['users', 'docker', 'video'], sudo: true }]);
  assert.deepEqual(p.files, []);
  assert.deepEqual(p.kernelArgs, []);
  assert.deepEqual(p.network, { match: { mac: '52:54:00:aa:bb:01', names: ['en*', 'eth*'] }, dhcp: false, addresses: ['10.0.0.11/24'], gateway: '10.0.0.1', dns: ['10.0.0.1', '9.9.9.9'] });
});

function richSpec(): ProvisioningSpec {
  const p = provisionNode(cluster(), node());
  p.files.push(
    { path: '/opt/bin/tool', mode: 0o755, contents: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 0xff]) },
    { path: '/etc/kubernetes/token', mode: 0o600, contents: 'abcdef.0123456789abcdef', user: 'core', group: 'core' },
    { path: '/etc/extensions/kubernetes.raw', mode: 0o644, contents: { source: 'http://10.0.0.2:8080/sysext/kubernetes-v1.33.2-x86-64.raw', verification: { hash: `sha512-${'ab'.repeat(64)}` } } },
  );
  p.directories.push({ path: '/var/lib/bramble', mode: 0o750 });
  p.links.push({ path: '/etc/extensions/docker-flatcar.raw', target: '/dev/null', overwrite: true });
  p.units.push(
    { name: 'locksmithd.service', mask: true },
    { name: 'kubelet.service', enabled: true, contents: '[Service]\nExecStart=/usr/bin/kubelet\n', dropins: [{ name: '20-b.conf', contents: '[Service]\n' }, { name: '10-a.conf', contents: '[Unit]\n' }] },
  );
  p.commands.push(['/usr/bin/echo', 'hello world', '50%', '$HOME']);
  return p;
}

test('renderIgnition: every spec version passes the official schema and the semantic checks', () => {
  for (const version of IGNITION_VERSIONS) {
    const json = renderIgnitionJson(richSpec(), { version });
    const cfg = JSON.parse(json) as IgnitionConfig;
    assert.equal(cfg.ignition.version, version);
    validateIgnition(cfg, { version });
  }
});

test('renderIgnition: sorted, stable keys, data URLs that decode to the exact bytes, remote sources with hashes', () => {
  const p = richSpec();
  const json = renderIgnitionJson(p);
  const shuffled = richSpec();
  shuffled.files.reverse();
  shuffled.units.reverse();
  assert.equal(renderIgnitionJson(shuffled), json, 'entry order does not change the output');
  const cfg = JSON.parse(json) as IgnitionConfig;
  assert.deepEqual(Object.keys(cfg), ['ignition', 'passwd', 'storage', 'systemd']);
  const paths = cfg.storage!.files!.map((f) => f.path);
  assert.deepEqual(paths, [...paths].sort());
  assert.deepEqual(cfg.systemd!.units!.map((u) => u.name), [FIRST_BOOT_UNIT, 'kubelet.service', 'locksmithd.service'].sort());
  assert.deepEqual(cfg.systemd!.units!.find((u) => u.name === 'kubelet.service')!.dropins!.map((d) => d.name), ['10-a.conf', '20-b.conf']);
  for (const f of p.files) {
    const out = cfg.storage!.files!.find((x) => x.path === f.path)!;
    assert.equal(out.mode, f.mode);
    assert.equal(out.contents!.compression, undefined);
    if (typeof f.contents === 'string' || Buffer.isBuffer(f.contents)) {
      assert.deepEqual(decodeDataUrl(out.contents!.source!), Buffer.from(f.contents as string | Buffer), f.path);
    } else {
      assert.deepEqual(out.contents, { source: f.contents.source, verification: { hash: f.contents.verification!.hash } });
    }
  }
  const token = cfg.storage!.files!.find((f) => f.path === '/etc/kubernetes/token')!;
  assert.deepEqual([token.user, token.group], [{ name: 'core' }, { name: 'core' }]);
  assert.match(cfg.systemd!.units!.find((u) => u.name === FIRST_BOOT_UNIT)!.contents!, /^ExecStart=\/usr\/bin\/echo "hello world" 50%% "\$\$HOME"$/m);
  assert.ok(json.endsWith('}\n'));
});

test('toDataUrl picks percent-encoding or base64, both decode; systemdQuote escapes specifiers', () => {
  for (const input of ['', 'plain-text', 'a b\nc', '{"json": true}', Buffer.from([0, 255, 128, 10])]) {
    const url = toDataUrl(input);
    assert.deepEqual(decodeDataUrl(url), Buffer.from(input as string));
  }
  assert.equal(toDataUrl('cp1'), 'data:,cp1');
  assert.match(toDataUrl(Buffer.alloc(64, 0xff)), /^data:;base64,/);
  assert.equal(systemdQuote('/usr/bin/true'), '/usr/bin/true');
  assert.equal(systemdQuote('a "b"'), '"a \\"b\\""');
  for (const bad of ['data:,%zz', 'data:;base64,abc', 'data:,a b', 'nodata']) assert.throws(() => decodeDataUrl(bad), bad);
});

test('validateIgnition rejects what Ignition rejects; our own render failing is an internal error', () => {
  const base = () => JSON.parse(renderIgnitionJson(richSpec())) as IgnitionConfig;
  const cases: Array<[string, (c: IgnitionConfig) => void, RegExp]> = [
    ['relative path', (c) => (c.storage!.files![0].path = 'etc/x'), /is not an absolute, normalised path/],
    ['unnormalised path', (c) => (c.storage!.files![0].path = '/etc//x'), /is not an absolute, normalised path/],
    ['file and directory on one path', (c) => c.storage!.directories!.push({ path: '/etc/hostname' }), /"\/etc\/hostname" is already a file/],
    ['under a link', (c) => c.storage!.files!.push({ path: '/etc/extensions/docker-flatcar.raw/x', contents: { source: 'data:,' } }), /lies under the link/],
    ['duplicate unit', (c) => c.systemd!.units!.push({ name: 'kubelet.service' }), /defined twice/],
    ['unit name', (c) => c.systemd!.units!.push({ name: 'kubelet' }), /not a systemd unit name/],
    ['mode', (c) => (c.storage!.files![0].mode = 0o10000), /outside 0\.\.0o7777/],
    ['data URL', (c) => (c.storage!.files![0].contents = { source: 'data:,100%' }), /do not decode/],
    ['hash', (c) => (c.storage!.files![0].contents = { source: 'https://example.org/x', verification: { hash: 'md5-00' } }), /is not sha512-/],
    ['scheme', (c) => (c.storage!.files![0].contents = { source: 'ftp://example.org/x' }), /no supported scheme/],
    ['compression', (c) => (c.storage!.files![0].contents = { source: 'data:,', compression: 'xz' }), /is not "gzip"/],
    ['schema type', (c) => ((c.storage!.files![0] as unknown as { mode: string }).mode = '420'), /schema: must be integer,null/],
    ['schema required', (c) => delete (c.systemd!.units![0] as Partial<{ name: string }>).name, /schema: must have required property 'name'/],
    ['version', (c) => (c.ignition.version = '3.3.0'), /ignition\.version: is 3\.3\.0, expected 3\.4\.0/],
  ];
  for (const [name, mutate, message] of cases) {
    const cfg = base();
    mutate(cfg);
    assert.throws(() => validateIgnition(cfg, { version: '3.4.0' }), (e: Error) => {
      assert.ok(!(e instanceof ConfigError), `${name}: not blamed on the user`);
      assert.match(e.message, /^internal error: the rendered Ignition config fails validation/, name);
      assert.match(e.message, message, name);
      return true;
    });
  }
});

const SNIPPET = `variant: flatcar
version: 1.1.0
storage:
  files:
    - path: /etc/motd
      mode: 0644
      contents:
        inline: |
          welcome
    - path: /etc/hostname
      overwrite: true
      contents:
        inline: renamed
    - path: /opt/sysext.raw
      mode: 420
      contents:
        source: https://example.org/sysext.raw
        verification:
          hash: sha256-${'0f'.repeat(32)}
      user:
        name: core
  links:
    - path: /etc/localtime
      target: /usr/share/zoneinfo/UTC
systemd:
  units:
    - name: hello.service
      enabled: true
      contents: |
        [Service]
        ExecStart=/usr/bin/echo hello
      dropins:
        - name: 10-env.conf
          contents: |
            [Service]
            Environment=A=1
    - name: locksmithd.service
      mask: true
passwd:
  users:
    - name: core
      ssh_authorized_keys:
        - ssh-rsa AAAAB3Nza second@example
    - name: ops
      groups: [sudo, docker]
`;

test('parseSnippet + mergeSnippet: typed entries, octal modes, overwrite replaces, users gain keys', () => {
  const s = parseSnippet(SNIPPET, 'snippets/base.yaml');
  assert.equal(s.files[0].mode, 0o644);
  assert.equal(s.files[2].mode, 0o644, 'decimal 420 is 0644');
  assert.deepEqual(s.files[2].contents, { source: 'https://example.org/sysext.raw', verification: { hash: `sha256-${'0f'.repeat(32)}` } });
  assert.deepEqual(s.files[0].origin, { file: 'snippets/base.yaml', keyPath: 'storage.files[0]', line: 5 });
  assert.deepEqual(s.units[0].dropins, [{ name: '10-env.conf', contents: '[Service]\nEnvironment=A=1\n' }]);

  const p = mergeSnippet(provisionNode(cluster(), node()), s);
  assert.equal(fileText(p, '/etc/hostname'), 'renamed');
  assert.equal(fileText(p, '/etc/motd'), 'welcome\n');
  assert.deepEqual(p.users.find((u) => u.name === 'core')!.sshAuthorizedKeys, [KEY, 'ssh-rsa AAAAB3Nza second@example']);
  assert.deepEqual(p.users.find((u) => u.name === 'ops'), { name: 'ops', sshAuthorizedKeys: [], groups: ['sudo', 'docker'], origin: { file: 'snippets/base.yaml', keyPath: 'passwd.users[1]', line: 44 } });
  const cfg = JSON.parse(renderIgnitionJson(p)) as IgnitionConfig;
  assert.ok(cfg.storage!.links!.some((l) => l.path === '/etc/localtime'));
  assert.ok(cfg.systemd!.units!.some((u) => u.name === 'locksmithd.service' && u.mask === true));
});

test('malformed snippets: ConfigError (exit 2) naming file, key path and line', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['unknown key', 'storage:\n  files:\n    - path: /a\n      mdoe: 0644\n', /^s\.yaml:4: storage\.files\[0\]\.mdoe: unknown key$/],
    ['wrong type', 'storage:\n  files:\n    - path: /a\n      overwrite: "yes"\n', /^s\.yaml:4: storage\.files\[0\]\.overwrite: must be true or false$/],
    ['relative path', 'storage:\n  files:\n    - path: etc/a\n', /^s\.yaml:3: storage\.files\[0\]\.path: "etc\/a" must be an absolute, normalised path$/],
    ['decimal mode', 'storage:\n  files:\n    - path: /a\n      mode: 644\n', /^s\.yaml:4: storage\.files\[0\]\.mode: mode 644 is decimal \(= 0o1204\)$/],
    ['mode too big', 'storage:\n  files:\n    - path: /a\n      mode: 017777\n', /storage\.files\[0\]\.mode: mode 017777 is outside 0\.\.07777/],
    ['mode not a number', 'storage:\n  files:\n    - path: /a\n      mode: rw\n', /storage\.files\[0\]\.mode: must be a file mode/],
    ['inline and source', 'storage:\n  files:\n    - path: /a\n      contents:\n        inline: x\n        source: data:,x\n', /^s\.yaml:5: storage\.files\[0\]\.contents: has both inline and source$/],
    ['hash', 'storage:\n  files:\n    - path: /a\n      contents:\n        source: https://x/y\n        verification:\n          hash: sha512-abc\n', /^s\.yaml:7: storage\.files\[0\]\.contents\.verification\.hash: "sha512-abc" is not a hash/],
    ['scheme', 'storage:\n  files:\n    - path: /a\n      contents:\n        source: file:///etc/passwd\n', /storage\.files\[0\]\.contents\.source: "file:\/\/\/etc\/passwd" has no supported URL scheme/],
    ['unit name', 'systemd:\n  units:\n    - name: hello\n', /^s\.yaml:3: systemd\.units\[0\]\.name: "hello" is not a systemd unit name$/],
    ['dropin name', 'systemd:\n  units:\n    - name: a.service\n      dropins:\n        - name: x.txt\n', /^s\.yaml:5: systemd\.units\[0\]\.dropins\[0\]\.name: "x\.txt" must be a file name ending in \.conf$/],
    ['user keys type', 'passwd:\n  users:\n    - name: core\n      ssh_authorized_keys: ssh-rsa AAA\n', /^s\.yaml:4: passwd\.users\[0\]\.ssh_authorized_keys: must be a list$/],
    ['top-level key', 'storage: {}\nignition: {}\n', /^s\.yaml:2: ignition: unknown key$/],
    ['unsupported section', 'storage:\n  directories: []\n', /^s\.yaml:2: storage\.directories: unknown key$/],
    ['variant', 'variant: fcos\n', /^s\.yaml:1: variant: "fcos" is not flatcar$/],
    ['YAML syntax', 'storage:\n  files: [\n', /^s\.yaml(:\d+)?: YAML: /],
    ['duplicate key', 'storage: {}\nstorage: {}\n', /^s\.yaml:2: YAML: Map keys must be unique/],
  ];
  for (const [name, text, message] of cases) {
    assert.throws(() => parseSnippet(text, 's.yaml'), (e: unknown) => {
      assert.ok(e instanceof ConfigError, `${name}: ${String(e)}`);
      assert.equal(e.exitCode, ExitCode.badInput);
      assert.match(e.message, message, name);
      return true;
    });
  }
  // Several problems are reported together.
  assert.throws(() => parseSnippet('storage:\n  files:\n    - path: a\n    - path: /b\n      mode: 9999\n', 's.yaml'), (e: unknown) => {
    assert.ok(e instanceof ConfigErrors);
    assert.equal(e.errors.length, 2);
    return true;
  });
});

test('merge conflicts and snippet-caused validation failures are blamed on the snippet line', () => {
  const p = provisionNode(cluster(), node());
  const cases: Array<[string, string, RegExp]> = [
    ['same path without overwrite', 'storage:\n  files:\n    - path: /etc/hostname\n', /^s\.yaml:3: storage\.files\[0\]: "\/etc\/hostname" is already written by bramble$/],
    ['twice in one snippet', 'storage:\n  files:\n    - path: /a\n    - path: /a\n      overwrite: true\n', /^s\.yaml:4: storage\.files\[1\]: "\/a" is already defined earlier/],
    ['link over a file', 'storage:\n  links:\n    - path: /etc/hostname\n      target: /x\n', /storage\.links\[0\]: "\/etc\/hostname" is already a file or directory/],
  ];
  for (const [name, text, message] of cases) {
    assert.throws(() => mergeSnippet(p, parseSnippet(text, 's.yaml')), (e: unknown) => {
      assert.ok(e instanceof ConfigError, name);
      assert.match(e.message, message, name);
      return true;
    });
  }
  const withUnit = structuredClone(p);
  withUnit.units.push({ name: 'kubelet.service', contents: '[Service]\n' });
  assert.throws(() => mergeSnippet(withUnit, parseSnippet('systemd:\n  units:\n    - name: kubelet.service\n      contents: x\n', 's.yaml')), /s\.yaml:3: systemd\.units\[0\]: unit kubelet\.service is already defined/);
  const merged = mergeSnippet(withUnit, parseSnippet('systemd:\n  units:\n    - name: kubelet.service\n      enabled: true\n      dropins:\n        - name: 10-x.conf\n', 's.yaml'));
  assert.deepEqual(merged.units.find((u) => u.name === 'kubelet.service')!.dropins, [{ name: '10-x.conf', contents: '' }]);
  assert.equal(withUnit.units[0].dropins, undefined, 'the input spec is not changed');

  // Only the full render can see that /etc/hostname/x would go through bramble's file.
  const under = mergeSnippet(p, parseSnippet('storage:\n  files:\n    - path: /etc/hostname/x\n', 's.yaml'));
  assert.throws(() => renderIgnitionJson(under), (e: unknown) => {
    assert.ok(e instanceof ConfigError);
    assert.match(e.message, /^s\.yaml:3: storage\.files\[0\]: "\/etc\/hostname\/x" lies under the file \/etc\/hostname/);
    return true;
  });
});

test('OEM grub.cfg: one unconditional set linux_append line with the node args', () => {
  const cfg = renderOemGrubCfg('cp1', ['console=ttyS0,115200n8', 'flatcar.autologin']);
  assert.match(cfg, /^set linux_append="\$linux_append console=ttyS0,115200n8 flatcar\.autologin"$/m);
  assert.equal(cfg.split('\n').filter((l) => l.startsWith('set ')).length, 1);
  assert.throws(() => renderOemGrubCfg('cp1', ['bad"quote']), /cannot go into grub\.cfg/);
  assert.equal(renderIgnition(provisionNode(cluster(), node())).ignition.version, '3.4.0');
  assert.equal(ignitionToJson({ ignition: { version: '3.5.0' } }), '{\n  "ignition": {\n    "version": "3.5.0"\n  }\n}\n');
});
