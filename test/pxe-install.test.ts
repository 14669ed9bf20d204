// install = true against the fixture upstream, checked the way the node's flatcar-install will see it:
// the installer unit's command line is parsed out of the installer Ignition in the node's config
// initrd, the image and signature URLs are resolved from its -b/-V/-o options as flatcar-install
// builds them, and the files at those URLs in the first node's tree must be upstream's image and a
// signature that gpg verifies with the key the installer passes as -k. Also: the installed system's
// kernel arguments, no image in a tree without installers, an offline rebuild that serves the cached
// signature, and a source without .sig files or with a bad one refused before anything is written.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { run } from '../builders/exec.ts';
import { layout } from '../builders/layout.ts';
import type { Manifest } from '../builders/output.ts';
import { INSTALLED_GRUB_CFG_PATH, INSTALLER_OEM_GRUB_SCRIPT, INSTALLER_UNIT } from '../builders/pxe-render.ts';
import type { IgnitionConfig } from '../ignition/model.ts';
import { decodeDataUrl } from '../ignition/validate.ts';
import { runBramble } from './helpers/build.ts';
import { flatcarRelease, getFixture, type Fixture } from './helpers/fixture.ts';
import { buildPxeWithCli, explainCli, PXE_TEST_EPOCH, snapshotFiles, writePxeCluster, type PxeClusterFiles, type PxeTestCluster } from './helpers/pxe-cluster.ts';

const INSTALLER = { name: 'w-1', mac: '52:54:00:78:00:11', install: true, kernelArgs: ['bramble.node=w-1'] };
const CLUSTER: PxeTestCluster = {
  name: 'instlab',
  nodeCidr: '10.78.0.0/24',
  controlPlaneIp: '10.78.0.2',
  kernelArgs: ['flatcar.autologin', 'bramble.test=install'],
  nodes: [INSTALLER, { name: 'w-2', mac: '52:54:00:78:00:12' }],
};

let f: Fixture;
let tmp: string;
let files: PxeClusterFiles;
let cacheDir: string;
let lockPath: string;
let clusterDir: string;

