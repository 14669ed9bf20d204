// HypriotOS images (issue: os.base = "hypriot"): the NoCloud seed rendered from the same provisioning
// spec as Ignition, checked by cloud-init's own schema checker, written into the FAT boot partition
// with mtools; the MBR (and its disk signature, which cmdline.txt names) and every byte outside the
// FAT and root partitions stay as they were (the root gets the Kubernetes binaries, see
// kubernetes-hypriot.test.ts).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { run } from '../builders/exec.ts';
import type { Manifest } from '../builders/output.ts';
import { readFatFile } from '../images/fat.ts';
import { MBR_FAT_TYPES, MBR_LINUX_TYPE, mbrPartitionBytes, readMbr } from '../images/mbr.ts';
import { extractPartition } from '../images/partition.ts';
import { testCacheRoot } from '../scripts/fixtures/cache.ts';
import { getFixture } from './helpers/fixture.ts';
import { firstDifference } from './helpers/build.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin/bramble.mjs');
const nodes = ['pi-1', 'pi-2', 'pi-3'];

function bramble(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd, env: { ...process.env, CI: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    // 'close', not 'exit': only then has all of stdout been read.
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let tmp: string;
let clusterDir: string;
let manifest: Manifest;
let baseImage: string;

before(async () => {
  const f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-hypriot-'));
  await copyFile(join(root, 'examples/hypriot-rpi3.toml'), join(tmp, 'cluster.toml'));
  await writeFile(join(tmp, 'sources.toml'), f.sourcesToml);
  const r = await bramble(
    ['build', '-c', 'cluster.toml', '--sources', 'sources.toml', '--cache', join(testCacheRoot(), 'build-cache'), '--out', 'out'],
    tmp,
  );
  assert.equal(r.code, 0, r.stderr);
  clusterDir = join(tmp, 'out', 'pi-cluster');
  manifest = JSON.parse(await readFile(join(clusterDir, 'manifest.json'), 'utf8')) as Manifest;
  // The base image as the fetch layer decompressed it (its derived file in the build cache).
  const lock = JSON.parse(await readFile(join(tmp, 'bramble.lock'), 'utf8')) as { inputs: Array<{ id: string; sha256: string }> };
  const zip = lock.inputs.find((i) => i.id === 'hypriot-image-arm')!;
  baseImage = join(tmp, 'base.img');
  const { stdout } = await run('unzip', ['-Z1', f.hypriot.zip]);
  await run('sh', ['-c', `unzip -p "$1" "$2" > "$3"`, 'sh', f.hypriot.zip, stdout.trim().split('\n')[0]!, baseImage]);
  assert.equal(zip.sha256, (await readFile(f.hypriot.sha256, 'utf8')).trim().split(/\s+/)[0]);
});

after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('hypriot: every node gets an image, a bmap and its seed; all listed in the manifest and SHA256SUMS', async () => {
  for (const n of nodes) {
    for (const p of [`images/${n}.img`, `images/${n}.img.bmap`, `configs/${n}/user-data`, `configs/${n}/meta-data`, `configs/${n}/network-config`]) {
      assert.ok(manifest.artefacts.some((a) => a.path === p), `${p} missing from the manifest`);
    }
  }
  await run('sha256sum', ['-c', '--quiet', 'SHA256SUMS'], { cwd: clusterDir });
});

test('hypriot: the rendered user-data passes `cloud-init schema` and network-config is version 2', async () => {
  for (const n of nodes) {
    const userData = join(clusterDir, `configs/${n}/user-data`);
    assert.match(await readFile(userData, 'utf8'), /^#cloud-config\n/);
    await run('cloud-init', ['schema', '--config-file', userData]);
    const net = parseYaml(await readFile(join(clusterDir, `configs/${n}/network-config`), 'utf8')) as { version?: number; network?: { version?: number } };
    assert.equal(net.version ?? net.network?.version, 2);
    const meta = await readFile(join(clusterDir, `configs/${n}/meta-data`), 'utf8');
    assert.match(meta, new RegExp(`instance-id: bramble-pi-cluster-${n}-[0-9a-f]{16}`));
  }
});

test('hypriot: the seed read back from the image equals the rendered files; fsck.vfat is clean', async () => {
  for (const n of nodes) {
    const image = join(clusterDir, `images/${n}.img`);
    const mbr = await readMbr(image);
    const boot = mbr.partitions.find((p) => MBR_FAT_TYPES.has(p.type))!;
    const { offset, size } = mbrPartitionBytes(boot);
    for (const f of ['user-data', 'meta-data', 'network-config']) {
      const inImage = await readFatFile(image, offset, `/${f}`);
      assert.deepEqual(inImage, await readFile(join(clusterDir, `configs/${n}/${f}`)), `${n}: ${f}`);
    }
    const part = join(tmp, `${n}-boot.fat`);
    await extractPartition(image, { offset, size }, part);
    await run('fsck.vfat', ['-n', part]);
    await rm(part);
  }
});

test('hypriot: the MBR, its disk signature and every byte outside the FAT and root partitions equal the base image', async () => {
  const baseMbr = await readMbr(baseImage);
  // The seed goes into the FAT partition, the Kubernetes binaries into the ext4 root: the only bytes the build may change.
  const edited = baseMbr.partitions.filter((p) => MBR_FAT_TYPES.has(p.type) || p.type === MBR_LINUX_TYPE).map(mbrPartitionBytes);
  assert.equal(edited.length, 2);
  for (const n of nodes) {
    const image = join(clusterDir, `images/${n}.img`);
    const mbr = await readMbr(image);
    assert.deepEqual(mbr, baseMbr);
    const skip = edited.map(({ offset, size }): [number, number] => [offset, offset + size]);
    assert.equal(await firstDifference(baseImage, image, skip), undefined, `${n}: a byte outside the FAT and root partitions differs`);
  }
});

test('hypriot: bmaptool copy of image + bmap reproduces the image', async () => {
  const image = join(clusterDir, 'images/pi-1.img');
  const copy = join(tmp, 'copy.img');
  await run('bmaptool', ['-q', 'copy', '--bmap', `${image}.bmap`, image, copy]);
  await run('cmp', [image, copy]);
  await rm(copy);
});

test('hypriot: a malformed user snippet is rejected with exit 2 naming its file, line and key', async () => {
  const dir = await mkdtemp(join(tmp, 'bad-'));
  await writeFile(join(dir, 'bad.yaml'), ['storage:', '  files:', '    - path: /etc/motd', '      mdoe: 0644', '      contents:', '        inline: hi', ''].join('\n'));
  const text = (await readFile(join(root, 'examples/hypriot-rpi3.toml'), 'utf8')).replace('[ssh]', '[provision]\nsnippets = ["bad.yaml"]\n\n[ssh]');
  await writeFile(join(dir, 'cluster.toml'), text);
  const r = await bramble(['plan', '-c', 'cluster.toml'], dir);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /bad\.yaml:4: storage\.files\[0\]\.mdoe: /);
});
