// Build-time PKI: generated once with real openssl, checked by openssl itself (verify, the kubeadm
// docs' CA-hash pipeline), kept across rebuilds, and refused — with exit 2 and a message that says
// what to do — when a file goes missing or stops matching.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../builders/errors.ts';
import { run } from '../builders/exec.ts';
import { CA_VALIDITY_DAYS, CONTROL_PLANE_PKI_FILES, ensurePki, type Pki } from '../overlays/kubernetes/pki.ts';
import { BOOTSTRAP_TOKEN_PATTERN, discoveryHash, generateBootstrapToken, parseBootstrapToken } from '../overlays/kubernetes/token.ts';

let work: string;
let dir: string;
let pki: Pki;
const CLUSTER = 'demo';

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'bramble-pki-test-'));
  dir = join(work, 'out', CLUSTER, 'pki');
  pki = await ensurePki(dir, { cluster: CLUSTER });
});
after(() => rm(work, { recursive: true, force: true }));

/** A copy of the generated PKI to break, leaving the original intact for the other tests. */
async function copyPki(name: string): Promise<string> {
  const copy = join(work, name, 'pki');
  await mkdir(join(work, name), { recursive: true });
  await cp(dir, copy, { recursive: true });
  return copy;
}

async function expectPkiError(pkiDir: string, pattern: RegExp, cluster = CLUSTER) {
  await assert.rejects(ensurePki(pkiDir, { cluster }), (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.exitCode, 2);
    assert.match(e.message, pattern);
    return true;
  });
}

test('bootstrap tokens match kubeadm\'s format and parse back', () => {
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) {
    const t = generateBootstrapToken();
    assert.match(t.token, BOOTSTRAP_TOKEN_PATTERN);
    assert.equal(t.token, `${t.id}.${t.secret}`);
    seen.add(t.token);
  }
  assert.equal(seen.size, 200);
  assert.deepEqual(parseBootstrapToken(' abcdef.0123456789abcdef\n'), { id: 'abcdef', secret: '0123456789abcdef', token: 'abcdef.0123456789abcdef' });
  for (const bad of ['ABCDEF.0123456789abcdef', 'abcde.0123456789abcdef', 'abcdef.0123456789abcde', 'abcdef:0123456789abcdef']) {
    assert.equal(parseBootstrapToken(bad), undefined, bad);
  }
});

test('the PKI is a 0700 directory of 0600 files: three CAs, the SA key pair, the token and pki.json', async () => {
  assert.equal(pki.created, true);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, 'etcd'))).mode & 0o777, 0o700);
  const top = (await readdir(dir)).sort();
  assert.deepEqual(top, ['bootstrap-token', 'ca.crt', 'ca.key', 'etcd', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'pki.json', 'sa.key', 'sa.pub']);
  assert.deepEqual((await readdir(join(dir, 'etcd'))).sort(), ['ca.crt', 'ca.key']);
  for (const f of [...top.filter((n) => n !== 'etcd'), 'etcd/ca.crt', 'etcd/ca.key']) {
    assert.equal((await stat(join(dir, f))).mode & 0o777, 0o600, f);
  }
  const record = JSON.parse(await readFile(join(dir, 'pki.json'), 'utf8'));
  assert.equal(record.cluster, CLUSTER);
  assert.equal(record.keyAlgorithm, 'RSA-2048');
  assert.equal(record.discoveryHash, pki.caCertHash);
  assert.deepEqual(Object.keys(record.files).sort(), ['bootstrap-token', ...CONTROL_PLANE_PKI_FILES].sort());
  assert.match(pki.token.token, BOOTSTRAP_TOKEN_PATTERN);
  assert.equal((await readFile(join(dir, 'bootstrap-token'), 'utf8')).trim(), pki.token.token);
  // No staging directory is left beside it.
  assert.deepEqual(await readdir(join(work, 'out', CLUSTER)), ['pki']);
});

test('openssl verifies each CA, and a leaf it signs, with kubeadm\'s key type and CA validity', async () => {
  const names: Record<string, string> = { 'ca.crt': 'CN=kubernetes', 'front-proxy-ca.crt': 'CN=front-proxy-ca', 'etcd/ca.crt': 'CN=etcd-ca' };
  for (const [crt, subject] of Object.entries(names)) {
    const path = join(dir, crt);
    const key = path.replace(/\.crt$/, '.key');
    const self = await run('openssl', ['verify', '-CAfile', path, path]);
    assert.match(self.stdout, /: OK$/m, crt);

    const cert = new X509Certificate(await readFile(path));
    assert.equal(cert.subject, subject);
    assert.ok(cert.ca, `${crt} is a CA`);
    const days = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 86_400_000;
    assert.equal(Math.round(days), CA_VALIDITY_DAYS);
    const text = (await run('openssl', ['x509', '-in', path, '-noout', '-text'])).stdout;
    assert.match(text, /Public-Key: \(2048 bit\)/);
    assert.match(text, /Certificate Sign/);

    // The CA can do what kubeadm will do with it: sign a serving certificate that verifies.
    const leafKey = join(work, 'leaf.key');
    const csr = join(work, 'leaf.csr');
    const leaf = join(work, 'leaf.crt');
    await run('openssl', ['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', leafKey, '-subj', '/CN=kube-apiserver', '-out', csr]);
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', path, '-CAkey', key, '-set_serial', '2', '-days', '1', '-out', leaf]);
    const v = await run('openssl', ['verify', '-CAfile', path, leaf]);
    assert.match(v.stdout, /leaf\.crt: OK/);
  }
  // The service-account public key is the public half of sa.key.
  const pub = await run('openssl', ['pkey', '-in', join(dir, 'sa.key'), '-pubout']);
  assert.equal(pub.stdout, await readFile(join(dir, 'sa.pub'), 'utf8'));
});

