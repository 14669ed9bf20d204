// The PXE tree's text files and node initrd: iPXE scripts (structure, relative URIs), the config
// cpio (GNU cpio lists both paths with equal content), dnsmasq configs (`dnsmasq --test`), and the
// install-to-disk netboot's Ignition.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { layout } from '../builders/layout.ts';
import {
  buildNodeCpio,
  INSTALLED_IGNITION_PATH,
  INSTALLER_UNIT,
  renderBootIpxe,
  renderDnsmasq,
  renderInstallerProvisioning,
  renderNodeIpxe,
  type DnsmasqOptions,
} from '../builders/pxe-render.ts';
import type { NodeSpec } from '../builders/spec.ts';
import { gunzip } from '../images/gzip.ts';
import type { IgnitionConfig } from '../ignition/model.ts';
import { renderIgnitionJson } from '../ignition/render.ts';
import { decodeDataUrl } from '../ignition/validate.ts';
import { tempDir as tempDirFor } from './helpers/tmp.ts';

const cp1: NodeSpec = { name: 'cp1', role: 'control-plane', hardware: 'pc', boot: 'pxe', mac: '52:54:00:12:34:56', ip: '10.0.0.11', install: false, arch: 'amd64' };
const w1: NodeSpec = { name: 'w1', role: 'worker', hardware: 'pc', boot: 'pxe', mac: '52:54:00:12:34:0A', ip: '10.0.0.12', install: true, arch: 'amd64' };
const disk: NodeSpec = { name: 'pi1', role: 'worker', hardware: 'rpi4', boot: 'disk', install: false, arch: 'arm64' };
const VERSION = '4593.2.5';
const kernelPath = layout.pxeAsset('amd64', VERSION, 'flatcar_production_pxe.vmlinuz');
const flatcarCpio = layout.pxeAsset('amd64', VERSION, 'flatcar_production_pxe_image.cpio.gz');

const tempDir = (t: { after: (fn: () => Promise<void>) => void }) => tempDirFor(t, 'pxe');

/** Structural iPXE check: shebang, known commands only, every goto has its label. */
function assertIpxeScript(script: string): void {
  assert.ok(script.startsWith('#!ipxe\n'), 'begins with #!ipxe');
  const known = new Set(['echo', 'imgfetch', 'imgexec', 'imgfree', 'prompt', 'goto', 'exit', 'kernel', 'initrd', 'boot']);
  const labels = new Set<string>();
  const gotos: string[] = [];
  for (const line of script.split('\n').slice(1)) {
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith(':')) {
      labels.add(line.slice(1));
      continue;
    }
    for (const cmd of line.split(/ \|\| | && /)) {
      const words = cmd.replace(/ \|\|$/, '').trim().split(/\s+/);
      if (words[0] === '') continue;
      assert.ok(known.has(words[0]), `known command: ${line}`);
      if (words[0] === 'goto') gotos.push(words[1]);
    }
  }
  for (const g of gotos) assert.ok(labels.has(g), `label :${g} exists`);
}

