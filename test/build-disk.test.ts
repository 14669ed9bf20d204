// `bramble build --target pc --target rpi4` on the fixture upstream, for both Flatcar layouts (stable
// current 4593.2.5 = the 2025 partition sizes; 4459.2.4 pinned = the older ones): every image is checked
// by the tools people trust (sgdisk, fsck.vfat, btrfs check, bmaptool, sha256sum), its OEM is read back
// and compared with the node's config, and every byte outside the edited partitions is compared with
// the base image. Also: two builds are byte-identical, `size` grows ROOT, and an unprivileged user can build.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chown, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { run } from '../builders/exec.ts';
import type { Manifest } from '../builders/output.ts';
import { RPI4_CONFIG_TXT } from '../builders/rpi4-firmware.ts';
import { listBtrfs, readBtrfsFile } from '../images/btrfs.ts';
import { extractPartition } from '../images/partition.ts';
import { flatcarRelease, getFixture, type Fixture } from './helpers/fixture.ts';
import {
  buildWithCli,
  explainCli,
  firstDifference,
  partitionSpan,
  sfdiskTable,
  sha256Allocated,
  SNIPPET_CONTENTS,
  SNIPPET_PATH,
  warmBuildCache,
  writeTestCluster,
  type TestClusterFiles,
  type TestNode,
} from './helpers/build.ts';

const GiB = 1024 ** 3;

let f: Fixture;
let tmp: string;
before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-build-disk-'));
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

interface Built {
  files: TestClusterFiles;
  lock: string;
  clusterDir: string;
  manifest: Manifest;
}

async function buildCluster(dir: string, cluster: string, osVersion: string | undefined, nodes: TestNode[]): Promise<Built> {
  const files = await writeTestCluster(dir, f, { name: cluster, osVersion, nodes });
  const lock = join(dir, 'bramble.lock');
  const r = await buildWithCli(files, { outDir: join(dir, 'out'), cacheDir: warmBuildCache(), lockPath: lock, targets: ['pc', 'rpi4'] });
  assert.equal(r.code, 0, explainCli(r));
  const clusterDir = join(dir, 'out', cluster);
  const manifest = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
  return { files, lock, clusterDir, manifest };
}

/** A copy of one partition in its own file, for tools that take no offset. */
async function partitionFile(image: string, name: string): Promise<string> {
  const span = partitionSpan(await sfdiskTable(image), name);
  const dest = await mkdtemp(join(tmp, `${name.toLowerCase()}-`));
  const file = join(dest, `${name}.img`);
  await extractPartition(image, span, file);
  return file;
}

/** Paths of the files on a FAT image, from mtools. */
async function fatFiles(fat: string): Promise<string[]> {
  const { stdout } = await run('mdir', ['-/', '-b', '-i', fat, '::/']);
  return stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('::/') && !l.endsWith('/'))
    .map((l) => l.slice(3))
    .sort();
}

/** The bytes of one file on a FAT image (mcopy to a temp file: mtype would convert text). */
async function fatRead(fat: string, path: string): Promise<Buffer> {
  const out = join(await mkdtemp(join(tmp, 'fat-read-')), 'file');
  await run('mcopy', ['-n', '-i', fat, `::/${path}`, out]);
  return readFile(out);
}

const layouts = [
  { title: '2025 layout (stable current 4593.2.5)', cluster: 'disk-2025', osVersion: undefined, version: '4593.2.5', size: 8455716864 },
  { title: 'old layout (stable 4459.2.4 pinned)', cluster: 'disk-old', osVersion: '4459.2.4', version: '4459.2.4', size: 4756340736 },
] as const;

const nodeSpecs = [
  { name: 'pc-1', hardware: 'pc', kernelArgs: ['bramble.node=pc-1'], board: 'amd64-usr', edited: ['OEM'] },
  { name: 'pi-1', hardware: 'rpi4', kernelArgs: ['bramble.node=pi-1'], board: 'arm64-usr', edited: ['OEM', 'EFI-SYSTEM'] },
] as const;

