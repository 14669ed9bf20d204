// A Flatcar node image: the verified base image copied sparsely (reflink where possible), then edited
// in place as a file — GPT parsed in TypeScript, the OEM btrfs rebuilt with the node's config.ign and
// grub.cfg, the ESP given the Raspberry Pi 4 UEFI firmware for rpi4 nodes. The bmap is the base
// image's data map with the edited partitions' ranges replaced, so nothing is rescanned in full.
import { mkdir, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeBmap } from '../images/bmap.ts';
import { buildBtrfsImage, writePartition } from '../images/btrfs.ts';
import { fatDataRanges, writeFatFiles } from '../images/fat.ts';
import { ext4DataRanges, ext4Shortfall, growExt4, writeExt4Files, type Ext4Entry } from '../images/ext4.ts';
import { InputError } from './errors.ts';
import { findPartition, growImage, partitionBytes, PartitionType, readGpt } from '../images/gpt.ts';
import { derivedUuid } from '../images/guid.ts';
import { copySparse, mergeRanges, type ByteRange } from '../images/sparse.ts';
import { renderOemGrubCfg } from '../overlays/provision.ts';
import { replaceRanges, type AssembleImageOptions } from './assemble-hypriot.ts';
import { rpi4FirmwareFiles } from './rpi4-firmware.ts';
import { layout } from './layout.ts';

/** OEM file names Flatcar reads (base-images.md §3, §5, §6.3). */
export const OEM_CONFIG = 'config.ign';
export const OEM_GRUB_CFG = 'grub.cfg';

/**
 * Refuses, before writing, ROOT content that does not fit (the first node's PXE tree and mirror can
 * outgrow the image's 1.7 GiB ROOT): the node's `size` grows the ROOT partition and its ext4 first,
 * so that is the fix.
 */
async function checkRootSpace(image: string, offset: number, entries: readonly Ext4Entry[], node: string, signal: AbortSignal): Promise<void> {
  const short = await ext4Shortfall(image, { offset }, entries, { signal });
  if (short) {
    const { space, blocks } = short;
    const mib = (b: number) => Math.ceil((b * space.blockSize) / 1048576);
    const enough = Math.ceil(((await stat(image)).size + (blocks - space.freeBlocks) * space.blockSize) / 2 ** 30) + 1;
    throw new InputError(`node "${node}": its ROOT partition has ${mib(space.freeBlocks)} MiB free, the files bramble puts there need ${mib(blocks)} MiB`, {
      hint: `grow the image and its ROOT: set size = "${enough}GiB" (or more) on node "${node}"`,
    });
  }
}

export async function assembleDiskImage(o: AssembleImageOptions): Promise<void> {
  const { node, ignitionJson, provisioning } = o.rendered;
  const base = o.inputs.get(`flatcar-image-${node.arch}`);
  if (!base?.derivedPath || !base.dataRanges) throw new Error(`assemble-disk: no decompressed Flatcar image for ${node.arch}`);
  if (!ignitionJson) throw new Error(`assemble-disk: node ${node.name} has no Ignition config`);
  const imageRel = layout.image(node.name);
  const tmp = await o.out.tempPathFor(imageRel);
  const bmapTmp = await o.out.tempPathFor(layout.bmap(node.name));
  await mkdir(o.workDir, { recursive: true });
  try {
    await copySparse(base.derivedPath, tmp, { dataRanges: base.dataRanges, signal: o.signal });
    let ranges: ByteRange[] = mergeRanges(base.dataRanges);
    if (node.sizeBytes) {
      const grown = await growImage(tmp, node.sizeBytes, { growPartition: 'ROOT' });
      ranges = mergeRanges([...ranges, ...grown.written]);
    }
    const gpt = await readGpt(tmp);

    // OEM: rebuilt whole at its existing size, with a filesystem UUID derived from cluster and node.
    const oem = partitionBytes(gpt, findPartition(gpt, { label: 'OEM', typeGuid: PartitionType.linuxData }));
    // Flatcar's GRUB already passes its own console arguments; the OEM grub.cfg adds only the rest.
    const extraArgs = provisioning.kernelArgs.filter((a) => !a.startsWith('console='));
    const fsImage = await buildBtrfsImage({
      label: 'OEM',
      sizeBytes: oem.size,
      files: [
        { path: `/${OEM_CONFIG}`, data: ignitionJson, mode: 0o600 },
        { path: `/${OEM_GRUB_CFG}`, data: renderOemGrubCfg(node.name, extraArgs), mode: 0o644 },
      ],
      fsUuid: derivedUuid('bramble', o.spec.name, node.name, 'oem-fs'),
      deviceUuid: derivedUuid('bramble', o.spec.name, node.name, 'oem-dev'),
      epoch: o.epoch,
      compression: 'zlib',
      workDir: o.workDir,
      signal: o.signal,
    });
    try {
      // Both data maps are known, so only their blocks are read: the rest of the 1 GiB is zeros on both sides.
      const written = await writePartition(tmp, oem, fsImage.path, { signal: o.signal, fileRanges: fsImage.dataRanges, imageRanges: ranges });
      ranges = replaceRanges(ranges, oem.offset, oem.offset + oem.size, written);
    } finally {
      await rm(dirname(fsImage.path), { recursive: true, force: true });
    }

    // ROOT (ext4): files the plan places there, such as the Kubernetes sysext and its link, root-owned.
    if (o.rendered.rootEntries?.length) {
      const root = partitionBytes(gpt, findPartition(gpt, { label: 'ROOT', typeGuid: PartitionType.flatcarResize }));
      // A grown partition only helps if the filesystem grows with it before the files go in.
      if (node.sizeBytes) {
        const written = await growExt4(tmp, { offset: root.offset }, root.size, { epoch: o.epoch, workDir: o.workDir, signal: o.signal });
        ranges = mergeRanges([...ranges, ...written]);
      }
      await checkRootSpace(tmp, root.offset, o.rendered.rootEntries, node.name, o.signal);
      await writeExt4Files(tmp, { offset: root.offset }, o.rendered.rootEntries, { epoch: o.epoch, workDir: o.workDir, signal: o.signal });
      // Added to the base map, never replacing it: blocks ext4 freed may still hold old bytes.
      ranges = mergeRanges([...ranges, ...(await ext4DataRanges(tmp, { offset: root.offset }, { signal: o.signal }))]);
    }

    if (node.hardware === 'rpi4') {
      const esp = partitionBytes(gpt, findPartition(gpt, { label: 'EFI-SYSTEM', typeGuid: PartitionType.efiSystem }));
      const files = await rpi4FirmwareFiles(o);
      await writeFatFiles(tmp, esp.offset, files, { signal: o.signal, epoch: o.epoch, workDir: o.workDir });
      // Freed clusters may still hold old bytes, so the FAT's map is added to the base map, never replaces it.
      ranges = mergeRanges([...ranges, ...(await fatDataRanges(tmp, esp.offset, { signal: o.signal }))]);
    }

    await writeBmap(tmp, ranges, bmapTmp, { signal: o.signal });
    const meta = { node: node.name, target: node.hardware, arch: node.arch };
    await o.out.adoptFile(layout.bmap(node.name), bmapTmp, { kind: 'bmap', ...meta, secret: false });
    // The image carries the node's config (and later its keys), so it is as secret as the config.
    await o.out.adoptFile(imageRel, tmp, { kind: 'disk-image', ...meta, secret: true }, { dataRanges: ranges });
  } catch (e) {
    await rm(tmp, { force: true });
    await rm(bmapTmp, { force: true });
    throw e;
  }
}
