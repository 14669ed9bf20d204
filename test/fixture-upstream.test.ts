// The fixture upstream is checked against the real formats with the tools people trust: sgdisk for the
// GPT, blkid for filesystem labels, sha*sum for DIGESTS and checksum files, gpg for the signatures.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import { flatcarRelease, getFixture, type Fixture } from './helpers/fixture.ts';

// Expected tables written from the reference (base-images.md §2.2), not from the builder's own code.
const GUID = {
  efi: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  bios: '21686148-6449-6E6F-744E-656564454649',
  usr: '5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6',
  data: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  reserved: 'C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0',
  resize: '3884DD41-8582-4404-B9A8-E9B84F2DF50E',
};
type Row = [number, string, string, number, number];
const LAYOUTS: Record<'current' | 'old', { total: number; rows: Row[] }> = {
  current: {
    total: 16515072,
    rows: [
      [1, 'EFI-SYSTEM', GUID.efi, 4096, 2097152],
      [2, 'BIOS-BOOT', GUID.bios, 2101248, 4096],
      [3, 'USR-A', GUID.usr, 2105344, 4194304],
      [4, 'USR-B', GUID.usr, 6299648, 4194304],
      [6, 'OEM', GUID.data, 10493952, 2097152],
      [7, 'OEM-CONFIG', GUID.reserved, 12591104, 131072],
      [9, 'ROOT', GUID.resize, 12722176, 3653632],
    ],
  },
  old: {
    total: 9289728,
    rows: [
      [1, 'EFI-SYSTEM', GUID.efi, 4096, 262144],
      [2, 'BIOS-BOOT', GUID.bios, 266240, 4096],
      [3, 'USR-A', GUID.usr, 270336, 2097152],
      [4, 'USR-B', GUID.usr, 2367488, 2097152],
      [6, 'OEM', GUID.data, 4464640, 262144],
      [7, 'OEM-CONFIG', GUID.reserved, 4726784, 131072],
      [9, 'ROOT', GUID.resize, 4857856, 4427776],
    ],
  },
};
const USR_A_UUID = '7130C94A-213A-4E5A-8E26-6CCE9662F132';
const USR_B_UUID = 'E03DD35C-7C2D-4A47-B3FE-27F15780A57C';

let f: Fixture;
let tmp: string;

