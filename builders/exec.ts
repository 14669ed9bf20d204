// The one place external tools are run. Arguments are arrays, the tool is checked first, and a
// failure becomes a HostToolError that says what to install.
import { execa, type Options as ExecaOptions } from 'execa';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { HostToolError } from './errors.ts';

/** Debian package providing each tool we call. */
export const toolPackages: Record<string, string> = {
  cp: 'coreutils',
  sha256sum: 'coreutils',
  dumpe2fs: 'e2fsprogs',
  mdeltree: 'mtools',
  setpriv: 'util-linux',
  taskset: 'util-linux',
  filefrag: 'e2fsprogs',
  chown: 'coreutils',
  sync: 'coreutils',
  'mkfs.btrfs': 'btrfs-progs',
  btrfs: 'btrfs-progs',
  'mkfs.vfat': 'dosfstools',
  'fsck.vfat': 'dosfstools',
  mcopy: 'mtools',
  mdir: 'mtools',
  mmd: 'mtools',
  mdel: 'mtools',
  mtype: 'mtools',
  mattrib: 'mtools',
  mke2fs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  sgdisk: 'gdisk',
  sfdisk: 'fdisk',
  mksquashfs: 'squashfs-tools',
  unsquashfs: 'squashfs-tools',
  bzip2: 'bzip2',
  lbzip2: 'lbzip2',
  pbzip2: 'pbzip2',
  zstd: 'zstd',
  xz: 'xz-utils',
  bmaptool: 'bmap-tools',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-system-aarch64': 'qemu-system-arm',
  dnsmasq: 'dnsmasq-base',
  skopeo: 'skopeo',
  'docker-registry': 'docker-registry',
  htpasswd: 'apache2-utils',
  tar: 'tar',
  dockerd: 'docker.io',
  'grub-mkstandalone': 'grub-common',
  cpio: 'cpio',
  busybox: 'busybox-static',
  openssl: 'openssl',
  gpg: 'gnupg',
  unzip: 'unzip',
  zip: 'zip',
  'dpkg-deb': 'dpkg',
  'apt-get': 'apt',
  'cloud-init': 'cloud-init',
  ctr: 'containerd',
  containerd: 'containerd',
  losetup: 'mount',
  mount: 'mount',
  umount: 'mount',
  cmp: 'diffutils',
  ip: 'iproute2',
  nft: 'nftables',
  'systemd-analyze': 'systemd',
  unshare: 'util-linux',
};

export function installHint(tool: string): string {
  const pkg = toolPackages[tool] ?? tool;
  return `install it with: sudo apt-get install -y ${pkg}`;
}

const found = new Map<string, string | undefined>();

/** Full path of a tool on PATH (also /usr/sbin and /sbin, where Debian keeps mkfs tools), or undefined. */
export function findTool(tool: string): string | undefined {
  if (found.has(tool)) return found.get(tool);
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  let hit: string | undefined;
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, tool);
    try {
      accessSync(p, constants.X_OK);
      hit = p;
      break;
    } catch {
      /* keep looking */
    }
  }
  found.set(tool, hit);
  return hit;
}

export function requireTool(tool: string): string {
  const p = findTool(tool);
  if (!p) throw new HostToolError(tool, `${tool} is not installed`, { hint: installHint(tool) });
  return p;
}

export interface RunOptions {
  signal?: AbortSignal;
  cwd?: string;
  env?: Record<string, string | undefined>;
  input?: string | Buffer;
  /** Return stdout as a Buffer instead of a string. */
  binary?: boolean;
  /** Accept these exit codes as success besides 0. */
  okCodes?: number[];
  timeoutMs?: number;
}

export interface RunResult {
  /** With `binary`, the bytes as latin1 (one char per byte); see stdoutBytes. */
  stdout: string;
  /** The raw bytes of stdout, with `binary`. */
  stdoutBytes?: Buffer;
  stderr: string;
  exitCode: number;
}

/** Run a host tool and return its output; a non-zero exit is a HostToolError carrying stderr. */
export async function run(tool: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const path = requireTool(tool);
  const options: ExecaOptions = {
    cancelSignal: opts.signal,
    cwd: opts.cwd,
    env: opts.env ? { ...opts.env } : undefined,
    extendEnv: true,
    input: opts.input,
    reject: false,
    stripFinalNewline: false,
    timeout: opts.timeoutMs,
    encoding: opts.binary ? 'buffer' : 'utf8',
  };
  const r = await execa(path, [...args], options);
  const exitCode = typeof r.exitCode === 'number' ? r.exitCode : -1;
  if (r.isCanceled) {
    const { InterruptedError } = await import('./errors.ts');
    throw new InterruptedError();
  }
  if (exitCode !== 0 && !(opts.okCodes ?? []).includes(exitCode)) {
    const err = String(r.stderr ?? '').trim().split('\n').slice(-8).join('\n');
    throw new HostToolError(tool, `${tool} ${args.join(' ')} failed (exit ${exitCode})${err ? `:\n${err}` : ''}`);
  }
  if (opts.binary) {
    const bytes = Buffer.isBuffer(r.stdout) ? r.stdout : Buffer.from(r.stdout as unknown as Uint8Array);
    return { stdout: bytes.toString('latin1'), stdoutBytes: bytes, stderr: Buffer.from(r.stderr as unknown as Uint8Array).toString('utf8'), exitCode };
  }
  return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode };
}

/**
 * Start a host tool whose stdout is consumed as a stream (a decompressor feeding a sparse writer).
 * Read `stdout` to its end, then await `done`: it rejects like run() on a non-zero exit.
 * `stdin`, when given, is piped into the tool.
 */
export function runStreaming(
  tool: string,
  args: readonly string[],
  opts: { signal?: AbortSignal; cwd?: string; stdin?: AsyncIterable<Uint8Array> } = {},
): { stdout: NodeJS.ReadableStream & AsyncIterable<Buffer>; done: Promise<RunResult> } {
  const path = requireTool(tool);
  const sub = execa(path, [...args], {
    cancelSignal: opts.signal,
    cwd: opts.cwd,
    reject: false,
    encoding: 'buffer',
    // A stream to feed the tool (a decompressor reading a download), or nothing.
    stdin: opts.stdin ?? 'ignore',
    buffer: { stdout: false, stderr: true },
  });
  const done = sub.then(async (r) => {
    if (r.isCanceled) {
      const { InterruptedError } = await import('./errors.ts');
      throw new InterruptedError();
    }
    const exitCode = typeof r.exitCode === 'number' ? r.exitCode : -1;
    const stderr = Buffer.from((r.stderr as Uint8Array | undefined) ?? []).toString('utf8');
    if (exitCode !== 0) {
      const err = stderr.trim().split('\n').slice(-8).join('\n');
      throw new HostToolError(tool, `${tool} ${args.join(' ')} failed (exit ${exitCode})${err ? `:\n${err}` : ''}`);
    }
    return { stdout: '', stderr, exitCode };
  });
  // execa resumes an unread stdout after one tick (it would drop the data); paused, it waits for our reader.
  sub.stdout.pause();
  return { stdout: sub.stdout as NodeJS.ReadableStream & AsyncIterable<Buffer>, done };
}
