// `npm run bench:registry [-- --images 12] [-- --layer-mib 2] [-- --base-mib 8]`: bundle N multi-arch
// images from a loopback docker-registry for amd64 + arm64, with bramble's code (pull into a cold blob
// store, then the distribution tree and one OCI archive per arch) against `skopeo sync --src yaml
// --dest dir` of the same set (one run per arch: skopeo picks one platform per run). The upstream is
// seeded like the tests: deterministic images (each arch: a base layer shared by every image and one
// layer of its own, incompressible bytes; plus an arm/v7 child and an attestation that both tools
// skip) written as distribution storage and served by Debian's docker-registry. Prints time and
// bytes for each side and the ratios.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { run } from '../../builders/exec.ts';
import { discardEvents } from '../../builders/events.ts';
import { distributionTreeFiles, writeDistributionTree } from '../../images/registry/distribution-tree.ts';
import { ociArchiveContent, writeOciArchive } from '../../images/registry/oci-archive.ts';
import { ustarHeader } from '../../images/ustar.ts';
import { pullImages } from '../../images/registry/pull.ts';
import { blobPath, type Descriptor, type PulledImage, type PulledPlatform } from '../../images/registry/types.ts';
import { startDockerRegistry } from '../../test/helpers/registry.ts';

const args = parseArgs({ options: { images: { type: 'string' }, 'layer-mib': { type: 'string' }, 'base-mib': { type: 'string' } } }).values;
const imageCount = Math.max(1, Math.min(200, Number(args.images ?? '12')));
const layerBytes = Math.round(Number(args['layer-mib'] ?? '2') * 1048576);
const baseBytes = Math.round(Number(args['base-mib'] ?? '8') * 1048576);
const ARCHES = ['amd64', 'arm64'];
const UPSTREAM_PLATFORMS = [{ architecture: 'amd64' }, { architecture: 'arm64' }, { architecture: 'arm', variant: 'v7' }];
/** The registry host the images are named under; the bench remaps it to the loopback registry. */
const HOST = 'bench.example';
const log = (line: string) => process.stderr.write(`${line}\n`);
const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Incompressible, deterministic bytes: sha256 in counter mode over `seed`. */
function noise(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0, at = 0; at < size; i++, at += 32) createHash('sha256').update(`${seed}/${i}`).digest().copy(out, at, 0, Math.min(32, size - at));
  return out;
}

async function put(store: string, mediaType: string, bytes: Buffer): Promise<Descriptor> {
  const d = { mediaType, digest: sha(bytes), size: bytes.length };
  await writeFile(blobPath(store, d.digest), bytes);
  return d;
}

/** A gzip layer holding one file of `size` noise bytes. */
async function layer(store: string, name: string, size: number): Promise<{ d: Descriptor; diffId: string }> {
  const data = noise(name, size);
  const tar = Buffer.concat([
    ustarHeader(`bench/${name}`, { size, mode: 0o644, mtime: 0, type: 'file' }),
    data,
    Buffer.alloc((512 - (size % 512)) % 512),
    Buffer.alloc(1024),
  ]);
  return { d: await put(store, 'application/vnd.oci.image.layer.v1.tar+gzip', gzipSync(tar, { level: 1 })), diffId: sha(tar) };
}

