// Writes out/<cluster>/: every artefact atomically (temp name, then rename), SHA256SUMS, and
// manifest.json last. While a build runs the old manifest is gone, so a half-built directory never
// looks complete. Files whose bytes did not change are left untouched (same inode and mtime).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { EventSink } from './events.ts';
import { layout } from './layout.ts';
import type { Arch, NodeSpec, Target } from './spec.ts';

export type ArtefactKind =
  | 'disk-image'
  | 'bmap'
  | 'ignition'
  | 'cloud-init'
  | 'pxe-script'
  | 'pxe-initrd'
  | 'pxe-asset'
  | 'ipxe-binary'
  | 'dnsmasq-conf'
  | 'pki'
  | 'sysext'
  | 'bundle';

export interface ArtefactMeta {
  kind: ArtefactKind;
  node?: string;
  target?: Target;
  arch?: Arch;
  secret: boolean;
}

export interface Artefact extends ArtefactMeta {
  path: string;
  size: number;
  sha256: string;
}

export interface ManifestInput {
  id: string;
  url: string;
  version: string;
  sha256: string;
}

export interface Manifest {
  manifestVersion: 1;
  cluster: string;
  generator: string;
  sourceDateEpoch: number;
  nodes: Array<Pick<NodeSpec, 'name' | 'role' | 'hardware' | 'boot' | 'arch'> & { mac: string | null; ip: string | null }>;
  artefacts: Artefact[];
  inputs: ManifestInput[];
}

export const generator = 'bramble 0.1.0';

/** Files and directories in out/<cluster>/ that the build keeps even though no build step writes them. */
const kept = new Set<string>([layout.pkiDir]);

export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), h, { signal });
  return h.digest('hex');
}

const ZERO_CHUNK = Buffer.alloc(1 << 22);

/**
 * sha256 of a sparse file whose non-zero bytes all lie inside `dataRanges` (sorted, merged): the data is
 * read, the rest is hashed from a zero buffer in memory, so an 8 GiB image with a few hundred MiB of
 * data costs the hashing, not 8 GiB of reads through the page cache.
 */
export async function sha256Sparse(path: string, dataRanges: ReadonlyArray<readonly [number, number]>, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(1 << 22);
    let at = 0;
    const zeros = (end: number) => {
      while (at < end) {
        const n = Math.min(ZERO_CHUNK.length, end - at);
        h.update(n === ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, n));
        at += n;
      }
    };
    for (const [s, e] of dataRanges) {
      if (signal?.aborted) throw signal.reason ?? new Error('aborted');
      zeros(Math.min(s, size));
      const end = Math.min(e, size);
      while (at < end) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - at), at);
        if (bytesRead === 0) throw new Error(`${path}: unexpected end of file at ${at}`);
        h.update(buf.subarray(0, bytesRead));
        at += bytesRead;
      }
    }
    zeros(size);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

async function sameBytes(a: string, b: Buffer): Promise<boolean> {
  try {
    const s = await stat(a);
    if (s.size !== b.length) return false;
    return (await readFile(a)).equals(b);
  } catch {
    return false;
  }
}

export class OutputWriter {
  readonly artefacts = new Map<string, Artefact>();
  constructor(
    readonly clusterDir: string,
    private readonly events: EventSink,
    private readonly signal?: AbortSignal,
  ) {}

  path(rel: string): string {
    return join(this.clusterDir, rel);
  }

  /** Start a build: the old manifest goes first so the directory no longer claims to be complete. */
  async begin(): Promise<void> {
    await mkdir(this.clusterDir, { recursive: true });
    await rm(this.path(layout.manifest), { force: true });
    await rm(this.path(layout.checksums), { force: true });
  }

  private record(rel: string, meta: ArtefactMeta, size: number, sha256: string) {
    const a: Artefact = { path: rel, ...meta, size, sha256 };
    this.artefacts.set(rel, a);
    this.events({ kind: 'artefact-written', path: rel, size, sha256, secret: meta.secret });
    return a;
  }

