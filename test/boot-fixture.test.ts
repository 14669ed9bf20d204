// Boot tests of the fixture upstream itself: its Flatcar-shaped images boot under OVMF and AAVMF through
// GRUB with Flatcar's grub.cfg convention, its PXE kernel + cpio netboot with an appended per-node cpio,
// and the initramfs reports what it saw. Later boot tests (disk images, PXE tree) rely on exactly this.
// BRAMBLE_SKIP_BOOT=1 skips them; every test name contains "boot".
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import { copyIntoImage, makeBtrfs, makeExt4 } from '../scripts/fixtures/flatcar-image.ts';
import { partitionByLabel, placeFlatcarLayout, SECTOR_BYTES } from '../scripts/fixtures/flatcar-layout.ts';
import { packCpioGz } from '../scripts/fixtures/initramfs.ts';
import { flatcarRelease, getFixtureTree, type FixtureTree } from './helpers/fixture.ts';
import { bootAndCapture, type BootResult } from './helpers/qemu.ts';
import { BOOT_TIMEOUT_MS, bootTest, explainBoot, skipBoot } from './helpers/boot.ts';

const skip = skipBoot;
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

let f: FixtureTree;
let tmp: string;
before(async () => {
  if (skip) return;
  f = await getFixtureTree();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-boot-fixture-'));
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const explain = explainBoot;

bootTest('boot: unmodified fixture pc image (amd64, 2025 layout) under OVMF reports first boot and no OEM config', async () => {
  const image = flatcarRelease(f, 'stable', 'amd64-usr').rawImage;
  const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', disk: image, timeoutMs: BOOT_TIMEOUT_MS });
  assert.ok(r.markers.done, explain(r));
  assert.equal(r.markers.arch, 'x86_64');
  assert.match(r.markers.cmdline ?? '', /(^| )flatcar\.first_boot=detected( |$)/, explain(r));
  assert.match(r.markers.cmdline ?? '', /root=LABEL=ROOT console=ttyS0,115200n8 console=tty0/);
  assert.equal(r.markers.oemDevice, '/dev/vda6');
  assert.equal(r.markers.oemConfigSha256, 'none');
  assert.deepEqual(r.markers.oemFiles, []);
  assert.deepEqual(r.markers.espFiles, ['EFI/boot/bootx64.efi', 'flatcar/first_boot', 'flatcar/initrd-a', 'flatcar/vmlinuz-a']);
  assert.deepEqual(r.markers.rootFiles, {});
  assert.deepEqual(r.markers.efiVars, {});
  assert.deepEqual(r.markers.errors, []);
});

bootTest('boot: the variable store of the fixture RPI_EFI.fd is read by real EDK2 firmware (OVMF) and shows RamLimitTo3GB=1', async () => {
  const dir = await mkdtemp(join(tmp, 'rpi-efi-'));
  await run('unzip', ['-q', f.firmware.rpi4.zip, 'RPI_EFI.fd', '-d', dir]);
  const fd = await readFile(join(dir, 'RPI_EFI.fd'));
  // The variable-store firmware volume: "_FVH" at +0x28, FileSystemGuid gEfiSystemNvDataFvGuid at +0x10.
  const nvGuid = Buffer.from('8d2bf1ff96768b4ca9852747075b4f50', 'hex');
  let fv = -1;
  for (let off = 0; off < fd.length; off += 0x1000) {
    if (fd.subarray(off + 0x28, off + 0x2c).toString('latin1') === '_FVH' && fd.subarray(off + 0x10, off + 0x20).equals(nvGuid)) fv = off;
  }
  assert.ok(fv >= 0, 'RPI_EFI.fd has a variable store volume');
  const vars = join(dir, 'vars.fd');
  await writeFile(vars, fd.subarray(fv, fv + Number(fd.readBigUInt64LE(fv + 0x20))));
  const image = flatcarRelease(f, 'stable', 'amd64-usr').rawImage;
  const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', firmwareVars: vars, disk: image, timeoutMs: BOOT_TIMEOUT_MS });
  assert.ok(r.markers.done, explain(r));
  assert.deepEqual(r.markers.efiVars, { 'RamLimitTo3GB-cd7cc258-31db-22e6-9f22-63b0b8eed6b5': { attributes: 7, data: '01000000' } });
});

bootTest('boot: unmodified fixture arm64 image (old layout) under AAVMF reports first boot and no OEM config', async () => {
  const image = flatcarRelease(f, 'lts', 'arm64-usr').rawImage;
  const r = await bootAndCapture({ arch: 'arm64', firmware: 'aavmf', disk: image, timeoutMs: BOOT_TIMEOUT_MS });
  assert.ok(r.markers.done, explain(r));
  assert.equal(r.markers.arch, 'aarch64');
  assert.match(r.markers.cmdline ?? '', /(^| )flatcar\.first_boot=detected( |$)/, explain(r));
  assert.match(r.markers.cmdline ?? '', /console=ttyAMA0,115200n8 console=tty0/);
  assert.match(r.markers.cmdline ?? '', /(^| )acpi=force( |$)/);
  assert.equal(r.markers.oemConfigSha256, 'none');
  assert.ok(r.markers.espFiles?.includes('EFI/boot/bootaa64.efi'), explain(r));
  assert.deepEqual(r.markers.errors, []);
});

bootTest('boot: OEM config.ign, OEM grub.cfg linux_append and ROOT files are seen (amd64, old layout)', async () => {
  const base = flatcarRelease(f, 'stable', 'amd64-usr', '4459.2.4');
  const image = join(tmp, 'edited.bin');
  await run('cp', ['--sparse=always', base.rawImage, image]);
  const placed = placeFlatcarLayout(base.layout);

  const oemDir = join(tmp, 'oem');
  await mkdir(oemDir, { recursive: true });
  const config = '{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core"}]}}\n';
  await writeFile(join(oemDir, 'config.ign'), config);
  await writeFile(join(oemDir, 'grub.cfg'), '# Flatcar GRUB settings\n\nset linux_append="$linux_append bramble.test=oem-grub flatcar.autologin"\n');
  const rootDir = join(tmp, 'root');
  const sysext = 'opt/extensions/kubernetes/kubernetes-v1.33.4-x86-64.raw';
  await mkdir(join(rootDir, 'opt/extensions/kubernetes'), { recursive: true });
  await mkdir(join(rootDir, 'etc/extensions'), { recursive: true });
  await mkdir(join(rootDir, 'var/lib/bramble'), { recursive: true });
  await writeFile(join(rootDir, sysext), 'sysext bytes\n');
  await symlink(`/${sysext}`, join(rootDir, 'etc/extensions/kubernetes.raw'));
  await writeFile(join(rootDir, 'var/lib/bramble/node'), 'node-1\n');

  for (const [label, make] of [
    ['OEM', (file: string, bytes: number) => makeBtrfs(file, bytes, 'OEM', oemDir, '6f0e4c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b')],
    ['ROOT', (file: string, bytes: number) => makeExt4(file, bytes, 'ROOT', rootDir, '7a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d')],
  ] as const) {
    const p = partitionByLabel(placed, label);
    const offset = p.firstSector * SECTOR_BYTES;
    const bytes = p.sectors * SECTOR_BYTES;
    await run('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(bytes), image]);
    const fsFile = join(tmp, `${label}.fs`);
    await make(fsFile, bytes);
    await copyIntoImage(fsFile, image, offset, bytes);
    await rm(fsFile);
  }

  const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', disk: image, timeoutMs: BOOT_TIMEOUT_MS });
  assert.ok(r.markers.done, explain(r));
  assert.equal(r.markers.oemConfigSha256, sha256(config));
  assert.deepEqual(r.markers.oemFiles, ['config.ign', 'grub.cfg']);
  assert.match(r.markers.cmdline ?? '', / bramble\.test=oem-grub flatcar\.autologin$/, explain(r));
  assert.match(r.markers.cmdline ?? '', /(^| )flatcar\.first_boot=detected( |$)/);
  assert.deepEqual(r.markers.rootFiles, { [`/${sysext}`]: sha256('sysext bytes\n'), '/var/lib/bramble/node': sha256('node-1\n') });
  assert.deepEqual(r.markers.rootLinks, { '/etc/extensions/kubernetes.raw': `/${sysext}` });
});

async function perNodeCpio(config: string): Promise<string> {
  const dir = await mkdtemp(join(tmp, 'node-'));
  for (const p of ['oem', 'usr/share/oem']) {
    await mkdir(join(dir, p), { recursive: true });
    await writeFile(join(dir, p, 'config.ign'), config);
  }
  const out = `${dir}.cpio.gz`;
  await packCpioGz(dir, out);
  return out;
}

for (const [arch, firmware, console] of [
  ['amd64', 'seabios', 'console=ttyS0,115200n8'],
  ['arm64', 'none', 'console=ttyAMA0,115200n8'],
] as const) {
  bootTest(`boot: PXE kernel + cpio with an appended per-node cpio (${arch}) report the node's config at both paths`, async () => {
    const board = arch === 'amd64' ? 'amd64-usr' : 'arm64-usr';
    const rel = flatcarRelease(f, 'stable', board);
    const config = `{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/hostname","contents":{"source":"data:,${arch}-node"}}]}}\n`;
    const nodeCpio = await perNodeCpio(config);
    const append = `flatcar.first_boot=1 ${console} initrd=flatcar_production_pxe_image.cpio.gz`;
    const r = await bootAndCapture({
      arch,
      firmware,
      kernel: join(rel.dir, 'flatcar_production_pxe.vmlinuz'),
      initrd: [join(rel.dir, 'flatcar_production_pxe_image.cpio.gz'), nodeCpio],
      append,
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    assert.ok(r.markers.done, explain(r));
    assert.equal(r.markers.cmdline, append);
    assert.deepEqual(r.markers.pxeConfigs, { 'oem/config.ign': sha256(config), 'usr/share/oem/config.ign': sha256(config) });
    assert.equal(r.markers.oemDevice, 'none');
    assert.equal(sha256(await readFile(join(rel.dir, 'flatcar_production_pxe.vmlinuz'))), sha256(await readFile(f.boot[arch].kernel)));
  });
}
