// The Flatcar release server as a catalogue (base-images.md §8): channel and board → version.txt →
// the URLs of the disk image and the PXE kernel and initrd, each with its DIGESTS and signatures.
import { InputError } from '../../builders/errors.ts';
import { flatcarBoard, type Arch, type FlatcarChannel, type Sources } from '../../builders/spec.ts';
import { joinUrl, type InputSource } from './input.ts';

/** Artefact file names, all prefixed flatcar_production_ (scripts prod_image_util.sh, base-images.md §8). */
export const flatcarFiles = {
  image: 'flatcar_production_image.bin.bz2',
  'pxe-kernel': 'flatcar_production_pxe.vmlinuz',
  'pxe-cpio': 'flatcar_production_pxe_image.cpio.gz',
} as const;
export type FlatcarArtefact = keyof typeof flatcarFiles;

/** The channel's release server: `sources.flatcar` with `{channel}` replaced. */
export function flatcarChannelBase(sources: Pick<Sources, 'flatcar'>, channel: FlatcarChannel): string {
  return sources.flatcar.replaceAll('{channel}', channel);
}

/**
 * Where the channel's current version is announced. Real LTS keeps one tree per LTS stream
 * (`current-<YEAR>`, listed in `/lts-info`); bramble follows `current` for every channel, which a
 * mirror or the fixture provides, and a pinned `os.version` (or the lock) selects an exact LTS release.
 */
export function flatcarVersionTxtUrl(sources: Pick<Sources, 'flatcar'>, channel: FlatcarChannel, arch: Arch): string {
  return joinUrl(flatcarChannelBase(sources, channel), flatcarBoard(arch), 'current', 'version.txt');
}

const FLATCAR_VERSION = /^\d+\.\d+\.\d+$/;

/** `FLATCAR_VERSION=<x.y.z>` from a version.txt (flatcar-install reads it with `sed -n 's/^FLATCAR_VERSION=//p'`). */
export function parseVersionTxt(text: string, url: string): string {
  for (const line of text.split('\n')) {
    const m = /^FLATCAR_VERSION=(.*)$/.exec(line.replace(/\r$/, ''));
    if (!m) continue;
    const v = m[1]!.trim().replace(/^"(.*)"$/, '$1');
    if (FLATCAR_VERSION.test(v)) return v;
    throw new InputError(`${url}: FLATCAR_VERSION is "${v}", not a release version`, {
      hint: 'check sources.flatcar: it must point at a Flatcar release server or a mirror of one',
    });
  }
  throw new InputError(`${url} has no FLATCAR_VERSION= line`, {
    hint: 'check sources.flatcar: it must point at a Flatcar release server or a mirror of one',
  });
}

/** A pinned version from cluster.toml must look like a release before it goes into a URL. */
export function checkFlatcarVersion(v: string): string {
  if (!FLATCAR_VERSION.test(v)) {
    throw new InputError(`os.version "${v}" is not a Flatcar release version`, { hint: 'use "current" or a version like 4593.2.5' });
  }
  return v;
}

export function flatcarInputId(artefact: FlatcarArtefact, arch: Arch): string {
  return `flatcar-${artefact}-${arch}`;
}

/** One release artefact with how it is verified: `{base}/{board}/{version}/{file}`. */
export function flatcarInput(
  sources: Pick<Sources, 'flatcar'>,
  channel: FlatcarChannel,
  arch: Arch,
  version: string,
  artefact: FlatcarArtefact,
): InputSource {
  const url = joinUrl(flatcarChannelBase(sources, channel), flatcarBoard(arch), checkFlatcarVersion(version), flatcarFiles[artefact]);
  return {
    id: flatcarInputId(artefact, arch),
    url,
    version,
    check: { kind: 'flatcar-digests', digestsUrl: `${url}.DIGESTS`, signatureUrl: `${url}.sig`, digestsAscUrl: `${url}.DIGESTS.asc` },
    derive: artefact === 'image' ? 'bz2-sparse' : undefined,
  };
}
