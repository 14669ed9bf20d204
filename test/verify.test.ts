// Checksum-file parsers and OpenPGP checks against real keys made by openpgp.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as openpgp from 'openpgp';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VerificationError } from '../builders/errors.ts';
import {
  FLATCAR_KEY_FILE,
  FLATCAR_KEY_FINGERPRINT,
  expectDigest,
  loadTrustedKeys,
  parseChecksumFile,
  parseFlatcarDigests,
  verifyCleartext,
  verifyDetachedSignature,
} from '../images/verify.ts';
import { clearsign, detachedSignature, flatcarDigests, makeKey } from './helpers/tiny-upstream.ts';

const h = (algo: string, s: string | Buffer) => createHash(algo).update(s).digest('hex');
const A256 = h('sha256', 'a');
const B256 = h('sha256', 'b');
const A512 = h('sha512', 'a');

function rejects3(fn: () => unknown, pattern?: RegExp) {
  return assert.rejects(async () => fn(), (e: unknown) => {
    assert.ok(e instanceof VerificationError, `expected VerificationError, got ${String(e)}`);
    assert.equal(e.exitCode, 3);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

test('Flatcar DIGESTS: the SHA512 line of the named file, by basename', () => {
  const text = [
    '# MD5 HASH',
    `${h('md5', 'x')}  flatcar_production_image.bin.bz2`,
    `${h('md5', 'y')}  flatcar_production_image.vmlinuz`,
    '# SHA1 HASH',
    `${h('sha1', 'x')}  flatcar_production_image.bin.bz2`,
    '# SHA512 HASH',
    `${h('sha512', 'y')}  flatcar_production_image.vmlinuz`,
    `${h('sha512', 'x')}  flatcar_production_image.bin.bz2`,
    '',
  ].join('\n');
  const got = parseFlatcarDigests(text, '/cache/x/flatcar_production_image.bin.bz2', 'test.DIGESTS');
  assert.equal(got.sha512, h('sha512', 'x'));
  assert.equal(got.md5, h('md5', 'x'));
  assert.equal(got.sha1, h('sha1', 'x'));
  // The writer's own output parses the same way (CRLF tolerated).
  assert.equal(parseFlatcarDigests(flatcarDigests('f.bin', Buffer.from('a')).replaceAll('\n', '\r\n'), 'f.bin', 't').sha512, A512);
});

test('Flatcar DIGESTS without a SHA512 line for the file, or a malformed one, is a verification error', async () => {
  await rejects3(() => parseFlatcarDigests(`# MD5 HASH\n${h('md5', 'a')}  f.bin\n`, 'f.bin', 'f.bin.DIGESTS'), /SHA512 HASH line for f\.bin.*none/);
  await rejects3(() => parseFlatcarDigests(`# SHA512 HASH\n${A512}  other.bin\n`, 'f.bin', 'f.bin.DIGESTS'), /f\.bin\.DIGESTS/);
  await rejects3(() => parseFlatcarDigests(`# SHA512 HASH\n${A256}  f.bin\n`, 'f.bin', 'f.bin.DIGESTS'), /malformed/);
});

const checksumCases: Array<{ name: string; text: string; file: string; algo: 'sha256' | 'sha512'; want?: string }> = [
  { name: 'dl.k8s.io bare hex, no newline', text: A256, file: 'kubelet', algo: 'sha256', want: A256 },
  { name: 'crictl bare hex with newline', text: `${A256}\n`, file: 'crictl-v1.33.0-linux-amd64.tar.gz', algo: 'sha256', want: A256 },
  { name: 'bare sha512', text: A512, file: 'kubectl', algo: 'sha512', want: A512 },
  { name: 'upper-case hex', text: A256.toUpperCase(), file: 'kubelet', algo: 'sha256', want: A256 },
  { name: 'sha256sum text mode', text: `${A256}  hypriotos-rpi-v1.12.3.img.zip\n`, file: 'hypriotos-rpi-v1.12.3.img.zip', algo: 'sha256', want: A256 },
  { name: 'sha256sum binary mode', text: `${A256} *cni.tgz\n`, file: 'cni.tgz', algo: 'sha256', want: A256 },
  { name: 'picks the line for the file', text: `${B256}  other\n${A256}  ./bin/kubeadm\n`, file: 'kubeadm', algo: 'sha256', want: A256 },
  { name: 'no line for the file', text: `${B256}  other\n${A256}  another\n`, file: 'kubeadm', algo: 'sha256' },
  { name: 'wrong length for the algorithm', text: A256, file: 'kubelet', algo: 'sha512' },
  { name: 'not hex', text: 'z'.repeat(64), file: 'kubelet', algo: 'sha256' },
  { name: 'empty', text: '', file: 'kubelet', algo: 'sha256' },
];

for (const c of checksumCases) {
  test(`checksum file: ${c.name}`, async () => {
    if (c.want) assert.equal(parseChecksumFile(c.text, c.file, c.algo, 'sums'), c.want);
    else await rejects3(() => parseChecksumFile(c.text, c.file, c.algo, 'sums'), /^sums: /);
  });
}

test('a digest mismatch names the file, the expected and the actual digest', async () => {
  expectDigest('f.bin', 'sha256', A256, A256.toUpperCase(), 'f.bin.sha256');
  await rejects3(() => expectDigest('http://x/f.bin', 'sha256', A256, B256, 'f.bin.sha256'), new RegExp(`http://x/f\\.bin.*${A256}.*${B256}`));
});

test('the shipped Flatcar key has the pinned fingerprint and its current signing subkey', async () => {
  const keys = await loadTrustedKeys();
  assert.deepEqual(keys.fingerprints, [FLATCAR_KEY_FINGERPRINT]);
  const key = await openpgp.readKey({ armoredKey: await readFile(FLATCAR_KEY_FILE, 'utf8') });
  assert.deepEqual(key.getUserIDs(), ['Flatcar Buildbot (Official Builds) <buildbot@flatcar-linux.org>']);
  // base-images.md §8: the signing subkey valid 2025-03-07 → 2027-03-08.
  assert.ok(key.subkeys.some((s) => s.getFingerprint() === '52f145dfd00bbdcd928cbb5a32da80f91ef52974'));
});

test('trustedKeys must be armored public keys', async () => {
  await rejects3(() => loadTrustedKeys(['not a key']), /sources\.trustedKeys\[0\]/);
});

test('detached signatures: good, untrusted key, other data, garbage', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-verify-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const [mirror, stranger] = await Promise.all([makeKey('Mirror'), makeKey('Stranger')]);
  const data = randomBytes(200 * 1024);
  const file = join(dir, 'flatcar_production_image.bin.bz2');
  await writeFile(file, data);
  const trusted = await loadTrustedKeys([mirror.armoredPublic]);
  const onlyFlatcar = await loadTrustedKeys();

  const good = await detachedSignature(data, mirror);
  const signer = await verifyDetachedSignature('img', file, good, trusted);
  // curve25519 keys from generateKey sign with their primary key.
  assert.equal(signer, mirror.fingerprint);
  // An armored signature is read too.
  const armored = openpgp.armor(openpgp.enums.armor.signature, good);
  await verifyDetachedSignature('img', file, Buffer.from(armored), trusted);

  await rejects3(() => verifyDetachedSignature('img', file, good, onlyFlatcar), /untrusted key/);
  await rejects3(async () => verifyDetachedSignature('img', file, await detachedSignature(data, stranger), trusted), /untrusted key/);
  await rejects3(async () => verifyDetachedSignature('img', file, await detachedSignature(randomBytes(10), mirror), trusted), /bad signature/);
  // Fixed garbage, not random bytes: about 1 random buffer in 80 starts like an unknown packet type.
  await rejects3(() => verifyDetachedSignature('img', file, Buffer.from('not an OpenPGP signature\n'), trusted), /unreadable signature/);
  // A well-formed packet of an unknown type (new format, tag 40) is skipped by openpgp.js: no signature in it.
  await rejects3(() => verifyDetachedSignature('img', file, Buffer.from([0xc0 | 40, 3, 1, 2, 3]), trusted), /unreadable signature: it holds no signature packet/);
});

test("an RSA key like Flatcar's verifies a detached signature", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bramble-verify-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const { privateKey, publicKey } = await openpgp.generateKey({ type: 'rsa', rsaBits: 2048, userIDs: [{ name: 'rsa' }], format: 'object' });
  const data = randomBytes(1024);
  await writeFile(join(dir, 'f'), data);
  const sig = await openpgp.sign({ message: await openpgp.createMessage({ binary: data }), signingKeys: privateKey, detached: true, format: 'binary' });
  const keys = await loadTrustedKeys([publicKey.armor()]);
  assert.ok(await verifyDetachedSignature('f', join(dir, 'f'), sig as Uint8Array, keys));
});

test('clearsigned DIGESTS: the signed text comes back; an edited text or an untrusted signer fails', async () => {
  const [mirror, stranger] = await Promise.all([makeKey('Mirror'), makeKey('Stranger')]);
  const trusted = await loadTrustedKeys([mirror.armoredPublic]);
  const text = flatcarDigests('f.bin', Buffer.from('a'));
  const signed = await clearsign(text, mirror);
  const got = await verifyCleartext('f.bin.DIGESTS.asc', signed, trusted);
  assert.equal(parseFlatcarDigests(got.text, 'f.bin', 'x').sha512, A512);
  await rejects3(() => verifyCleartext('f.bin.DIGESTS.asc', signed.replace(A512, h('sha512', 'b')), trusted), /f\.bin\.DIGESTS\.asc/);
  await rejects3(async () => verifyCleartext('f.bin.DIGESTS.asc', await clearsign(text, stranger), trusted), /untrusted key/);
  await rejects3(() => verifyCleartext('f.bin.DIGESTS.asc', text, trusted), /cleartext-signed/);
});
