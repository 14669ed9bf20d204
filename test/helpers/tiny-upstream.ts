// Tiny upstream release trees for the fetch tests, in the real formats: Flatcar's DIGESTS files,
// detached and clearsigned OpenPGP signatures by keys made here with openpgp.js, version.txt,
// HypriotOS zips with sha256sum files, dl.k8s.io bare-hex checksums. Served by UpstreamServer.
import * as openpgp from 'openpgp';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../builders/exec.ts';
import type { ClusterSpec, NodeSpec, Sources } from '../../builders/spec.ts';
import { defaultSources } from '../../builders/spec.ts';
import type { UpstreamServer } from './upstream-server.ts';

export interface TestKey {
  privateKey: openpgp.PrivateKey;
  armoredPublic: string;
  fingerprint: string;
}

export async function makeKey(name: string): Promise<TestKey> {
  const { privateKey, publicKey } = await openpgp.generateKey({
    type: 'ecc',
    curve: 'curve25519Legacy',
    userIDs: [{ name, email: `${name.toLowerCase().replace(/\W+/g, '-')}@example.test` }],
    format: 'object',
  });
  return { privateKey, armoredPublic: publicKey.armor(), fingerprint: publicKey.getFingerprint() };
}

export async function detachedSignature(data: Uint8Array, key: TestKey): Promise<Buffer> {
  const sig = await openpgp.sign({ message: await openpgp.createMessage({ binary: data }), signingKeys: key.privateKey, detached: true, format: 'binary' });
  return Buffer.from(sig as Uint8Array);
}

export async function clearsign(text: string, key: TestKey): Promise<string> {
  return openpgp.sign({ message: await openpgp.createCleartextMessage({ text }), signingKeys: key.privateKey });
}

const hex = (algo: string, data: Uint8Array) => createHash(algo).update(data).digest('hex');

/** A Flatcar `.DIGESTS` file (sections MD5/SHA1/SHA512, `<hex>  <basename>`). */
export function flatcarDigests(name: string, data: Uint8Array): string {
  return [
    '# MD5 HASH',
    `${hex('md5', data)}  ${name}`,
    '# SHA1 HASH',
    `${hex('sha1', data)}  ${name}`,
    '# SHA512 HASH',
    `${hex('sha512', data)}  ${name}`,
    '',
  ].join('\n');
}

export const sha256 = (data: Uint8Array) => hex('sha256', data);

/** A small sparse "disk image" with data at a few offsets, and its bzip2 compression. */
export interface TestImage {
  raw: Buffer;
  bz2: Buffer;
  /** Where the non-zero bytes are, at 4 KiB granularity: [start, end). */
  dataRanges: Array<[number, number]>;
}

export const TEST_IMAGE_SIZE = 16 * 1024 * 1024;

