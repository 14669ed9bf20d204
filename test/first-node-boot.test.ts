// End to end: the first node serves the rest. A cluster of cp-1 (a pc disk node, the first
// control-plane node) and w-1 (netbooted) is built with only the pc target; cp-1's image must then
// carry everything w-1 needs. Inside a network namespace the test creates, a bridge plays the boot
// network and two qemu VMs sit on it:
//  - VM 1 boots cp-1's image under OVMF; the fixture OS reports its OEM config and the served files
//    it finds on ROOT.
//  - The fixture OS cannot run containers, so the test plays cp-1's serving units itself, strictly
//    from the image: it parses the units in cp-1's Ignition (the config VM 1 booted with), reads
//    every path their `ctr run --mount`s name out of ROOT with debugfs (or out of the Ignition, for
//    files Ignition writes), recreates those mounts in a private mount namespace, and runs each
//    unit's own command line with the host's dnsmasq and busybox standing in for the images'.
//  - VM 2 netboots by its MAC through that: OVMF's own PXE (virtio-net without qemu's iPXE ROM)
//    gets its static lease and the tree's snponly.efi over TFTP from dnsmasq, iPXE then fetches
//    boot.ipxe, its node script, kernel and initrds over HTTP from busybox httpd, and the fixture OS
//    reports the config sha256 and kernel arguments it booted with.
//  - From inside the namespace, skopeo pulls every bundled image by the digest manifest.json
//    records from the registry mirror the test runs the same way (docker-registry standing in for
//    registry:2, its tree read from ROOT, its config from the Ignition).
// Needs root (network namespace, taps, mounts); BRAMBLE_SKIP_BOOT=1 skips it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix } from 'node:path';
import { requireTool, run } from '../builders/exec.ts';
import { layout, macHyphen } from '../builders/layout.ts';
import type { Manifest } from '../builders/output.ts';
import { getFixture } from './helpers/fixture.ts';
import { partitionSpan, runBramble, sfdiskTable, TEST_EPOCH, warmBuildCache, explainCli } from './helpers/build.ts';
import { FIRMWARE_FILES, watchUntilDone } from './helpers/qemu.ts';
import { BOOT_TIMEOUT_MS, skipBoot } from './helpers/boot.ts';
import { NetworkNamespace, stop, waitFor, type Started } from './helpers/netns.ts';
import { mirrorRepository } from '../images/registry/distribution-tree.ts';
import { parseImageRef } from '../images/registry/reference.ts';

const skipRoot = process.getuid?.() === 0 ? undefined : 'needs root: it creates a network namespace, taps and mounts';
const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

const CLUSTER = 'firstlab';
const NODE_CIDR = '10.81.0.0/24';
const FIRST_IP = '10.81.0.2';
const WORKER = { name: 'w-1', mac: '52:54:00:81:00:11' };
/** VM 1 plays cp-1, which has no MAC in cluster.toml. */
const VM1_MAC = '52:54:00:81:00:02';
const KERNEL_ARG = 'bramble.test=first-node';
// pid plus a random part: a namespace left by a killed run cannot collide with a later process of the same pid.
const NS = `bramble-first-${process.pid}-${randomBytes(3).toString('hex')}`;

/** The cluster: [first_node] with full DHCP on a dedicated interface; cp-1 serves w-1. */
function clusterToml(): string {
  return [
    `name = "${CLUSTER}"`,
    '',
    '[os]',
    'base = "flatcar"',
    'channel = "stable"',
    '',
    '[network]',
    `node_cidr = "${NODE_CIDR}"`,
    '',
    '[provision]',
    `kernel_args = ["${KERNEL_ARG}"]`,
    '',
    '[first_node]',
    'dhcp = "full"',
    'interface = "lan0"',
    '',
    '[[nodes]]',
    'name = "cp-1"',
    'role = "control-plane"',
    'hardware = "pc"',
    `ip = "${FIRST_IP}"`,
    '',
    '[[nodes]]',
    `name = "${WORKER.name}"`,
    'role = "worker"',
    'hardware = "pc"',
    'boot = "pxe"',
    `mac = "${WORKER.mac}"`,
    '',
  ].join('\n');
}

