// Block devices as flash targets: what a path is (a whole disk, a partition, a regular file), what the
// kernel says about it (/sys/class/block), and whether writing it is safe: not mounted, not held open,
// not part of the running system, removable, large enough. Everything here only reads; nothing writes.
import { constants } from 'node:fs';
import { open, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { HostError, InputError } from '../builders/errors.ts';

/** /sys reports sizes in 512-byte units whatever the device's block size (include/linux/types.h, sector_t). */
const SYSFS_SECTOR = 512;
/** Mount points whose disks are "the system" (as rpi-imager treats them; flashing-and-publishing.md §4.2). */
const SYSTEM_MOUNTS = ['/', '/boot', '/boot/efi', '/boot/firmware', '/usr', '/var', '/home'];
/** Device names never offered as drives: loop, RAM, zram, optical, device-mapper and md arrays. */
const VIRTUAL_NAME = /^(loop|ram|zram|sr|dm-|md|nbd)/;

export interface BlockDeviceInfo {
  kind: 'block-device';
  /** As the user gave it. */
  path: string;
  /** The device node after resolving symlinks (/dev/disk/by-id/... → /dev/sdb). */
  devicePath: string;
  /** Kernel name: sdb, mmcblk0, loop3. */
  name: string;
  /** "major:minor". */
  devNumber: string;
  size: number;
  logicalBlockSize: number;
  readOnly: boolean;
  /** removable flag, or attached by USB or MMC/SD (those are removable whatever the flag says). */
  removable: boolean;
  transport: 'usb' | 'mmc' | 'virtual' | 'internal';
  model: string;
}

export interface FileInfo {
  kind: 'file';
  path: string;
  exists: boolean;
  size: number;
}

export type TargetInfo = BlockDeviceInfo | FileInfo;

const readText = async (p: string) => (await readFile(p, 'utf8')).trim();
const readOr = (p: string, fallback: string) => readText(p).catch(() => fallback);
const listDir = (p: string) => readdir(p).catch(() => [] as string[]);

/** Linux's dev_t split (glibc gnu_dev_major/gnu_dev_minor): 12+32 bits of major, 20 bits of minor. */
function devNumberOf(rdev: number): string {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

export const formatBytes = (n: number) =>
  n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} bytes`;

/** What `path` is. A missing path is fine for a file target, never under /dev. */
export async function inspectTarget(path: string): Promise<TargetInfo> {
  const abs = resolve(path);
  const underDev = abs === '/dev' || abs.startsWith('/dev/');
  let st;
  try {
    st = await stat(abs);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    if (underDev) {
      throw new InputError(`${path}: no such device`, {
        hint: 'check the device name with `lsblk`; bramble never creates files under /dev',
      });
    }
    const parent = await stat(dirname(abs)).catch(() => undefined);
    if (!parent?.isDirectory()) throw new InputError(`${path}: the directory ${dirname(abs)} does not exist`);
    return { kind: 'file', path, exists: false, size: 0 };
  }
  if (st.isFile()) {
    if (underDev) {
      throw new InputError(`${path} is a regular file under /dev, not a device`, {
        hint: `an earlier copy to a missing device probably created it; remove it (rm ${abs}) and check the device name with \`lsblk\``,
      });
    }
    return { kind: 'file', path, exists: true, size: st.size };
  }
  if (!st.isBlockDevice()) throw new InputError(`${path} is neither a block device nor a regular file`);

  const devNumber = devNumberOf(st.rdev);
  const sys = await realpath(`/sys/dev/block/${devNumber}`);
  const name = basename(sys);
  if (await readText(`${sys}/partition`).catch(() => undefined)) {
    const disk = basename(dirname(sys));
    throw new InputError(`${path} is a partition of /dev/${disk}, not a whole drive`, {
      hint: `flash the whole drive: /dev/${disk}`,
    });
  }
  const transport = sys.includes('/usb') ? 'usb' : name.startsWith('mmcblk') ? 'mmc' : sys.includes('/virtual/') ? 'virtual' : 'internal';
  const model = [await readOr(`${sys}/device/vendor`, ''), await readOr(`${sys}/device/model`, '')].filter(Boolean).join(' ');
  return {
    kind: 'block-device',
    path,
    devicePath: await realpath(abs),
    name,
    devNumber,
    size: Number(await readText(`${sys}/size`)) * SYSFS_SECTOR,
    logicalBlockSize: Number(await readOr(`${sys}/queue/logical_block_size`, '512')),
    readOnly: (await readOr(`${sys}/ro`, '0')) === '1',
    removable: (await readOr(`${sys}/removable`, '0')) === '1' || transport === 'usb' || transport === 'mmc',
    transport,
    model,
  };
}