before(async () => {
  f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-pxe-install-'));
  cacheDir = join(tmp, 'cache');
  lockPath = join(tmp, 'bramble.lock');
  files = await writePxeCluster(join(tmp, 'src'), f, CLUSTER);
  const r = await buildPxeWithCli(files, { outDir: join(tmp, 'out'), cacheDir, lockPath });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = layout.clusterDir(join(tmp, 'out'), CLUSTER.name);
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** One member of a gzipped newc cpio, as GNU cpio extracts it. */
async function cpioMember(gz: Buffer, path: string): Promise<string> {
  return (await run('cpio', ['-i', '--quiet', '--to-stdout', path], { input: gunzipSync(gz) })).stdout;
}

/** An ExecStart= command line split as systemd splits it (double quotes, backslash escapes, %% and $$). */
function systemdWords(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    if (line[i] === ' ') {
      i++;
      continue;
    }
    let word = '';
    if (line[i] === '"') {
      for (i++; line[i] !== '"'; i++) {
        if (i >= line.length) throw new Error(`unterminated quote in ${line}`);
        word += line[i] === '\\' ? line[++i] : line[i];
      }
      i++;
    } else {
      for (; i < line.length && line[i] !== ' '; i++) word += line[i];
    }
    words.push(word.replaceAll('%%', '%').replaceAll('$$', '$'));
  }
  return words;
}

/** flatcar-install's options (its getopts string is "V:B:C:DI:d:o:c:e:i:t:b:k:f:nusyvh"). */
function flatcarInstallOptions(argv: string[]): Map<string, string> {
  const takesValue = new Set('VBCIdoceitbkf');
  const opts = new Map<string, string>();
  for (let i = 1; i < argv.length; i++) {
    const m = /^-([A-Za-z])$/.exec(argv[i]!);
    if (!m) throw new Error(`flatcar-install: unexpected argument ${argv[i]}`);
    opts.set(m[1]!, takesValue.has(m[1]!) ? argv[++i]! : '');
  }
  return opts;
}

/**
 * The URLs flatcar-install downloads for these options (its prep_url): `-b` without one trailing
 * slash, then `/<version>/`, then flatcar_production_image.bin.bz2 or, with an OEM id,
 * flatcar_production_<oem>_image.bin.bz2; the signature is that plus `.sig`. A channel without a
 * version means `current`, which it would resolve through version.txt.
 */
function flatcarInstallUrls(opts: Map<string, string>): { image: string; signature: string } {
  const base = opts.get('b')!.replace(/\/$/, '');
  const version = opts.has('C') && !opts.has('V') ? 'current' : (opts.get('V') ?? 'current');
  assert.notEqual(version, 'current', 'the installer pins the version the tree carries');
  // Without -o, the OEM id of the netbooted system (its oem-release) would pick the file name.
  assert.ok(opts.has('o'), 'the installer pins the OEM id');
  const oem = opts.get('o')!;
  const image = `${base}/${version}/${oem ? `flatcar_production_${oem}_image.bin.bz2` : 'flatcar_production_image.bin.bz2'}`;
  return { image, signature: `${image}.sig` };
}

async function installerIgnition(): Promise<IgnitionConfig> {
  const gz = await readFile(join(clusterDir, layout.pxeNodeCpio(INSTALLER.mac)));
  return JSON.parse(await cpioMember(gz, 'oem/config.ign')) as IgnitionConfig;
}

function execStarts(cfg: IgnitionConfig): string[][] {
  const unit = cfg.systemd!.units!.find((u) => u.name === INSTALLER_UNIT)!;
  return unit.contents!.split('\n').filter((l) => l.startsWith('ExecStart=')).map((l) => systemdWords(l.slice('ExecStart='.length)));
}

function fileIn(cfg: IgnitionConfig, path: string): Buffer {
  const file = cfg.storage!.files!.find((x) => x.path === path);
  assert.ok(file, `the installer Ignition writes ${path}`);
  return decodeDataUrl(file.contents!.source!);
}

const sha256 = async (path: string) => createHash('sha256').update(await readFile(path)).digest('hex');

/** `gpg --verify` in a keyring of its own holding only `key`, as flatcar-install runs it; true when good. */
async function gpgVerifies(key: Buffer, signature: string, image: string): Promise<boolean> {
  const home = await mkdtemp(join(tmp, 'gnupg-'));
  await chmod(home, 0o700);
  await writeFile(join(home, 'key.asc'), key);
  const env = { GNUPGHOME: home };
  await run('gpg', ['--batch', '--quiet', '--import', join(home, 'key.asc')], { env });
  try {
    await run('gpg', ['--batch', '--verify', signature, image], { env });
    return true;
  } catch {
    return false;
  } finally {
    await run('gpgconf', ['--kill', 'all'], { env }).catch(() => {});
  }
}

test('install = true: flatcar-install -b/-V/-o resolve to upstream\'s image and .sig in the first node\'s tree, and gpg verifies them with the -k key', async () => {
  const cfg = await installerIgnition();
  const argv = execStarts(cfg)[0]!;
  assert.equal(argv[0], '/usr/bin/flatcar-install');
  const opts = flatcarInstallOptions(argv);
  const urls = flatcarInstallUrls(opts);

  // The tree is served where iPXE is sent for boot.ipxe (the first node's dnsmasq.conf).
  const dnsmasq = await readFile(join(clusterDir, layout.dnsmasqConf), 'utf8');
  const bootUrl = /^dhcp-boot=tag:ipxe,(\S+)$/m.exec(dnsmasq)![1]!;
  const treeBase = new URL('.', bootUrl).toString();
  assert.equal(treeBase, `http://${CLUSTER.controlPlaneIp}:8080/`);
  const inTree = (url: string) => {
    assert.ok(url.startsWith(treeBase), `${url} is served by the first node (${treeBase})`);
    return join(clusterDir, layout.pxeDir, url.slice(treeBase.length));
  };
  const image = inTree(urls.image);
  const signature = inTree(urls.signature);

  const release = flatcarRelease(f, 'stable', 'amd64-usr');
  assert.equal(opts.get('V'), release.version);
  const upstreamImage = join(release.dir, 'flatcar_production_image.bin.bz2');
  assert.equal(await sha256(image), await sha256(upstreamImage), 'the tree carries upstream\'s image bytes');
  assert.deepEqual(await readFile(signature), await readFile(`${upstreamImage}.sig`), 'and upstream\'s signature');
  const manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
  for (const path of [image, signature]) {
    const rel = path.slice(clusterDir.length + 1);
    const entry = manifest.artefacts.find((a) => a.path === rel);
    assert.ok(entry && !entry.secret && entry.kind === 'pxe-asset', `${rel} is a public PXE asset in the manifest`);
    assert.equal(entry.sha256, await sha256(path), rel);
    assert.equal((await stat(path)).mode & 0o777, 0o644, rel);
  }

  const key = fileIn(cfg, opts.get('k')!);
  assert.equal(key.toString(), await readFile(f.keys.signingPublicInTree, 'utf8'), '-k is the trusted key that signed the image');
  assert.equal(await gpgVerifies(key, signature, image), true, 'gpg verifies the image with the installer\'s key');
  assert.equal(await gpgVerifies(await readFile(f.keys.otherPublicInTree), signature, image), false, 'and not with a key that signed nothing');
});

test('install = true: the installed system gets the node Ignition and, in its OEM grub.cfg, the node kernel arguments', async () => {
  const cfg = await installerIgnition();
  const [install, oemGrub] = execStarts(cfg);
  const opts = flatcarInstallOptions(install!);
  const installed = await readFile(join(clusterDir, layout.ignition(INSTALLER.name)), 'utf8');
  assert.equal(fileIn(cfg, opts.get('i')!).toString(), installed, '-i is configs/w-1.ign byte for byte');

  assert.deepEqual(oemGrub, [INSTALLER_OEM_GRUB_SCRIPT, opts.get('d')!, INSTALLED_GRUB_CFG_PATH], 'then the OEM grub.cfg goes to the same disk');
  const grub = fileIn(cfg, INSTALLED_GRUB_CFG_PATH).toString();
  const append = /^set linux_append="\$linux_append (.*)"$/m.exec(grub);
  assert.ok(append, grub);
  assert.deepEqual(append[1]!.split(' '), [...CLUSTER.kernelArgs, ...INSTALLER.kernelArgs], 'the node\'s arguments; Flatcar\'s GRUB passes the consoles');
  const script = join(tmp, 'install-oem-grub');
  await writeFile(script, fileIn(cfg, INSTALLER_OEM_GRUB_SCRIPT));
  await run('bash', ['-n', script]);
  const scriptFile = cfg.storage!.files!.find((x) => x.path === INSTALLER_OEM_GRUB_SCRIPT)!;
  assert.equal(scriptFile.mode, 0o755);
});

test('no install = true node: the tree carries no disk image and no signature', async () => {
  const dir = await mkdtemp(join(tmp, 'noinstall-'));
  const plain = await writePxeCluster(join(dir, 'src'), f, { ...CLUSTER, nodes: CLUSTER.nodes.map((n) => ({ ...n, install: false })) });
  const r = await buildPxeWithCli(plain, { outDir: join(dir, 'out'), cacheDir, lockPath: join(dir, 'bramble.lock') });
  assert.equal(r.code, 0, explainCli(r));
  const onDisk = await snapshotFiles(layout.clusterDir(join(dir, 'out'), CLUSTER.name));
  assert.deepEqual([...onDisk.keys()].filter((p) => p.includes('flatcar_production_image')), []);
  assert.ok([...onDisk.keys()].some((p) => p.endsWith('flatcar_production_pxe.vmlinuz')), 'the tree was built');
});

test('install = true offline with a warm cache: the same image and signature, and no request for either', async () => {
  const out = join(tmp, 'offline-out');
  f.server.requests.length = 0;
  const r = await runBramble(['build', '-c', files.config, '--sources', files.sources, '--target', 'pxe', '--cache', cacheDir, '--out', out, '--lock', lockPath, '--offline'], {
    env: { SOURCE_DATE_EPOCH: String(PXE_TEST_EPOCH), HOME: process.env.HOME ?? tmp },
  });
  assert.equal(r.code, 0, `${r.command}\n${r.stderr}`);
  assert.deepEqual(f.server.requests.filter((q) => q.path.includes('flatcar_production_image')), []);
  const version = flatcarRelease(f, 'stable', 'amd64-usr').version;
  for (const file of ['flatcar_production_image.bin.bz2', 'flatcar_production_image.bin.bz2.sig']) {
    const rel = layout.pxeAsset('amd64', version, file);
    assert.deepEqual(await readFile(join(layout.clusterDir(out, CLUSTER.name), rel)), await readFile(join(clusterDir, rel)), rel);
  }
});

test('install = true refuses a source without the image .sig (exit 2) and a bad .sig (exit 3), writing no tree', async () => {
  const release = flatcarRelease(f, 'stable', 'amd64-usr');
  const sigPath = `/${release.dir.slice(f.root.length + 1)}/flatcar_production_image.bin.bz2.sig`.replaceAll('//', '/');
  const cases = [
    { fault: { kind: 'status' as const, status: 404 }, code: 2, message: /install = true needs \S+flatcar_production_image\.bin\.bz2\.sig/ },
    { fault: { kind: 'body' as const, data: await readFile(join(release.dir, 'flatcar_production_pxe.vmlinuz.sig')) }, code: 3, message: /flatcar_production_image\.bin\.bz2/ },
  ];
  for (const c of cases) {
    const dir = await mkdtemp(join(tmp, 'badsig-'));
    await mkdir(join(dir, 'cache'));
    f.server.faults.set(sigPath, c.fault);
    try {
      const r = await buildPxeWithCli(files, { outDir: join(dir, 'out'), cacheDir: join(dir, 'cache'), lockPath: join(dir, 'bramble.lock') });
      assert.equal(r.code, c.code, explainCli(r));
      assert.match(r.stderr, c.message);
      assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
      const written = await snapshotFiles(join(dir, 'out')).catch(() => new Map());
      assert.deepEqual([...written.keys()].filter((p) => p.includes('manifest.json') || p.startsWith(`${CLUSTER.name}/${layout.pxeDir}/`)), [], 'nothing that looks like a build');
    } finally {
      f.server.faults.delete(sigPath);
    }
  }
});
