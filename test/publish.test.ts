// `bramble publish --to dir://` on a built cluster, checked by the tools a user would trust: gpg
// verifies SHA256SUMS.asc, sha256sum -c checks the files, tar lists the archives, bmaptool writes the
// compressed image with its bmap back to the built bytes. Also: the secret guard (refusal without
// --private, and the scan of files not marked secret), signing-key handling, and unsigned releases.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../builders/exec.ts';
import type { ReleaseManifest } from '../builders/publish-format.ts';
import { explainCli, runBramble, sha256Allocated } from './helpers/build.ts';
import { buildReleaseCluster, makeGpgKey, type BuiltCluster, type GpgKey } from './helpers/release.ts';

let tmp: string;
let built: BuiltCluster;
let key: GpgKey;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'bramble-publish-'));
  key = await makeGpgKey(join(tmp, 'key'));
  built = await buildReleaseCluster(join(tmp, 'cluster'), 'pubdir');
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const readManifest = async (dir: string) => JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as ReleaseManifest;

describe('publish --public-only to a directory', () => {
  let rel: string;
  before(async () => {
    rel = join(tmp, 'public');
    const r = await runBramble(['publish', built.clusterDir, '--to', `dir://${rel}`, '--public-only', '--sign-key', key.secretFile]);
    assert.equal(r.code, 0, explainCli(r));
  });

  test('the release holds exactly the non-secret artefacts, the manifest, SHA256SUMS, its signature and the key', async () => {
    const m = await readManifest(rel);
    const publicArtefacts = built.manifest.artefacts.filter((a) => !a.secret);
    const members = m.files.flatMap((f) => (f.members ? f.members.map((x) => x.path) : f.source ? [f.source] : []));
    assert.deepEqual(members.sort(), publicArtefacts.map((a) => a.path).sort());
    assert.ok(m.files.every((f) => !f.secret));
    assert.equal(m.signer, key.fingerprint);
    assert.deepEqual((await readdir(rel)).sort(), [...m.files.map((f) => f.name), 'SHA256SUMS', 'SHA256SUMS.asc', 'manifest.json'].sort());
    assert.deepEqual(m.versions.flatcar, '4593.2.5');
  });

  test('gpg verifies the signature and sha256sum -c the files', async () => {
    const v = await key.gpg(['--verify', join(rel, 'SHA256SUMS.asc'), join(rel, 'SHA256SUMS')]);
    assert.match(v.stderr, /Good signature from "bramble release test/);
    const c = await run('sha256sum', ['-c', 'SHA256SUMS'], { cwd: rel });
    assert.doesNotMatch(c.stdout, /FAILED/);
    assert.match(c.stdout, /manifest\.json: OK/);
  });

  test('an archive unpacks (GNU tar) to the built files, deterministic headers', async () => {
    const m = await readManifest(rel);
    const archive = m.files.find((f) => f.name === 'registry.tar')!;
    const listing = (await run('tar', ['-tvf', join(rel, 'registry.tar')])).stdout.trim().split('\n');
    assert.ok(listing.every((l) => / 0\/0 /.test(l) && /2025-01-01 00:00/.test(l)), listing.slice(0, 3).join('\n'));
    const out = join(tmp, 'unpacked');
    await mkdir(out);
    await run('tar', ['-xf', join(rel, 'registry.tar'), '-C', out]);
    for (const member of archive.members!.slice(0, 20)) {
      const bytes = await readFile(join(out, member.path));
      assert.equal(createHash('sha256').update(bytes).digest('hex'), built.manifest.artefacts.find((a) => a.path === member.path)!.sha256, member.path);
    }
  });

  test('bramble verify: ok with the release key and with --key; one flipped byte, an extra or a missing file, a rewritten SHA256SUMS or another key → exit 3 naming it', async () => {
    let r = await runBramble(['verify', rel]);
    assert.equal(r.code, 0, explainCli(r));
    assert.match(r.stdout, /key taken from the release's signing-key\.asc/);
    r = await runBramble(['verify', rel, '--key', key.publicFile]);
    assert.equal(r.code, 0, explainCli(r));
    assert.match(r.stdout, new RegExp(`signature by ${key.fingerprint}`));

    const copy = async (name: string) => {
      const d = join(tmp, `tamper-${name}`);
      await run('cp', ['-a', rel, d]);
      return d;
    };
    const flipped = await copy('flip');
    const bmap = join(flipped, 'cp-1.img.bmap');
    const bytes = await readFile(bmap);
    bytes[100] ^= 0x01;
    await writeFile(bmap, bytes);
    r = await runBramble(['verify', flipped, '--key', key.publicFile]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /cp-1\.img\.bmap: sha256 [0-9a-f]{64}, expected/);

    const extra = await copy('extra');
    await writeFile(join(extra, 'notes.txt'), 'not part of it\n');
    r = await runBramble(['verify', extra]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /notes\.txt: extra file/);

    const missing = await copy('missing');
    await rm(join(missing, 'amd64.oci.tar'));
    r = await runBramble(['verify', missing]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /amd64\.oci\.tar: missing/);

    // Drop a file and rewrite manifest + SHA256SUMS to match: only the signature can tell.
    const rewritten = await copy('rewritten');
    const m = await readManifest(rewritten);
    m.files = m.files.filter((f) => f.name !== 'amd64.oci.tar');
    await rm(join(rewritten, 'amd64.oci.tar'));
    const mb = Buffer.from(JSON.stringify(m, null, 2) + '\n');
    await writeFile(join(rewritten, 'manifest.json'), mb);
    const sums = [...m.files, { name: 'manifest.json', sha256: createHash('sha256').update(mb).digest('hex') }]
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((f) => `${f.sha256}  ${f.name}\n`)
      .join('');
    await writeFile(join(rewritten, 'SHA256SUMS'), sums);
    r = await runBramble(['verify', rewritten]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /SHA256SUMS\.asc: .*verification failed/);

    const other = await makeGpgKey(join(tmp, 'other-key'));
    r = await runBramble(['verify', rel, '--key', other.publicFile]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /not the expected key/);
  });

  test('publishing again replaces the earlier release in place', async () => {
    const r = await runBramble(['publish', built.clusterDir, '--to', `dir://${rel}`, '--public-only', '--sign-key', key.secretFile]);
    assert.equal(r.code, 0, explainCli(r));
    const v = await runBramble(['verify', rel, '--key', key.publicFile]);
    assert.equal(v.code, 0, explainCli(v));
    assert.deepEqual((await readdir(tmp)).filter((n) => n.includes('.tmp-') || n.includes('.old-')), []);
  });
});

describe('the secret guard', () => {
  test('secret artefacts are refused without --private: exit 2, the files named, nothing written', async () => {
    const dest = join(tmp, 'refused');
    const r = await runBramble(['publish', built.clusterDir, '--to', `dir://${dest}`, '--sign-key', key.secretFile]);
    assert.equal(r.code, 2, explainCli(r));
    assert.match(r.stderr, /refusing to publish 1\d secret artefacts to dir:\/\/.*configs\/cp-1\.ign, images\/cp-1\.img/);
    assert.match(r.stderr, /hint: .*--private.*--public-only/);
    assert.doesNotMatch(r.stderr, /at .*\.ts:\d+/);
    assert.equal(existsSync(dest), false);
  });

  // A build output whose non-secret files hold secrets (as if a build step forgot to mark them).
  async function leakyBuild(name: string, contents: string): Promise<string> {
    const dir = join(tmp, 'leaky', name);
    await mkdir(join(dir, 'pxe'), { recursive: true });
    const body = Buffer.from(contents);
    await writeFile(join(dir, 'pxe/boot.ipxe'), body);
    const artefacts = [{ path: 'pxe/boot.ipxe', kind: 'pxe-script', target: 'pxe', secret: false, size: body.length, sha256: createHash('sha256').update(body).digest('hex') }];
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ manifestVersion: 1, cluster: 'leaky', generator: 'test', sourceDateEpoch: 0, nodes: [], artefacts, inputs: [] }));
    return dir;
  }

  const leaks: Array<[string, string, RegExp]> = [
    ['pem', '#!ipxe\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n', /private key \(PEM\)/],
    ['percent-encoded', '#!ipxe\nset cfg data:,-----BEGIN%20PRIVATE%20KEY-----%0AMIIE\n', /private key \(PEM, percent-encoded\)/],
    ['base64', `#!ipxe\nset cfg ${Buffer.from('-----BEGIN RSA PRIVATE KEY-----\nMIIE\n').toString('base64')}\n`, /private key \(PEM, base64\)/],
    ['token', '#!ipxe\nset token abcdef.0123456789abcdef\n', /bootstrap token/],
  ];
  for (const [name, contents, what] of leaks) {
    test(`a file not marked secret holding a ${name} secret is refused (exit 2), but may go --private`, async () => {
      const dir = await leakyBuild(name, contents);
      const dest = join(tmp, `leak-${name}`);
      let r = await runBramble(['publish', dir, '--to', `dir://${dest}`, '--unsigned']);
      assert.equal(r.code, 2, explainCli(r));
      assert.match(r.stderr, /pxe\/boot\.ipxe is not marked secret but holds a /);
      assert.match(r.stderr, what);
      assert.equal(existsSync(dest), false);
      r = await runBramble(['publish', dir, '--to', `dir://${dest}`, '--unsigned', '--private']);
      assert.equal(r.code, 0, explainCli(r));
    });
  }

  test('dotted names and binary strings that only look like tokens pass', async () => {
    const dir = await leakyBuild('lookalike', '#!ipxe\nchain http://boot.example.comabcdefghijklmnop/x\nset v abcdef.ghijklmnopqrstuv-x\n');
    const r = await runBramble(['publish', dir, '--to', `dir://${join(tmp, 'lookalike')}`, '--unsigned']);
    assert.equal(r.code, 0, explainCli(r));
  });
});