before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-fixture-test-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function decompressSparse(bz2: string, out: string) {
  // cp --sparse=always turns the zero runs of the decompressed stream back into holes.
  await run('sh', ['-c', 'lbzip2 -dc "$1" | cp --sparse=always /dev/stdin "$2"', 'sh', bz2, out]);
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

describe('Flatcar disk images', () => {
  for (const [channel, board, layout] of [
    ['stable', 'amd64-usr', 'current'],
    ['lts', 'arm64-usr', 'old'],
  ] as const) {
    test(`${channel} ${board}: decompressed image has Flatcar's ${layout} GPT`, async () => {
      const rel = flatcarRelease(f, channel, board);
      const img = join(tmp, `${channel}-${board}.bin`);
      await decompressSparse(join(rel.dir, 'flatcar_production_image.bin.bz2'), img);
      const expected = LAYOUTS[layout];
      const s = await stat(img);
      assert.equal(s.size, expected.total * 512);
      assert.ok(s.blocks * 512 < 200 * 1024 * 1024, `image data stays small (allocated ${s.blocks * 512} bytes)`);

      const verify = await run('sgdisk', ['-v', img]);
      assert.match(verify.stdout, /No problems found/);
      const p = await run('sgdisk', ['-p', img]);
      assert.match(p.stdout, /Disk identifier \(GUID\): 00000000-0000-0000-0000-000000000001/);
      const rows = p.stdout.split('\n').filter((l) => /^\s+\d+\s+\d+\s+\d+/.test(l)).map((l) => l.trim().split(/\s+/));
      assert.deepEqual(
        rows.map((r) => [Number(r[0]), r.at(-1), Number(r[1]), Number(r[2])]),
        expected.rows.map(([n, name, , start, size]) => [n, name, start, start + size - 1]),
      );
      for (const [n, name, type] of expected.rows) {
        const info = (await run('sgdisk', [`--info=${n}`, img])).stdout;
        assert.match(info, new RegExp(`Partition GUID code: ${type}`), `type of ${name}`);
        assert.match(info, new RegExp(`Partition name: '${name}'`));
        if (name === 'USR-A') {
          assert.match(info, new RegExp(`Partition unique GUID: ${USR_A_UUID}`));
          // cgpt priority=1 (bit 48) and successful (bit 56).
          assert.match(info, /Attribute flags: 0101000000000000/);
        }
        if (name === 'USR-B') assert.match(info, new RegExp(`Partition unique GUID: ${USR_B_UUID}`));
      }
      const fsAt = async (start: number) => (await run('blkid', ['-p', '-O', String(start * 512), '-o', 'export', img])).stdout;
      const byName = Object.fromEntries(expected.rows.map((r) => [r[1], r[3]]));
      assert.match(await fsAt(byName['EFI-SYSTEM']), /LABEL=EFI-SYSTEM[\s\S]*TYPE=vfat/);
      assert.match(await fsAt(byName['EFI-SYSTEM']), /VERSION=FAT32/);
      assert.match(await fsAt(byName.OEM), /LABEL=OEM[\s\S]*TYPE=btrfs/);
      assert.match(await fsAt(byName.ROOT), /LABEL=ROOT[\s\S]*TYPE=ext4/);
      const esp = join(tmp, `${channel}-${board}.esp`);
      await run('dd', [`if=${img}`, `of=${esp}`, 'bs=1M', `skip=${(byName['EFI-SYSTEM'] * 512) / (1024 * 1024)}`, 'count=64', 'conv=sparse', 'status=none']);
      const mdir = await run('mdir', ['-/', '-b', '-i', esp, '::/'], { env: { MTOOLS_SKIP_CHECK: '1' } });
      for (const file of ['::/EFI/boot/boot', '::/flatcar/vmlinuz-a', '::/flatcar/initrd-a', '::/flatcar/first_boot']) {
        assert.ok(mdir.stdout.toLowerCase().includes(file.toLowerCase()), `${file} on the ESP:\n${mdir.stdout}`);
      }
      await rm(img, { force: true });
      await rm(esp, { force: true });
    });
  }

  test('every Flatcar version dir has version.txt and signed image, PXE kernel and PXE cpio', async () => {
    const versions = f.flatcar.map((r) => `${r.channel}/${r.board}/${r.version}`).sort();
    assert.deepEqual(versions, [
      'lts/amd64-usr/4081.3.10', 'lts/arm64-usr/4081.3.10',
      'stable/amd64-usr/4459.2.4', 'stable/amd64-usr/4593.2.5', 'stable/arm64-usr/4459.2.4', 'stable/arm64-usr/4593.2.5',
    ]);
    for (const r of f.flatcar) {
      const names = (await readdir(r.dir)).sort();
      const files = ['flatcar_production_image.bin.bz2', 'flatcar_production_pxe.vmlinuz', 'flatcar_production_pxe_image.cpio.gz'];
      assert.deepEqual(names, ['version.txt', ...files.flatMap((x) => [x, `${x}.DIGESTS`, `${x}.DIGESTS.asc`, `${x}.sig`])].sort());
      const v = await readFile(join(r.dir, 'version.txt'), 'utf8');
      const [build, branch, patch] = r.version.split('.');
      assert.equal(v, `FLATCAR_BUILD=${build}\nFLATCAR_BRANCH=${branch}\nFLATCAR_PATCH=${patch}\nFLATCAR_VERSION=${r.version}\nFLATCAR_VERSION_ID=${r.version}\nFLATCAR_BUILD_ID=""\nFLATCAR_SDK_VERSION=${build}.0.0\n`);
    }
    for (const [channel, version] of [['stable', '4593.2.5'], ['lts', '4081.3.10']]) {
      for (const board of ['amd64-usr', 'arm64-usr']) {
        const cur = await readFile(join(f.root, 'flatcar', channel, board, 'current', 'version.txt'), 'utf8');
        assert.match(cur, new RegExp(`^FLATCAR_VERSION=${version.replaceAll('.', '\\.')}$`, 'm'));
      }
    }
    // Different versions are different bytes, so a client fetching the wrong one cannot pass verification.
    const digests = new Set<string>();
    for (const r of f.flatcar) digests.add(await readFile(join(r.dir, 'flatcar_production_image.bin.bz2.DIGESTS'), 'utf8').then((t) => t.split('\n')[5]));
    assert.equal(digests.size, f.flatcar.length);
  });

  test('DIGESTS files match md5sum, sha1sum and sha512sum', async () => {
    const all = (await walk(join(f.root, 'flatcar'))).filter((p) => p.endsWith('.DIGESTS'));
    assert.equal(all.length, 18);
    for (const d of all) {
      const text = await readFile(d, 'utf8');
      const sections = text.split(/^# (MD5|SHA1|SHA512) HASH\n/m).slice(1);
      assert.deepEqual([sections[0], sections[2], sections[4]], ['MD5', 'SHA1', 'SHA512']);
      const file = d.slice(0, -'.DIGESTS'.length);
      const dir = join(file, '..');
      for (const [i, tool] of [[1, 'md5sum'], [3, 'sha1sum'], [5, 'sha512sum']] as const) {
        const check = await run(tool, ['-c', '-'], { cwd: dir, input: sections[i] });
        assert.match(check.stdout, /: OK$/m);
      }
    }
  });

  test('gpg accepts the .sig and .DIGESTS.asc files with the test key, and not with the other key', async () => {
    const home = await mkdtemp(join(tmpdir(), 'bramble-gnupg-'));
    const otherHome = await mkdtemp(join(tmpdir(), 'bramble-gnupg-'));
    try {
      await run('gpg', ['--batch', '--quiet', '--homedir', home, '--import', f.keys.signingPublicInTree]);
      await run('gpg', ['--batch', '--quiet', '--homedir', otherHome, '--import', f.keys.otherPublicInTree]);
      const sigs = (await walk(join(f.root, 'flatcar'))).filter((p) => p.endsWith('.sig'));
      assert.equal(sigs.length, 18);
      for (const sig of sigs) {
        const file = sig.slice(0, -'.sig'.length);
        const ok = await run('gpg', ['--batch', '--homedir', home, '--verify', sig, file]);
        assert.match(ok.stderr, /Good signature from "bramble fixture signing key/);
        const clear = await run('gpg', ['--batch', '--homedir', home, '--verify', `${file}.DIGESTS.asc`]);
        assert.match(clear.stderr, /Good signature/);
        const wrong = await run('gpg', ['--batch', '--homedir', otherHome, '--verify', sig, file], { okCodes: [1, 2] });
        assert.notEqual(wrong.exitCode, 0);
        assert.match(wrong.stderr, /No public key/);
      }
      // The cleartext signature covers exactly the DIGESTS file.
      const digests = join(flatcarRelease(f, 'stable', 'amd64-usr').dir, 'flatcar_production_image.bin.bz2.DIGESTS');
      const out = await run('gpg', ['--batch', '--homedir', home, '--decrypt', `${digests}.asc`]);
      assert.equal(out.stdout, await readFile(digests, 'utf8'));
    } finally {
      await rm(home, { recursive: true, force: true });
      await rm(otherHome, { recursive: true, force: true });
    }
  });
});

describe('HypriotOS release', () => {
  test('zip + sha256sum-format checksum; MBR with fixed signature, FAT HypriotOS and ext4 root', async () => {
    const sumText = await readFile(f.hypriot.sha256, 'utf8');
    assert.match(sumText, /^[0-9a-f]{64} {2}hypriotos-rpi-v1\.12\.3\.img\.zip\n$/);
    const check = await run('sha256sum', ['-c', f.hypriot.sha256], { cwd: join(f.hypriot.zip, '..') });
    assert.match(check.stdout, /hypriotos-rpi-v1\.12\.3\.img\.zip: OK/);
    const list = await run('unzip', ['-Z1', f.hypriot.zip]);
    assert.equal(list.stdout.trim(), 'hypriotos-rpi-v1.12.3.img');
    const img = join(tmp, 'hypriot.img');
    await run('sh', ['-c', 'unzip -p "$1" | cp --sparse=always /dev/stdin "$2"', 'sh', f.hypriot.zip, img]);
    const table = JSON.parse((await run('sfdisk', ['--json', img])).stdout).partitiontable;
    assert.equal(table.label, 'dos');
    assert.equal(table.id, '0x5c1c6a1e');
    assert.deepEqual(table.partitions.map((p: { start: number; size: number; type: string }) => [p.start, p.size, p.type]), [
      [2048, 131072, 'c'],
      [133120, (1300 * 1024 * 1024) / 512 - 133120, '83'],
    ]);
    assert.match((await run('blkid', ['-p', '-O', String(2048 * 512), '-o', 'export', img])).stdout, /LABEL=HypriotOS[\s\S]*TYPE=vfat/);
    assert.match((await run('blkid', ['-p', '-O', String(133120 * 512), '-o', 'export', img])).stdout, /LABEL=root[\s\S]*TYPE=ext4/);
    const boot = join(tmp, 'hypriot-boot.vfat');
    await run('dd', [`if=${img}`, `of=${boot}`, 'bs=512', 'skip=2048', 'count=131072', 'conv=sparse', 'status=none']);
    const env = { MTOOLS_SKIP_CHECK: '1' };
    const cmdline = await run('mtype', ['-i', boot, '::/cmdline.txt'], { env });
    assert.match(cmdline.stdout, /root=PARTUUID=5c1c6a1e-02 /);
    for (const name of ['config.txt', 'user-data', 'meta-data', 'network-config']) await run('mtype', ['-i', boot, `::/${name}`], { env });
    assert.match((await run('mtype', ['-i', boot, '::/user-data'], { env })).stdout, /^#cloud-config\n/);
    await rm(img, { force: true });
    await rm(boot, { force: true });
  });
});

describe('Kubernetes releases', () => {
  test('dl.k8s.io binaries with bare-hex .sha256/.sha512; crictl hex+newline; CNI sha256sum format', async () => {
    for (const arch of ['amd64', 'arm64', 'arm']) {
      const dir = join(f.root, 'k8s', 'release', 'v1.33.4', 'bin', 'linux', arch);
      for (const name of ['kubelet', 'kubeadm', 'kubectl']) {
        for (const alg of ['sha256', 'sha512'] as const) {
          const text = await readFile(join(dir, `${name}.${alg}`), 'utf8');
          assert.match(text, alg === 'sha256' ? /^[0-9a-f]{64}$/ : /^[0-9a-f]{128}$/);
          const actual = (await run(`${alg}sum`, [join(dir, name)])).stdout.split(' ')[0];
          assert.equal(text, actual);
        }
        const out = await run('sh', [join(dir, name), '--version']);
        assert.match(out.stdout, /v1\.33\.4/);
      }
      const crictlDir = join(f.root, 'github', 'kubernetes-sigs', 'cri-tools', 'releases', 'download', 'v1.33.0');
      const crictl = join(crictlDir, `crictl-v1.33.0-linux-${arch}.tar.gz`);
      const crictlSum = await readFile(`${crictl}.sha256`, 'utf8');
      assert.match(crictlSum, /^[0-9a-f]{64}\n$/);
      assert.equal(crictlSum.trim(), (await run('sha256sum', [crictl])).stdout.split(' ')[0]);
      assert.equal((await run('tar', ['-tzf', crictl])).stdout, 'crictl\n');

      const cniDir = join(f.root, 'github', 'containernetworking', 'plugins', 'releases', 'download', 'v1.7.1');
      const cniName = `cni-plugins-linux-${arch}-v1.7.1.tgz`;
      const check = await run('sha256sum', ['-c', `${cniName}.sha256`], { cwd: cniDir });
      assert.equal(check.stdout, `${cniName}: OK\n`);
      const members = (await run('tar', ['-tvzf', join(cniDir, cniName)])).stdout;
      assert.match(members, /root\/root .* \.\/bridge\n/);
      assert.match(members, /\.\/host-local\n/);
      assert.match(members, /\.\/LICENSE\n/);
    }
    assert.equal(await readFile(join(f.root, 'k8s', 'release', 'stable-1.33.txt'), 'utf8'), 'v1.33.4');
  });
});

describe('firmware releases', () => {
  test('pftf/RPi4-shaped zip: members, config.txt, RamLimitTo3GB=1 in RPI_EFI.fd, device trees', async () => {
    const zip = f.firmware.rpi4.zip;
    assert.equal(zip, join(f.root, 'github/pftf/RPi4/releases/download/v1.50/RPi4_UEFI_Firmware_v1.50.zip'));
    assert.equal((await run('sha256sum', [zip])).stdout.split(' ')[0], f.firmware.rpi4.sha256);
    const members = (await run('unzip', ['-Z1', zip])).stdout.trim().split('\n').sort();
    assert.deepEqual(members, ['RPI_EFI.fd', 'Readme.md', 'bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb', 'config.txt', 'fixup4.dat', 'overlays/miniuart-bt.dtbo', 'overlays/upstream-pi4.dtbo', 'start4.elf']);
    const member = async (name: string) => (await run('unzip', ['-p', zip, name], { binary: true })).stdoutBytes!;
    assert.equal(
      (await run('unzip', ['-p', zip, 'config.txt'])).stdout,
      'arm_64bit=1\narm_boost=1\nenable_uart=1\nuart_2ndstage=1\nenable_gic=1\narmstub=RPI_EFI.fd\ndisable_commandline_tags=1\ndisable_overscan=1\ndevice_tree_address=0x3e0000\ndevice_tree_end=0x400000\ndtoverlay=miniuart-bt\ndtoverlay=upstream-pi4\n',
    );
    const dir = await mkdtemp(join(tmp, 'rpi4-'));
    await run('unzip', ['-q', zip, '-d', dir]);
    const fd = await readFile(join(dir, 'RPI_EFI.fd'));
    // An authenticated variable header (EDK2 VariableFormat.h) right before the UTF-16 name.
    const name = Buffer.from('RamLimitTo3GB\0', 'utf16le');
    const at = fd.indexOf(name);
    assert.ok(at > 60, 'RamLimitTo3GB is in RPI_EFI.fd');
    const h = at - 60;
    assert.equal(fd.readUInt16LE(h), 0x55aa, 'StartId');
    assert.equal(fd[h + 2], 0x3f, 'State VAR_ADDED');
    assert.equal(fd.readUInt32LE(h + 4), 7, 'NV+BS+RT');
    // Packed: StartId 2, State 1, Reserved 1, Attributes 4, MonotonicCount 8, TimeStamp 16, PubKeyIndex 4, then NameSize, DataSize, VendorGuid.
    assert.equal(fd.readUInt32LE(h + 36), name.length, 'NameSize');
    assert.equal(fd.readUInt32LE(h + 40), 4, 'DataSize');
    assert.equal(fd.subarray(h + 44, h + 60).toString('hex'), '58c27ccddb31e6229f2263b0b8eed6b5', 'VendorGuid');
    assert.equal(fd.readUInt32LE(at + name.length), 1, 'RamLimitTo3GB = 1 (the limit is on, as pftf ships it)');
    for (const dtb of ['bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb', 'overlays/miniuart-bt.dtbo', 'overlays/upstream-pi4.dtbo']) {
      const b = await readFile(join(dir, dtb));
      assert.equal(b.readUInt32BE(0), 0xd00dfeed, `${dtb} is a flattened device tree`);
      assert.equal(b.readUInt32BE(4), b.length, `${dtb} totalsize`);
    }
    assert.equal((await readFile(join(dir, 'start4.elf'))).subarray(0, 4).toString('latin1'), '\x7fELF');
  });

  test('iPXE binaries from Debian, with their sha256', async () => {
    assert.deepEqual(Object.keys(f.firmware.ipxe).sort(), ['ipxe.efi', 'snponly.efi', 'undionly.kpxe']);
    for (const [name, { path, sha256 }] of Object.entries(f.firmware.ipxe)) {
      assert.equal(path, join(f.root, 'ipxe', name));
      assert.equal((await run('sha256sum', [path])).stdout.split(' ')[0], sha256);
      if (name.endsWith('.efi')) assert.equal((await readFile(path)).subarray(0, 2).toString('latin1'), 'MZ', `${name} is a PE image`);
    }
  });
});

describe('fixture server', () => {
  test('serves the tree with HEAD, ranges, 404 and a request log; sourcesToml points at it', async () => {
    const s = f.server;
    const path = '/flatcar/stable/amd64-usr/current/version.txt';
    const body = await readFile(join(f.root, path), 'utf8');
    s.requests.length = 0;

    const get = await fetch(s.url + path);
    assert.equal(get.status, 200);
    assert.equal(await get.text(), body);
    const head = await fetch(s.url + path, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(Buffer.byteLength(body)));
    assert.equal(head.headers.get('accept-ranges'), 'bytes');
    const part = await fetch(s.url + path, { headers: { Range: 'bytes=10-' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 10-${Buffer.byteLength(body) - 1}/${Buffer.byteLength(body)}`);
    assert.equal(await part.text(), body.slice(10));
    const beyond = await fetch(s.url + path, { headers: { Range: `bytes=${Buffer.byteLength(body)}-` } });
    assert.equal(beyond.status, 416);
    await beyond.arrayBuffer();
    const missing = await fetch(`${s.url}/flatcar/stable/amd64-usr/9999.0.0/version.txt`);
    assert.equal(missing.status, 404);
    await missing.arrayBuffer();
    const escape = await fetch(`${s.url}/..%2f..%2fetc/passwd`);
    assert.equal(escape.status, 404);
    await escape.arrayBuffer();

    assert.deepEqual(
      s.requests.map((r) => [r.method, r.status, r.range]),
      [['GET', 200, undefined], ['HEAD', 200, undefined], ['GET', 206, 'bytes=10-'], ['GET', 416, `bytes=${Buffer.byteLength(body)}-`], ['GET', 404, undefined], ['GET', 404, undefined]],
    );
    assert.equal(s.requests[0].path, path);

    assert.match(s.sourcesToml, new RegExp(`^flatcar = "${s.url}/flatcar/\\{channel\\}"$`, 'm'));
    assert.match(s.sourcesToml, new RegExp(`^kubernetes = "${s.url}/k8s/release"$`, 'm'));
    assert.match(s.sourcesToml, new RegExp(`^trusted_keys = \\["${f.root}/keys/test-signing-key.asc"\\]$`, 'm'));
    // The template resolves to the file this test read from disk.
    const v = await fetch(`${s.sourcesToml.match(/^flatcar = "(.*)"$/m)![1].replace('{channel}', 'stable')}/amd64-usr/current/version.txt`);
    assert.equal(await v.text(), body);
    // Every base URL of the block, completed the way builders/spec.ts documents each Sources field.
    const base = (key: string) => s.sourcesToml.match(new RegExp(`^${key} = "(.*)"$`, 'm'))![1];
    for (const url of [
      `${base('hypriot')}/v1.12.3/hypriotos-rpi-v1.12.3.img.zip`,
      `${base('kubernetes')}/v1.33.4/bin/linux/arm64/kubelet`,
      `${base('github')}/kubernetes-sigs/cri-tools/releases/download/v1.33.0/crictl-v1.33.0-linux-arm64.tar.gz`,
      `${base('github')}/containernetworking/plugins/releases/download/v1.7.1/cni-plugins-linux-amd64-v1.7.1.tgz.sha256`,
      `${base('ipxe')}/undionly.kpxe`,
      `${base('firmware')}/v1.50/RPi4_UEFI_Firmware_v1.50.zip`,
      `${base('flatcar').replace('{channel}', 'lts')}/arm64-usr/current-2024/flatcar_production_image.bin.bz2.sig`,
    ]) {
      const r = await fetch(url, { method: 'HEAD' });
      assert.equal(r.status, 200, url);
    }
  });

  test('injected faults: truncated body, replaced body, error status', async () => {
    const s = f.server;
    const path = '/flatcar/stable/amd64-usr/current/flatcar_production_pxe.vmlinuz';
    s.faults.set(path, { kind: 'truncate', afterBytes: 1000 });
    await assert.rejects(async () => {
      const r = await fetch(s.url + path);
      await r.arrayBuffer();
    });
    s.faults.set(path, { kind: 'body', data: 'tampered' });
    assert.equal(await (await fetch(s.url + path)).text(), 'tampered');
    s.faults.set(path, { kind: 'status', status: 503 });
    const r = await fetch(s.url + path);
    assert.equal(r.status, 503);
    await r.arrayBuffer();
    s.faults.clear();
    const ok = await fetch(s.url + path, { method: 'HEAD' });
    assert.equal(ok.headers.get('content-length'), String((await stat(join(f.root, path))).size));
  });
});
