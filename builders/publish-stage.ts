// Makes the publish set from out/<cluster>/ as built (never rebuilding): the selected artefacts under
// their release names, disk images compressed, every byte checked against the build's manifest while
// it is read, files bound for a non-private destination scanned for secrets, then manifest.json,
// SHA256SUMS and its signature. The result is a directory every destination uploads as it is.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { bmapByteRanges, readBmap } from '../images/bmap.ts';
import { compressFile, compressionSuffix, compressorVersion, type Compression } from '../images/compress.ts';
import { hashingPassThrough } from '../images/hashing-stream.ts';
import type { ByteRange } from '../images/sparse.ts';
import { InputError, VerificationError } from './errors.ts';
import type { EventSink } from './events.ts';
import { generator, type Artefact, type Manifest } from './output.ts';
import {
  byName,
  formatChecksums,
  RELEASE_FORMAT,
  RELEASE_FORMAT_VERSION,
  RELEASE_NAME,
  releaseNames,
  releasePlacement,
  versionsOf,
  type ArchiveMember,
  type ReleaseFile,
  type ReleaseManifest,
} from './publish-format.ts';
import { writeTar } from './publish-tar.ts';
import { SecretScanner, type SecretFinding } from './publish-secrets.ts';
import { signDetached, type SigningKey } from './publish-sign.ts';

export interface StageOptions {
  /** out/<cluster>/ of a finished build. */
  clusterDir: string;
  /** An empty directory the set is written into. */
  stageDir: string;
  /** The destination, for messages. */
  destination: string;
  /** The destination is declared private: secret artefacts may go, nothing is scanned. */
  private: boolean;
  /** Publish only the artefacts not marked secret. */
  publicOnly: boolean;
  /** How disk images are compressed (they are always compressed: an 8 GiB sparse image is no download). */
  compression: Compression;
  /** undefined: an unsigned release (the caller has checked --unsigned). */
  signingKey: SigningKey | undefined;
  signal: AbortSignal;
  events: EventSink;
}

/** A file held a secret without being marked secret. */
export class SecretFoundError extends InputError {}

/** Read out/<cluster>/manifest.json of a finished build. */
export async function readBuildManifest(clusterDir: string): Promise<Manifest> {
  let text: string;
  try {
    text = await readFile(join(clusterDir, 'manifest.json'), 'utf8');
  } catch {
    throw new InputError(`${clusterDir} has no manifest.json: it is not the output of a finished build`, {
      hint: 'run `bramble build` first (an interrupted build leaves no manifest.json)',
    });
  }
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch (e) {
    throw new InputError(`${clusterDir}/manifest.json is not valid JSON (${(e as Error).message})`, { hint: 'rebuild with `bramble build`' });
  }
  if (m.manifestVersion !== 1 || !Array.isArray(m.artefacts)) {
    throw new InputError(`${clusterDir}/manifest.json is not a bramble build manifest (manifestVersion 1)`, {
      hint: (m as unknown as { format?: string }).format === RELEASE_FORMAT ? 'this is a published release: check it with `bramble verify`' : 'rebuild with `bramble build`',
    });
  }
  return m;
}

function describeFindings(findings: SecretFinding[]): string {
  const kinds = [...new Set(findings.map((f) => f.what))];
  return `${kinds.join(' and ')} at byte ${findings[0]!.offset}`;
}

