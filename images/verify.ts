// Checking upstream bytes in each upstream's own format: Flatcar's DIGESTS files and OpenPGP
// signatures (openpgp.js, pinned keys only), dl.k8s.io's bare-hex checksum files and sha256sum lines.
import * as openpgp from 'openpgp';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { VerificationError } from '../builders/errors.ts';

/** Shipped copy of "Flatcar Buildbot (Official Builds) <buildbot@flatcar-linux.org>" (base-images.md §8). */
export const FLATCAR_KEY_FILE = new URL('./keys/flatcar-image-signing-key.asc', import.meta.url);
/** Primary-key fingerprint of the Flatcar image signing key (base-images.md §8); the shipped file must match it. */
export const FLATCAR_KEY_FINGERPRINT = 'f88cfedeff29a5b4d9523864e25d9aed0593b34a';

export type DigestAlgorithm = 'md5' | 'sha1' | 'sha256' | 'sha512';

/** Hex length of each digest. */
const HEX_LENGTH: Record<DigestAlgorithm, number> = { md5: 32, sha1: 40, sha256: 64, sha512: 128 };

/** Section headers of a Flatcar `.DIGESTS` file (scripts `common.sh make_digests`; base-images.md §8). */
const DIGESTS_SECTIONS: Record<string, DigestAlgorithm> = {
  '# MD5 HASH': 'md5',
  '# SHA1 HASH': 'sha1',
  '# SHA512 HASH': 'sha512',
};

/**
 * The digests a Flatcar `.DIGESTS` file lists for `fileName` (matched by basename), per section.
 * Throws VerificationError when the file lists no SHA512 for it: that is the one bramble checks.
 */
export function parseFlatcarDigests(text: string, fileName: string, subject: string): Partial<Record<DigestAlgorithm, string>> {
  const want = basename(fileName);
  const found: Partial<Record<DigestAlgorithm, string>> = {};
  let section: DigestAlgorithm | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '').trim();
    if (!line) continue;
    if (line.startsWith('#')) {
      section = DIGESTS_SECTIONS[line.replace(/\s+/g, ' ').toUpperCase()];
      continue;
    }
    if (!section) continue;
    const entry = parseSumLine(line);
    if (!entry || basename(entry.name) !== want) continue;
    if (entry.hex.length !== HEX_LENGTH[section]) {
      throw new VerificationError(subject, `a ${section} digest of ${want}`, `malformed line "${line}"`);
    }
    found[section] ??= entry.hex;
  }
  if (!found.sha512) throw new VerificationError(subject, `a SHA512 HASH line for ${want}`, 'none');
  return found;
}

/** `<hex>  <name>` (text mode) or `<hex> *<name>` (binary mode), as coreutils `sha256sum` writes them. */
function parseSumLine(line: string): { hex: string; name: string } | undefined {
  const m = /^([0-9a-fA-F]+) [ *](.+)$/.exec(line);
  return m ? { hex: m[1]!.toLowerCase(), name: m[2]!.trim() } : undefined;
}

/**
 * The digest a checksum file gives for `fileName`: either bare hex (dl.k8s.io, crictl:
 * kubernetes-and-registry.md §1) or sha256sum-style lines (HypriotOS, CNI plugins), picking the line
 * whose name's basename is `fileName`.
 */
