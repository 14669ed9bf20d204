// The generated dnsmasq configs against real dnsmasq: `dnsmasq --test` accepts both, and a machine
// netboots through dnsmasq.conf (full DHCP with static leases + TFTP) inside a network namespace the
// test creates. There a tap device carries the address of the tree's HTTP server (the first
// control-plane's ip, port 8080: the URL dnsmasq.conf hands to iPXE), busybox httpd serves the tree
// there as any stock server would, and qemu (its iPXE ROM) on the tap gets its static lease and the
// HTTP boot script from dnsmasq, then boots its own config. qemu's ROM is iPXE, so it skips the TFTP
// chainload step; dnsmasq's TFTP is checked by fetching the iPXE binaries dnsmasq.conf names.
// Only tftp-root and interface are adapted; every other line is the generated one.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTool, run } from '../builders/exec.ts';
import { layout, macHyphen } from '../builders/layout.ts';
import type { Manifest } from '../builders/output.ts';
import { getFixture } from './helpers/fixture.ts';
import { buildPxeWithCli, explainCli, pxeRoot, writePxeCluster, type PxeTestCluster, type PxeTestNode } from './helpers/pxe-cluster.ts';
import { BOOT_TIMEOUT_MS, skipBoot } from './helpers/boot.ts';
import { NetworkNamespace, waitFor } from './helpers/netns.ts';
import { watchUntilDone } from './helpers/qemu.ts';

const skipRoot = process.getuid?.() === 0 ? undefined : 'needs root: it creates a network namespace and a tap device';
/** How long a freshly started server may take to answer before the test gives up on it. */
const SERVER_START_MS = 60_000;
// pid plus a random part: a namespace left by a killed run cannot collide with a later process of the same pid.
const NS = `bramble-netboot-${process.pid}-${randomBytes(3).toString('hex')}`;
const TAP = 'bramble0';
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

const CLUSTER: PxeTestCluster = {
  name: 'netlab',
  nodeCidr: '10.79.0.0/24',
  controlPlaneIp: '10.79.0.2',
  kernelArgs: ['bramble.test=netboot'],
  nodes: [
    { name: 'w-1', mac: '52:54:00:79:00:11' },
    { name: 'w-2', mac: '52:54:00:79:00:12' },
  ],
};
const w1 = CLUSTER.nodes[0] as PxeTestNode;