export async function stageRelease(o: StageOptions): Promise<ReleaseManifest> {
  const build = await readBuildManifest(o.clusterDir);
  const selected = build.artefacts.filter((a) => !(o.publicOnly && a.secret));
  if (selected.length === 0) {
    throw new InputError(`${o.clusterDir}: nothing to publish${o.publicOnly ? ' (every artefact is secret)' : ''}`, {
      hint: o.publicOnly ? 'leave out --public-only and publish --private to a private destination' : 'run `bramble build`',
    });
  }
  const secret = selected.filter((a) => a.secret);
  if (secret.length > 0 && !o.private) {
    const shown = secret.slice(0, 5).map((a) => a.path).join(', ');
    throw new InputError(`refusing to publish ${secret.length} secret artefact${secret.length > 1 ? 's' : ''} to ${o.destination}: ${shown}${secret.length > 5 ? ', …' : ''}`, {
      hint: `they hold private keys or join tokens. Pass --private only if ${o.destination} is readable by you alone, or --public-only to publish just the non-secret artefacts`,
    });
  }

  const files: ReleaseFile[] = [];
  const compressed = selected.some((a) => a.kind === 'disk-image');
  const groups = new Map<string, Artefact[]>();
  for (const a of selected) {
    const { name, archived } = releasePlacement(a.path);
    const publishedName = !archived && a.kind === 'disk-image' ? name + compressionSuffix[o.compression] : name;
    if (!RELEASE_NAME.test(publishedName)) throw new Error(`release name ${publishedName} (from ${a.path}) is not a plain file name`);
    const group = groups.get(publishedName) ?? [];
    if (!archived && group.length > 0) throw new Error(`two artefacts map to the release name ${publishedName}: ${group[0]!.path}, ${a.path}`);
    group.push(a);
    groups.set(publishedName, group);
  }
  let done = 0;
  for (const [name, group] of [...groups].sort(([x], [y]) => (x < y ? -1 : 1))) {
    if (o.signal.aborted) break;
    o.events({ kind: 'progress', stage: 'publish', what: `stage ${name}`, done: done++, total: groups.size, unit: 'items' });
    const dest = join(o.stageDir, name);
    const file = releasePlacement(group[0]!.path).archived ? await stageArchive(o, build, name, group, dest) : await stageSingle(o, build, name, group[0]!, dest);
    await chmod(dest, file.secret ? 0o600 : 0o644);
    files.push(file);
  }
  if (o.signal.aborted) throw o.signal.reason;

  if (o.signingKey) {
    const key = Buffer.from(o.signingKey.publicArmored);
    await writeFile(join(o.stageDir, releaseNames.signingKey), key, { mode: 0o644 });
    files.push({ name: releaseNames.signingKey, size: key.length, sha256: createHash('sha256').update(key).digest('hex'), kind: 'signing-key', secret: false });
  }
  files.sort(byName);
  const manifest: ReleaseManifest = {
    format: RELEASE_FORMAT,
    formatVersion: RELEASE_FORMAT_VERSION,
    cluster: build.cluster,
    generator,
    sourceDateEpoch: build.sourceDateEpoch,
    private: o.private,
    signer: o.signingKey?.fingerprint ?? null,
    compressor: compressed ? await compressorVersion(o.compression) : null,
    versions: versionsOf(build.inputs),
    nodes: build.nodes,
    inputs: build.inputs,
    files,
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  await writeFile(join(o.stageDir, releaseNames.manifest), manifestBytes, { mode: 0o644 });
  const sums = Buffer.from(
    formatChecksums([...files, { name: releaseNames.manifest, sha256: createHash('sha256').update(manifestBytes).digest('hex') }]),
  );
  await writeFile(join(o.stageDir, releaseNames.checksums), sums, { mode: 0o644 });
  if (o.signingKey) await writeFile(join(o.stageDir, releaseNames.signature), await signDetached(sums, o.signingKey, build.sourceDateEpoch), { mode: 0o644 });
  return manifest;
}

function mismatch(clusterDir: string, a: Artefact, actual: string): VerificationError {
  return new VerificationError(join(clusterDir, a.path), `sha256 ${a.sha256} (manifest.json)`, `sha256 ${actual}`, {
    hint: 'the file changed after the build wrote manifest.json; rebuild with `bramble build`',
  });
}

function refuseFound(o: StageOptions, path: string, scanner: SecretScanner | undefined): void {
  if (!scanner || scanner.findings.length === 0) return;
  throw new SecretFoundError(`${path} is not marked secret but holds a ${describeFindings(scanner.findings)}; refusing to publish it to ${o.destination}`, {
    hint: 'nothing was published. Check where the file came from (the build marks every file with keys or tokens secret; if it did not, report it as a bug). Only a private destination may receive it: --private',
  });
}

const metaOf = (a: Artefact) => ({
  kind: a.kind,
  ...(a.node !== undefined && { node: a.node }),
  ...(a.target !== undefined && { target: a.target }),
  ...(a.arch !== undefined && { arch: a.arch }),
  secret: a.secret,
});

/** One artefact as one release file: a disk image compressed, anything else copied; checked and scanned on the way. */
async function stageSingle(o: StageOptions, build: Manifest, name: string, a: Artefact, dest: string): Promise<ReleaseFile> {
  const scanner = o.private ? undefined : new SecretScanner();
  const compress = a.kind === 'disk-image' ? o.compression : undefined;
  if (compress) {
    const r = await compressFile(join(o.clusterDir, a.path), dest, {
      format: compress,
      size: a.size,
      dataRanges: await dataRangesOf(o.clusterDir, build.artefacts, a),
      onInput: scanner && ((chunk) => scanner.feed(chunk)),
      signal: o.signal,
    });
    if (r.inputSha256 !== a.sha256) throw mismatch(o.clusterDir, a, r.inputSha256);
    refuseFound(o, a.path, scanner);
    return { name, size: r.size, sha256: r.sha256, ...metaOf(a), source: a.path, compression: compress, uncompressed: { size: a.size, sha256: a.sha256 } };
  }
  // The file's bytes as they pass: hashed, counted, scanned.
  const c = hashingPassThrough(scanner && ((chunk) => scanner.feed(chunk)));
  await pipeline(createReadStream(join(o.clusterDir, a.path), { highWaterMark: 1 << 20 }), c.stream, createWriteStream(dest), { signal: o.signal });
  const { size, sha256 } = c.result();
  if (sha256 !== a.sha256) throw mismatch(o.clusterDir, a, sha256);
  refuseFound(o, a.path, scanner);
  return { name, size, sha256, ...metaOf(a), source: a.path };
}

/** A directory's selected artefacts as one deterministic tar; each member checked against the build and scanned. */
async function stageArchive(o: StageOptions, build: Manifest, name: string, group: Artefact[], dest: string): Promise<ReleaseFile> {
  const byPath = new Map(group.map((a) => [a.path, a]));
  const hashes = new Map(group.map((a) => [a.path, createHash('sha256')]));
  const scanners = new Map(group.map((a) => [a.path, o.private ? undefined : new SecretScanner()]));
  const secretDirs = new Set<string>();
  for (const a of group) if (a.secret) for (let d = dirname(a.path); d !== '.'; d = dirname(d)) secretDirs.add(d);
  const { size, sha256 } = await writeTar(
    dest,
    group.map((a) => ({ path: a.path, file: join(o.clusterDir, a.path), size: a.size, mode: a.secret ? 0o600 : 0o644 })),
    {
      mtime: build.sourceDateEpoch,
      dirMode: (dir) => (secretDirs.has(dir) && group.every((a) => !a.path.startsWith(`${dir}/`) || a.secret) ? 0o700 : 0o755),
      onData: (m, chunk) => {
        hashes.get(m.path)!.update(chunk);
        scanners.get(m.path)?.feed(chunk);
      },
      signal: o.signal,
    },
  );
  const members: ArchiveMember[] = [];
  for (const [path, hash] of hashes) {
    const a = byPath.get(path)!;
    const actual = hash.digest('hex');
    if (actual !== a.sha256) throw mismatch(o.clusterDir, a, actual);
    refuseFound(o, path, scanners.get(path));
    members.push({ path, size: a.size, sha256: a.sha256, kind: a.kind, ...(a.node !== undefined && { node: a.node }), secret: a.secret });
  }
  members.sort((x, y) => (x.path < y.path ? -1 : 1));
  return { name, size, sha256, kind: 'archive', secret: group.some((a) => a.secret), members };
}

/** The image's data ranges from its bmap, so holes are not read; the whole file when there is no usable bmap. */
async function dataRangesOf(clusterDir: string, artefacts: Artefact[], image: Artefact): Promise<ByteRange[] | undefined> {
  const bmap = artefacts.find((b) => b.kind === 'bmap' && b.node === image.node);
  if (!bmap) return undefined;
  try {
    const m = await readBmap(join(clusterDir, bmap.path));
    if (m.imageSize !== image.size) return undefined;
    return bmapByteRanges(m);
  } catch {
    // A damaged bmap fails its own publish check; the image is then read whole.
    return undefined;
  }
}