export function parseChecksumFile(text: string, fileName: string, algorithm: 'sha256' | 'sha512', subject: string): string {
  const want = basename(fileName);
  const lines = text.split('\n').map((l) => l.replace(/\r$/, '').trim()).filter((l) => l && !l.startsWith('#'));
  const hexOk = (h: string) => h.length === HEX_LENGTH[algorithm] && /^[0-9a-fA-F]+$/.test(h);
  if (lines.length === 1 && hexOk(lines[0]!)) return lines[0]!.toLowerCase();
  for (const line of lines) {
    const entry = parseSumLine(line);
    if (entry && basename(entry.name.replace(/^\.\//, '')) === want) {
      if (!hexOk(entry.hex)) throw new VerificationError(subject, `a ${algorithm} digest for ${want}`, `malformed line "${line}"`);
      return entry.hex;
    }
  }
  throw new VerificationError(subject, `a ${algorithm} line for ${want}`, 'none');
}

/** Compare a computed digest with the expected one; mismatch → VerificationError naming the file. */
export function expectDigest(subject: string, algorithm: DigestAlgorithm, expected: string, actual: string, source: string): void {
  if (expected.toLowerCase() !== actual.toLowerCase()) {
    throw new VerificationError(subject, `${algorithm} ${expected} (${source})`, `${algorithm} ${actual}`, {
      hint: 'the download is corrupt or was tampered with; nothing was kept. Check the mirror in [sources] and try again',
    });
  }
}

/** The public keys signatures may come from: the pinned Flatcar key plus `sources.trustedKeys`. */
export interface TrustedKeys {
  keys: openpgp.PublicKey[];
  /** Primary fingerprints, for messages. */
  fingerprints: string[];
}

/** Load the shipped Flatcar key (checking its pinned fingerprint) and any extra armored keys. */
export async function loadTrustedKeys(extraArmored: readonly string[] = []): Promise<TrustedKeys> {
  const flatcar = await openpgp.readKey({ armoredKey: await readFile(FLATCAR_KEY_FILE, 'utf8') });
  if (flatcar.getFingerprint() !== FLATCAR_KEY_FINGERPRINT) {
    throw new VerificationError(FLATCAR_KEY_FILE.pathname, `key ${FLATCAR_KEY_FINGERPRINT}`, `key ${flatcar.getFingerprint()}`, {
      hint: 'the shipped Flatcar key file was changed; restore images/keys/flatcar-image-signing-key.asc from git',
    });
  }
  const keys: openpgp.PublicKey[] = [flatcar];
  for (const [i, armored] of extraArmored.entries()) {
    let read: openpgp.Key[];
    try {
      read = await openpgp.readKeys({ armoredKeys: armored });
    } catch (e) {
      throw new VerificationError(`sources.trustedKeys[${i}]`, 'an armored OpenPGP public key', (e as Error).message, { cause: e });
    }
    for (const k of read) keys.push(k.isPrivate() ? k.toPublic() : (k as openpgp.PublicKey));
  }
  return { keys, fingerprints: keys.map((k) => k.getFingerprint()) };
}

/** Which key made a good signature, as "<signing key fingerprint> (<primary user id>)". */
function describeSigner(keys: TrustedKeys, keyID: openpgp.KeyID): string {
  for (const k of keys.keys) {
    const sub = [k, ...k.subkeys].find((s) => s.getKeyID().equals(keyID));
    if (sub) return sub.getFingerprint();
  }
  return keyID.toHex();
}

async function checkSignatures(
  subject: string,
  keys: TrustedKeys,
  signatures: Array<{ keyID: openpgp.KeyID; verified: Promise<true> }>,
): Promise<string> {
  if (signatures.length === 0) throw new VerificationError(subject, 'an OpenPGP signature', 'no signature packet');
  const problems: string[] = [];
  for (const s of signatures) {
    try {
      await s.verified;
      return describeSigner(keys, s.keyID);
    } catch (e) {
      const known = keys.keys.some((k) => k.getKeys(s.keyID).length > 0);
      problems.push(known ? `bad signature by key ${s.keyID.toHex()}: ${(e as Error).message}` : `signature by untrusted key ${s.keyID.toHex()}`);
    }
  }
  throw new VerificationError(subject, `a good signature by a trusted key (${keys.fingerprints.join(', ')})`, problems.join('; '), {
    hint: 'if this mirror signs with its own key, add its public key to sources.trustedKeys; otherwise the file is not authentic',
  });
}

async function readSignatureBytes(subject: string, sig: Uint8Array): Promise<openpgp.Signature> {
  try {
    const text = Buffer.from(sig).toString('latin1');
    const read = text.includes('-----BEGIN PGP SIGNATURE-----') ? await openpgp.readSignature({ armoredSignature: text }) : await openpgp.readSignature({ binarySignature: sig });
    // openpgp.js skips packets of unknown types, so some garbage parses into a list with no signature in it.
    if (!read.packets.some((p) => p instanceof openpgp.SignaturePacket)) throw new Error('it holds no signature packet');
    return read;
  } catch (e) {
    throw new VerificationError(subject, 'an OpenPGP signature', `unreadable signature: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Check a detached signature (binary or armored, Flatcar's `<file>.sig`) over a file on disk, streaming
 * it. Returns the fingerprint of the key that made it.
 */
export async function verifyDetachedSignature(subject: string, file: string, signature: Uint8Array, keys: TrustedKeys): Promise<string> {
  const sig = await readSignatureBytes(`${subject}.sig`, signature);
  const message = await openpgp.createMessage({ binary: Readable.toWeb(createReadStream(file)) as ReadableStream<Uint8Array> });
  const result = await openpgp.verify({ message, signature: sig, verificationKeys: keys.keys, format: 'binary' });
  // The signatures settle only once the data stream has been read to its end.
  const reader = (result.data as ReadableStream<Uint8Array>).getReader();
  while (!(await reader.read()).done) {
    /* drain */
  }
  return checkSignatures(subject, keys, result.signatures);
}

/** Check a cleartext-signed text (`gpg --clearsign`, Flatcar's `.DIGESTS.asc`); returns the signed text and signer. */
export async function verifyCleartext(subject: string, armored: string, keys: TrustedKeys): Promise<{ text: string; signer: string }> {
  let message: openpgp.CleartextMessage;
  try {
    message = await openpgp.readCleartextMessage({ cleartextMessage: armored });
  } catch (e) {
    throw new VerificationError(subject, 'a cleartext-signed OpenPGP message', (e as Error).message, { cause: e });
  }
  const result = await openpgp.verify({ message, verificationKeys: keys.keys });
  const signer = await checkSignatures(subject, keys, result.signatures);
  return { text: message.getText(), signer };
}
