// `bramble verify DIR`: a published release (or a build's out/<cluster>/) checked as an exact set.
// For a release: the signature over SHA256SUMS (against --key, else the release's own
// signing-key.asc, which proves integrity but not who signed), manifest.json against SHA256SUMS, the
// files SHA256SUMS lists against the manifest's list, every file's size and sha256, and the directory
// holding exactly those files: a missing or an extra file fails. For a build output: SHA256SUMS
// against manifest.json's artefacts and every artefact's bytes, and no file the manifest does not list.
// Every problem is collected and reported together, naming the file (exit 3).
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import type * as openpgp from 'openpgp';
import { BrambleError, ExitCode, InputError } from './errors.ts';
import type { EventSink } from './events.ts';
import { layout } from './layout.ts';
import { sha256File, type Manifest } from './output.ts';
import { expectedReleaseNames, parseChecksums, RELEASE_FORMAT, releaseNames, type ReleaseManifest } from './publish-format.ts';
import { readPublicKeys, verifyDetached } from './publish-sign.ts';

/** One or more files did not match: each problem names its file. */
export class ReleaseMismatchError extends BrambleError {
  readonly exitCode = ExitCode.verification;
  constructor(
    readonly dir: string,
    readonly problems: string[],
  ) {
    super(`${dir}: verification failed:\n${problems.map((p) => `  - ${p}`).join('\n')}`, {
      hint: 'do not use these files; fetch or publish the release again',
    });
  }
}

export interface VerifyOptions {
  /** Armored public key(s) the signature must come from (--key FILE). */
  keyFile?: string;
  /** Accept a release without SHA256SUMS.asc (checksums and the exact set are still checked). */
  allowUnsigned?: boolean;
  signal: AbortSignal;
  events: EventSink;
}

export interface VerifyReport {
  kind: 'release' | 'build';
  cluster: string;
  /** Files checked (everything but manifest.json, SHA256SUMS and the signature). */
  files: number;
  /** Fingerprint of the signing key, when signed. */
  signer?: string;
  /** Where the key came from: --key, or the release's own signing-key.asc. */
  keySource?: 'given' | 'release';
}

/**
 * Check each listed file that is present (`missing` hears of the others), counting them in the report
 * and reporting progress; problems are added in list order.
 */
async function checkFiles(
  dir: string,
  files: ReadonlyArray<{ rel: string; size: number; sha256: string }>,
  c: { present: ReadonlySet<string>; report: VerifyReport; problems: string[]; o: VerifyOptions; missing?: (rel: string) => void },
): Promise<void> {
  for (const f of files) {
    if (!c.present.has(f.rel)) {
      c.missing?.(f.rel);
      continue;
    }
    if (c.o.signal.aborted) throw c.o.signal.reason;
    c.o.events({ kind: 'progress', stage: 'verify', what: f.rel, done: c.report.files, total: files.length, unit: 'items' });
    const problem = await checkFile(dir, f.rel, f, c.o.signal);
    if (problem) c.problems.push(problem);
    c.report.files++;
  }
}

/** One file against its listed size and sha256 (one of the wrong size is not hashed): the problem, or undefined. */
async function checkFile(dir: string, rel: string, want: { size: number; sha256: string }, signal: AbortSignal): Promise<string | undefined> {
  const path = join(dir, rel);
  const size = (await stat(path)).size;
  if (size !== want.size) return `${rel}: ${size} bytes, expected ${want.size}`;
  const sha256 = await sha256File(path, signal);
  return sha256 === want.sha256 ? undefined : `${rel}: sha256 ${sha256}, expected ${want.sha256}`;
}