  /** Write a small artefact from memory. Unchanged bytes leave the existing file alone. */
  async writeFile(rel: string, data: Buffer | string, meta: ArtefactMeta): Promise<Artefact> {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    const dest = this.path(rel);
    const mode = meta.secret ? 0o600 : 0o644;
    if (!(await sameBytes(dest, buf))) {
      await mkdir(dirname(dest), { recursive: true });
      const tmp = `${dest}.tmp-${process.pid}`;
      await writeFile(tmp, buf, { mode });
      await chmod(tmp, mode);
      await rename(tmp, dest);
    } else {
      await chmod(dest, mode);
    }
    return this.record(rel, meta, buf.length, createHash('sha256').update(buf).digest('hex'));
  }

  /**
   * Move a file built elsewhere (a temp image in the workspace) into place. It must be on the same
   * filesystem as the output directory or be copied first by the caller.
   */
  async adoptFile(
    rel: string,
    builtPath: string,
    meta: ArtefactMeta,
    opts: { dataRanges?: ReadonlyArray<readonly [number, number]>; /** Hex, when the caller made or verified these exact bytes: no second read. */ sha256?: string } = {},
  ): Promise<Artefact> {
    const dest = this.path(rel);
    await mkdir(dirname(dest), { recursive: true });
    await chmod(builtPath, meta.secret ? 0o600 : 0o644);
    const digest = opts.sha256 ?? (opts.dataRanges ? await sha256Sparse(builtPath, opts.dataRanges, this.signal) : await sha256File(builtPath, this.signal));
    const size = (await stat(builtPath)).size;
    await rename(builtPath, dest);
    return this.record(rel, meta, size, digest);
  }

  /**
   * List a file some other step wrote in place (the PKI, which is generated once and kept; the
   * mirror's tree). `sha256` (hex), when the caller already knows the bytes' digest, saves reading
   * the file again.
   */
  async recordFile(rel: string, meta: ArtefactMeta, known: { sha256?: string } = {}): Promise<Artefact> {
    const path = this.path(rel);
    return this.record(rel, meta, (await stat(path)).size, known.sha256 ?? (await sha256File(path, this.signal)));
  }

  /** A temp path next to the final one (same filesystem, so adoptFile is a rename). */
  async tempPathFor(rel: string): Promise<string> {
    const dest = this.path(rel);
    await mkdir(dirname(dest), { recursive: true });
    return `${dest}.tmp-${process.pid}`;
  }

  /** Write SHA256SUMS and then manifest.json, and remove files no longer produced. */
  async finish(m: Omit<Manifest, 'artefacts' | 'manifestVersion' | 'generator'>): Promise<Manifest> {
    const artefacts = [...this.artefacts.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    await this.removeStale(new Set(artefacts.map((a) => a.path)));
    const sums = artefacts.map((a) => `${a.sha256}  ${a.path}\n`).join('');
    await this.atomicWrite(layout.checksums, sums);
    const manifest: Manifest = { manifestVersion: 1, generator, ...m, artefacts };
    await this.atomicWrite(layout.manifest, JSON.stringify(manifest, null, 2) + '\n');
    return manifest;
  }

  private async atomicWrite(rel: string, text: string) {
    const dest = this.path(rel);
    const tmp = `${dest}.tmp-${process.pid}`;
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, dest);
  }

  private async removeStale(keep: Set<string>) {
    const walk = async (dir: string): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        return;
      }
      for (const name of names) {
        const full = join(dir, name);
        const rel = relative(this.clusterDir, full).split(sep).join('/');
        if (kept.has(rel.split('/')[0]!) || rel === layout.manifest || rel === layout.checksums) continue;
        const s = await stat(full);
        if (s.isDirectory()) {
          await walk(full);
          if ((await readdir(full)).length === 0) await rm(full, { recursive: true });
        } else if (!keep.has(rel)) {
          await rm(full, { force: true });
        }
      }
    };
    await walk(this.clusterDir);
  }
}

/** Open-and-close check that a path is writable, for early host errors. */
export async function ensureWritableDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const probe = join(dir, `.probe-${process.pid}`);
  const fh = await open(probe, 'w');
  await fh.close();
  await rm(probe, { force: true });
}