interface IgnitionConfig {
  storage?: { files?: Array<{ path: string; contents?: { source?: string } }> };
  systemd?: { units?: Array<{ name: string; enabled?: boolean; contents?: string }> };
}

/** `ctr … run` as a unit's ExecStart spells it. */
interface CtrRun {
  unit: string;
  namespace: string;
  mounts: Array<{ src: string; dst: string; readOnly: boolean }>;
  image: string;
  container: string;
  args: string[];
}

/** The ExecStart= of a unit that runs a container with ctr, parsed as ctr itself reads it. */
function parseCtrRun(unit: string, contents: string): CtrRun | undefined {
  const exec = contents.split('\n').find((l) => l.startsWith('ExecStart='));
  if (!exec) return undefined;
  assert.doesNotMatch(exec, /["'\\]/, `${unit}: no quoting in ExecStart (split on spaces below)`);
  const argv = exec.slice('ExecStart='.length).trim().split(/\s+/);
  if (basename(argv[0]!) !== 'ctr') return undefined;
  let namespace = 'default';
  let i = 1;
  for (; argv[i] !== 'run'; i++) {
    if (argv[i] === '--namespace' || argv[i] === '-n') namespace = argv[++i]!;
    // Another ctr command (the bundle's image import): not a container.
    else if (!argv[i]!.startsWith('-')) return undefined;
    else assert.fail(`${unit}: unexpected ctr option ${argv[i]}`);
  }
  const mounts: CtrRun['mounts'] = [];
  for (i++; argv[i]!.startsWith('-'); i++) {
    const flag = argv[i]!;
    if (flag === '--rm' || flag === '--net-host') continue;
    if (flag === '--cap-add') {
      i++;
      continue;
    }
    assert.equal(flag, '--mount', `${unit}: unexpected ctr run flag ${flag}`);
    const fields = Object.fromEntries(argv[++i]!.split(',').map((kv) => kv.split('=') as [string, string]));
    assert.equal(fields.type, 'bind', `${unit}: bind mounts only`);
    mounts.push({ src: fields.src!, dst: fields.dst!, readOnly: (fields.options ?? '').split(':').includes('ro') });
  }
  return { unit, namespace, mounts, image: argv[i]!, container: argv[i + 1]!, args: argv.slice(i + 2) };
}

/**
 * What each image's process is, played by a host binary: the image's ENTRYPOINT (poseidon/dnsmasq:
 * /usr/sbin/dnsmasq) gets the unit's arguments; busybox has none, so the arguments are the command.
 */
function standIn(r: CtrRun): string[] {
  const repo = r.image.replace(/:[^/:]+$/, '');
  if (repo === 'quay.io/poseidon/dnsmasq') return [requireTool('dnsmasq'), ...r.args];
  if (repo === 'docker.io/library/busybox') {
    assert.equal(r.args[0], '/bin/busybox', `${r.unit}: runs busybox`);
    return [requireTool('busybox'), ...r.args.slice(1)];
  }
  if (repo === 'docker.io/library/registry') {
    // registry:2's /entrypoint.sh runs `registry serve <config>`, its CMD the config path.
    return [requireTool('docker-registry'), 'serve', ...(r.args.length ? r.args : ['/etc/docker/registry/config.yml'])];
  }
  throw new Error(`${r.unit}: no stand-in for image ${r.image}`);
}

/**
 * A shell script that recreates the container's bind mounts in a private mount namespace: each
 * mount point's deepest existing ancestor gets a throwaway overlay (so nothing of the host changes),
 * the point is created in it and the file or tree read from the image is bound there read-only.
 */
function mountScript(r: CtrRun, rootDir: string): string {
  const lines = ['set -e', 'scratch=$(mktemp -d)', 'mount -t tmpfs tmpfs "$scratch"'];
  const overlaid = new Set<string>();
  r.mounts.forEach((m, i) => {
    let anchor = dirname(m.dst);
    while (!existsSync(anchor)) anchor = dirname(anchor);
    if (!existsSync(m.dst) && !overlaid.has(anchor) && anchor !== '/') {
      overlaid.add(anchor);
      lines.push(`mkdir "$scratch/u${i}" "$scratch/w${i}"`, `mount -t overlay overlay -o lowerdir=${anchor},upperdir="$scratch/u${i}",workdir="$scratch/w${i}" ${anchor}`);
    }
    const src = join(rootDir, m.src);
    lines.push(`[ -e ${m.dst} ] || { if [ -d ${src} ]; then mkdir -p ${m.dst}; else mkdir -p ${dirname(m.dst)}; : > ${m.dst}; fi; }`);
    lines.push(`mount --bind ${src} ${m.dst}`);
    if (m.readOnly) lines.push(`mount -o remount,bind,ro ${m.dst}`);
  });
  lines.push('exec "$@"');
  return lines.join('\n');
}

/** qemu under OVMF on a tap of the namespace, until the fixture OS reports BRAMBLE-DONE (or the timeout). */
async function bootOnTap(ns: NetworkNamespace, tmp: string, o: { name: string; tap: string; mac: string; disk?: string; noOptionRom?: boolean }) {
  const vars = join(tmp, `${o.name}-vars.fd`);
  await copyFile(FIRMWARE_FILES.ovmf.vars, vars);
  const nic = `virtio-net-pci,netdev=net0,mac=${o.mac}${o.noOptionRom ? ',romfile=' : ''}`;
  const qemu = ns.start([
    requireTool('qemu-system-x86_64'),
    ...['-accel', 'tcg', '-m', '768', '-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot', '-nodefaults', '-vga', 'none'],
    ...['-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${FIRMWARE_FILES.ovmf.code}`, '-drive', `if=pflash,format=raw,unit=1,file=${vars}`],
    ...(o.disk ? ['-drive', `file=${o.disk},format=raw,if=virtio,snapshot=on`] : []),
    ...['-netdev', `tap,id=net0,ifname=${o.tap},script=no,downscript=no`, '-device', nic],
  ]);
  return watchUntilDone(qemu, BOOT_TIMEOUT_MS);
}

let tmp: string;
let clusterDir: string;
let image: string;
let ignition: IgnitionConfig;
let manifest: Manifest;
before(async () => {
  if (skipBoot || skipRoot) return;
  const f = await getFixture();
  tmp = await mkdtemp(join(tmpdir(), 'bramble-first-node-'));
  // dnsmasq drops root for `nobody`, which must be able to walk to the TFTP root under here.
  await chmod(tmp, 0o755);
  const src = join(tmp, 'src');
  await mkdir(src);
  await writeFile(join(src, 'cluster.toml'), clusterToml());
  await writeFile(join(src, 'sources.toml'), f.sourcesToml);
  const env: Record<string, string> = { SOURCE_DATE_EPOCH: String(TEST_EPOCH) };
  for (const k of ['HOME', 'TMPDIR', 'XDG_CACHE_HOME'] as const) if (process.env[k]) env[k] = process.env[k]!;
  const outDir = join(tmp, 'out');
  const args = ['build', '-c', join(src, 'cluster.toml'), '--sources', join(src, 'sources.toml'), '--target', 'pc'];
  const r = await runBramble([...args, '--out', outDir, '--cache', warmBuildCache(), '--lock', join(tmp, 'bramble.lock')], { env });
  assert.equal(r.code, 0, explainCli(r));
  clusterDir = layout.clusterDir(outDir, CLUSTER);
  image = join(clusterDir, layout.image('cp-1'));
  ignition = JSON.parse(await readFile(join(clusterDir, layout.ignition('cp-1')), 'utf8')) as IgnitionConfig;
  manifest = JSON.parse(await readFile(join(clusterDir, layout.manifest), 'utf8')) as Manifest;
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The node's filesystem as its containers would see it: Ignition's files where Ignition writes them, else ROOT's. */
async function materialise(runs: CtrRun[], rootDir: string): Promise<void> {
  const root = partitionSpan(await sfdiskTable(image), 'ROOT');
  const files = new Map((ignition.storage?.files ?? []).map((f) => [f.path, f.contents?.source]));
  for (const m of runs.flatMap((r) => r.mounts)) {
    const dest = join(rootDir, m.src);
    if (existsSync(dest)) continue;
    await mkdir(dirname(dest), { recursive: true });
    const source = files.get(m.src);
    if (source !== undefined) {
      await writeFile(dest, Buffer.from(await (await fetch(source)).arrayBuffer()));
      continue;
    }
    // rdump keeps modes and owners; the stderr banner is debugfs's version line.
    const r = await run('debugfs', ['-R', `rdump ${m.src} ${dirname(dest)}`, `${image}?offset=${root.offset}`]);
    assert.ok(existsSync(dest), `${m.src} is on cp-1's ROOT (debugfs: ${r.stderr.trim()})`);
  }
}

test('boot: the first node serves the rest — VM 1 boots cp-1\'s image, the test plays its units from the image, VM 2 netboots through them by MAC', { timeout: 2 * BOOT_TIMEOUT_MS + 5 * 60_000 }, async (t) => {
  if (skipBoot || skipRoot) return t.skip(skipBoot ?? skipRoot);
  const created = await NetworkNamespace.create(NS);
  if (typeof created === 'string') return t.skip(created);
  const ns = created;
  t.after(() => ns.destroy());

  // The serving units, as cp-1's Ignition declares them.
  const units = (ignition.systemd?.units ?? []).filter((u) => u.enabled && u.contents);
  const runs = units.map((u) => parseCtrRun(u.name, u.contents!)).filter((r): r is CtrRun => r !== undefined);
  assert.ok(runs.length >= 2, `cp-1 runs its services with ctr: ${units.map((u) => u.name).join(', ')}`);
  const rootDir = join(tmp, 'cp-1-root');
  await materialise(runs, rootDir);

  const dnsmasqRun = runs.find((r) => r.image.startsWith('quay.io/poseidon/dnsmasq:'))!;
  const httpRun = runs.find((r) => r.image.startsWith('docker.io/library/busybox:'))!;
  const registryRun = runs.find((r) => r.image.startsWith('docker.io/library/registry:'))!;
  assert.ok(dnsmasqRun && httpRun && registryRun, 'a dnsmasq unit, an HTTP unit and a registry unit');
  const confPath = dnsmasqRun.args.find((a) => a.startsWith('--conf-file='))!.slice('--conf-file='.length);
  const conf = await readFile(join(rootDir, confPath), 'utf8');
  const option = (key: string) => conf.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
  const [iface] = option('interface');
  assert.ok(iface, 'the first node\'s dnsmasq answers on one interface');
  const tftpRoot = option('tftp-root')[0]!;
  const httpPort = Number(httpRun.args[httpRun.args.indexOf('-p') + 1]);
  const httpRoot = httpRun.args[httpRun.args.indexOf('-h') + 1]!;
  const prefix = option('dhcp-range')[0]!.split(',')[2]!.split('.').reduce((n, o) => n + Number(o).toString(2).replaceAll('0', '').length, 0);
  const first = manifest.nodes.find((n) => n.name === 'cp-1')!;

  // The boot network: a bridge named like cp-1's boot interface, carrying cp-1's address, with one tap per VM.
  await ns.ip('link', 'add', iface!, 'type', 'bridge');
  await ns.ip('addr', 'add', `${first.ip}/${prefix}`, 'dev', iface!);
  for (const tap of ['vm1', 'vm2']) {
    await ns.ip('tuntap', 'add', 'dev', tap, 'mode', 'tap');
    await ns.ip('link', 'set', tap, 'master', iface!);
    await ns.ip('link', 'set', tap, 'up');
  }
  await ns.ip('link', 'set', iface!, 'up');

  const state = join(tmp, 'state');
  await mkdir(state, { recursive: true });
  const startUnit = (r: CtrRun, extra: string[] = []): Started =>
    ns.start([requireTool('unshare'), '--mount', '--propagation', 'private', 'sh', '-c', mountScript(r, rootDir), 'sh', ...standIn(r), ...extra]);
  // dnsmasq's lease and pid files live in the container's own writable layer; here, in the test's directory.
  const dnsmasq = startUnit(dnsmasqRun, [`--dhcp-leasefile=${join(state, 'leases')}`, `--pid-file=${join(state, 'dnsmasq.pid')}`]);
  const httpd = startUnit(httpRun);
  const registry = startUnit(registryRun);
  const registryConfig = await readFile(join(rootDir, registryRun.mounts.find((m) => m.dst.endsWith('.yml'))!.src), 'utf8');
  const registryPort = Number(/^\s*addr: :(\d+)$/m.exec(registryConfig)![1]);
  await waitFor('dnsmasq', dnsmasq, () => /TFTP root is /.test(dnsmasq.output()));
  const probe = join(state, 'probe');
  await waitFor('busybox httpd', httpd, async () => (await ns.exec([requireTool('busybox'), 'wget', '-q', '-O', probe, `http://${first.ip}:${httpPort}/boot.ipxe`], { okCodes: [1] })).exitCode === 0);
  assert.equal(tftpRoot, httpRoot, 'dnsmasq\'s TFTP and busybox httpd serve the same tree');
  await waitFor('docker-registry', registry, async () => (await ns.exec([requireTool('busybox'), 'wget', '-q', '-O', probe, `http://${first.ip}:${registryPort}/v2/`], { okCodes: [1] })).exitCode === 0);

  // Both VMs at once: cp-1 from its disk, w-1 from the network.
  const [vm1, vm2] = await Promise.all([
    bootOnTap(ns, tmp, { name: 'vm1', tap: 'vm1', mac: VM1_MAC, disk: image }),
    bootOnTap(ns, tmp, { name: 'vm2', tap: 'vm2', mac: WORKER.mac, noOptionRom: true }),
  ]);
  const logs = `--- dnsmasq ---\n${dnsmasq.output().slice(-3000)}\n--- httpd ---\n${httpd.output().slice(-2000)}`;
  t.diagnostic(`VM 1 ${vm1.seconds.toFixed(1)} s, VM 2 ${vm2.seconds.toFixed(1)} s`);

  // VM 1 booted cp-1's image with the config whose units were played, and sees the served files on ROOT.
  const explain1 = `timedOut=${vm1.timedOut}\n${vm1.serial.slice(-3000)}`;
  assert.ok(vm1.markers.done, explain1);
  assert.equal(vm1.markers.oemConfigSha256, sha256(await readFile(join(clusterDir, layout.ignition('cp-1')))), explain1);
  const served = Object.entries(vm1.markers.rootFiles).filter(([path]) => path.startsWith(`${tftpRoot}/`) || path === confPath);
  assert.ok(served.length > 0, `VM 1 reports the served files on its ROOT: ${JSON.stringify(vm1.markers.rootFiles)}`);
  for (const [path, digest] of served) assert.equal(digest, sha256(await readFile(join(rootDir, path))), `${path}: what VM 1 sees is what was served`);

  // VM 2: its static lease and the tree's iPXE over TFTP from dnsmasq, the rest over HTTP, its own config and kernel arguments.
  const explain2 = `timedOut=${vm2.timedOut}\n--- VM 2 serial (last 3000) ---\n${vm2.serial.slice(-3000)}\n${logs}`;
  const lease = option('dhcp-host').find((v) => v.startsWith(`${WORKER.mac},`))!.split(',')[1]!;
  assert.match(dnsmasq.output(), new RegExp(`DHCPACK\\(${iface}\\) ${lease.replaceAll('.', '\\.')} ${WORKER.mac} ${WORKER.name}`), explain2);
  const efiBoot = option('dhcp-boot').find((v) => v.startsWith('tag:!ipxe,tag:efi64,'))!.split(',').pop()!;
  assert.match(dnsmasq.output(), new RegExp(`sent ${join(tftpRoot, efiBoot).replaceAll('.', '\\.')} to ${lease.replaceAll('.', '\\.')}`), `TFTP sent ${efiBoot}\n${explain2}`);
  assert.ok(vm2.markers.done, explain2);
  const config = await readFile(join(clusterDir, layout.ignition(WORKER.name)));
  assert.deepEqual(vm2.markers.pxeConfigs, { 'oem/config.ign': sha256(config), 'usr/share/oem/config.ign': sha256(config) }, explain2);
  const script = await readFile(join(rootDir, tftpRoot, 'nodes', `${macHyphen(WORKER.mac)}.ipxe`), 'utf8');
  // `kernel <uri> <args…> || goto failed`: the arguments are what lies between the URI and the `||`.
  const kernelWords = script.split('\n').find((l) => l.startsWith('kernel '))!.split(/\s+/);
  const kernelLine = kernelWords.slice(2, kernelWords.includes('||') ? kernelWords.indexOf('||') : undefined);
  const cmdline = (vm2.markers.cmdline ?? '').split(' ');
  assert.deepEqual(cmdline.filter((a) => kernelLine.includes(a)), kernelLine, `kernel arguments as the node script passes them\n${explain2}`);
  assert.ok(cmdline.includes(KERNEL_ARG), explain2);
  // busybox httpd -vv logs `[::ffff:<client>]:<port>: url:<path>` (it listens on a dual-stack socket).
  const fetched = [...httpd.output().matchAll(new RegExp(`^\\[::ffff:${lease.replaceAll('.', '\\.')}\\]:\\d+: url:(\\S+)$`, 'gm'))].map((m) => m[1]);
  assert.deepEqual(fetched.slice(0, 2), ['/boot.ipxe', `/nodes/${macHyphen(WORKER.mac)}.ipxe`], `iPXE fetched its scripts from busybox httpd\n${explain2}`);
  assert.ok(fetched.some((u) => posix.basename(u!) === `${macHyphen(WORKER.mac)}.cpio.gz`), explain2);

  // Every bundled image, pulled by the digest manifest.json records, from the mirror on cp-1's address.
  const images = manifest.inputs.filter((i) => i.id.startsWith('image:'));
  assert.ok(images.some((i) => i.url.startsWith('quay.io/poseidon/dnsmasq:')) && images.some((i) => i.url.startsWith('docker.io/library/busybox:')), 'the bundle carries the first node\'s images');
  for (const i of images) {
    const ref = `docker://${first.ip}:${registryPort}/${mirrorRepository(parseImageRef(i.url))}@sha256:${i.sha256}`;
    const dest = join(state, 'pulled', i.sha256);
    await mkdir(dest, { recursive: true });
    const r = await ns.exec([requireTool('skopeo'), 'copy', '--src-tls-verify=false', '--override-os', 'linux', '--override-arch', 'amd64', ref, `dir:${dest}`], { okCodes: [1] });
    assert.equal(r.exitCode, 0, `skopeo copy ${ref}: ${r.stderr}\n--- registry ---\n${registry.output().slice(-2000)}`);
  }
  assert.doesNotMatch(registry.output(), /level=error/, 'the registry served everything without an error');
  t.diagnostic(`${images.length} bundled images pulled by digest from ${first.ip}:${registryPort}`);

  for (const p of [dnsmasq, httpd, registry]) await stop(p.child);
});
