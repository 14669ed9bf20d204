// The two join credentials kubeadm needs besides the CA: a bootstrap token and the CA public-key
// pin (pxe-and-bootstrap.md §6.2, §6.3). Both are known at build time because the PKI is.
import { createHash, randomInt, X509Certificate } from 'node:crypto';

/** `[a-z0-9]{6}.[a-z0-9]{16}`: token id, a dot, token secret (kubeadm bootstrap token format, §6.2). */
export const BOOTSTRAP_TOKEN_PATTERN = /^([a-z0-9]{6})\.([a-z0-9]{16})$/;
const TOKEN_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
const TOKEN_ID_LENGTH = 6;
const TOKEN_SECRET_LENGTH = 16;

/** The group kubeadm's default node token authenticates as (§6.2). */
export const BOOTSTRAP_TOKEN_GROUP = 'system:bootstrappers:kubeadm:default-node-token';
/** `signing` is what token discovery needs (the JWS in cluster-info); `authentication` for TLS bootstrap. */
export const BOOTSTRAP_TOKEN_USAGES = ['signing', 'authentication'] as const;
/**
 * `0s` = never expires (§6.2). bramble bakes the token into worker images that may be flashed and
 * booted long after the first control plane came up, with no controller around to mint a new one;
 * an expiring token would silently stop late nodes from joining.
 */
export const BOOTSTRAP_TOKEN_TTL = '0s';

export interface BootstrapToken {
  id: string;
  secret: string;
  /** `id.secret`, as kubeadm takes it. */
  token: string;
}

function randomString(length: number): string {
  let s = '';
  // randomInt is uniform over the range (no modulo bias) and backed by the CSPRNG.
  for (let i = 0; i < length; i++) s += TOKEN_ALPHABET[randomInt(TOKEN_ALPHABET.length)];
  return s;
}

export function generateBootstrapToken(): BootstrapToken {
  const id = randomString(TOKEN_ID_LENGTH);
  const secret = randomString(TOKEN_SECRET_LENGTH);
  return { id, secret, token: `${id}.${secret}` };
}

/** The token in `text` (surrounding whitespace ignored), or undefined when it is not a bootstrap token. */
export function parseBootstrapToken(text: string): BootstrapToken | undefined {
  const m = BOOTSTRAP_TOKEN_PATTERN.exec(text.trim());
  return m ? { id: m[1]!, secret: m[2]!, token: m[0] } : undefined;
}

/**
 * `sha256:<hex>` over the CA certificate's DER SubjectPublicKeyInfo (RFC 7469 pin), the value of
 * `--discovery-token-ca-cert-hash` / `caCertHashes` (§6.3).
 */
export function discoveryHash(caCertPem: string | Buffer): string {
  const spki = new X509Certificate(caCertPem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`;
}