test('boot.ipxe: chains nodes/${mac:hexhyp}.ipxe by relative URL, message + retry/exit for unknown MACs', () => {
  const script = renderBootIpxe([w1, disk, cp1], { cluster: 'lab' });
  assertIpxeScript(script);
  const lines = script.split('\n');
  assert.ok(lines.includes('imgfetch --name node-script nodes/${mac:hexhyp}.ipxe || goto unknown'));
  assert.ok(lines.includes('imgexec --autofree node-script || goto failed'));
  assert.ok(lines.some((l) => /^echo bramble: this machine \(MAC \$\{mac\}\) is not a node of cluster lab\.$/.test(l)));
  assert.ok(lines.includes('prompt --key r --timeout 30000 bramble: press r within 30 s to retry, or wait to leave network boot... && goto start ||'));
  assert.equal(lines.filter((l) => l === 'exit 1').length, 1);
  // Only netbooted nodes are listed, sorted by MAC, lower-case.
  assert.deepEqual(lines.filter((l) => /^# {3}52:/.test(l)), ['#   52:54:00:12:34:0a  w1 (worker)', '#   52:54:00:12:34:56  cp1 (control-plane)']);
  assert.equal(renderBootIpxe([cp1, w1], { cluster: 'lab' }), renderBootIpxe([w1, cp1], { cluster: 'lab' }));
  assert.throws(() => renderBootIpxe([{ ...cp1, mac: undefined }]), InputError);
});

test('nodes/<mac>.ipxe: kernel args with initrd= names and first_boot, both initrds, boot — all relative', () => {
  const script = renderNodeIpxe(cp1, {
    kernelPath,
    initrdPaths: [flatcarCpio, layout.pxeNodeCpio(cp1.mac!)],
    args: ['console=ttyS0,115200n8', 'console=tty0'],
  });
  assertIpxeScript(script);
  const lines = script.split('\n').filter((l) => l && !l.startsWith('#'));
  assert.deepEqual(lines, [
    'echo bramble: booting node cp1',
    `kernel ../assets/flatcar/amd64/${VERSION}/flatcar_production_pxe.vmlinuz initrd=flatcar_production_pxe_image.cpio.gz initrd=52-54-00-12-34-56.cpio.gz flatcar.first_boot=1 console=ttyS0,115200n8 console=tty0 || goto failed`,
    `initrd --name flatcar_production_pxe_image.cpio.gz ../assets/flatcar/amd64/${VERSION}/flatcar_production_pxe_image.cpio.gz || goto failed`,
    'initrd --name 52-54-00-12-34-56.cpio.gz 52-54-00-12-34-56.cpio.gz || goto failed',
    'boot || goto failed',
    ':failed',
    'echo bramble: could not boot node cp1 from this tree; check that every file above is served.',
    'exit 1',
  ]);
  const own = renderNodeIpxe(cp1, { kernelPath, initrdPaths: [flatcarCpio], args: ['flatcar.first_boot=detected'] });
  assert.doesNotMatch(own, /flatcar\.first_boot=1/, 'an explicit first_boot is kept as given');
  assert.match(renderNodeIpxe(cp1, { kernelPath: 'http://10.0.0.2/k', initrdPaths: [], args: [] }), /^kernel http:\/\/10\.0\.0\.2\/k flatcar\.first_boot=1 \|\| goto failed$/m);
  for (const bad of ['two words', '#comment', '||']) {
    assert.throws(() => renderNodeIpxe(cp1, { kernelPath, initrdPaths: [], args: [bad] }), InputError, bad);
  }
  assert.throws(() => renderNodeIpxe(cp1, { kernelPath: 'pxe/assets/a file', initrdPaths: [], args: [] }), InputError);
});

test('node cpio: gzip -t ok, GNU cpio lists both config paths with equal content, mode 0600, deterministic', async (t) => {
  const dir = await tempDir(t);
  const json = renderIgnitionJson(renderInstallerProvisioning(cp1, '{"ignition":{"version":"3.4.0"}}\n'));
  const gz = buildNodeCpio(json, { mtime: 0 });
  assert.ok(buildNodeCpio(json, { mtime: 0 }).equals(gz), 'same config, same bytes');
  await run('gzip', ['-t'], { input: gz });
  const cpio = gunzip(gz);
  const listing = (await run('cpio', ['-itv', '--quiet'], { input: cpio })).stdout.trim().split('\n');
  assert.deepEqual(listing.map((l) => l.split(/\s+/).at(-1)), ['oem', 'oem/config.ign', 'usr', 'usr/share', 'usr/share/oem', 'usr/share/oem/config.ign']);
  for (const l of listing) assert.match(l, l.startsWith('d') ? /^drwxr-xr-x .* root +root / : /^-rw------- +1 root +root /);
  await run('cpio', ['-idm', '--quiet'], { input: cpio, cwd: dir });
  const a = await readFile(join(dir, 'oem/config.ign'), 'utf8');
  const b = await readFile(join(dir, 'usr/share/oem/config.ign'), 'utf8');
  assert.equal(a, json);
  assert.equal(b, json);
  assert.equal((await stat(join(dir, 'oem/config.ign'))).mode & 0o777, 0o600);
});

const dnsmasqBase: DnsmasqOptions = {
  mode: 'dhcp',
  cluster: 'lab',
  interface: 'eth1',
  subnet: '10.0.0.0/24',
  range: { start: '10.0.0.100', end: '10.0.0.199' },
  gateway: '10.0.0.1',
  dns: ['10.0.0.1', '9.9.9.9'],
  leases: [
    { mac: cp1.mac!, ip: cp1.ip, name: cp1.name },
    { mac: w1.mac!, ip: w1.ip, name: w1.name },
  ],
  tftpRoot: '/srv/bramble/pxe',
  httpBase: 'http://10.0.0.2:8080/lab/pxe',
  ipxeArches: ['amd64', 'arm64'],
};

test('dnsmasq.conf (full DHCP) and dnsmasq-proxy.conf: accepted by `dnsmasq --test`, with the expected directives', async (t) => {
  const dir = await tempDir(t);
  const cases: Array<{ name: string; options: DnsmasqOptions; lines: string[]; absent: RegExp[] }> = [
    {
      name: 'full DHCP with a pool',
      options: dnsmasqBase,
      lines: [
        'port=0',
        'interface=eth1',
        'dhcp-range=10.0.0.100,10.0.0.199,255.255.255.0,12h',
        'dhcp-option=option:router,10.0.0.1',
        'dhcp-option=option:dns-server,10.0.0.1,9.9.9.9',
        'dhcp-host=52:54:00:12:34:56,10.0.0.11,cp1,12h',
        'dhcp-host=52:54:00:12:34:0a,10.0.0.12,w1,12h',
        'dhcp-match=set:ipxe,175',
        'dhcp-match=set:bios,option:client-arch,0',
        'dhcp-match=set:efi64,option:client-arch,7',
        'dhcp-match=set:efi64,option:client-arch,9',
        'dhcp-match=set:arm64,option:client-arch,11',
        'dhcp-boot=tag:!ipxe,tag:bios,ipxe/undionly.kpxe',
        'dhcp-boot=tag:!ipxe,tag:efi64,ipxe/ipxe.efi',
        'dhcp-boot=tag:!ipxe,tag:arm64,ipxe/ipxe-arm64.efi',
        'dhcp-boot=tag:ipxe,http://10.0.0.2:8080/lab/pxe/boot.ipxe',
        'enable-tftp',
        'tftp-root=/srv/bramble/pxe',
      ],
      absent: [/proxy/, /^pxe-service/m],
    },
    {
      name: 'full DHCP, nodes only, DHCP cluster leases without addresses',
      options: { ...dnsmasqBase, interface: undefined, range: undefined, gateway: undefined, dns: [], leases: [{ mac: cp1.mac!, name: 'cp1' }], bootFiles: { efi64: 'ipxe/snponly.efi' } },
      lines: ['dhcp-range=10.0.0.0,static,255.255.255.0,12h', 'dhcp-host=52:54:00:12:34:56,cp1,12h', 'dhcp-boot=tag:!ipxe,tag:efi64,ipxe/snponly.efi'],
      absent: [/^interface=/m, /option:router/, /option:dns-server/],
    },
    {
      name: 'proxyDHCP',
      options: { ...dnsmasqBase, mode: 'proxy', range: undefined },
      lines: [
        'dhcp-range=10.0.0.0,proxy,255.255.255.0',
        'dhcp-match=set:ipxe,175',
        'dhcp-boot=tag:ipxe,http://10.0.0.2:8080/lab/pxe/boot.ipxe',
        'pxe-service=tag:!ipxe,0,"bramble: iPXE (BIOS)",ipxe/undionly.kpxe',
        'pxe-service=tag:!ipxe,7,"bramble: iPXE (x86-64 UEFI)",ipxe/ipxe.efi',
        'pxe-service=tag:!ipxe,9,"bramble: iPXE (x86-64 UEFI)",ipxe/ipxe.efi',
        'pxe-service=tag:!ipxe,11,"bramble: iPXE (arm64 UEFI)",ipxe/ipxe-arm64.efi',
        'pxe-service=tag:ipxe,7,"bramble: boot script",http://10.0.0.2:8080/lab/pxe/boot.ipxe',
        'enable-tftp',
        'tftp-root=/srv/bramble/pxe',
      ],
      absent: [/^dhcp-host=/m, /^dhcp-authoritative/m, /option:router/],
    },
    {
      name: 'full DHCP, a tree with amd64 iPXE binaries only: no arm64 client is offered a file',
      options: { ...dnsmasqBase, ipxeArches: ['amd64'] },
      lines: ['dhcp-boot=tag:!ipxe,tag:bios,ipxe/undionly.kpxe', 'dhcp-boot=tag:!ipxe,tag:efi64,ipxe/ipxe.efi', 'dhcp-boot=tag:ipxe,http://10.0.0.2:8080/lab/pxe/boot.ipxe'],
      absent: [/^dhcp-match=set:arm64/m, /^dhcp-boot=.*arm64/m],
    },
    {
      name: 'proxyDHCP, a tree with arm64 iPXE binaries only: no BIOS or x86-64 client is offered a file',
      options: { ...dnsmasqBase, mode: 'proxy', range: undefined, ipxeArches: ['arm64'] },
      lines: ['pxe-service=tag:!ipxe,11,"bramble: iPXE (arm64 UEFI)",ipxe/ipxe-arm64.efi', 'pxe-service=tag:ipxe,11,"bramble: boot script",http://10.0.0.2:8080/lab/pxe/boot.ipxe'],
      absent: [/^pxe-service=tag:!?ipxe,[079],/m, /undionly|ipxe\.efi/],
    },
  ];
  for (const c of cases) {
    const conf = renderDnsmasq(c.options);
    const lines = conf.split('\n');
    for (const l of c.lines) assert.ok(lines.includes(l), `${c.name}: has ${l}`);
    for (const re of c.absent) assert.doesNotMatch(conf, re, c.name);
    const file = join(dir, `${c.name.replace(/\W+/g, '-')}.conf`);
    await writeFile(file, conf);
    const r = await run('dnsmasq', ['--test', '-C', file]);
    assert.match(r.stderr + r.stdout, /syntax check OK/, c.name);
    assert.equal(renderDnsmasq(c.options), conf, `${c.name}: deterministic`);
  }
  // The check can fail: dnsmasq rejects a config with one directive broken.
  const broken = join(dir, 'broken.conf');
  await writeFile(broken, renderDnsmasq(dnsmasqBase).replace('dhcp-match=set:ipxe,175', 'dhcp-match=set:ipxe,option:nonsense'));
  await assert.rejects(run('dnsmasq', ['--test', '-C', broken]), /bad dhcp-option/);
});

test('dnsmasq: inputs it cannot express are InputErrors with hints', () => {
  const cases: Array<[string, Partial<DnsmasqOptions>, RegExp]> = [
    ['IPv6 subnet', { subnet: 'fd00::/64' }, /is not an IPv4 CIDR/],
    ['lease outside subnet', { leases: [{ mac: cp1.mac!, ip: '10.0.1.5', name: 'cp1' }] }, /outside 10\.0\.0\.0\/24/],
    ['bad MAC', { leases: [{ mac: '52:54:00:12:34', ip: '10.0.0.5', name: 'cp1' }] }, /is not a MAC address/],
    ['bad name', { leases: [{ mac: cp1.mac!, ip: '10.0.0.5', name: 'CP 1' }] }, /is not a host name/],
    ['https base', { httpBase: 'https://10.0.0.2/' }, /must be plain http/],
    ['range outside', { range: { start: '10.0.0.10', end: '10.9.0.10' } }, /range end 10\.9\.0\.10 is outside/],
    ['tftp root with comma', { tftpRoot: '/srv/a,b' }, /cannot be written into dnsmasq\.conf/],
    ['IPv6 DNS', { dns: ['2001:db8::1'] }, /is not an IPv4 address/],
  ];
  for (const [name, over, message] of cases) {
    assert.throws(() => renderDnsmasq({ ...dnsmasqBase, ...over }), (e: unknown) => {
      assert.ok(e instanceof InputError, name);
      assert.match(e.message, message, name);
      assert.ok(e.hint || name === 'tftp root with comma', `${name}: has a hint`);
      return true;
    });
  }
});

test('install = true: the netboot Ignition runs flatcar-install with the node Ignition embedded, then reboots', () => {
  const installed = renderIgnitionJson(renderInstallerProvisioning(w1, '{"ignition":{"version":"3.4.0"}}\n'));
  const cases: Array<{ name: string; node: NodeSpec; options: Parameters<typeof renderInstallerProvisioning>[2]; exec: string }> = [
    { name: 'defaults', node: w1, options: {}, exec: `ExecStart=/usr/bin/flatcar-install -d /dev/sda -i ${INSTALLED_IGNITION_PATH} -o ""` },
    {
      name: 'offline mirror, pinned version, own key',
      node: w1,
      options: { disk: '/dev/disk/by-id/nvme-eui.0001', imageBaseUrl: 'http://10.0.0.2:8080/lab/pxe/assets/flatcar/amd64', version: VERSION, channel: 'stable', signingKey: '-----BEGIN PGP PUBLIC KEY BLOCK-----\n...\n' },
      exec: `ExecStart=/usr/bin/flatcar-install -d /dev/disk/by-id/nvme-eui.0001 -i ${INSTALLED_IGNITION_PATH} -o "" -C stable -V ${VERSION} -b http://10.0.0.2:8080/lab/pxe/assets/flatcar/amd64 -k /opt/bramble/image-signing-key.asc`,
    },
    { name: 'arm64 board', node: { ...w1, hardware: 'arm64-uefi', arch: 'arm64' }, options: {}, exec: `ExecStart=/usr/bin/flatcar-install -d /dev/sda -i ${INSTALLED_IGNITION_PATH} -o "" -B arm64-usr` },
  ];
  for (const c of cases) {
    const cfg = JSON.parse(renderIgnitionJson(renderInstallerProvisioning(c.node, installed, { ...c.options, sshAuthorizedKeys: ['ssh-ed25519 AAAA k'] }))) as IgnitionConfig;
    const file = cfg.storage!.files!.find((f) => f.path === INSTALLED_IGNITION_PATH)!;
    assert.equal(file.mode, 0o600, c.name);
    assert.equal(decodeDataUrl(file.contents!.source!).toString(), installed, `${c.name}: embeds the installed config byte for byte`);
    const unit = cfg.systemd!.units!.find((u) => u.name === INSTALLER_UNIT)!;
    assert.equal(unit.enabled, true);
    const lines = unit.contents!.split('\n');
    assert.ok(lines.includes(c.exec), `${c.name}: ${lines.filter((l) => l.startsWith('ExecStart')).join(' | ')}`);
    assert.ok(lines.includes('ExecStart=/usr/bin/systemctl --no-block reboot'));
    assert.deepEqual(cfg.passwd!.users, [{ name: 'core', sshAuthorizedKeys: ['ssh-ed25519 AAAA k'] }]);
  }
  assert.throws(() => renderInstallerProvisioning(w1, installed, { disk: 'sda' }), /is not a \/dev path/);
});
