// The cluster's build-time PKI in out/<cluster>/pki/: the three CAs and the service-account key
// pair kubeadm reuses when it finds them (pxe-and-bootstrap.md §6.1), a bootstrap token (§6.2) and
// the discovery hash (§6.3). Generated once and then only ever read: every node image carries
// these, so a silently regenerated CA would split the cluster. Keys come from Node's crypto;
// certificates from the openssl CLI (Node cannot issue X.509 certificates).
import { createHash, createPrivateKey, createPublicKey, generateKeyPair, X509Certificate } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { InputError, InterruptedError } from '../../builders/errors.ts';
import { run } from '../../builders/exec.ts';
import { discoveryHash, generateBootstrapToken, parseBootstrapToken, type BootstrapToken } from './token.ts';

/** kubeadm's default `encryptionAlgorithm: RSA-2048` (kubeadm v1beta4 ClusterConfiguration, §6.4). */
export const RSA_KEY_BITS = 2048;
/** RSA public exponent F4 (65537), what Go's rsa.GenerateKey and OpenSSL use. */
const RSA_PUBLIC_EXPONENT = 0x10001;
/** kubeadm's `caCertificateValidityPeriod` default 87600h = 10 years (§6.4). */
export const CA_VALIDITY_DAYS = 3650;
/** Secret directory and file modes (DESIGN.md "Secrets"). */
export const PKI_DIR_MODE = 0o700;
export const PKI_FILE_MODE = 0o600;

/** The record of what was generated, kept beside the keys (it names them, so it is secret too). */
export const PKI_RECORD_FILE = 'pki.json';
export const BOOTSTRAP_TOKEN_FILE = 'bootstrap-token';
const PKI_RECORD_FORMAT = 1;

/** A CA kubeadm reuses from certificatesDir; paths are relative to /etc/kubernetes/pki and to the PKI dir. */
interface Authority {
  what: string;
  cert: string;
  key: string;
  /** kubeadm's common names for its CAs (kubeadm certs phase: ca, front-proxy-ca, etcd/ca). */
  commonName: string;
}

const authorities: readonly Authority[] = [
  { what: 'cluster CA', cert: 'ca.crt', key: 'ca.key', commonName: 'kubernetes' },
  { what: 'front-proxy CA', cert: 'front-proxy-ca.crt', key: 'front-proxy-ca.key', commonName: 'front-proxy-ca' },
  { what: 'etcd CA', cert: 'etcd/ca.crt', key: 'etcd/ca.key', commonName: 'etcd-ca' },
];
const SA_KEY = 'sa.key';
const SA_PUB = 'sa.pub';

/**
 * Exactly the files a control-plane node needs so kubeadm creates every leaf certificate from the
 * shared CAs (kubeadm HA "manual certificate distribution", §6.1). Workers get none of them.
 */
export const CONTROL_PLANE_PKI_FILES = ['ca.crt', 'ca.key', 'sa.key', 'sa.pub', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'etcd/ca.crt', 'etcd/ca.key'] as const;
export type ControlPlanePkiFile = (typeof CONTROL_PLANE_PKI_FILES)[number];

export interface Pki {
  /** The PKI directory, out/<cluster>/pki. */
  dir: string;
  cluster: string;
  /** PEM text of each shared file, keyed by its path relative to /etc/kubernetes/pki. */
  files: Record<ControlPlanePkiFile, string>;
  token: BootstrapToken;
  /** `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo. */
  caCertHash: string;
  /** True when this call generated the PKI, false when it was read back. */
  created: boolean;
}

interface PkiRecord {
  format: number;
  cluster: string;
  generatedAt: string;
  keyAlgorithm: string;
  caValidityDays: number;
  discoveryHash: string;
  /** sha256 of every file, so a swapped file (a CA from another cluster) is caught. */
  files: Record<string, { sha256: string }>;
}

/** Whether a path relative to /etc/kubernetes/pki holds a private key (mode 0600 on nodes). */
export function isPrivateKeyFile(path: string): boolean {
  return path.endsWith('.key');
}

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/**
 * The cluster's PKI: generated in `dir` when `dir` is absent or empty, otherwise read back and
 * checked. A missing, changed or inconsistent file is an InputError (exit 2) — never a new CA.
 */
export async function ensurePki(dir: string, opts: { cluster: string; signal?: AbortSignal }): Promise<Pki> {
  if (await isAbsentOrEmpty(dir)) {
    await generatePki(dir, opts);
    return { ...(await loadPki(dir, opts)), created: true };
  }
  return loadPki(dir, opts);
}

