// `bramble build --target pxe` against the fixture upstream, checked from the outside: the files on
// disk against manifest.json and SHA256SUMS (and `sha256sum -c`), secrets and modes, the node config
// initrds through gunzip + GNU cpio, relative URLs resolved the way iPXE resolves them, the
// install-to-disk netboot's Ignition, and rebuilds that must leave every other file untouched.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { run } from '../builders/exec.ts';
import { layout, macHyphen } from '../builders/layout.ts';
import type { Manifest } from '../builders/output.ts';
import { INSTALLED_GRUB_CFG_PATH, INSTALLED_IGNITION_PATH, INSTALLER_KEY_PATH, INSTALLER_OEM_GRUB_SCRIPT, INSTALLER_UNIT } from '../builders/pxe-render.ts';
import type { IgnitionConfig } from '../ignition/model.ts';
import { decodeDataUrl } from '../ignition/validate.ts';
import { getFixture, type Fixture } from './helpers/fixture.ts';
import { buildPxeWithCli, explainCli, snapshotFiles, writePxeCluster, type PxeTestCluster } from './helpers/pxe-cluster.ts';

const CLUSTER: PxeTestCluster = {
  name: 'pxelab',
  nodeCidr: '10.77.0.0/24',
  controlPlaneIp: '10.77.0.2',
  kernelArgs: ['flatcar.autologin', 'bramble.test=pxe'],
  nodes: [
    { name: 'w-1', mac: '52:54:00:77:00:11' },
    { name: 'w-2', mac: '52:54:00:77:00:12', kernelArgs: ['bramble.node=w-2'] },
    { name: 'w-3', mac: '52:54:00:77:00:13', install: true, kernelArgs: ['bramble.node=w-3'] },
  ],
};
const [w1, w2, w3] = CLUSTER.nodes as [PxeTestCluster['nodes'][0], PxeTestCluster['nodes'][0], PxeTestCluster['nodes'][0]];

let f: Fixture;
let tmp: string;
let cacheDir: string;
let clusterDir: string;
let manifest: Manifest;

