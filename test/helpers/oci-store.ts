// Tiny, deterministic OCI images written straight into a blob store (`<root>/sha256/<hex>`), for
// testing the bundle writers without a registry: each platform has a config and one gzip layer
// (made by GNU tar + gzip -n, independent of bramble's own tar code); multi-arch images get an
// index with amd64, arm64 and arm/v7 children plus a BuildKit attestation manifest, serialised
// with unusual whitespace so that any re-serialisation would change its digest.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../builders/exec.ts';
import { blobPath, type Descriptor, type PulledImage, type PulledPlatform } from '../../images/registry/types.ts';

export const MEDIA = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  inToto: 'application/vnd.in-toto+json',
} as const;

export interface TinyPlatform {
  architecture: string;
  variant?: string;
}

export interface TinyImageSpec {
  /** Full normalised reference with a tag, e.g. `registry.k8s.io/pause:3.10`. */
  ref: string;
  /** Children in the index; one entry without `index` makes a single-manifest image. */
  platforms: TinyPlatform[];
  /** Write a single manifest (no index); needs exactly one platform. */
  single?: boolean;
  /** Add a BuildKit attestation manifest to the index. */
  attestation?: boolean;
  /** Bytes of filler in the layer's one file, to make images of a given size. */
  fillerBytes?: number;
}

/** A stored image: what a pull would return for the kept arches, plus everything upstream has. */
export interface TinyImage {
  spec: TinyImageSpec;
  /** The PulledImage for the arches passed to `pulledFor`. */
  pulledFor(arches: readonly string[]): PulledImage;
  top: Descriptor;
  /** Every child manifest by arch (`arm/v7` for variants), as upstream serves them. */
  children: Map<string, PulledPlatform>;
  attestation?: Descriptor;
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export class TinyBlobStore {
  constructor(readonly root: string) {}

  async put(mediaType: string, bytes: Buffer): Promise<Descriptor> {
    const d = { mediaType, digest: sha(bytes), size: bytes.length };
    const path = blobPath(this.root, d.digest);
    await mkdir(join(this.root, 'sha256'), { recursive: true });
    await writeFile(path, bytes, { mode: 0o644 });
    return d;
  }

  /** A gzip layer holding `/tiny/<name>` (GNU tar --sort=name, fixed mtime, numeric root owner; gzip -n). */
  async layer(name: string, contents: string): Promise<{ descriptor: Descriptor; diffId: string }> {
    const dir = await mkdtemp(join(tmpdir(), 'bramble-tiny-layer-'));
    try {
      await mkdir(join(dir, 'root', 'tiny'), { recursive: true });
      await writeFile(join(dir, 'root', 'tiny', name), contents);
      await run('tar', ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--format=ustar', '-C', join(dir, 'root'), '-cf', join(dir, 'layer.tar'), 'tiny']);
      const tarBytes = await readFile(join(dir, 'layer.tar'));
      await run('gzip', ['-n', '-9', join(dir, 'layer.tar')]);
      const gz = await readFile(join(dir, 'layer.tar.gz'));
      return { descriptor: await this.put(MEDIA.layer, gz), diffId: sha(tarBytes) };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async image(spec: TinyImageSpec): Promise<TinyImage> {
    const children = new Map<string, PulledPlatform>();
    const blobsOf = new Map<string, Descriptor[]>();
    for (const p of spec.platforms) {
      const key = p.variant ? `${p.architecture}/${p.variant}` : p.architecture;
      const filler = 'x'.repeat(spec.fillerBytes ?? 0);
      const layer = await this.layer('id', `${spec.ref} linux/${key}\n${filler}`);
      const config = await this.put(
        MEDIA.config,
        Buffer.from(
          JSON.stringify({
            architecture: p.architecture,
            os: 'linux',
            ...(p.variant ? { variant: p.variant } : {}),
            config: { Entrypoint: ['/tiny/id'] },
            rootfs: { type: 'layers', diff_ids: [layer.diffId] },
          }),
        ),
      );
      const manifest = await this.put(
        MEDIA.manifest,
        Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.manifest, config, layers: [layer.descriptor] }, null, 2)),
      );
      children.set(key, { ...manifest, os: 'linux', architecture: p.architecture, ...(p.variant ? { variant: p.variant } : {}), config, layers: [layer.descriptor] });
      blobsOf.set(key, [manifest, config, layer.descriptor]);
    }
    let top: Descriptor;
    let attestation: Descriptor | undefined;
    if (spec.single) {
      if (children.size !== 1) throw new Error('a single-manifest image has one platform');
      const only = [...children.values()][0]!;
      top = { mediaType: only.mediaType, digest: only.digest, size: only.size };
    } else {
      const entries: object[] = [...children.values()].map((c) => ({
        mediaType: c.mediaType,
        digest: c.digest,
        size: c.size,
        platform: { architecture: c.architecture, os: 'linux', ...(c.variant ? { variant: c.variant } : {}) },
      }));
      if (spec.attestation) {
        const amd64 = children.get('amd64') ?? [...children.values()][0]!;
        const statement = await this.put(MEDIA.inToto, Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v0.1', subject: [{ digest: { sha256: amd64.digest.slice(7) } }] })));
        const cfg = await this.put(MEDIA.config, Buffer.from(JSON.stringify({ architecture: 'unknown', os: 'unknown', rootfs: { type: 'layers', diff_ids: [statement.digest] } })));
        attestation = await this.put(MEDIA.manifest, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.manifest, config: cfg, layers: [statement] })));
        entries.push({
          ...attestation,
          annotations: { 'vnd.docker.reference.digest': amd64.digest, 'vnd.docker.reference.type': 'attestation-manifest' },
          platform: { architecture: 'unknown', os: 'unknown' },
        });
      }
      // Three-space indent and a trailing newline: bytes no JSON.stringify round trip reproduces.
      top = await this.put(MEDIA.index, Buffer.from(`${JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.index, manifests: entries }, null, 3)}\n`));
    }
    const name = parseRef(spec.ref);
    return {
      spec,
      top,
      children,
      ...(attestation ? { attestation } : {}),
      pulledFor: (arches) => {
        const kept = [...children.entries()].filter(([, c]) => arches.includes(c.architecture));
        const all = new Map<string, Descriptor>([[top.digest, top]]);
        for (const [key] of kept) for (const b of blobsOf.get(key)!) all.set(b.digest, b);
        return {
          ref: spec.ref,
          name,
          top,
          platforms: kept.map(([, c]) => c),
          blobs: [...all.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1)),
        };
      },
    };
  }
}

/** `registry.k8s.io/coredns/coredns:v1.12.0` → its parts (references here are always full, with a tag). */
export function parseRef(ref: string): PulledImage['name'] {
  const slash = ref.indexOf('/');
  const registry = ref.slice(0, slash);
  const rest = ref.slice(slash + 1);
  const colon = rest.lastIndexOf(':');
  return { registry, repository: rest.slice(0, colon), tag: rest.slice(colon + 1) };
}