async function isAbsentOrEmpty(dir: string): Promise<boolean> {
  let st;
  try {
    st = await lstat(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw e;
  }
  if (!st.isDirectory()) {
    throw new InputError(`${dir} is not a directory, so it cannot hold the cluster PKI`, { hint: `move it away; bramble keeps the PKI in ${dir}/` });
  }
  return (await readdir(dir)).length === 0;
}

function throwIfAborted(signal: AbortSignal | undefined) {
  if (signal?.aborted) throw new InterruptedError();
}

/** Writes the whole PKI into a sibling temp dir and renames it into place, so it appears complete or not at all. */
async function generatePki(dir: string, opts: { cluster: string; signal?: AbortSignal }): Promise<void> {
  const { signal } = opts;
  await mkdir(dirname(dir), { recursive: true });
  const staging = await mkdtemp(join(dirname(dir), `.${basename(dir)}.new-`));
  const work = await mkdtemp(join(tmpdir(), 'bramble-pki-'));
  try {
    await chmod(staging, PKI_DIR_MODE);
    await mkdir(join(staging, 'etcd'), { mode: PKI_DIR_MODE });
    await chmod(join(staging, 'etcd'), PKI_DIR_MODE);
    const written = new Map<string, string>();
    const put = async (rel: string, text: string) => {
      await writeFile(join(staging, rel), text, { mode: PKI_FILE_MODE });
      await chmod(join(staging, rel), PKI_FILE_MODE);
      written.set(rel, text);
    };

    for (const ca of authorities) {
      throwIfAborted(signal);
      const { privateKey } = await rsaKeyPair();
      await put(ca.key, privateKey);
      const config = join(work, `${ca.commonName}.cnf`);
      await writeFile(config, caRequestConfig(ca.commonName));
      const certPath = join(work, `${ca.commonName}.crt`);
      // -x509 self-signs with the given key; the serial is random (OpenSSL 3 default for -x509).
      await run('openssl', ['req', '-x509', '-new', '-sha256', '-key', join(staging, ca.key), '-config', config, '-days', String(CA_VALIDITY_DAYS), '-out', certPath], { signal });
      await put(ca.cert, await readFile(certPath, 'utf8'));
    }
    throwIfAborted(signal);
    const sa = await rsaKeyPair();
    await put(SA_KEY, sa.privateKey);
    await put(SA_PUB, sa.publicKey);
    const token = generateBootstrapToken();
    await put(BOOTSTRAP_TOKEN_FILE, `${token.token}\n`);

    const record: PkiRecord = {
      format: PKI_RECORD_FORMAT,
      cluster: opts.cluster,
      generatedAt: new Date().toISOString(),
      keyAlgorithm: `RSA-${RSA_KEY_BITS}`,
      caValidityDays: CA_VALIDITY_DAYS,
      discoveryHash: discoveryHash(written.get('ca.crt')!),
      files: Object.fromEntries([...written].sort(([a], [b]) => a.localeCompare(b)).map(([rel, text]) => [rel, { sha256: sha256(text) }])),
    };
    await put(PKI_RECORD_FILE, `${JSON.stringify(record, null, 2)}\n`);
    throwIfAborted(signal);
    // An empty directory at `dir` (isAbsentOrEmpty allowed it) gives way to the finished one.
    await rmdir(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
    await rename(staging, dir);
  } catch (e) {
    await rm(staging, { recursive: true, force: true });
    throw e;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function rsaKeyPair(): Promise<{ privateKey: string; publicKey: string }> {
  // PKCS#1 "RSA PRIVATE KEY" and PKIX "PUBLIC KEY", the PEM kinds kubeadm itself writes.
  return promisify(generateKeyPair)('rsa', {
    modulusLength: RSA_KEY_BITS,
    publicExponent: RSA_PUBLIC_EXPONENT,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
}

/** An openssl req config for a self-signed CA with the extensions of a kubeadm CA certificate. */
function caRequestConfig(commonName: string): string {
  return [
    '[req]',
    'prompt = no',
    'distinguished_name = dn',
    'x509_extensions = ca',
    '[dn]',
    `CN = ${commonName}`,
    '[ca]',
    'basicConstraints = critical, CA:TRUE',
    'keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign',
    'subjectKeyIdentifier = hash',
    `subjectAltName = DNS:${commonName}`,
    '',
  ].join('\n');
}

/** Reads an existing PKI and checks every file; all problems are reported together. */
export async function loadPki(dir: string, opts: { cluster: string }): Promise<Pki> {
  const problems: string[] = [];
  const texts = new Map<string, string>();
  const read = async (rel: string): Promise<string | undefined> => {
    const path = join(dir, rel);
    try {
      const st = await stat(path);
      if ((st.mode & 0o077) !== 0) {
        problems.push(`${rel}: readable by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${path}`);
      }
      const text = await readFile(path, 'utf8');
      texts.set(rel, text);
      return text;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        problems.push(`${rel}: missing`);
        return undefined;
      }
      throw e;
    }
  };

  const recordText = await read(PKI_RECORD_FILE);
  let record: PkiRecord | undefined;
  if (recordText !== undefined) {
    try {
      record = JSON.parse(recordText) as PkiRecord;
      if (record.format !== PKI_RECORD_FORMAT || typeof record.files !== 'object') throw new Error('unknown format');
    } catch {
      problems.push(`${PKI_RECORD_FILE}: not a bramble PKI record`);
      record = undefined;
    }
  }
  if (record && record.cluster !== opts.cluster) {
    throw new InputError(`${dir} holds the PKI of cluster "${record.cluster}", not of "${opts.cluster}"`, {
      hint: `use the PKI directory of cluster "${opts.cluster}", or delete ${dir} to create a NEW cluster CA`,
    });
  }

  for (const ca of authorities) {
    const certText = await read(ca.cert);
    const keyText = await read(ca.key);
    const cert = certText === undefined ? undefined : parse(() => new X509Certificate(certText), problems, `${ca.cert}: not a PEM certificate`);
    const key = keyText === undefined ? undefined : parse(() => createPrivateKey(keyText), problems, `${ca.key}: not a PEM private key`);
    if (cert && !cert.ca) problems.push(`${ca.cert}: not a CA certificate (basicConstraints CA:TRUE missing)`);
    if (cert && new Date(cert.validTo).getTime() < Date.now()) problems.push(`${ca.cert}: expired on ${cert.validTo}`);
    if (cert && key && !cert.checkPrivateKey(key)) problems.push(`${ca.key}: does not match ${ca.cert}`);
  }
  const saKey = await read(SA_KEY);
  const saPub = await read(SA_PUB);
  const priv = saKey === undefined ? undefined : parse(() => createPrivateKey(saKey), problems, `${SA_KEY}: not a PEM private key`);
  const pub = saPub === undefined ? undefined : parse(() => createPublicKey(saPub), problems, `${SA_PUB}: not a PEM public key`);
  if (priv && pub) {
    const derived = createPublicKey(priv).export({ type: 'spki', format: 'der' });
    if (!derived.equals(pub.export({ type: 'spki', format: 'der' }))) problems.push(`${SA_PUB}: does not match ${SA_KEY}`);
  }
  const tokenText = await read(BOOTSTRAP_TOKEN_FILE);
  const token = tokenText === undefined ? undefined : parseBootstrapToken(tokenText);
  if (tokenText !== undefined && !token) problems.push(`${BOOTSTRAP_TOKEN_FILE}: not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})`);

  if (record) {
    for (const [rel, text] of texts) {
      if (rel === PKI_RECORD_FILE) continue;
      const want = record.files[rel]?.sha256;
      if (want !== undefined && want !== sha256(text)) problems.push(`${rel}: changed since the PKI was generated (its sha256 is not the one in ${PKI_RECORD_FILE})`);
    }
  }

  if (problems.length > 0 || !token) {
    throw new InputError(`the PKI of cluster "${opts.cluster}" in ${dir} is incomplete or inconsistent:\n${problems.map((p) => `  ${p}`).join('\n')}`, {
      hint: `restore these files from your backup of ${dir}; or, to start a NEW cluster with a new CA (every node image must then be rebuilt), delete the whole ${dir} directory`,
    });
  }
  const files = Object.fromEntries(CONTROL_PLANE_PKI_FILES.map((rel) => [rel, texts.get(rel)!])) as Record<ControlPlanePkiFile, string>;
  return { dir, cluster: opts.cluster, files, token, caCertHash: discoveryHash(files['ca.crt']), created: false };
}

function parse<T>(fn: () => T, problems: string[], problem: string): T | undefined {
  try {
    return fn();
  } catch {
    problems.push(problem);
    return undefined;
  }
}
