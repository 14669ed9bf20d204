// A HypriotOS node image: the verified base image copied sparsely, with the node's NoCloud seed
// (user-data, meta-data, network-config) written into the FAT boot partition by mtools and the
// Kubernetes binaries written into the ext4 root partition by debugfs (no mount, no root). The MBR,
// its disk signature (PARTUUIDs in cmdline.txt) and every byte outside those two partitions stay as
// they were.
import { rm } from 'node:fs/promises';
import { writeBmap } from '../images/bmap.ts';
import { fatDataRanges, writeFatFiles } from '../images/fat.ts';
import { ext4DataRanges, ext4Shortfall, writeExt4Files, type Ext4Entry, type Ext4Location } from '../images/ext4.ts';
import { MBR_FAT_TYPES, MBR_LINUX_TYPE, mbrPartitionBytes, readMbr } from '../images/mbr.ts';
import { copySparse, mergeRanges, type ByteRange } from '../images/sparse.ts';
import type { RenderedNode } from './build.ts';
import { InputError } from './errors.ts';
import type { StageContext } from './events.ts';
import type { FetchedInput } from './fetch.ts';
import { layout } from './layout.ts';
import type { OutputWriter } from './output.ts';
import type { ClusterSpec } from './spec.ts';

export interface AssembleImageOptions extends StageContext {
  spec: ClusterSpec;
  rendered: RenderedNode;
  inputs: Map<string, FetchedInput>;
  out: OutputWriter;
  epoch: number;
  workDir: string;
}

/** Replace the ranges inside [start, end) by `inside`, keeping the rest of `base`. */
export function replaceRanges(base: readonly ByteRange[], start: number, end: number, inside: readonly ByteRange[]): ByteRange[] {
  const kept: ByteRange[] = [];
  for (const [s, e] of base) {
    if (e <= start || s >= end) kept.push([s, e]);
    else {
      if (s < start) kept.push([s, start]);
      if (e > end) kept.push([end, e]);
    }
  }
  return mergeRanges([...kept, ...inside]);
}

/**
 * Refuses, before writing, entries that do not fit the root filesystem: HypriotOS grows its root
 * partition only on first boot, so the image as released must hold them.
 */
async function checkRootSpace(image: string, at: Ext4Location, entries: readonly Ext4Entry[], o: { node: string; image: string; signal: AbortSignal }): Promise<void> {
  const short = await ext4Shortfall(image, at, entries, { signal: o.signal });
  if (short) {
    const { space, blocks } = short;
    const mib = (b: number) => `${((b * space.blockSize) / 1048576).toFixed(1)} MiB`;
    throw new InputError(`node "${o.node}": the root filesystem of ${o.image} has ${mib(space.freeBlocks)} free, the files bramble adds need ${mib(blocks)}`, {
      hint: 'bramble does not grow HypriotOS images: point sources.hypriot at an image whose root filesystem has that much room, or use os.base = "flatcar"',
    });
  }
}

export async function assembleHypriotImage(o: AssembleImageOptions): Promise<void> {
  const { node, cloudInit } = o.rendered;
  const base = o.inputs.get(`hypriot-image-${node.arch}`);
  if (!base?.derivedPath || !base.dataRanges) throw new Error(`assemble-hypriot: no decompressed HypriotOS image for ${node.arch}`);
  if (!cloudInit) throw new Error(`assemble-hypriot: node ${node.name} has no cloud-init seed`);
  const imageRel = layout.image(node.name);
  const tmp = await o.out.tempPathFor(imageRel);
  const bmapTmp = await o.out.tempPathFor(layout.bmap(node.name));
  try {
    await copySparse(base.derivedPath, tmp, { dataRanges: base.dataRanges, signal: o.signal });
    const mbr = await readMbr(tmp);
    const boot = mbr.partitions.find((p) => MBR_FAT_TYPES.has(p.type));
    if (!boot) throw new InputError(`the HypriotOS image ${base.url} has no FAT boot partition`, { hint: 'check sources.hypriot points at HypriotOS releases' });
    const { offset } = mbrPartitionBytes(boot);
    await writeFatFiles(
      tmp,
      offset,
      [
        { path: '/user-data', data: cloudInit.userData },
        { path: '/meta-data', data: cloudInit.metaData },
        { path: '/network-config', data: cloudInit.networkConfig },
      ],
      { signal: o.signal, epoch: o.epoch, workDir: o.workDir },
    );
    // Freed clusters may still hold old bytes, so the FAT's map is added to the base map, never replaces it.
    let ranges = mergeRanges([...base.dataRanges, ...(await fatDataRanges(tmp, offset, { signal: o.signal }))]);

    // The root filesystem (ext4): plain files the plan places there, such as the Kubernetes binaries.
    const entries = o.rendered.rootEntries ?? [];
    if (entries.length) {
      const rootPart = mbr.partitions.find((p) => p.type === MBR_LINUX_TYPE);
      if (!rootPart) throw new InputError(`the HypriotOS image ${base.url} has no Linux root partition`, { hint: 'check sources.hypriot points at HypriotOS releases' });
      const root = { offset: mbrPartitionBytes(rootPart).offset };
      await checkRootSpace(tmp, root, entries, { node: node.name, image: base.url, signal: o.signal });
      await writeExt4Files(tmp, root, entries, { epoch: o.epoch, workDir: o.workDir, signal: o.signal });
      ranges = mergeRanges([...ranges, ...(await ext4DataRanges(tmp, root, { signal: o.signal }))]);
    }
    await writeBmap(tmp, ranges, bmapTmp, { signal: o.signal });
    const meta = { node: node.name, target: node.hardware, arch: node.arch, secret: true };
    await o.out.adoptFile(layout.bmap(node.name), bmapTmp, { kind: 'bmap', ...meta, secret: false });
    await o.out.adoptFile(imageRel, tmp, { kind: 'disk-image', ...meta }, { dataRanges: ranges });
  } catch (e) {
    await rm(tmp, { force: true });
    await rm(bmapTmp, { force: true });
    throw e;
  }
}