/** Seed the upstream store: every image with all its platforms, as a PulledImage each (all platforms kept). */
async function seed(store: string): Promise<PulledImage[]> {
  await mkdir(join(store, 'sha256'), { recursive: true });
  const bases = new Map<string, { d: Descriptor; diffId: string }>();
  for (const p of UPSTREAM_PLATFORMS) bases.set(p.architecture, await layer(store, `base-${p.architecture}`, baseBytes));
  const images: PulledImage[] = [];
  for (let i = 1; i <= imageCount; i++) {
    const repository = `img-${i}`;
    const platforms: PulledPlatform[] = [];
    for (const p of UPSTREAM_PLATFORMS) {
      const own = await layer(store, `${repository}-${p.architecture}`, layerBytes);
      const base = bases.get(p.architecture)!;
      const config = await put(
        store,
        'application/vnd.oci.image.config.v1+json',
        Buffer.from(JSON.stringify({ architecture: p.architecture, os: 'linux', ...('variant' in p ? { variant: p.variant } : {}), rootfs: { type: 'layers', diff_ids: [base.diffId, own.diffId] } })),
      );
      const m = await put(store, 'application/vnd.oci.image.manifest.v1+json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: [base.d, own.d] })));
      platforms.push({ ...m, os: 'linux', architecture: p.architecture, ...('variant' in p ? { variant: p.variant } : {}), config, layers: [base.d, own.d] });
    }
    const statement = await put(store, 'application/vnd.in-toto+json', Buffer.from(JSON.stringify({ subject: repository })));
    const attCfg = await put(store, 'application/vnd.oci.image.config.v1+json', Buffer.from('{"architecture":"unknown","os":"unknown"}'));
    const att = await put(store, 'application/vnd.oci.image.manifest.v1+json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: attCfg, layers: [statement] })));
    const manifests = [
      ...platforms.map((c) => ({ mediaType: c.mediaType, digest: c.digest, size: c.size, platform: { architecture: c.architecture, os: 'linux', ...(c.variant ? { variant: c.variant } : {}) } })),
      { ...att, annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': platforms[0]!.digest }, platform: { architecture: 'unknown', os: 'unknown' } },
    ];
    const top = await put(store, 'application/vnd.oci.image.index.v1+json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests })));
    const blobs = new Map<string, Descriptor>([[top.digest, top], [att.digest, att], [attCfg.digest, attCfg], [statement.digest, statement]]);
    for (const c of platforms) for (const b of [c, c.config, ...c.layers]) blobs.set(b.digest, { mediaType: b.mediaType, digest: b.digest, size: b.size });
    images.push({ ref: `${HOST}/${repository}:1.0`, name: { registry: HOST, repository, tag: '1.0' }, top, platforms, blobs: [...blobs.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1)) });
  }
  return images;
}

/** Files under `dir` and their bytes, each inode counted once (and not at all when in `shared`). */
async function bytesUnder(dir: string, shared: ReadonlySet<number> = new Set()): Promise<{ bytes: number; files: number; inodes: Set<number> }> {
  let bytes = 0;
  let files = 0;
  const inodes = new Set<number>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const s = await stat(join(e.parentPath, e.name));
    files++;
    if (inodes.has(s.ino)) continue;
    inodes.add(s.ino);
    if (!shared.has(s.ino)) bytes += s.size;
  }
  return { bytes, files, inodes };
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

const work = await mkdtemp(join(tmpdir(), 'bramble-bench-registry-'));
try {
  log(`seeding ${imageCount} images (${UPSTREAM_PLATFORMS.length} platforms + attestation each; base layer ${mib(baseBytes)} per arch shared, ${mib(layerBytes)} own layer per arch)`);
  const upstreamStore = join(work, 'upstream-store');
  const seeded = await seed(upstreamStore);
  const upstreamRoot = join(work, 'upstream');
  await writeDistributionTree(distributionTreeFiles(seeded), { rootDir: upstreamRoot, storeRoot: upstreamStore });
  const reg = await startDockerRegistry(join(work, 'upstream-run'), { storage: upstreamRoot, readOnly: true });
  try {
    const refs = seeded.map((i) => i.ref);
    // bramble: pull (cold store), then the tree and the per-arch archives, as a build does.
    const store = join(work, 'bramble-store');
    const pull = await timed(() =>
      pullImages({
        refs,
        platforms: ARCHES.map((a) => `linux/${a}`),
        storeRoot: store,
        registries: { [HOST]: `http://${reg.host}/${HOST}` },
        signal: new AbortController().signal,
        events: discardEvents,
      }),
    );
    const out = join(work, 'bramble-out');
    const write = await timed(async () => {
      await writeDistributionTree(distributionTreeFiles(pull.value), { rootDir: join(out, 'registry'), storeRoot: store });
      for (const arch of ARCHES) {
        await mkdir(join(out, 'oci'), { recursive: true });
        await writeOciArchive(ociArchiveContent(pull.value, arch), { storeRoot: store, dest: join(out, 'oci', `${arch}.oci.tar`), epoch: 0, signal: new AbortController().signal });
      }
    });
    const storeBytes = await bytesUnder(store);
    // Blobs in the tree are hardlinks of the store: only the link files are new bytes.
    const tree = await bytesUnder(join(out, 'registry'), storeBytes.inodes);
    const archives = await bytesUnder(join(out, 'oci'));

    // skopeo sync: the same images, one run per arch into dir: layouts.
    const yaml = join(work, 'sync.yaml');
    await writeFile(yaml, [`${reg.host}:`, '  tls-verify: false', '  images:', ...seeded.map((i) => `    ${HOST}/${i.name.repository}: ["1.0"]`), ''].join('\n'));
    const skopeoDest = join(work, 'skopeo');
    const sync = await timed(async () => {
      for (const arch of ARCHES) {
        await mkdir(join(skopeoDest, arch), { recursive: true });
        await run('skopeo', ['sync', '--src', 'yaml', '--dest', 'dir', '--override-arch', arch, '--override-os', 'linux', '--preserve-digests', yaml, join(skopeoDest, arch)]);
      }
    });
    const skopeo = await bytesUnder(skopeoDest);

    const rows = [
      ['', 'time', 'bytes on disk', 'files'],
      ['bramble pull (cold store)', `${(pull.ms / 1000).toFixed(2)} s`, `${mib(storeBytes.bytes)} (unique blobs)`, String(storeBytes.files)],
      ['bramble tree + 2 OCI archives', `${(write.ms / 1000).toFixed(2)} s`, `tree +${tree.bytes} B (blobs hardlinked), archives ${mib(archives.bytes)}`, `${tree.files} + ${archives.files}`],
      ['bramble total', `${((pull.ms + write.ms) / 1000).toFixed(2)} s`, mib(storeBytes.bytes + tree.bytes + archives.bytes), ''],
      ['skopeo sync --dest dir (x2 arches)', `${(sync.ms / 1000).toFixed(2)} s`, mib(skopeo.bytes), String(skopeo.files)],
    ];
    const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
    for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
    console.log(`\n${imageCount} images x ${ARCHES.length} arches; time ratio skopeo/bramble-total ${(sync.ms / (pull.ms + write.ms)).toFixed(2)}; ` +
      `served-mirror bytes: bramble ${mib(storeBytes.bytes)} vs skopeo dir ${mib(skopeo.bytes)} (ratio ${(skopeo.bytes / storeBytes.bytes).toFixed(2)})`);
  } finally {
    await reg.stop();
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