export async function makeImage(seed = 'image'): Promise<TestImage> {
  const raw = Buffer.alloc(TEST_IMAGE_SIZE);
  raw.write(`bramble test ${seed}`, 5000); // inside the block [4096, 8192)
  randomBytes(300 * 1024).copy(raw, 1024 * 1024); // [1 MiB, 1 MiB + 300 KiB)
  raw.fill(0x5a, 3 * 1024 * 1024 + 8192, 3 * 1024 * 1024 + 8192 + 4096 * 3);
  raw.write('end', TEST_IMAGE_SIZE - 3);
  const dir = await mkdtemp(join(tmpdir(), 'bramble-img-'));
  try {
    await writeFile(join(dir, 'image.bin'), raw);
    await run('bzip2', ['-k', join(dir, 'image.bin')]);
    const bz2 = await readFile(join(dir, 'image.bin.bz2'));
    return {
      raw,
      bz2,
      dataRanges: [
        [4096, 8192],
        [1024 * 1024, 1024 * 1024 + 300 * 1024],
        [3 * 1024 * 1024 + 8192, 3 * 1024 * 1024 + 8192 + 4096 * 3],
        [TEST_IMAGE_SIZE - 4096, TEST_IMAGE_SIZE],
      ],
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A zip holding one sparse `.img`, as HypriotOS releases are. */
export async function makeZip(imgName: string, raw: Buffer): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-zip-'));
  try {
    await writeFile(join(dir, imgName), raw);
    await run('zip', ['-q', '-X', 'out.zip', imgName], { cwd: dir });
    return await readFile(join(dir, 'out.zip'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface FlatcarRelease {
  version: string;
  image: TestImage;
  kernel: Buffer;
  cpio: Buffer;
}

export async function makeFlatcarRelease(version = '4593.2.5'): Promise<FlatcarRelease> {
  return { version, image: await makeImage(version), kernel: randomBytes(64 * 1024), cpio: randomBytes(96 * 1024) };
}

/** Where the test tree lives on the server; sources.flatcar is `${base}${FLATCAR_PREFIX}/{channel}`. */
export const FLATCAR_PREFIX = '/flatcar';

/**
 * Publish a release like the real server: `/{channel}/{board}/{version}/{file}` with `.DIGESTS` and a
 * detached `.sig` (or, with signing 'asc', a clearsigned `.DIGESTS.asc` instead), and `current/version.txt`.
 */
export async function publishFlatcar(
  server: UpstreamServer,
  release: FlatcarRelease,
  key: TestKey,
  opts: { channel?: string; boards?: string[]; signing?: 'sig' | 'asc' } = {},
): Promise<void> {
  const channel = opts.channel ?? 'stable';
  const files: Record<string, Buffer> = {
    'flatcar_production_image.bin.bz2': release.image.bz2,
    'flatcar_production_pxe.vmlinuz': release.kernel,
    'flatcar_production_pxe_image.cpio.gz': release.cpio,
  };
  for (const board of opts.boards ?? ['amd64-usr', 'arm64-usr']) {
    const dir = `${FLATCAR_PREFIX}/${channel}/${board}`;
    server.files.set(
      `${dir}/current/version.txt`,
      Buffer.from(`FLATCAR_BUILD=${release.version.split('.')[0]}\nFLATCAR_VERSION=${release.version}\nFLATCAR_VERSION_ID=${release.version}\nFLATCAR_BUILD_ID=""\n`),
    );
    for (const [name, data] of Object.entries(files)) {
      const path = `${dir}/${release.version}/${name}`;
      const digests = flatcarDigests(name, data);
      server.files.set(path, data);
      server.files.set(`${path}.DIGESTS`, Buffer.from(digests));
      if (opts.signing === 'asc') server.files.set(`${path}.DIGESTS.asc`, Buffer.from(await clearsign(digests, key)));
      else server.files.set(`${path}.sig`, await detachedSignature(data, key));
    }
  }
}

/** iPXE binaries per arch and the RPi4 UEFI firmware zip: upstream publishes no checksums for them. */
export function publishBootFirmware(server: UpstreamServer): void {
  for (const file of ['undionly.kpxe', 'ipxe.efi', 'snponly.efi', 'arm64-efi/snponly.efi']) {
    server.files.set(`/ipxe/${file}`, Buffer.from(`ipxe ${file}\n`));
  }
  server.files.set('/firmware/v1.50/RPi4_UEFI_Firmware_v1.50.zip', Buffer.from('firmware zip stand-in\n'));
}

export function testSources(server: UpstreamServer, key?: TestKey): Sources {
  return {
    ...defaultSources,
    flatcar: `${server.base}${FLATCAR_PREFIX}/{channel}`,
    hypriot: `${server.base}/hypriot`,
    kubernetes: `${server.base}/dl.k8s.io/release`,
    github: `${server.base}/github`,
    ipxe: `${server.base}/ipxe`,
    firmware: `${server.base}/firmware`,
    trustedKeys: key ? [key.armoredPublic] : [],
  };
}

export function node(name: string, over: Partial<NodeSpec> = {}): NodeSpec {
  return { name, role: 'worker', hardware: 'pc', boot: 'disk', install: false, arch: 'amd64', ...over };
}

export function testSpec(sources: Sources, over: Partial<ClusterSpec> = {}): ClusterSpec {
  return {
    name: 'test',
    source: '<test>',
    os: { base: 'flatcar', channel: 'stable', version: 'current' },
    kubernetes: { version: 'v1.33.4', cni: 'flannel' },
    network: { dns: [], podCidr: '10.244.0.0/16', serviceCidr: '10.96.0.0/12' },
    ssh: { authorizedKeys: [] },
    registry: { mirror: false, extraImages: [] },
    sources,
    nodes: [node('cp1', { role: 'control-plane' })],
    ...over,
  };
}

/** Every regular file under `dir`, relative to it and sorted: what a failed fetch must not leave behind. */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (e.isFile()) out.push(join(e.parentPath, e.name).slice(dir.length + 1));
  }
  return out.sort();
}
