// HypriotOS releases as a catalogue (base-images.md §12): one zipped image per version with a
// sha256sum-style `.sha256` beside it.
import { InputError } from '../../builders/errors.ts';
import type { Sources } from '../../builders/spec.ts';
import { bareVersion, joinUrl, type InputSource } from './input.ts';

/** The last HypriotOS release (2020-07-02); the project is inactive, so "current" means this one. */
export const HYPRIOT_LATEST = '1.12.3';

export const HYPRIOT_IMAGE_ID = 'hypriot-image-arm';

export function hypriotVersion(v: string): string {
  const bare = v === 'current' ? HYPRIOT_LATEST : bareVersion(v);
  if (!/^\d+\.\d+\.\d+$/.test(bare)) {
    throw new InputError(`os.version "${v}" is not a HypriotOS release version`, { hint: `use "current" or a version like ${HYPRIOT_LATEST}` });
  }
  return bare;
}

/** `{sources.hypriot}/v{ver}/hypriotos-rpi-v{ver}.img.zip` and its `.sha256`. */
export function hypriotInput(sources: Pick<Sources, 'hypriot'>, version: string): InputSource {
  const v = hypriotVersion(version);
  const url = joinUrl(sources.hypriot, `v${v}`, `hypriotos-rpi-v${v}.img.zip`);
  return {
    id: HYPRIOT_IMAGE_ID,
    url,
    version: v,
    check: { kind: 'checksum-file', url: `${url}.sha256`, algorithm: 'sha256' },
    derive: 'zip-sparse',
  };
}