/** One line for a confirmation prompt or a listing. */
export function describeTarget(t: TargetInfo): string {
  if (t.kind === 'file') return `${t.path}  (regular file${t.exists ? `, ${formatBytes(t.size)} now` : ', new'})`;
  const what = [t.model || undefined, formatBytes(t.size), t.transport, t.removable ? 'removable' : 'not removable'];
  return `${t.devicePath}  (${what.filter(Boolean).join(', ')})`;
}

interface MountEntry {
  devNumber: string;
  mountPoint: string;
  source: string;
}

/** /proc/self/mountinfo (proc(5)): field 3 is major:minor, 5 the mount point; after " - ": type, source. */
async function readMounts(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre, post = ''] = line.split(' - ');
      const f = pre!.split(' ');
      return { devNumber: f[2]!, mountPoint: unescape(f[4]!), source: unescape(post.split(' ')[1] ?? '') };
    });
}

/** The kernel names of a disk's partitions. */
async function partitionsOf(name: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await listDir(`/sys/class/block/${name}`)) {
    if (await readText(`/sys/class/block/${name}/${entry}/partition`).catch(() => undefined)) out.push(entry);
  }
  return out;
}

/** Devices stacked on `name` (device-mapper, md, bcache), recursively. */
async function holdersOf(name: string, seen = new Set<string>()): Promise<string[]> {
  for (const h of await listDir(`/sys/class/block/${name}/holders`)) {
    if (seen.has(h)) continue;
    seen.add(h);
    await holdersOf(h, seen);
  }
  return [...seen];
}

/** A disk and everything that lives on it: its partitions and whatever is stacked on either. */
async function familyOf(name: string): Promise<{ names: Set<string>; holders: string[] }> {
  const names = new Set([name, ...(await partitionsOf(name))]);
  const holders = new Set<string>();
  for (const n of [...names]) for (const h of await holdersOf(n)) holders.add(h);
  for (const h of holders) names.add(h);
  return { names, holders: [...holders] };
}

const devNumberOfName = (name: string) => readOr(`/sys/class/block/${name}/dev`, '');

/** Where a disk, its partitions or anything stacked on them is mounted or used as swap. */
export async function mountsOf(name: string): Promise<string[]> {
  const { names } = await familyOf(name);
  const numbers = new Set(await Promise.all([...names].map(devNumberOfName)));
  const nodes = new Set([...names].map((n) => `/dev/${n}`));
  const found: string[] = [];
  for (const m of await readMounts()) {
    // btrfs reports an anonymous 0:N device number; its source names the real device.
    const source = m.source.startsWith('/dev/') ? await realpath(m.source).catch(() => m.source) : m.source;
    if (numbers.has(m.devNumber) || nodes.has(source)) found.push(m.mountPoint);
  }
  const swaps = await readOr('/proc/swaps', '');
  for (const line of swaps.split('\n').slice(1)) {
    const dev = line.split(/\s+/)[0];
    if (dev && nodes.has(await realpath(dev).catch(() => dev))) found.push(`[swap ${dev}]`);
  }
  return [...new Set(found)];
}

/** The whole disks under a block device: itself, a partition's disk, or the disks below dm/md. */
async function disksUnder(name: string, seen = new Set<string>()): Promise<string[]> {
  if (seen.has(name)) return [];
  seen.add(name);
  const sys = await realpath(`/sys/class/block/${name}`).catch(() => undefined);
  if (!sys) return [];
  if (await readText(`${sys}/partition`).catch(() => undefined)) return disksUnder(basename(dirname(sys)), seen);
  const slaves = await listDir(`${sys}/slaves`);
  if (slaves.length === 0) return [name];
  const out: string[] = [];
  for (const s of slaves) out.push(...(await disksUnder(s, seen)));
  return out;
}