let tmp: string;
let clusterDir: string;
let tree: string;
before(async () => {
  const f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-netboot-'));
  // dnsmasq drops root for `nobody`, which must be able to walk to its TFTP root.
  await chmod(tmp, 0o755);
  const files = await writePxeCluster(join(tmp, 'src'), f, CLUSTER);
  const outDir = join(tmp, 'out');
  const r = await buildPxeWithCli(files, { outDir, cacheDir: join(tmp, 'cache'), lockPath: join(tmp, 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = layout.clusterDir(outDir, CLUSTER.name);
  tree = pxeRoot(outDir, CLUSTER.name);
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** `key=value` lines of a dnsmasq config with this key. */
const options = (conf: string, key: string) => conf.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));

test('dnsmasq --test accepts the generated dnsmasq.conf and dnsmasq-proxy.conf; leases, boot URL and boot files match the tree', async () => {
  for (const conf of [layout.dnsmasqConf, layout.dnsmasqProxyConf]) {
    const r = await run('dnsmasq', ['--test', `--conf-file=${join(clusterDir, conf)}`]);
    assert.match(r.stdout + r.stderr, /syntax check OK/, conf);
  }
  const full = await readFile(join(clusterDir, layout.dnsmasqConf), 'utf8');
  const proxy = await readFile(join(clusterDir, layout.dnsmasqProxyConf), 'utf8');
  const manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
  assert.deepEqual(
    options(full, 'dhcp-host'),
    manifest.nodes.map((n) => `${n.mac},${n.ip},${n.name},12h`),
    'one static lease per node, at the address its config sets',
  );
  const bootUrl = `http://${CLUSTER.controlPlaneIp}:8080/boot.ipxe`;
  assert.ok(options(full, 'dhcp-boot').includes(`tag:ipxe,${bootUrl}`), 'iPXE gets the HTTP boot script');
  assert.deepEqual(options(full, 'dhcp-range'), ['10.79.0.0,static,255.255.255.0,12h']);
  assert.deepEqual(options(proxy, 'dhcp-range'), ['10.79.0.0,proxy,255.255.255.0']);
  for (const conf of [full, proxy]) assert.deepEqual(options(conf, 'tftp-root'), [`/srv/bramble/${CLUSTER.name}/pxe`]);
  // Firmware PXE clients are sent an iPXE binary by TFTP path: BIOS and x86-64 UEFI ones are in this amd64 tree.
  for (const tag of ['bios', 'efi64']) {
    const file = options(full, 'dhcp-boot').find((v) => v.startsWith(`tag:!ipxe,tag:${tag},`))?.split(',').pop();
    assert.ok(file, `a dhcp-boot line for ${tag}`);
    assert.equal(manifest.artefacts.find((a) => a.path === `${layout.pxeDir}/${file}`)?.kind, 'ipxe-binary', `${tag}: ${file} is an iPXE binary of the tree`);
  }
});

/** The generated config with only tftp-root and interface changed (interface added if absent). */
function adaptDnsmasqConf(text: string, o: { tftpRoot: string; iface: string }): string {
  let sawInterface = false;
  const lines = text.split('\n').map((l) => {
    if (l.startsWith('tftp-root=')) return `tftp-root=${o.tftpRoot}`;
    if (!l.startsWith('interface=')) return l;
    sawInterface = true;
    return `interface=${o.iface}`;
  });
  if (!sawInterface) lines.push(`interface=${o.iface}`, '');
  return lines.join('\n');
}

/** qemu (SeaBIOS, its iPXE ROM) on the namespace's tap, until the fixture initramfs says it is done. */
async function netbootOnTap(ns: NetworkNamespace, mac: string) {
  const qemu = ns.start([
    requireTool('qemu-system-x86_64'),
    ...['-accel', 'tcg', '-m', '768', '-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot', '-nodefaults', '-vga', 'none'],
    // SeaBIOS (and the iPXE ROM through it) print to the serial port only without a display.
    ...['-machine', 'graphics=off', '-boot', 'n'],
    ...['-netdev', `tap,id=net0,ifname=${TAP},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=net0,mac=${mac}`],
  ]);
  return watchUntilDone(qemu, BOOT_TIMEOUT_MS);
}

test('boot: a netboot through real dnsmasq (DHCP + TFTP) in a network namespace reaches the node script and boots its config', { timeout: BOOT_TIMEOUT_MS + 3 * SERVER_START_MS }, async (t) => {
  if (skipBoot || skipRoot) return t.skip(skipBoot ?? skipRoot);
  const created = await NetworkNamespace.create(NS);
  if (typeof created === 'string') return t.skip(created);
  const ns = created;
  // qemu, dnsmasq and httpd: everything this test started in the namespace, then the namespace.
  t.after(() => ns.destroy());
  const prefix = CLUSTER.nodeCidr.split('/')[1];
  await ns.ip('tuntap', 'add', 'dev', TAP, 'mode', 'tap');
  await ns.ip('addr', 'add', `${CLUSTER.controlPlaneIp}/${prefix}`, 'dev', TAP);
  await ns.ip('link', 'set', TAP, 'up');

  const generated = await readFile(join(clusterDir, layout.dnsmasqConf), 'utf8');
  const adapted = adaptDnsmasqConf(generated, { tftpRoot: tree, iface: TAP });
  const changed = adapted.split('\n').filter((l) => !generated.split('\n').includes(l));
  assert.deepEqual(changed, [`tftp-root=${tree}`, `interface=${TAP}`], 'only the two paths differ');
  const conf = join(tmp, 'dnsmasq.conf');
  await writeFile(conf, adapted);
  const dnsmasq = ns.start([
    requireTool('dnsmasq'),
    '--keep-in-foreground',
    `--conf-file=${conf}`,
    '--log-facility=-',
    `--dhcp-leasefile=${join(tmp, 'dnsmasq.leases')}`,
    `--pid-file=${join(tmp, 'dnsmasq.pid')}`,
  ]);
  await waitFor('dnsmasq', dnsmasq, () => /TFTP root is /.test(dnsmasq.output()), SERVER_START_MS);
  const httpd = ns.start([requireTool('busybox'), 'httpd', '-f', '-vv', '-p', `${CLUSTER.controlPlaneIp}:8080`, '-h', tree]);
  const probe = join(tmp, 'probe');
  await waitFor('busybox httpd', httpd, async () => {
    const r = await ns.exec([requireTool('busybox'), 'wget', '-q', '-O', probe, `http://${CLUSTER.controlPlaneIp}:8080/boot.ipxe`], { okCodes: [1] });
    return r.exitCode === 0;
  }, SERVER_START_MS);
  assert.equal(await readFile(probe, 'utf8'), await readFile(join(tree, 'boot.ipxe'), 'utf8'));

  // dnsmasq's TFTP serves the iPXE binaries dnsmasq.conf sends firmware PXE clients.
  for (const file of options(generated, 'dhcp-boot').filter((v) => /^tag:!ipxe,tag:(bios|efi64),/.test(v)).map((v) => v.split(',').pop()!)) {
    const got = join(tmp, 'tftp-got');
    await ns.exec([requireTool('busybox'), 'tftp', '-g', '-r', file, '-l', got, CLUSTER.controlPlaneIp]);
    assert.equal(sha256(await readFile(got)), sha256(await readFile(join(tree, file))), `TFTP ${file}`);
  }

  const lease = options(generated, 'dhcp-host').find((v) => v.startsWith(`${w1.mac},`))!.split(',')[1]!;
  const r = await netbootOnTap(ns, w1.mac);
  const explain = `timedOut=${r.timedOut}\n--- serial (last 3000) ---\n${r.serial.slice(-3000)}\n--- dnsmasq ---\n${dnsmasq.output().slice(-3000)}\n--- httpd ---\n${httpd.output().slice(-2000)}`;
  assert.match(dnsmasq.output(), new RegExp(`DHCPACK\\(${TAP}\\) ${lease.replaceAll('.', '\\.')} ${w1.mac} ${w1.name}`), explain);
  assert.match(r.serial, new RegExp(`net0: ${lease.replaceAll('.', '\\.')}/255\\.255\\.255\\.0`), `the static lease\n${explain}`);
  assert.match(r.serial, new RegExp(`Filename: http://${CLUSTER.controlPlaneIp.replaceAll('.', '\\.')}:8080/boot\\.ipxe`), explain);
  assert.match(r.serial, /bramble: booting node w-1\n/, `reached the node's iPXE script\n${explain}`);
  assert.ok(r.markers.done, explain);
  const config = await readFile(join(clusterDir, layout.ignition(w1.name)));
  assert.deepEqual(r.markers.pxeConfigs, { 'oem/config.ign': sha256(config), 'usr/share/oem/config.ign': sha256(config) }, explain);
  assert.ok((r.markers.cmdline ?? '').split(' ').includes('bramble.test=netboot'), explain);
  const fetched = [...httpd.output().matchAll(new RegExp(`^${lease.replaceAll('.', '\\.')}:\\d+: url:(\\S+)$`, 'gm'))].map((m) => m[1]);
  const manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
  const version = manifest.inputs.find((i) => i.id === 'flatcar-pxe-kernel-amd64')!.version;
  const asset = (file: string) => `/${layout.pxeAsset('amd64', version, file).slice(layout.pxeDir.length + 1)}`;
  const nodeFile = (ext: string) => `/nodes/${macHyphen(w1.mac)}.${ext}`;
  assert.deepEqual(
    fetched,
    ['/boot.ipxe', nodeFile('ipxe'), asset('flatcar_production_pxe.vmlinuz'), asset('flatcar_production_pxe_image.cpio.gz'), nodeFile('cpio.gz')],
    `everything came from busybox httpd\n${explain}`,
  );
});