describe('publish --private with the compressed image', () => {
  let rel: string;
  before(async () => {
    rel = join(tmp, 'private');
    const r = await runBramble(['publish', built.clusterDir, '--to', `dir://${rel}`, '--private', '--sign-key', key.secretFile]);
    assert.equal(r.code, 0, explainCli(r));
  });

  test('every artefact is in it; secret files are 0600; the image is zstd next to its bmap', async () => {
    const m = await readManifest(rel);
    const members = m.files.flatMap((f) => (f.members ? f.members.map((x) => x.path) : f.source ? [f.source] : []));
    assert.deepEqual(members.sort(), built.manifest.artefacts.map((a) => a.path).sort());
    const image = m.files.find((f) => f.name === 'cp-1.img.zst')!;
    assert.equal(image.compression, 'zstd');
    assert.match(m.compressor!, /^zstd \d+\.\d+\.\d+$/);
    assert.equal((await stat(join(rel, 'cp-1.img.zst'))).mode & 0o777, 0o600);
    assert.equal((await stat(join(rel, 'pki.tar'))).mode & 0o777, 0o600);
    const pki = (await run('tar', ['-tvf', join(rel, 'pki.tar')])).stdout;
    assert.match(pki, /^-rw------- 0\/0 .* pki\/ca\.key$/m);
    assert.match(pki, /^drwx------ 0\/0 .* pki\/$/m);
  });

  test('bmaptool copy of cp-1.img.zst (finding cp-1.img.bmap itself) gives the built image', async () => {
    const out = join(tmp, 'flashed.img');
    await run('bmaptool', ['-q', 'copy', join(rel, 'cp-1.img.zst'), out]);
    const builtImage = built.manifest.artefacts.find((a) => a.path === 'images/cp-1.img')!;
    assert.equal(await sha256Allocated(out), builtImage.sha256);
    await rm(out);
  });
});

