// The Raspberry Pi 4 UEFI firmware (pftf/RPi4 release zip) that rpi4 nodes carry on the ESP: the Pi's
// boot ROM reads config.txt and start4.elf from the FAT ESP, and RPI_EFI.fd then boots GRUB from it
// (base-images.md §11). The zip is a verified input like every other.
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import type { FatFile } from '../images/fat.ts';
import type { AssembleImageOptions } from './assemble-hypriot.ts';
import { VerificationError } from './errors.ts';
import { run } from './exec.ts';
import { EFI_VARIABLE_NV_BS_RT, setVariable } from '../images/efivars.ts';
import { RPI4_FIRMWARE_ID } from '../images/catalog/boot-firmware.ts';


/**
 * Flatcar's documented config.txt for the Pi 4 (the one pftf ships, base-images.md §11): 64-bit,
 * UART console, the UEFI firmware as the ARM stub, and the device tree where EDK2 expects it.
 */
export const RPI4_CONFIG_TXT = [
  'arm_64bit=1',
  'arm_boost=1',
  'enable_uart=1',
  'uart_2ndstage=1',
  'enable_gic=1',
  'armstub=RPI_EFI.fd',
  'disable_commandline_tags=1',
  'disable_overscan=1',
  'device_tree_address=0x3e0000',
  'device_tree_end=0x400000',
  'dtoverlay=miniuart-bt',
  'dtoverlay=upstream-pi4',
  '',
].join('\n');

/** The firmware's RAM-limit switch (base-images.md §11): an NV variable in RPI_EFI.fd's variable store. */
export const RAM_LIMIT_VARIABLE = { name: 'RamLimitTo3GB', guid: 'cd7cc258-31db-22e6-9f22-63b0b8eed6b5' } as const;

/**
 * Set RamLimitTo3GB to 0 (UINT32) in a copy of RPI_EFI.fd, as Flatcar's Pi images do, so Pis with
 * more than 3 GB use it all. A firmware without a variable store is not the firmware we expect.
 */
export function liftRamLimit(fd: Buffer, url: string): Buffer {
  const out = Buffer.from(fd);
  try {
    setVariable(out, { ...RAM_LIMIT_VARIABLE, attributes: EFI_VARIABLE_NV_BS_RT, data: Buffer.alloc(4) });
  } catch (e) {
    throw new VerificationError(`${url}: RPI_EFI.fd`, 'an EDK2 variable store with room for RamLimitTo3GB', (e as Error).message, {
      hint: 'set ram_limit_3gb = true on the node to use the firmware as it is',
    });
  }
  return out;
}

/** Files the Pi cannot boot without; a zip lacking one is not the firmware we expect. */
const REQUIRED = ['RPI_EFI.fd', 'start4.elf', 'fixup4.dat', 'bcm2711-rpi-4-b.dtb'];

export async function rpi4FirmwareFiles(o: AssembleImageOptions): Promise<FatFile[]> {
  const fw = o.inputs.get(RPI4_FIRMWARE_ID);
  if (!fw) throw new Error('assemble-disk: the Raspberry Pi 4 firmware was not fetched');
  const dir = await mkdtemp(join(o.workDir, 'rpi4-fw-'));
  try {
    await run('unzip', ['-q', '-o', fw.path, '-d', dir], { signal: o.signal });
    const files: FatFile[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const name of (await readdir(d)).sort()) {
        const p = join(d, name);
        if ((await stat(p)).isDirectory()) await walk(p);
        else {
          const rel = relative(dir, p).split(sep).join('/');
          if (rel.startsWith('..')) throw new VerificationError(`${fw.url}: entry ${rel}`, 'a path inside the zip', 'a path outside it');
          if (rel === 'config.txt' || rel === 'Readme.md') continue;
          let data: Buffer = await readFile(p);
          if (rel === 'RPI_EFI.fd' && !o.rendered.node.ramLimit3GB) data = liftRamLimit(data, fw.url);
          files.push({ path: `/${rel}`, data });
        }
      }
    };
    await walk(dir);
    for (const r of REQUIRED) {
      if (!files.some((f) => f.path === `/${r}`)) {
        throw new VerificationError(`${fw.url}`, `a Raspberry Pi 4 UEFI firmware zip containing ${r}`, `a zip without it`);
      }
    }
    files.push({ path: '/config.txt', data: RPI4_CONFIG_TXT });
    return files;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