for (const L of layouts) {
  describe(`bramble build --target pc --target rpi4, ${L.title}`, () => {
    let b: Built;
    before(async () => {
      const nodes: TestNode[] = nodeSpecs.map((n) => ({ name: n.name, hardware: n.hardware, kernelArgs: [...n.kernelArgs] }));
      // The 2025 layout also carries a node with `size`, so the reproducibility build covers a grown image too.
      if (L.version === '4593.2.5') nodes.push({ name: 'big-1', hardware: 'pc', size: '10GiB' });
      b = await buildCluster(join(tmp, L.cluster), L.cluster, L.osVersion, nodes);
    });

    test('the lock and the manifest name the requested Flatcar release', async () => {
      const lock = JSON.parse(await readFile(b.lock, 'utf8')) as { os: { version: string } };
      assert.equal(lock.os.version, L.version);
      for (const arch of ['amd64', 'arm64']) {
        assert.equal(b.manifest.inputs.find((i) => i.id === `flatcar-image-${arch}`)?.version, L.version);
      }
      assert.equal(b.manifest.inputs.find((i) => i.id === 'rpi4-uefi-firmware-arm64')?.version, '1.50');
    });

    for (const n of nodeSpecs) {
      const image = () => join(b.clusterDir, 'images', `${n.name}.img`);

      test(`${n.name} (${n.hardware}): sgdisk -v, fsck.vfat -n on the ESP and btrfs check on the OEM are clean`, async () => {
        assert.equal((await stat(image())).size, L.size);
        const v = await run('sgdisk', ['-v', image()]);
        assert.match(v.stdout, /No problems found/, v.stdout);
        const esp = await partitionFile(image(), 'EFI-SYSTEM');
        await run('fsck.vfat', ['-n', esp]);
        const oem = await partitionFile(image(), 'OEM');
        await run('btrfs', ['check', '--readonly', oem]);
      });

      test(`${n.name} (${n.hardware}): the OEM holds exactly configs/${n.name}.ign and a grub.cfg appending the kernel args`, async () => {
        const span = partitionSpan(await sfdiskTable(image()), 'OEM');
        assert.deepEqual(await listBtrfs(image(), span), ['/config.ign', '/grub.cfg']);
        const config = await readFile(join(b.clusterDir, 'configs', `${n.name}.ign`));
        assert.ok((await readBtrfsFile(image(), span, 'config.ign')).equals(config));
        const grub = (await readBtrfsFile(image(), span, 'grub.cfg')).toString('utf8');
        assert.match(grub, new RegExp(`^set linux_append="\\$linux_append bramble\\.test=yes ${n.kernelArgs[0].replace('.', '\\.')}"$`, 'm'), grub);
        // The user's snippet reached the node's Ignition.
        const ign = JSON.parse(config.toString('utf8')) as { storage: { files: Array<{ path: string; contents?: { source?: string } }> } };
        const file = ign.storage.files.find((x) => x.path === SNIPPET_PATH);
        assert.ok(file?.contents?.source, `${SNIPPET_PATH} in the Ignition config`);
        assert.equal(decodeDataUrl(file.contents.source), SNIPPET_CONTENTS);
      });

      test(`${n.name} (${n.hardware}): bmaptool copy of the image with its bmap reproduces the image`, async () => {
        const copy = join(await mkdtemp(join(tmp, 'bmapcopy-')), 'copy.img');
        await run('bmaptool', ['copy', '--bmap', `${image()}.bmap`, image(), copy]);
        assert.equal(await firstDifference(image(), copy), undefined);
        await rm(copy);
      });

      test(`${n.name} (${n.hardware}): outside ${n.edited.join(' and ')} every byte equals the base image`, async () => {
        const base = flatcarRelease(f, 'stable', n.board, L.version).rawImage;
        const table = await sfdiskTable(image());
        assert.deepEqual(table, await sfdiskTable(base), 'same partition table');
        const skip = n.edited.map((name): [number, number] => {
          const s = partitionSpan(table, name);
          return [s.offset, s.offset + s.size];
        });
        const at = await firstDifference(base, image(), skip);
        assert.equal(at, undefined, `first difference at byte ${at}`);
      });
    }

    test('pi-1 (rpi4): the ESP carries the RPi4 UEFI firmware and the documented config.txt, and keeps first_boot and GRUB', async () => {
      const esp = await partitionFile(join(b.clusterDir, 'images', 'pi-1.img'), 'EFI-SYSTEM');
      const files = await fatFiles(esp);
      for (const want of ['RPI_EFI.fd', 'start4.elf', 'fixup4.dat', 'bcm2711-rpi-4-b.dtb', 'config.txt', 'overlays/miniuart-bt.dtbo', 'overlays/upstream-pi4.dtbo', 'flatcar/first_boot', 'EFI/boot/bootaa64.efi']) {
        assert.ok(files.some((p) => p.toLowerCase() === want.toLowerCase()), `${want} on the ESP (have ${files.join(', ')})`);
      }
      assert.equal((await fatRead(esp, 'config.txt')).toString('utf8'), RPI4_CONFIG_TXT);
      assert.match(RPI4_CONFIG_TXT, /^armstub=RPI_EFI\.fd$/m);
      // The Pi's own boot files are the release zip's bytes; RPI_EFI.fd keeps its size (its variable store may be edited).
      const zipDir = await mkdtemp(join(tmp, 'rpi4-zip-'));
      await run('unzip', ['-q', f.firmware.rpi4.zip, '-d', zipDir]);
      for (const member of ['start4.elf', 'fixup4.dat', 'bcm2711-rpi-4-b.dtb', 'overlays/upstream-pi4.dtbo', 'RPI_EFI.fd']) {
        const fromZip = await readFile(join(zipDir, member));
        const onEsp = await fatRead(esp, member);
        if (member === 'RPI_EFI.fd') assert.equal(onEsp.length, fromZip.length);
        else assert.ok(onEsp.equals(fromZip), `${member} equals the zip's`);
      }
    });

    test('manifest.json lists every artefact with its sha256, SHA256SUMS verifies (sha256sum -c), secrets are 0600', async () => {
      const onDisk: string[] = [];
      const walk = async (d: string): Promise<void> => {
        for (const e of await readdir(d, { withFileTypes: true })) {
          if (e.isDirectory()) await walk(join(d, e.name));
          else onDisk.push(relative(b.clusterDir, join(d, e.name)));
        }
      };
      await walk(b.clusterDir);
      const listed = b.manifest.artefacts.map((a) => a.path).sort();
      assert.deepEqual(onDisk.filter((p) => p !== 'manifest.json' && p !== 'SHA256SUMS').sort(), listed);
      const sums = await readFile(join(b.clusterDir, 'SHA256SUMS'), 'utf8');
      for (const a of b.manifest.artefacts) {
        assert.match(a.sha256, /^[0-9a-f]{64}$/);
        assert.ok(sums.includes(`${a.sha256}  ${a.path}\n`), `${a.path} in SHA256SUMS`);
        assert.equal(a.size, (await stat(join(b.clusterDir, a.path))).size, a.path);
      }
      const names = b.manifest.nodes.map((x) => x.name);
      for (const node of names) {
        for (const [path, kind, secret] of [
          [`images/${node}.img`, 'disk-image', true],
          [`images/${node}.img.bmap`, 'bmap', false],
          [`configs/${node}.ign`, 'ignition', true],
        ] as const) {
          const a = b.manifest.artefacts.find((x) => x.path === path);
          assert.ok(a, `${path} in the manifest`);
          assert.equal(a.kind, kind);
          assert.equal(a.secret, secret, `${path} secret`);
          assert.equal((await stat(join(b.clusterDir, path))).mode & 0o777, secret ? 0o600 : 0o644, `${path} mode`);
        }
      }
      if (L.version === '4459.2.4') {
        const check = await run('sha256sum', ['--strict', '-c', 'SHA256SUMS'], { cwd: b.clusterDir });
        assert.equal(check.stdout.trim().split('\n').length, b.manifest.artefacts.length);
      } else {
        // The same check without reading 26 GiB of holes: sha256sum for the small files, holes hashed as zeros for images.
        const small = sums.split('\n').filter((l) => l && !l.endsWith('.img')).join('\n') + '\n';
        await run('sha256sum', ['--strict', '-c', '-'], { cwd: b.clusterDir, input: small });
        for (const a of b.manifest.artefacts.filter((x) => x.kind === 'disk-image')) {
          assert.equal(await sha256Allocated(join(b.clusterDir, a.path)), a.sha256, a.path);
        }
      }
    });

    if (L.version === '4593.2.5') {
      test('size = "10GiB": a 10 GiB image whose ROOT reaches the new end, other partitions unchanged, sgdisk -v clean', async () => {
        const image = join(b.clusterDir, 'images', 'big-1.img');
        assert.equal((await stat(image)).size, 10 * GiB);
        const v = await run('sgdisk', ['-v', image]);
        assert.match(v.stdout, /No problems found/, v.stdout);
        const grown = await sfdiskTable(image);
        const base = await sfdiskTable(flatcarRelease(f, 'stable', 'amd64-usr', L.version).rawImage);
        assert.equal(grown.lastlba, (10 * GiB) / 512 - 34);
        const root = grown.partitions.find((p) => p.name === 'ROOT')!;
        assert.equal(root.start + root.size - 1, grown.lastlba);
        assert.deepEqual(
          grown.partitions.filter((p) => p.name !== 'ROOT'),
          base.partitions.filter((p) => p.name !== 'ROOT'),
        );
        assert.equal(root.start, base.partitions.find((p) => p.name === 'ROOT')!.start);
      });

      test('the same build twice (other --out, same lock, same SOURCE_DATE_EPOCH) gives byte-identical SHA256SUMS', async () => {
        const out2 = join(tmp, `${L.cluster}-again`);
        await mkdir(out2, { recursive: true });
        const r = await buildWithCli(b.files, { outDir: out2, cacheDir: warmBuildCache(), lockPath: b.lock, targets: ['pc', 'rpi4'] });
        assert.equal(r.code, 0, explainCli(r));
        const first = await readFile(join(b.clusterDir, 'SHA256SUMS'), 'utf8');
        const second = await readFile(join(out2, L.cluster, 'SHA256SUMS'), 'utf8');
        assert.equal(second, first);
        assert.match(first, /  images\/big-1\.img\n/);
        await rm(out2, { recursive: true, force: true });
      });
    }
  });
}

