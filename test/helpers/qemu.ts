// Boot a machine in qemu (always TCG, so it runs anywhere) and capture what the fixture's initramfs
// reports on the serial console. Disks are attached with snapshot=on, so image files are never written;
// UEFI variable stores are private copies. qemu is killed on timeout, on `until`, and when the test
// process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTool } from '../../builders/exec.ts';
import { HostToolError } from '../../builders/errors.ts';
import { MARKER } from '../../scripts/fixtures/init-script.ts';
import { existsSync } from 'node:fs';
import type { Readable } from 'node:stream';

export type QemuArch = 'amd64' | 'arm64';
export type QemuFirmware = 'ovmf' | 'aavmf' | 'seabios' | 'none';

/** Debian 12 firmware files (packages ovmf and qemu-efi-aarch64). */
export const FIRMWARE_FILES = {
  ovmf: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', package: 'ovmf' },
  aavmf: { code: '/usr/share/AAVMF/AAVMF_CODE.fd', vars: '/usr/share/AAVMF/AAVMF_VARS.fd', package: 'qemu-efi-aarch64' },
} as const;

export interface BootOptions {
  arch: QemuArch;
  firmware: QemuFirmware;
  /** Raw disk image, attached as virtio with snapshot=on (never modified). */
  disk?: string;
  /** Direct kernel boot. */
  kernel?: string;
  /** Initrds for direct kernel boot; several are concatenated into one file (the kernel unpacks each cpio in turn). */
  initrd?: string[];
  append?: string;
  /** A -netdev value without id, e.g. `user,tftp=DIR,bootfile=boot.ipxe`; a NIC is attached to it. */
  netdev?: string;
  /** NIC model for `netdev` (default virtio-net-pci). */
  nic?: string;
  /** NIC MAC address for `netdev`. */
  mac?: string;
  /** A UEFI variable store to start from instead of the firmware package's empty one (copied, never written). */
  firmwareVars?: string;
  /** Boot from the network first (BIOS: -boot n). */
  bootFromNetwork?: boolean;
  extraArgs?: string[];
  memoryMiB?: number;
  timeoutMs: number;
  /** Stop as soon as the serial output matches (default: the BRAMBLE-DONE marker). */
  until?: RegExp;
}

export interface BootMarkers {
  arch?: string;
  cmdline?: string;
  /** The OEM device the initramfs mounted, or 'none'. */
  oemDevice?: string;
  /** sha256 of config.ign at the root of the OEM filesystem, or 'none'. */
  oemConfigSha256?: string;
  oemFiles?: string[];
  espFiles?: string[];
  /** ROOT files under the reported directories: absolute path → sha256. */
  rootFiles: Record<string, string>;
  /** ROOT symlinks under the reported directories: absolute path → target. */
  rootLinks: Record<string, string>;
  /** Paths in the initramfs (oem/config.ign, usr/share/oem/config.ign) → sha256 or 'none'. */
  pxeConfigs: Record<string, string>;
  /** UEFI variables under the reported vendor GUIDs: `Name-guid` → attributes and data (hex). */
  efiVars: Record<string, { attributes: number; data: string }>;
  errors: string[];
  done: boolean;
}

export interface BootResult {
  /** Serial console output, escape sequences removed. */
  serial: string;
  markers: BootMarkers;
  /** True when qemu was killed because timeoutMs passed. */
  timedOut: boolean;
  /** The qemu command line, for messages. */
  command: string[];
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

// CSI/OSC escape sequences from firmware, GRUB and iPXE consoles, and stray carriage returns.
const ESCAPES = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>c]|\r/g;

/**
 * A qemu started elsewhere (in a network namespace, say) watched until the fixture OS reports
 * BRAMBLE-DONE, then killed; killed too when `timeoutMs` pass. Its serial output without escapes.
 */
export async function watchUntilDone(qemu: { child: ChildProcess; output(): string }, timeoutMs: number): Promise<{ serial: string; markers: BootMarkers; timedOut: boolean; seconds: number }> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    qemu.child.kill('SIGKILL');
  }, timeoutMs);
  const poll = setInterval(() => {
    if (/BRAMBLE-DONE[^\n]*\n/.test(qemu.output().replace(ESCAPES, ''))) qemu.child.kill('SIGKILL');
  }, 250);
  const t0 = Date.now();
  await closed(qemu.child);
  clearTimeout(timer);
  clearInterval(poll);
  const serial = qemu.output().replace(ESCAPES, '');
  return { serial, markers: parseMarkers(serial), timedOut, seconds: (Date.now() - t0) / 1000 };
}

/**
 * Resolves once the child has exited and its stdout and stderr have been read to their end ('close',
 * not 'exit': a qemu that powers itself off right after printing BRAMBLE-DONE may exit before Node has
 * read those last bytes from the pipe).
 */
export function closed(child: ChildProcess): Promise<void> {
  const drained = (s: Readable | null) => !s || s.destroyed || s.readableEnded;
  if ((child.exitCode !== null || child.signalCode !== null) && drained(child.stdout) && drained(child.stderr)) return Promise.resolve();
  return new Promise((ok) => child.once('close', () => ok()));
}

