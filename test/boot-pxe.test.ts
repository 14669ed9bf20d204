// Boot tests of the PXE tree: qemu's own iPXE ROM netboots a two-node fixture cluster's tree, once per
// node MAC, and the fixture initramfs reports the config it found at both initrd paths and the kernel
// command line; an unknown MAC gets boot.ipxe's fallback message. One node boots under OVMF over HTTP
// from a loopback server that puts the tree under a sub-path (relative URLs, UEFI initrd= names), the
// other under SeaBIOS over qemu's TFTP. BRAMBLE_SKIP_BOOT=1 skips them; every test name contains "boot".
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { layout, macHyphen } from '../builders/layout.ts';
import type { Manifest } from '../builders/output.ts';
import { getFixture } from './helpers/fixture.ts';
import { buildPxeWithCli, explainCli, pxeRoot, serveTree, writePxeCluster, type PxeTestCluster, type PxeTestNode } from './helpers/pxe-cluster.ts';
import { bootAndCapture, type BootResult } from './helpers/qemu.ts';
import { BOOT_TIMEOUT_MS, bootTest, explainBoot, skipBoot } from './helpers/boot.ts';

const skip = skipBoot;
/** qemu user networking: the host (and its 127.0.0.1) as the guest sees it. */
const SLIRP_HOST = '10.0.2.2';
/** SeaBIOS prints to the serial port (and so does the iPXE ROM through it) only without a display. */
const SEABIOS_SERIAL_CONSOLE = ['-machine', 'graphics=off'];
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

const CLUSTER: PxeTestCluster = {
  name: 'bootlab',
  nodeCidr: '10.78.0.0/24',
  controlPlaneIp: '10.78.0.2',
  kernelArgs: ['flatcar.autologin', 'bramble.test=pxe-boot'],
  nodes: [
    { name: 'w-1', mac: '52:54:00:78:00:11' },
    { name: 'w-2', mac: '52:54:00:78:00:12', kernelArgs: ['bramble.node=w-2'] },
  ],
};
const [w1, w2] = CLUSTER.nodes as [PxeTestNode, PxeTestNode];

let tmp: string;
let clusterDir: string;
let tree: string;
/** The Flatcar release the tree was built from. */
let version: string;
before(async () => {
  if (skip) return;
  const f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-boot-pxe-'));
  const files = await writePxeCluster(join(tmp, 'src'), f, CLUSTER);
  const outDir = join(tmp, 'out');
  const r = await buildPxeWithCli(files, { outDir, cacheDir: join(tmp, 'cache'), lockPath: join(tmp, 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = layout.clusterDir(outDir, CLUSTER.name);
  tree = pxeRoot(outDir, CLUSTER.name);
  const manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
  version = manifest.inputs.find((i) => i.id === 'flatcar-pxe-kernel-amd64')!.version;
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const explain = explainBoot;

/** The node saw its own config at both paths and exactly the arguments its iPXE script passes. */
async function assertNodeBooted(r: BootResult, node: PxeTestNode, other: PxeTestNode) {
  assert.ok(r.markers.done, explain(r));
  assert.deepEqual(r.markers.errors, []);
  assert.match(r.serial, new RegExp(`bramble: booting node ${node.name}\\n`), `iPXE ran the node's script\n${explain(r)}`);
  const config = await readFile(join(clusterDir, layout.ignition(node.name)));
  assert.deepEqual(r.markers.pxeConfigs, { 'oem/config.ign': sha256(config), 'usr/share/oem/config.ign': sha256(config) }, explain(r));
  assert.notEqual(sha256(config), sha256(await readFile(join(clusterDir, layout.ignition(other.name)))));
  const args = (r.markers.cmdline ?? '').split(' ');
  const expected = [
    'initrd=flatcar_production_pxe_image.cpio.gz',
    `initrd=${macHyphen(node.mac)}.cpio.gz`,
    'flatcar.first_boot=1',
    'console=ttyS0,115200n8',
    ...CLUSTER.kernelArgs,
    ...(node.kernelArgs ?? []),
  ];
  // Under UEFI iPXE puts the image name first; the arguments follow in the script's order.
  assert.deepEqual(args.filter((a) => expected.includes(a)), expected, `kernel command line: ${r.markers.cmdline}`);
  for (const a of other.kernelArgs ?? []) assert.ok(!args.includes(a), `${a} belongs to ${other.name}`);
}

bootTest('boot: an unknown MAC gets boot.ipxe fallback message (SeaBIOS, qemu iPXE ROM, TFTP)', async () => {
  const mac = '52:54:00:78:00:99';
  const r = await bootAndCapture({
    arch: 'amd64',
    firmware: 'seabios',
    netdev: `user,tftp=${tree},bootfile=${layout.pxeBootScript.slice(layout.pxeDir.length + 1)}`,
    mac,
    bootFromNetwork: true,
    extraArgs: SEABIOS_SERIAL_CONSOLE,
    until: /is not a node of cluster/,
    timeoutMs: BOOT_TIMEOUT_MS,
  });
  assert.match(r.serial, /bramble: cluster bootlab, looking for nodes\/52-54-00-78-00-99\.ipxe\n/, explain(r));
  assert.match(r.serial, /bramble: this machine \(MAC 52:54:00:78:00:99\) is not a node of cluster bootlab\.\n/, explain(r));
  assert.doesNotMatch(r.serial, /bramble: booting node/);
  assert.equal(r.timedOut, false);
});

bootTest('boot: w-1 netboots under OVMF over HTTP from a loopback server (tree under a sub-path), sees its config at both paths and its kernel args', async (t) => {
  const server = await serveTree(tree, '/any/base/');
  t.after(() => server.close());
  const r = await bootAndCapture({
    arch: 'amd64',
    firmware: 'ovmf',
    netdev: `user,bootfile=http://${SLIRP_HOST}:${server.port}/any/base/boot.ipxe`,
    mac: w1.mac,
    timeoutMs: BOOT_TIMEOUT_MS,
  });
  await assertNodeBooted(r, w1, w2);
  const asset = (file: string) => layout.pxeAsset('amd64', version, file).slice(layout.pxeDir.length + 1);
  assert.deepEqual(
    server.requests,
    [
      'boot.ipxe',
      `nodes/${macHyphen(w1.mac)}.ipxe`,
      asset('flatcar_production_pxe.vmlinuz'),
      asset('flatcar_production_pxe_image.cpio.gz'),
      `nodes/${macHyphen(w1.mac)}.cpio.gz`,
    ].map((p) => `GET /any/base/${p}`),
    'iPXE resolved every relative URL against the sub-path',
  );
});

bootTest('boot: w-2 netboots under SeaBIOS over TFTP (qemu tftp= the tree, bootfile=boot.ipxe), sees its config at both paths and its kernel args', async () => {
  const r = await bootAndCapture({
    arch: 'amd64',
    firmware: 'seabios',
    netdev: `user,tftp=${tree},bootfile=boot.ipxe`,
    mac: w2.mac,
    bootFromNetwork: true,
    extraArgs: SEABIOS_SERIAL_CONSOLE,
    timeoutMs: BOOT_TIMEOUT_MS,
  });
  await assertNodeBooted(r, w2, w1);
  // A slow transfer prints progress (dots, percentages, backspaces) between "..." and "ok".
  assert.match(r.serial, /tftp:\/\/10\.0\.2\.2\/boot\.ipxe\.\.\.[^\n]* ok/, 'boot.ipxe came over TFTP');
});