describe('building without root', () => {
  test('bramble build --target pc as uid/gid 65534 (setpriv) with its own cold cache succeeds', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('not root: the whole suite already runs as an unprivileged user');
    const dir = await mkdtemp(join(tmpdir(), 'bramble-nonroot-'));
    try {
      const files = await writeTestCluster(dir, f, { name: 'nonroot', osVersion: '4459.2.4', nodes: [{ name: 'pc-1', hardware: 'pc' }] });
      await mkdir(join(dir, 'tmp'));
      await run('chown', ['-R', '65534:65534', dir]);
      await chown(dir, 65534, 65534);
      const r = await buildWithCli(files, {
        outDir: join(dir, 'out'),
        cacheDir: join(dir, 'cache'),
        lockPath: join(dir, 'bramble.lock'),
        targets: ['pc'],
        env: { HOME: dir, TMPDIR: join(dir, 'tmp'), XDG_CACHE_HOME: join(dir, 'cache-home') },
        asUser: { uid: 65534, gid: 65534 },
      });
      assert.equal(r.code, 0, explainCli(r));
      const image = join(dir, 'out', 'nonroot', 'images', 'pc-1.img');
      const s = await stat(image);
      assert.equal(s.uid, 65534);
      assert.equal(s.mode & 0o777, 0o600);
      assert.match((await run('sgdisk', ['-v', image])).stdout, /No problems found/);
      await run('sha256sum', ['--strict', '-c', 'SHA256SUMS'], { cwd: join(dir, 'out', 'nonroot') });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

function decodeDataUrl(url: string): string {
  const m = /^data:([^,]*),(.*)$/s.exec(url);
  if (!m) throw new Error(`not a data URL: ${url.slice(0, 40)}`);
  return m[1].endsWith(';base64') ? Buffer.from(m[2], 'base64').toString('utf8') : decodeURIComponent(m[2]);
}