/** Every entry under `dir` as a relative path; directories are walked, anything not a regular file is listed as such. */
async function listTree(dir: string): Promise<{ files: string[]; others: string[] }> {
  const files: string[] = [];
  const others: string[] = [];
  const walk = async (d: string) => {
    for (const name of (await readdir(d)).sort()) {
      const full = join(d, name);
      const rel = relative(dir, full).split(sep).join('/');
      const s = await lstat(full);
      if (s.isDirectory()) await walk(full);
      else if (s.isFile()) files.push(rel);
      else others.push(rel);
    }
  };
  await walk(dir);
  return { files, others };
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export async function verifyDirectory(dir: string, o: VerifyOptions): Promise<VerifyReport> {
  try {
    if (!(await lstat(dir)).isDirectory()) throw new InputError(`${dir} is not a directory`, { hint: 'give a published release directory or an out/<cluster> directory' });
  } catch (e) {
    if (e instanceof BrambleError) throw e;
    throw new InputError(`${dir} does not exist`, { hint: 'give a published release directory or an out/<cluster> directory' });
  }
  const manifestBytes = await readOptional(join(dir, releaseNames.manifest));
  if (!manifestBytes) throw new ReleaseMismatchError(dir, [`${releaseNames.manifest} is missing`]);
  let doc: Partial<ReleaseManifest> & Partial<Manifest>;
  try {
    doc = JSON.parse(manifestBytes.toString('utf8')) as typeof doc;
  } catch (e) {
    throw new ReleaseMismatchError(dir, [`${releaseNames.manifest} is not valid JSON (${(e as Error).message})`]);
  }
  if (doc.format === RELEASE_FORMAT) return verifyRelease(dir, manifestBytes, doc as ReleaseManifest, o);
  if (doc.manifestVersion === 1) return verifyBuild(dir, doc as Manifest, o);
  throw new ReleaseMismatchError(dir, [`${releaseNames.manifest} is neither a bramble release nor a build manifest`]);
}

async function verifyRelease(dir: string, manifestBytes: Buffer, m: ReleaseManifest, o: VerifyOptions): Promise<VerifyReport> {
  const problems: string[] = [];
  const sums = await readOptional(join(dir, releaseNames.checksums));
  if (!sums) throw new ReleaseMismatchError(dir, [`${releaseNames.checksums} is missing`]);

  // 1. The signature, before anything SHA256SUMS says is trusted.
  const report: VerifyReport = { kind: 'release', cluster: m.cluster, files: 0 };
  const signature = await readOptional(join(dir, releaseNames.signature));
  if (signature) {
    let keys: openpgp.PublicKey[];
    if (o.keyFile) {
      let armored: string;
      try {
        armored = await readFile(o.keyFile, 'utf8');
      } catch {
        throw new InputError(`--key ${o.keyFile}: cannot read the file`, { hint: 'give the armored public key the release was signed with (gpg --armor --export KEYID)' });
      }
      keys = await readPublicKeys(`--key ${o.keyFile}`, armored);
      report.keySource = 'given';
    } else {
      const own = await readOptional(join(dir, releaseNames.signingKey));
      if (!own) throw new ReleaseMismatchError(dir, [`${releaseNames.signature} is present but ${releaseNames.signingKey} is missing and no --key was given`]);
      keys = await readPublicKeys(releaseNames.signingKey, own.toString('utf8'));
      report.keySource = 'release';
    }
    try {
      report.signer = await verifyDetached(`${dir}/${releaseNames.signature}`, sums, signature.toString('utf8'), keys);
    } catch (e) {
      if (e instanceof BrambleError && e.exitCode === ExitCode.verification) throw new ReleaseMismatchError(dir, [`${releaseNames.signature}: ${e.message}`]);
      throw e;
    }
  } else if (m.signer) {
    problems.push(`${releaseNames.signature} is missing (manifest.json says the release was signed by ${m.signer})`);
  } else if (!o.allowUnsigned) {
    problems.push(`${releaseNames.signature} is missing: the release is unsigned (pass --allow-unsigned to check only its checksums)`);
  }

  // 2. SHA256SUMS against the manifest: the manifest's own digest, then the exact list of files.
  const { entries, problems: malformed } = parseChecksums(sums.toString('utf8'));
  problems.push(...malformed.map((p) => `${releaseNames.checksums}: ${p}`));
  const manifestSha = createHash('sha256').update(manifestBytes).digest('hex');
  const listedManifest = entries.get(releaseNames.manifest);
  if (!listedManifest) problems.push(`${releaseNames.checksums} does not list ${releaseNames.manifest}`);
  else if (listedManifest !== manifestSha) problems.push(`${releaseNames.manifest}: sha256 ${manifestSha}, ${releaseNames.checksums} says ${listedManifest}`);
  if (problems.length > 0) throw new ReleaseMismatchError(dir, problems);

  const expected = expectedReleaseNames(m);
  const declared = new Map(m.files.map((f) => [f.name, f]));
  for (const name of entries.keys()) {
    if (name !== releaseNames.manifest && !declared.has(name)) problems.push(`${name}: listed in ${releaseNames.checksums} but not in ${releaseNames.manifest}`);
  }
  for (const f of m.files) {
    const listed = entries.get(f.name);
    if (!listed) problems.push(`${f.name}: in ${releaseNames.manifest} but not listed in ${releaseNames.checksums}`);
    else if (listed !== f.sha256) problems.push(`${f.name}: ${releaseNames.checksums} says ${listed}, ${releaseNames.manifest} says ${f.sha256}`);
  }

  // 3. The directory holds exactly the release, and every file its bytes.
  const tree = await listTree(dir);
  for (const other of tree.others) problems.push(`${other}: not a regular file`);
  for (const rel of tree.files) if (!expected.has(rel)) problems.push(`${rel}: extra file, not part of the release`);
  const present = new Set(tree.files);
  for (const name of expected) if (!present.has(name)) problems.push(`${name}: missing`);
  // Missing ones were reported above, with the release's own files.
  await checkFiles(dir, m.files.map((f) => ({ ...f, rel: f.name })), { present, report, problems, o });
  if (problems.length > 0) throw new ReleaseMismatchError(dir, problems);
  return report;
}

async function verifyBuild(dir: string, m: Manifest, o: VerifyOptions): Promise<VerifyReport> {
  const problems: string[] = [];
  const sums = await readOptional(join(dir, layout.checksums));
  if (!sums) throw new ReleaseMismatchError(dir, [`${layout.checksums} is missing`]);
  const { entries, problems: malformed } = parseChecksums(sums.toString('utf8'));
  problems.push(...malformed.map((p) => `${layout.checksums}: ${p}`));
  const declared = new Map(m.artefacts.map((a) => [a.path, a]));
  for (const name of entries.keys()) if (!declared.has(name)) problems.push(`${name}: listed in ${layout.checksums} but not in manifest.json`);
  for (const a of m.artefacts) {
    const listed = entries.get(a.path);
    if (!listed) problems.push(`${a.path}: in manifest.json but not listed in ${layout.checksums}`);
    else if (listed !== a.sha256) problems.push(`${a.path}: ${layout.checksums} says ${listed}, manifest.json says ${a.sha256}`);
  }
  const tree = await listTree(dir);
  const bookkeeping = new Set<string>([layout.manifest, layout.checksums]);
  for (const other of tree.others) problems.push(`${other}: not a regular file`);
  for (const rel of tree.files) if (!bookkeeping.has(rel) && !declared.has(rel)) problems.push(`${rel}: extra file, not in manifest.json`);
  const present = new Set(tree.files);
  const report: VerifyReport = { kind: 'build', cluster: m.cluster, files: 0 };
  await checkFiles(dir, m.artefacts.map((a) => ({ ...a, rel: a.path })), { present, report, problems, o, missing: (rel) => problems.push(`${rel}: missing`) });
  if (problems.length > 0) throw new ReleaseMismatchError(dir, problems);
  return report;
}
