// Boot tests of bramble-built disk images: the pc image under OVMF (x86_64 UEFI) and the rpi4 image's
// arm64 EFI chain under AAVMF (qemu-system-aarch64 -M virt) go through the fixture's GRUB, which sources
// the OEM grub.cfg, into the fixture initramfs, which reports on the serial console what the node saw:
// the kernel command line, config.ign on the OEM partition, and the files on the ESP. Three boots: pc and
// rpi4 on the 2025 layout, pc on the old one. BRAMBLE_SKIP_BOOT=1 skips them; every test name contains "boot".
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getFixture, type Fixture } from './helpers/fixture.ts';
import { buildWithCli, explainCli, warmBuildCache, writeTestCluster, type TestNode } from './helpers/build.ts';
import { bootAndCapture, type BootResult } from './helpers/qemu.ts';
import { BOOT_TIMEOUT_MS, bootTest, explainBoot, skipBoot } from './helpers/boot.ts';

const skip = skipBoot;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

let f: Fixture;
let tmp: string;
before(async () => {
  if (skip) return;
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-boot-disk-'));
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const explain = explainBoot;
/** The disk boots follow a build, so they get more time than a bare boot. */
const bootTestWithSetup = (name: string, fn: (t: TestContext) => Promise<void>) => bootTest(name, fn, 10 * 60_000);

/** Build a cluster of pc-1 (and pi-1) on the warm cache; returns out/<cluster>. */
async function build(name: string, osVersion: string | undefined, withPi: boolean, nodeCidr?: string): Promise<string> {
  const dir = join(tmp, name);
  const nodes: TestNode[] = [{ name: 'pc-1', hardware: 'pc', kernelArgs: ['bramble.node=pc-1'] }];
  if (withPi) nodes.push({ name: 'pi-1', hardware: 'rpi4', kernelArgs: ['bramble.node=pi-1'] });
  const files = await writeTestCluster(dir, f, { name, osVersion, nodes, nodeCidr });
  const r = await buildWithCli(files, { outDir: join(dir, 'out'), cacheDir: warmBuildCache(), lockPath: join(dir, 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  return join(dir, 'out', name);
}

/** What every booted node must have seen: its own config.ign on the OEM and the OEM grub.cfg's arguments. */
async function assertSawNodeConfig(r: BootResult, clusterDir: string, node: string) {
  assert.ok(r.markers.done, explain(r));
  assert.deepEqual(r.markers.errors, [], explain(r));
  const config = await readFile(join(clusterDir, 'configs', `${node}.ign`));
  assert.equal(r.markers.oemConfigSha256, sha256(config), explain(r));
  assert.deepEqual(r.markers.oemFiles, ['config.ign', 'grub.cfg']);
  const args = (r.markers.cmdline ?? '').split(' ');
  for (const a of ['bramble.test=yes', `bramble.node=${node}`, 'flatcar.first_boot=detected']) {
    assert.ok(args.includes(a), `${a} on the kernel command line: ${r.markers.cmdline}`);
  }
  // The OEM arguments come after Flatcar's own (GRUB appends $linux_append last), in config order.
  assert.match(r.markers.cmdline ?? '', new RegExp(`bramble\\.test=yes bramble\\.node=${node}`));
  assert.ok(r.markers.espFiles?.includes('flatcar/first_boot'), 'first_boot is still on the ESP');
}

/**
 * With static addressing the build carries the Kubernetes bootstrap: the sysext on ROOT and the
 * /etc/extensions link systemd-sysext merges, written into the image without mounting it.
 */
function assertSysextOnRoot(r: BootResult, sysextArch: 'x86-64' | 'arm64') {
  const path = `/opt/extensions/kubernetes/kubernetes-v1.33.4-${sysextArch}.raw`;
  assert.match(r.markers.rootFiles[path] ?? '', /^[0-9a-f]{64}$/, `${path} on ROOT: ${JSON.stringify(r.markers.rootFiles)}\n${explain(r)}`);
  assert.equal(r.markers.rootLinks['/etc/extensions/kubernetes.raw'], path, JSON.stringify(r.markers.rootLinks));
}

describe('boot: bramble-built Flatcar images, 2025 layout (stable current)', () => {
  let clusterDir: string;
  before(async () => {
    if (!skip) clusterDir = await build('boot-2025', undefined, true, '192.168.60.0/24');
  });

  bootTestWithSetup('boot: pc image under OVMF sees exactly its config.ign and the OEM grub.cfg kernel arguments', async () => {
    const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', disk: join(clusterDir, 'images', 'pc-1.img'), timeoutMs: BOOT_TIMEOUT_MS });
    await assertSawNodeConfig(r, clusterDir, 'pc-1');
    assert.equal(r.markers.arch, 'x86_64');
    assertSysextOnRoot(r, 'x86-64');
    assert.equal(r.markers.oemDevice, '/dev/vda6');
  });

  bootTestWithSetup('boot: rpi4 image, arm64 EFI chain under AAVMF, sees its config.ign, kernel arguments and the Pi firmware on the ESP', async () => {
    const r = await bootAndCapture({ arch: 'arm64', firmware: 'aavmf', disk: join(clusterDir, 'images', 'pi-1.img'), timeoutMs: BOOT_TIMEOUT_MS });
    await assertSawNodeConfig(r, clusterDir, 'pi-1');
    assert.equal(r.markers.arch, 'aarch64');
    assertSysextOnRoot(r, 'arm64');
    const esp = r.markers.espFiles ?? [];
    for (const file of ['RPI_EFI.fd', 'start4.elf', 'fixup4.dat', 'bcm2711-rpi-4-b.dtb', 'config.txt', 'overlays/upstream-pi4.dtbo', 'EFI/boot/bootaa64.efi']) {
      assert.ok(esp.includes(file), `${file} on the ESP the node mounted: ${esp.join(' ')}`);
    }
  });
});

describe('boot: bramble-built Flatcar images, old layout (stable 4459.2.4)', () => {
  let clusterDir: string;
  before(async () => {
    if (!skip) clusterDir = await build('boot-old', '4459.2.4', false);
  });

  bootTestWithSetup('boot: pc image (old layout) under OVMF sees exactly its config.ign and the OEM grub.cfg kernel arguments', async () => {
    const r = await bootAndCapture({ arch: 'amd64', firmware: 'ovmf', disk: join(clusterDir, 'images', 'pc-1.img'), timeoutMs: BOOT_TIMEOUT_MS });
    await assertSawNodeConfig(r, clusterDir, 'pc-1');
    assert.equal(r.markers.oemDevice, '/dev/vda6');
  });
});
