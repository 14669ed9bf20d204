// OpenPGP detached signatures over a release's SHA256SUMS, made with openpgp.js and checked the same
// way `gpg --verify SHA256SUMS.asc SHA256SUMS` checks them (a binary-document signature, armored).
// The key is an armored private key from --sign-key FILE or $BRAMBLE_SIGNING_KEY, unlocked with
// $BRAMBLE_SIGNING_KEY_PASSPHRASE when it is protected.
import { readFile } from 'node:fs/promises';
import * as openpgp from 'openpgp';
import { InputError, VerificationError } from './errors.ts';

export const SIGNING_KEY_ENV = 'BRAMBLE_SIGNING_KEY';
export const SIGNING_PASSPHRASE_ENV = 'BRAMBLE_SIGNING_KEY_PASSPHRASE';

export interface SigningKey {
  key: openpgp.PrivateKey;
  /** Primary key fingerprint, lowercase hex. */
  fingerprint: string;
  /** The public half, armored: shipped in the release as signing-key.asc. */
  publicArmored: string;
}

/** Read and unlock the signing key from a file (when given) or the environment; undefined when neither names one. */
export async function loadSigningKey(file: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<SigningKey | undefined> {
  let armored: string;
  let origin: string;
  if (file) {
    origin = file;
    try {
      armored = await readFile(file, 'utf8');
    } catch (e) {
      throw new InputError(`--sign-key ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, {
        hint: 'export the key with `gpg --armor --export-secret-keys KEYID > key.asc`',
      });
    }
  } else if (env[SIGNING_KEY_ENV]) {
    origin = `$${SIGNING_KEY_ENV}`;
    armored = env[SIGNING_KEY_ENV]!;
  } else {
    return undefined;
  }
  let key: openpgp.PrivateKey;
  try {
    key = await openpgp.readPrivateKey({ armoredKey: armored });
  } catch (e) {
    throw new InputError(`${origin}: not an armored OpenPGP private key (${(e as Error).message})`, {
      hint: 'export it with `gpg --armor --export-secret-keys KEYID`',
    });
  }
  if (!key.isDecrypted()) {
    const passphrase = env[SIGNING_PASSPHRASE_ENV];
    if (!passphrase) {
      throw new InputError(`${origin}: the key is protected by a passphrase`, { hint: `put the passphrase in $${SIGNING_PASSPHRASE_ENV}` });
    }
    try {
      key = await openpgp.decryptKey({ privateKey: key, passphrase });
    } catch (e) {
      throw new InputError(`${origin}: could not unlock the key with $${SIGNING_PASSPHRASE_ENV} (${(e as Error).message})`);
    }
  }
  try {
    await key.getSigningKey();
  } catch (e) {
    throw new InputError(`${origin}: the key cannot sign (${(e as Error).message})`, { hint: 'use a key with a valid, unexpired signing (sub)key' });
  }
  return { key, fingerprint: key.getFingerprint(), publicArmored: key.toPublic().armor() };
}

/**
 * An armored detached signature over `data`, as a binary document (what gpg --detach-sign makes).
 * It is dated `epoch` (the release's SOURCE_DATE_EPOCH), or the key's creation if that is later (a
 * signature older than its key is invalid), and without openpgp.js's random salt notation: with a
 * deterministic algorithm (EdDSA, RSA) the same key and SHA256SUMS give the same signature bytes, so
 * publishing again changes nothing. (The salt guards EdDSA against fault attacks on the signing
 * machine; a release is signed once per SHA256SUMS, where determinism is worth more.)
 */
export async function signDetached(data: Uint8Array, key: SigningKey, epoch: number): Promise<string> {
  const message = await openpgp.createMessage({ binary: data });
  const date = new Date(Math.max(epoch * 1000, key.key.getCreationTime().getTime()));
  return (await openpgp.sign({ message, signingKeys: key.key, detached: true, format: 'armored', date, config: { nonDeterministicSignaturesViaNotation: false } })) as string;
}

/** Parse armored public key(s) (a key file given to verify, or a release's signing-key.asc). */
export async function readPublicKeys(subject: string, armored: string): Promise<openpgp.PublicKey[]> {
  try {
    const keys = await openpgp.readKeys({ armoredKeys: armored });
    return keys.map((k) => (k.isPrivate() ? k.toPublic() : (k as openpgp.PublicKey)));
  } catch (e) {
    throw new InputError(`${subject}: not an armored OpenPGP public key (${(e as Error).message})`, {
      hint: 'export it with `gpg --armor --export KEYID`',
    });
  }
}

/**
 * Check an armored detached signature over `data` against `keys`; returns the fingerprint of the
 * (sub)key that made it. Any failure is a VerificationError (exit 3).
 */
export async function verifyDetached(subject: string, data: Uint8Array, armoredSignature: string, keys: openpgp.PublicKey[]): Promise<string> {
  let signature: openpgp.Signature;
  try {
    signature = await openpgp.readSignature({ armoredSignature });
  } catch (e) {
    throw new VerificationError(subject, 'an armored OpenPGP signature', `unreadable (${(e as Error).message})`);
  }
  const message = await openpgp.createMessage({ binary: data });
  const result = await openpgp.verify({ message, signature, verificationKeys: keys });
  const problems: string[] = [];
  for (const s of result.signatures) {
    try {
      await s.verified;
      for (const k of keys) {
        const hit = [k, ...k.subkeys].find((x) => x.getKeyID().equals(s.keyID));
        if (hit) return hit.getFingerprint();
      }
      return s.keyID.toHex();
    } catch (e) {
      const known = keys.some((k) => k.getKeys(s.keyID).length > 0);
      problems.push(known ? `bad signature by key ${s.keyID.toHex()}` : `signature by key ${s.keyID.toHex()}, which is not the expected key`);
    }
  }
  const expected = keys.map((k) => k.getFingerprint()).join(', ');
  throw new VerificationError(subject, `a good signature by ${expected}`, problems.join('; ') || 'no signature');
}
