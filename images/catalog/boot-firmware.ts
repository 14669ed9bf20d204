// Boot firmware inputs: iPXE binaries for the PXE tree (boot.ipxe.org layout) and the Raspberry Pi 4
// UEFI firmware zip (pftf/RPi4 GitHub releases). Neither upstream publishes checksums, so both are
// pinned in bramble.lock on first use (see docs/decisions/005-first-use-pins.md).
import { ipxeBinaries } from '../../builders/versions.ts';
import type { Arch, Sources } from '../../builders/spec.ts';
import { joinUrl, type InputSource } from './input.ts';

/** Lock/manifest id of an iPXE binary: `ipxe-<file>-<arch>`, e.g. ipxe-undionly.kpxe-amd64. */
export function ipxeInputId(file: string, arch: Arch): string {
  return `ipxe-${file.split('/').pop()}-${arch}`;
}

export function ipxeInputs(sources: Pick<Sources, 'ipxe'>, arch: Arch): InputSource[] {
  return ipxeBinaries(arch).map((file) => ({
    id: ipxeInputId(file, arch),
    url: joinUrl(sources.ipxe, file),
    version: 'unversioned',
    check: { kind: 'first-use' as const },
  }));
}

export const RPI4_FIRMWARE_ID = 'rpi4-uefi-firmware-arm64';

export function rpi4FirmwareInput(sources: Pick<Sources, 'firmware'>, version: string): InputSource {
  return {
    id: RPI4_FIRMWARE_ID,
    url: joinUrl(sources.firmware, `v${version}`, `RPi4_UEFI_Firmware_v${version}.zip`),
    version,
    check: { kind: 'first-use' },
  };
}