test('the discovery hash equals the openssl pipeline from the kubeadm docs', async () => {
  const pipeline = 'openssl x509 -pubkey -in "$1" | openssl rsa -pubin -outform der 2>/dev/null | openssl dgst -sha256 -hex | sed "s/^.* //"';
  const { stdout } = await run('bash', ['-c', pipeline, 'ca-hash', join(dir, 'ca.crt')]);
  assert.equal(pki.caCertHash, `sha256:${stdout.trim()}`);
  assert.equal(discoveryHash(await readFile(join(dir, 'ca.crt'))), pki.caCertHash);
  assert.match(pki.caCertHash, /^sha256:[0-9a-f]{64}$/);
});

test('a second ensurePki reuses everything unchanged', async () => {
  const before = new Map<string, Buffer>();
  for (const f of [...CONTROL_PLANE_PKI_FILES, 'bootstrap-token', 'pki.json']) before.set(f, await readFile(join(dir, f)));
  const again = await ensurePki(dir, { cluster: CLUSTER });
  assert.equal(again.created, false);
  assert.equal(again.token.token, pki.token.token);
  assert.equal(again.caCertHash, pki.caCertHash);
  assert.deepEqual(again.files, pki.files);
  for (const [f, bytes] of before) assert.ok(bytes.equals(await readFile(join(dir, f))), `${f} unchanged`);
});

test('an empty PKI directory is filled; a file in its place is refused', async () => {
  const empty = join(work, 'empty', 'pki');
  await mkdir(empty, { recursive: true });
  const made = await ensurePki(empty, { cluster: 'other' });
  assert.equal(made.created, true);
  assert.notEqual(made.caCertHash, pki.caCertHash);
  assert.notEqual(made.token.token, pki.token.token);

  const file = join(work, 'notadir');
  await writeFile(file, 'x');
  await expectPkiError(file, /is not a directory/);
});

test('deleting one PKI file stops the next build with exit 2 and says what to do', async () => {
  const copy = await copyPki('missing');
  await rm(join(copy, 'ca.key'));
  await assert.rejects(ensurePki(copy, { cluster: CLUSTER }), (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.equal(e.exitCode, 2);
    assert.equal(e.message, `the PKI of cluster "demo" in ${copy} is incomplete or inconsistent:\n  ca.key: missing`);
    assert.equal(
      e.hint,
      `restore these files from your backup of ${copy}; or, to start a NEW cluster with a new CA (every node image must then be rebuilt), delete the whole ${copy} directory`,
    );
    return true;
  });
  // Nothing was regenerated behind the user's back.
  assert.deepEqual((await readdir(copy)).sort(), ['bootstrap-token', 'ca.crt', 'etcd', 'front-proxy-ca.crt', 'front-proxy-ca.key', 'pki.json', 'sa.key', 'sa.pub']);

  const noRecord = await copyPki('no-record');
  await rm(join(noRecord, 'pki.json'));
  await expectPkiError(noRecord, /pki\.json: missing/);
});

test('a key that does not match its certificate, a non-CA certificate, a swapped CA and a loose mode are refused', async () => {
  const keyless = await copyPki('wrong-key');
  const other = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs1', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  await writeFile(join(keyless, 'front-proxy-ca.key'), other.privateKey, { mode: 0o600 });
  await expectPkiError(keyless, /front-proxy-ca\.key: does not match front-proxy-ca\.crt/);

  const notCa = await copyPki('not-ca');
  const cnf = join(work, 'leaf.cnf');
  await writeFile(cnf, '[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = ext\n[dn]\nCN = etcd-ca\n[ext]\nbasicConstraints = critical, CA:FALSE\n');
  await run('openssl', ['req', '-x509', '-new', '-key', join(notCa, 'etcd', 'ca.key'), '-config', cnf, '-days', '1', '-out', join(notCa, 'etcd', 'ca.crt')]);
  await expectPkiError(notCa, /etcd\/ca\.crt: not a CA certificate/);

  // A complete, self-consistent PKI of another cluster copied over this one's CA.
  const swapped = await copyPki('swapped');
  const otherPki = join(work, 'empty', 'pki');
  await cp(join(otherPki, 'ca.crt'), join(swapped, 'ca.crt'));
  await cp(join(otherPki, 'ca.key'), join(swapped, 'ca.key'));
  await expectPkiError(swapped, /ca\.crt: changed since the PKI was generated/);

  await expectPkiError(dir, /holds the PKI of cluster "demo", not of "prod"/, 'prod');

  const loose = await copyPki('loose');
  await run('chmod', ['644', join(loose, 'sa.key')]);
  await expectPkiError(loose, /sa\.key: readable by other users \(mode 644\); run: chmod 600 /);

  const badToken = await copyPki('bad-token');
  await writeFile(join(badToken, 'bootstrap-token'), 'not-a-token\n', { mode: 0o600 });
  await expectPkiError(badToken, /bootstrap-token: not a bootstrap token/);
});