export function parseMarkers(serial: string): BootMarkers {
  const m: BootMarkers = { rootFiles: {}, rootLinks: {}, pxeConfigs: {}, efiVars: {}, errors: [], done: false };
  const list = (v: string) => (v === 'none' ? [] : v.split(' ').filter(Boolean));
  for (const raw of serial.split('\n')) {
    const at = raw.indexOf('BRAMBLE-');
    if (at < 0) continue;
    const line = raw.slice(at).trimEnd();
    const value = (prefix: string) => (line.startsWith(prefix) ? line.slice(prefix.length).trim() : undefined);
    let v: string | undefined;
    if ((v = value(MARKER.arch)) !== undefined) m.arch = v;
    else if ((v = value(MARKER.cmdline)) !== undefined) m.cmdline = v.replace(/\s+/g, ' ');
    else if ((v = value(MARKER.oemDevice)) !== undefined) m.oemDevice = v;
    else if ((v = value(MARKER.oemConfig)) !== undefined) m.oemConfigSha256 = v;
    else if ((v = value(MARKER.oemFiles)) !== undefined) m.oemFiles = list(v);
    else if ((v = value(MARKER.espFiles)) !== undefined) m.espFiles = list(v);
    else if ((v = value(MARKER.rootFile)) !== undefined) {
      const [path, sha] = v.split(' ');
      m.rootFiles[path] = sha;
    } else if ((v = value(MARKER.rootLink)) !== undefined) {
      const [path, target] = v.split(' ');
      m.rootLinks[path] = target;
    } else if ((v = value(MARKER.pxeConfig)) !== undefined) {
      const [path, sha] = v.split(' ');
      m.pxeConfigs[path] = sha;
    } else if ((v = value(MARKER.efiVar)) !== undefined) {
      const [name, hex] = v.split(' ');
      // efivarfs files start with the 4-byte little-endian attributes.
      m.efiVars[name] = { attributes: Buffer.from(hex.slice(0, 8), 'hex').readUInt32LE(0), data: hex.slice(8) };
    } else if ((v = value(MARKER.error)) !== undefined) m.errors.push(v);
    else if (line.startsWith(MARKER.done)) m.done = true;
  }
  return m;
}

function firmwareFiles(kind: 'ovmf' | 'aavmf') {
  const f = FIRMWARE_FILES[kind];
  for (const p of [f.code, f.vars]) {
    if (!existsSync(p)) throw new HostToolError(kind, `${p} is missing`, { hint: `install it with: sudo apt-get install -y ${f.package}` });
  }
  return f;
}

async function qemuArgs(o: BootOptions, tmp: string): Promise<{ tool: string; args: string[] }> {
  const tool = o.arch === 'amd64' ? 'qemu-system-x86_64' : 'qemu-system-aarch64';
  const args = ['-accel', 'tcg', '-m', String(o.memoryMiB ?? 768), '-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot', '-nodefaults'];
  if (o.arch === 'arm64') args.push('-M', 'virt', '-cpu', 'max', '-smp', '2');
  else args.push('-vga', 'none');
  if (o.firmware === 'ovmf' || o.firmware === 'aavmf') {
    if ((o.firmware === 'ovmf') !== (o.arch === 'amd64')) throw new Error(`${o.firmware} firmware does not run on ${o.arch}`);
    const f = firmwareFiles(o.firmware);
    const vars = join(tmp, 'vars.fd');
    await copyFile(o.firmwareVars ?? f.vars, vars);
    args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${f.code}`, '-drive', `if=pflash,format=raw,unit=1,file=${vars}`);
  }
  if (o.disk) args.push('-drive', `file=${o.disk},format=raw,if=virtio,snapshot=on`);
  if (o.kernel) args.push('-kernel', o.kernel);
  if (o.initrd?.length) {
    let initrd = o.initrd[0];
    if (o.initrd.length > 1) {
      initrd = join(tmp, 'initrd.img');
      await writeFile(initrd, Buffer.concat(await Promise.all(o.initrd.map((p) => readFile(p)))));
    }
    args.push('-initrd', initrd);
  }
  if (o.append !== undefined) args.push('-append', o.append);
  if (o.netdev) {
    args.push('-netdev', `${o.netdev},id=bramblenet0`, '-device', `${o.nic ?? 'virtio-net-pci'},netdev=bramblenet0${o.mac ? `,mac=${o.mac}` : ''}`);
  }
  if (o.bootFromNetwork) args.push('-boot', 'n');
  args.push(...(o.extraArgs ?? []));
  return { tool, args };
}

/** Boot and collect the serial console until `until` matches, qemu exits, or the timeout passes. */
export async function bootAndCapture(o: BootOptions): Promise<BootResult> {
  const tmp = await mkdtemp(join(tmpdir(), 'bramble-qemu-'));
  try {
    const { tool, args } = await qemuArgs(o, tmp);
    const path = requireTool(tool);
    const until = o.until ?? new RegExp(MARKER.done);
    const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
    live.add(child);
    let out = '';
    let err = '';
    let timedOut = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, o.timeoutMs);
      child.stdout!.setEncoding('latin1').on('data', (d: string) => {
        out += d;
        // Keep reading until the marker line is complete, then stop the machine.
        const clean = out.replace(ESCAPES, '');
        const hit = until.exec(clean);
        if (hit && clean.indexOf('\n', hit.index) >= 0) child.kill('SIGKILL');
      });
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err += d;
      });
      // 'close', not 'exit': the serial output is complete only once stdout has ended.
      child.on('close', () => {
        clearTimeout(timer);
        live.delete(child);
        resolve();
      });
      child.on('error', () => {
        clearTimeout(timer);
        live.delete(child);
        resolve();
      });
    });
    const serial = out.replace(ESCAPES, '') + (err ? `\n[qemu stderr]\n${err}` : '');
    return { serial, markers: parseMarkers(out.replace(ESCAPES, '')), timedOut, command: [path, ...args] };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