before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-build-pxe-'));
  cacheDir = join(tmp, 'cache');
  const files = await writePxeCluster(join(tmp, 'src'), f, CLUSTER);
  const r = await buildPxeWithCli(files, { outDir: join(tmp, 'out'), cacheDir, lockPath: join(tmp, 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = layout.clusterDir(join(tmp, 'out'), CLUSTER.name);
  manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const read = (rel: string) => readFile(join(clusterDir, rel));
const nodeFiles = (mac: string) => [layout.pxeNodeScript(mac), layout.pxeNodeCpio(mac)];

/** The members of a gzipped newc cpio as GNU cpio lists them (`cpio -itv`): path → mode string. */
async function cpioListing(gz: Buffer): Promise<Map<string, string>> {
  const { stdout } = await run('cpio', ['-itv', '--quiet'], { input: gunzipSync(gz) });
  const entries = stdout
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .map((cols) => [cols[cols.length - 1]!, cols[0]!] as const);
  return new Map(entries);
}

async function cpioMember(gz: Buffer, path: string): Promise<string> {
  return (await run('cpio', ['-i', '--quiet', '--to-stdout', path], { input: gunzipSync(gz) })).stdout;
}

test('build --target pxe: every file of the tree is in manifest.json and SHA256SUMS with its size and digest, and sha256sum -c agrees', async () => {
  const onDisk = await snapshotFiles(clusterDir);
  onDisk.delete(layout.manifest);
  onDisk.delete(layout.checksums);
  assert.deepEqual(manifest.artefacts.map((a) => a.path).sort(), [...onDisk.keys()].sort(), 'manifest lists exactly the files on disk');
  for (const a of manifest.artefacts) {
    assert.equal(a.sha256, onDisk.get(a.path)!.sha256, a.path);
    assert.equal(a.size, (await stat(join(clusterDir, a.path))).size, a.path);
  }
  const pxe = [...onDisk.keys()].filter((p) => p.startsWith(`${layout.pxeDir}/`));
  const expected = [
    layout.pxeBootScript,
    layout.dnsmasqConf,
    layout.dnsmasqProxyConf,
    ...['undionly.kpxe', 'ipxe.efi', 'snponly.efi'].map((b) => layout.pxeIpxeBinary(b)),
    ...['flatcar_production_pxe.vmlinuz', 'flatcar_production_pxe_image.cpio.gz'].map((a) => layout.pxeAsset('amd64', f.flatcar.find((r) => r.channel === 'stable' && r.board === 'amd64-usr' && r.current)!.version, a)),
    // w-3 has install = true: flatcar-install fetches the disk image and its signature from the tree.
    ...['flatcar_production_image.bin.bz2', 'flatcar_production_image.bin.bz2.sig'].map((a) => layout.pxeAsset('amd64', f.flatcar.find((r) => r.channel === 'stable' && r.board === 'amd64-usr' && r.current)!.version, a)),
    ...CLUSTER.nodes.flatMap((n) => nodeFiles(n.mac)),
    // When the build carries Kubernetes, netbooted nodes download its sysext from the tree.
    ...manifest.artefacts.filter((a) => a.kind === 'sysext' && a.path.startsWith(`${layout.pxeDir}/`)).map((a) => a.path),
  ].sort();
  assert.deepEqual(pxe.sort(), expected);
  const sums = (await read(layout.checksums)).toString();
  assert.equal(sums, manifest.artefacts.map((a) => `${a.sha256}  ${a.path}\n`).join(''));
  const check = await run('sha256sum', ['--check', '--strict', layout.checksums], { cwd: clusterDir });
  assert.equal(check.stdout.trim().split('\n').length, manifest.artefacts.length);
  assert.match(check.stdout, /^(\S+: OK\n)+$/);

  // The shared assets are the upstream bytes: the fixture's PXE kernel/initrd and iPXE binaries.
  for (const [name, bin] of Object.entries(f.firmware.ipxe)) {
    assert.equal(onDisk.get(layout.pxeIpxeBinary(name))?.sha256, bin.sha256, `${name} is the upstream iPXE binary`);
  }
  assert.deepEqual(
    manifest.nodes.map((n) => [n.name, n.boot, n.mac]),
    CLUSTER.nodes.map((n) => [n.name, 'pxe', n.mac]),
  );
});

test('build --target pxe: per-node files are secret with mode 0600, shared files are public with mode 0644', async () => {
  const onDisk = await snapshotFiles(clusterDir);
  const secret = new Set([
    ...CLUSTER.nodes.flatMap((n) => nodeFiles(n.mac)),
    ...CLUSTER.nodes.map((n) => layout.ignition(n.name)),
    // The cluster PKI, when the build carries Kubernetes.
    ...manifest.artefacts.filter((a) => a.kind === 'pki').map((a) => a.path),
  ]);
  for (const a of manifest.artefacts) {
    assert.equal(a.secret, secret.has(a.path), `${a.path} secret flag`);
    assert.equal(onDisk.get(a.path)!.mode, secret.has(a.path) ? 0o600 : 0o644, `${a.path} mode`);
    if (secret.has(a.path) && a.kind !== 'pki') assert.ok(a.node, `${a.path} names its node`);
  }
});

test('build --target pxe: each node cpio holds oem/config.ign and usr/share/oem/config.ign (0600), equal to configs/<node>.ign', async () => {
  const shas = new Set<string>();
  for (const n of [w1, w2]) {
    const gz = await read(layout.pxeNodeCpio(n.mac));
    await run('gzip', ['-t', join(clusterDir, layout.pxeNodeCpio(n.mac))]);
    const listing = await cpioListing(gz);
    assert.deepEqual([...listing.keys()].sort(), ['oem', 'oem/config.ign', 'usr', 'usr/share', 'usr/share/oem', 'usr/share/oem/config.ign']);
    assert.equal(listing.get('oem/config.ign'), '-rw-------');
    assert.equal(listing.get('usr/share/oem/config.ign'), '-rw-------');
    const config = (await read(layout.ignition(n.name))).toString();
    assert.equal(await cpioMember(gz, 'oem/config.ign'), config, `${n.name}: oem/config.ign`);
    assert.equal(await cpioMember(gz, 'usr/share/oem/config.ign'), config, `${n.name}: usr/share/oem/config.ign`);
    shas.add(config);
  }
  assert.equal(shas.size, 2, 'each node has its own config');
});

/** The URI argument of an iPXE command line (`kernel`, `initrd`, `imgfetch`, `chain`), or undefined. */
function ipxeUri(line: string): string | undefined {
  const words = line.replace(/\s*\|\|.*$/, '').trim().split(/\s+/);
  if (!['kernel', 'initrd', 'imgfetch', 'chain', 'module'].includes(words[0]!)) return undefined;
  for (let i = 1; i < words.length; i++) {
    if (words[i] === '--name' || words[i] === '--timeout') i++;
    else if (!words[i]!.startsWith('--')) return words[i];
  }
  return undefined;
}

test('build --target pxe: boot.ipxe and every node script use relative URLs only, resolving inside the tree from any base', async () => {
  const onDisk = await snapshotFiles(clusterDir);
  // A base with a path of its own: the tree may be served from anywhere.
  const base = 'http://pxe.example:8080/some/base/';
  const inTree = (url: URL) => {
    assert.ok(url.href.startsWith(base), `${url.href} stays under ${base}`);
    const rel = `${layout.pxeDir}/${url.href.slice(base.length)}`;
    assert.ok(onDisk.has(rel), `${rel} exists in the tree`);
    return rel;
  };
  const boot = (await read(layout.pxeBootScript)).toString();
  const bootUris = boot.split('\n').map(ipxeUri).filter((u): u is string => u !== undefined);
  assert.deepEqual(bootUris, ['nodes/${mac:hexhyp}.ipxe']);
  assert.match(boot, /^echo bramble: this machine \(MAC \$\{mac\}\) is not a node of cluster pxelab\.$/m, 'unknown MACs get a message');
  assert.match(boot, /^prompt --key r --timeout \d+ .*&& goto start \|\|$/m, 'and a retry');
  assert.match(boot, /^exit 1$/m, 'or leave network boot');
  for (const n of CLUSTER.nodes) {
    const script = inTree(new URL(bootUris[0]!.replace('${mac:hexhyp}', macHyphen(n.mac)), new URL('boot.ipxe', base)));
    assert.equal(script, layout.pxeNodeScript(n.mac));
    const uris = (await read(script)).toString().split('\n').map(ipxeUri).filter((u): u is string => u !== undefined);
    assert.equal(uris.length, 3, `${script}: kernel and two initrds`);
    for (const u of uris) {
      assert.doesNotMatch(u, /^[a-z][a-z0-9+.-]*:|^\//i, `${script}: ${u} is relative`);
      inTree(new URL(u, new URL(script.slice(layout.pxeDir.length + 1), base)));
    }
  }
});

test('build --target pxe: the dnsmasq configs of an amd64-only tree name only boot files the tree holds (no arm64 line) and pass dnsmasq --test', async () => {
  for (const conf of [layout.dnsmasqConf, layout.dnsmasqProxyConf]) {
    const text = (await read(conf)).toString();
    const directives = text.split('\n').filter((l) => !l.startsWith('#')).join('\n');
    assert.doesNotMatch(directives, /arm64|client-arch,11|^pxe-service=[^,]*,11,/m, `${conf}: no arm64 client gets a boot file`);
    // Firmware boot files: dhcp-boot=tag:!ipxe,… and pxe-service=tag:!ipxe,… end in a TFTP path.
    const bootFiles = text.split('\n').filter((l) => /^(dhcp-boot|pxe-service)=tag:!ipxe,/.test(l)).map((l) => l.split(',').at(-1)!);
    assert.ok(bootFiles.length > 0, `${conf}: has firmware boot lines`);
    for (const file of bootFiles) {
      assert.ok(manifest.artefacts.some((a) => a.path === `${layout.pxeDir}/${file}`), `${conf}: ${file} is in the tree`);
    }
    const r = await run('dnsmasq', ['--test', '-C', join(clusterDir, conf)]);
    assert.match(r.stderr + r.stdout, /syntax check OK/, conf);
  }
});

test('build --target pxe: install = true boots an installer whose Ignition runs flatcar-install with the node Ignition embedded', async () => {
  const script = (await read(layout.pxeNodeScript(w3.mac))).toString();
  assert.match(script, /^echo bramble: booting node w-3 \(installer\)$/m);
  const kernel = script.split('\n').find((l) => l.startsWith('kernel '))!;
  for (const arg of ['flatcar.first_boot=1', 'console=ttyS0,115200n8', 'flatcar.autologin', 'bramble.test=pxe', 'bramble.node=w-3', `initrd=${macHyphen(w3.mac)}.cpio.gz`]) {
    assert.ok(kernel.split(' ').includes(arg), `installer kernel line has ${arg}: ${kernel}`);
  }
  const gz = await read(layout.pxeNodeCpio(w3.mac));
  const installerJson = await cpioMember(gz, 'oem/config.ign');
  assert.equal(await cpioMember(gz, 'usr/share/oem/config.ign'), installerJson);
  const installed = (await read(layout.ignition('w-3'))).toString();
  assert.notEqual(installerJson, installed, 'the netboot runs the installer, not the node config');

  const cfg = JSON.parse(installerJson) as IgnitionConfig;
  const embedded = cfg.storage!.files!.find((x) => x.path === INSTALLED_IGNITION_PATH)!;
  assert.equal(decodeDataUrl(embedded.contents!.source!).toString(), installed, 'embeds configs/w-3.ign byte for byte');
  assert.equal(embedded.mode, 0o600);
  assert.ok((JSON.parse(installed) as IgnitionConfig).storage!.files!.some((x) => x.path === '/etc/hostname' && decodeDataUrl(x.contents!.source!).toString() === 'w-3\n'));

  const unit = cfg.systemd!.units!.find((u) => u.name === INSTALLER_UNIT)!;
  assert.equal(unit.enabled, true);
  const exec = unit.contents!.split('\n').filter((l) => l.startsWith('ExecStart='));
  const argv = exec[0]!.slice('ExecStart='.length).split(' ');
  const opt = (flag: string) => argv[argv.indexOf(flag) + 1];
  assert.equal(argv[0], '/usr/bin/flatcar-install');
  assert.equal(opt('-d'), '/dev/sda');
  assert.equal(opt('-i'), INSTALLED_IGNITION_PATH);
  assert.equal(opt('-C'), 'stable');
  const version = manifest.inputs.find((i) => i.id === 'flatcar-pxe-kernel-amd64')!.version;
  assert.equal(opt('-V'), version);
  assert.equal(opt('-k'), INSTALLER_KEY_PATH);
  assert.deepEqual(exec.slice(1), [
    `ExecStart=${INSTALLER_OEM_GRUB_SCRIPT} /dev/sda ${INSTALLED_GRUB_CFG_PATH}`,
    'ExecStart=/usr/bin/udevadm settle',
    'ExecStart=/usr/bin/systemctl --no-block reboot',
  ]);
  const key = cfg.storage!.files!.find((x) => x.path === INSTALLER_KEY_PATH)!;
  assert.equal(decodeDataUrl(key.contents!.source!).toString(), await readFile(f.keys.signingPublicInTree, 'utf8'), 'the image is verified with the trusted key');
  // flatcar-install downloads <base>/<version>/flatcar_production_image.bin.bz2 and its .sig: both are in
  // the tree cp-1 serves (test/pxe-install.test.ts checks their bytes and the signature).
  const treeBase = `http://${CLUSTER.controlPlaneIp}:8080/`;
  for (const file of ['flatcar_production_image.bin.bz2', 'flatcar_production_image.bin.bz2.sig']) {
    const url = `${opt('-b')}/${version}/${file}`;
    assert.ok(url.startsWith(treeBase), url);
    assert.ok((await stat(join(clusterDir, layout.pxeDir, url.slice(treeBase.length)))).isFile(), url);
  }
});

test('build --target pxe: a rebuild changes only the files of the node whose config changed; every other file keeps its bytes, inode and mtime', async () => {
  const dir = await mkdtemp(join(tmp, 'rebuild-'));
  const opts = { outDir: join(dir, 'out'), cacheDir, lockPath: join(dir, 'bramble.lock') };
  const out = layout.clusterDir(opts.outDir, CLUSTER.name);
  const build = async (c: PxeTestCluster) => {
    const r = await buildPxeWithCli(await writePxeCluster(join(dir, 'src'), f, c), opts);
    assert.equal(r.code, 0, explainCli(r));
    return snapshotFiles(out);
  };
  /** Files whose bytes changed, and asserts every file with unchanged bytes was not rewritten. */
  const rewritten = (a: Map<string, { ino: number; mtimeMs: number; sha256: string }>, b: typeof a) => {
    assert.deepEqual([...b.keys()], [...a.keys()], 'the same files');
    const changed: string[] = [];
    for (const [path, s] of a) {
      if (path === layout.manifest || path === layout.checksums) continue;
      const t = b.get(path)!;
      if (t.sha256 !== s.sha256) changed.push(path);
      else assert.deepEqual([t.ino, t.mtimeMs], [s.ino, s.mtimeMs], `${path} untouched`);
    }
    return changed;
  };
  const withW2 = (over: Partial<PxeTestCluster['nodes'][0]>) => ({ ...CLUSTER, nodes: CLUSTER.nodes.map((n) => (n.name === 'w-2' ? { ...n, ...over } : n)) });

  const first = await build(CLUSTER);
  const same = await build(CLUSTER);
  assert.deepEqual(rewritten(first, same), [], 'an unchanged rebuild rewrites nothing');

  const args = await build(withW2({ kernelArgs: ['bramble.node=w-2', 'bramble.changed=1'] }));
  assert.deepEqual(rewritten(same, args), [layout.pxeNodeScript(w2.mac)], 'new kernel args: only its iPXE script');
  assert.match((await readFile(join(out, layout.pxeNodeScript(w2.mac)), 'utf8')), / bramble\.changed=1 /);

  const snippet = ['storage:', '  files:', '    - path: /etc/bramble-rebuild', '      contents:', '        inline: "changed\\n"', ''].join('\n');
  const config = await build(withW2({ kernelArgs: ['bramble.node=w-2', 'bramble.changed=1'], snippet }));
  assert.deepEqual(rewritten(args, config).sort(), [layout.ignition('w-2'), layout.pxeNodeCpio(w2.mac)].sort(), 'new Ignition: only its config and config initrd');
  const manifestAfter = JSON.parse(await readFile(join(out, layout.manifest), 'utf8')) as Manifest;
  assert.equal(manifestAfter.artefacts.find((a) => a.path === layout.pxeNodeCpio(w2.mac))!.sha256, config.get(layout.pxeNodeCpio(w2.mac))!.sha256);
});
