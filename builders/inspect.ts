// `bramble inspect PATH`: what is inside an image (partition table, OEM config, ESP files, NoCloud
// seed) or an out/<cluster> directory (nodes, artefacts, inputs). Read-only; nothing is mounted.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listBtrfs, readBtrfsFile } from '../images/btrfs.ts';
import { listFat, readFatFile } from '../images/fat.ts';
import { partitionBytes, readGpt, type Gpt } from '../images/gpt.ts';
import { MBR_FAT_TYPES, MBR_TYPE_GPT_PROTECTIVE, mbrPartitionBytes, readMbr } from '../images/mbr.ts';
import { InputError } from './errors.ts';
import { layout } from './layout.ts';
import type { Manifest } from './output.ts';
import { describeMirror, IMAGE_LOCK_PREFIX } from './registry-content.ts';

export interface InspectOptions {
  json: boolean;
  signal?: AbortSignal;
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export async function inspectPath(path: string, o: InspectOptions): Promise<string> {
  let s;
  try {
    s = await stat(path);
  } catch {
    throw new InputError(`${path} does not exist`, { hint: 'give an image file or an out/<cluster> directory' });
  }
  if (s.isDirectory()) return inspectOutDir(path, o);
  return inspectImage(path, o);
}

async function inspectOutDir(dir: string, o: InspectOptions): Promise<string> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, layout.manifest), 'utf8')) as Manifest;
  } catch {
    throw new InputError(`${dir} has no readable ${layout.manifest}`, {
      hint: 'give an out/<cluster> directory of a finished build (a build that failed or is running has no manifest)',
    });
  }
  const mirror = await describeMirror(dir, manifest);
  if (o.json) return JSON.stringify(mirror ? { ...manifest, mirror } : manifest, null, 2) + '\n';
  const lines = [`cluster ${manifest.cluster} (${manifest.generator}, SOURCE_DATE_EPOCH ${manifest.sourceDateEpoch})`, '', 'nodes:'];
  for (const n of manifest.nodes) {
    lines.push(`  ${n.name.padEnd(20)} ${n.role.padEnd(14)} ${n.hardware.padEnd(10)} ${n.boot.padEnd(5)} ${n.arch.padEnd(6)} ${n.mac ?? '-'}  ${n.ip ?? 'dhcp'}`);
  }
  lines.push('', 'artefacts:');
  let total = 0;
  const registryFiles = manifest.artefacts.filter((a) => a.path.startsWith(`${layout.registryDir}/`));
  for (const a of manifest.artefacts) {
    total += a.size;
    // The mirror's tree is hundreds of blob and link files: summarised below.
    if (a.path.startsWith(`${layout.registryDir}/`)) continue;
    lines.push(`  ${a.path.padEnd(52)} ${a.kind.padEnd(12)} ${mib(a.size).padStart(11)}${a.secret ? '  secret' : ''}`);
  }
  if (registryFiles.length) {
    lines.push(`  ${`${layout.registryDir}/ (registry storage tree, ${registryFiles.length} files)`.padEnd(52)} ${'bundle'.padEnd(12)} ${mib(registryFiles.reduce((n, a) => n + a.size, 0)).padStart(11)}`);
  }
  lines.push(`  ${manifest.artefacts.length} files, ${mib(total)} apparent`);
  if (mirror) {
    lines.push('', `registry mirror: ${mirror.images.length} images for ${mirror.arches.join(' ')}, ${mirror.blobs} unique blobs, ${mirror.uniqueBytes} bytes (${mib(mirror.uniqueBytes)})`);
    for (const i of mirror.images) {
      lines.push(`  ${i.ref}`, `      ${'top'.padEnd(14)} ${i.digest}`);
      for (const p of i.platforms) lines.push(`      ${p.platform.padEnd(14)} ${p.digest}`);
    }
  }
  lines.push('', 'inputs:');
  for (const i of manifest.inputs.filter((x) => !mirror || !x.id.startsWith(IMAGE_LOCK_PREFIX))) lines.push(`  ${i.id.padEnd(28)} ${i.version.padEnd(12)} sha256:${i.sha256.slice(0, 16)}…  ${i.url}`);
  return lines.join('\n') + '\n';
}

interface PartitionReport {
  number: number;
  name: string;
  type: string;
  offset: number;
  size: number;
  files?: string[];
  contents?: Record<string, string>;
}

async function inspectImage(path: string, o: InspectOptions): Promise<string> {
  const mbr = await readMbr(path).catch(() => undefined);
  let scheme: 'gpt' | 'mbr';
  const parts: PartitionReport[] = [];
  let diskId: string;
  if (!mbr || mbr.partitions.some((p) => p.type === MBR_TYPE_GPT_PROTECTIVE)) {
    const gpt: Gpt = await readGpt(path);
    scheme = 'gpt';
    diskId = gpt.diskGuid;
    for (const p of gpt.partitions) {
      const { offset, size } = partitionBytes(gpt, p);
      const r: PartitionReport = { number: p.number, name: p.name, type: p.typeGuid, offset, size };
      if (p.name === 'OEM') {
        r.files = await listBtrfs(path, { offset, size }, { signal: o.signal }).catch((e) => [`(unreadable: ${(e as Error).message})`]);
        r.contents = {};
        for (const f of ['config.ign', 'grub.cfg']) {
          if (!r.files.includes(f) && !r.files.includes(`/${f}`)) continue;
          const text = (await readBtrfsFile(path, { offset, size }, f, { signal: o.signal })).toString('utf8');
          r.contents[f] = f.endsWith('.ign') ? JSON.stringify(JSON.parse(text), null, 2) : text;
        }
      } else if (p.name === 'EFI-SYSTEM') {
        r.files = (await listFat(path, offset, { signal: o.signal })).filter((e) => e.type === 'file').map((e) => e.path);
      }
      parts.push(r);
    }
  } else {
    scheme = 'mbr';
    diskId = mbr.diskSignature;
    for (const p of mbr.partitions) {
      const { offset, size } = mbrPartitionBytes(p);
      const r: PartitionReport = { number: p.number, name: '', type: `0x${p.type.toString(16).padStart(2, '0')}`, offset, size };
      if (MBR_FAT_TYPES.has(p.type)) {
        r.files = (await listFat(path, offset, { signal: o.signal })).filter((e) => e.type === 'file').map((e) => e.path);
        r.contents = {};
        for (const f of ['/user-data', '/meta-data', '/network-config']) {
          if (r.files.includes(f)) r.contents[f] = (await readFatFile(path, offset, f, { signal: o.signal })).toString('utf8');
        }
      }
      parts.push(r);
    }
  }
  if (o.json) return JSON.stringify({ image: path, scheme, diskId, partitions: parts }, null, 2) + '\n';
  const lines = [`${path}: ${scheme.toUpperCase()}, disk ${scheme === 'gpt' ? 'GUID' : 'signature'} ${diskId}`, ''];
  lines.push('  #  name               offset        size        type');
  for (const p of parts) {
    lines.push(`  ${String(p.number).padStart(2)} ${p.name.padEnd(18)} ${String(p.offset).padStart(12)} ${mib(p.size).padStart(11)}  ${p.type}`);
  }
  for (const p of parts) {
    if (!p.files) continue;
    lines.push('', `partition ${p.number}${p.name ? ` (${p.name})` : ''} files:`);
    for (const f of p.files) lines.push(`  ${f}`);
    for (const [name, text] of Object.entries(p.contents ?? {})) {
      lines.push('', `--- ${name}`, text.trimEnd());
    }
  }
  return lines.join('\n') + '\n';
}