describe('signing keys and unsigned releases', () => {
  test('no key → exit 2 asking for --sign-key or --unsigned', async () => {
    const r = await runBramble(['publish', built.clusterDir, '--to', `dir://${join(tmp, 'nokey')}`, '--public-only']);
    assert.equal(r.code, 2, explainCli(r));
    assert.match(r.stderr, /no signing key/);
    assert.match(r.stderr, /--sign-key FILE or set \$BRAMBLE_SIGNING_KEY/);
  });

  test('a passphrase-protected key from $BRAMBLE_SIGNING_KEY signs; without the passphrase → exit 2', async () => {
    const protectedKey = await makeGpgKey(join(tmp, 'protected-key'), 'correct horse');
    const armored = await readFile(protectedKey.secretFile, 'utf8');
    const dest = join(tmp, 'env-signed');
    let r = await runBramble(['publish', built.clusterDir, '--to', `dir://${dest}`, '--public-only'], { env: { BRAMBLE_SIGNING_KEY: armored } });
    assert.equal(r.code, 2, explainCli(r));
    assert.match(r.stderr, /protected by a passphrase/);
    r = await runBramble(['publish', built.clusterDir, '--to', `dir://${dest}`, '--public-only'], {
      env: { BRAMBLE_SIGNING_KEY: armored, BRAMBLE_SIGNING_KEY_PASSPHRASE: 'correct horse' },
    });
    assert.equal(r.code, 0, explainCli(r));
    const v = await protectedKey.gpg(['--verify', join(dest, 'SHA256SUMS.asc'), join(dest, 'SHA256SUMS')]);
    assert.match(v.stderr, /Good signature/);
  });

  test('--unsigned publishes; verify then needs --allow-unsigned (exit 3 without)', async () => {
    const dest = join(tmp, 'unsigned');
    let r = await runBramble(['publish', built.clusterDir, '--to', `dir://${dest}`, '--public-only', '--unsigned']);
    assert.equal(r.code, 0, explainCli(r));
    assert.equal(existsSync(join(dest, 'SHA256SUMS.asc')), false);
    r = await runBramble(['verify', dest]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /the release is unsigned/);
    r = await runBramble(['verify', dest, '--allow-unsigned']);
    assert.equal(r.code, 0, explainCli(r));
  });

  test('bramble verify on the build output itself: ok, and exit 3 for a changed artefact', async () => {
    let r = await runBramble(['verify', built.clusterDir]);
    assert.equal(r.code, 0, explainCli(r));
    assert.match(r.stdout, /build output/);
    // A copy without the 8 GiB image (reported missing), with a changed bmap.
    const copy = join(tmp, 'build-copy');
    await run('cp', ['-a', '--sparse=always', built.clusterDir, copy]);
    await rm(join(copy, 'images/cp-1.img'));
    await writeFile(join(copy, 'images/cp-1.img.bmap'), (await readFile(join(copy, 'images/cp-1.img.bmap'), 'utf8')).replace('<BlockSize>', '<BlockSize> '));
    r = await runBramble(['verify', copy]);
    assert.equal(r.code, 3, explainCli(r));
    assert.match(r.stderr, /images\/cp-1\.img\.bmap: \d+ bytes, expected \d+/);
    assert.match(r.stderr, /images\/cp-1\.img: missing/);
  });

  test('bad destinations are exit 2 with the accepted forms', async () => {
    for (const to of ['ftp://x', 'oci://Host/Repo', 'github://owner-only', 'dir://']) {
      const r = await runBramble(['publish', built.clusterDir, '--to', to, '--unsigned']);
      assert.equal(r.code, 2, `${to}\n${explainCli(r)}`);
    }
  });
});