/** Disks backing /, /boot, /usr, /var, /home (through partitions, dm and md): kernel name → mount points. */
export async function systemDisks(): Promise<Map<string, string[]>> {
  const mounts = await readMounts();
  const out = new Map<string, string[]>();
  for (const point of SYSTEM_MOUNTS) {
    const m = mounts.filter((e) => e.mountPoint === point).pop(); // the last mount on a point is the visible one
    if (!m) continue;
    let name: string | undefined;
    if (!m.devNumber.startsWith('0:')) name = basename(await realpath(`/sys/dev/block/${m.devNumber}`).catch(() => ''));
    else if (m.source.startsWith('/dev/')) {
      const st = await stat(m.source).catch(() => undefined);
      if (st?.isBlockDevice()) name = basename(await realpath(`/sys/dev/block/${devNumberOf(st.rdev)}`).catch(() => ''));
    }
    if (!name) continue; // tmpfs, overlay, network filesystems: no local disk
    for (const disk of await disksUnder(name)) out.set(disk, [...(out.get(disk) ?? []), point]);
  }
  return out;
}

/** Try to claim the device exclusively (O_EXCL on a block device, open(2)): fails while anything holds it. */
async function claimable(t: BlockDeviceInfo): Promise<void> {
  try {
    const fh = await open(t.devicePath, constants.O_RDONLY | constants.O_EXCL);
    await fh.close();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') {
      throw new InputError(`${t.path} is in use: another program, a filesystem, RAID/LVM or swap holds it open`, {
        hint: 'close whatever uses it (see `lsblk` and `fuser -v`) and try again',
      });
    }
    if (code === 'EACCES' || code === 'EPERM') {
      throw new HostError(`no permission to open ${t.path}`, { hint: 'run bramble flash as root (sudo) or as a member of the disk group', cause: e });
    }
    throw e;
  }
}

export interface SafetyOptions {
  forceNonRemovable: boolean;
  /** Bytes the image needs, when known. */
  imageSize?: number;
}

/** Refuse a target that must not be written. Throws InputError/HostError saying why and what to do. */
export async function checkTarget(t: TargetInfo, opts: SafetyOptions): Promise<void> {
  if (t.kind === 'file') return;
  if (t.readOnly) throw new InputError(`${t.path} is read-only`, { hint: "is the SD card's write-protect switch on?" });
  const mounted = await mountsOf(t.name);
  if (mounted.length > 0) {
    throw new InputError(`${t.path} is mounted (${mounted.join(', ')})`, {
      hint: `unmount it first: sudo umount ${mounted.filter((m) => !m.startsWith('[')).join(' ')}`.trimEnd(),
    });
  }
  const { holders } = await familyOf(t.name);
  if (holders.length > 0) {
    throw new InputError(`${t.path} is in use by ${holders.map((h) => `/dev/${h}`).join(', ')}`, {
      hint: 'stop the LVM volume group, RAID array or dm device built on it first',
    });
  }
  await claimable(t);
  if (!opts.forceNonRemovable) {
    const system = (await systemDisks()).get(t.name);
    if (system) {
      throw new InputError(`${t.path} holds the running system (${system.join(', ')})`, {
        hint: 'choose another drive; --force-non-removable overrides this check only if you are sure',
      });
    }
    if (!t.removable) {
      throw new InputError(`${t.path} is not a removable drive (${t.transport})`, {
        hint: 'check that this is the right drive; pass --force-non-removable to write to it anyway',
      });
    }
  }
  if (opts.imageSize !== undefined && t.size < opts.imageSize) throw tooSmall(t, opts.imageSize);
}

export function tooSmall(t: BlockDeviceInfo, imageSize: number): InputError {
  return new InputError(`${t.path} (${formatBytes(t.size)}) is smaller than the image (${formatBytes(imageSize)})`, {
    hint: 'use a larger drive',
  });
}

/** Removable drives present now (for a hint when no device was named). */
export async function removableDrives(): Promise<BlockDeviceInfo[]> {
  const out: BlockDeviceInfo[] = [];
  for (const name of await listDir('/sys/block')) {
    if (VIRTUAL_NAME.test(name)) continue;
    const info = await inspectTarget(`/dev/${name}`).catch(() => undefined);
    if (info?.kind === 'block-device' && info.removable && info.size > 0) out.push(info);
  }
  return out;
}
