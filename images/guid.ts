// GUIDs as GPT stores them, and identifiers derived from names so builds are reproducible.
import { createHash } from 'node:crypto';
import { InputError } from '../builders/errors.ts';

const GUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isGuid(text: string): boolean {
  return GUID_PATTERN.test(text);
}

/** Canonical upper-case text form (what sgdisk prints). */
export function normalizeGuid(text: string): string {
  if (!isGuid(text)) throw new InputError(`not a GUID: ${JSON.stringify(text)}`);
  return text.toUpperCase();
}

/**
 * GPT's mixed-endian encoding (UEFI spec Appendix A, EFI_GUID): the first three fields are
 * little-endian, the last eight bytes are stored in text order.
 */
export function guidToBytes(text: string): Buffer {
  const hex = normalizeGuid(text).replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  return Buffer.concat([
    Buffer.from(b.subarray(0, 4)).reverse(),
    Buffer.from(b.subarray(4, 6)).reverse(),
    Buffer.from(b.subarray(6, 8)).reverse(),
    b.subarray(8, 16),
  ]);
}

export function guidFromBytes(bytes: Uint8Array): string {
  const b = Buffer.from(bytes.subarray(0, 16));
  const hex = Buffer.concat([
    Buffer.from(b.subarray(0, 4)).reverse(),
    Buffer.from(b.subarray(4, 6)).reverse(),
    Buffer.from(b.subarray(6, 8)).reverse(),
    b.subarray(8, 16),
  ]).toString('hex');
  return formatUuidHex(hex).toUpperCase();
}

/** A UUID's 16 bytes in text order (how btrfs, ext4 and Linux store UUIDs, unlike GPT). */
export function uuidToBytes(text: string): Buffer {
  if (!isGuid(text)) throw new InputError(`not a UUID: ${JSON.stringify(text)}`);
  return Buffer.from(text.replace(/-/g, ''), 'hex');
}

export function uuidFromBytes(bytes: Uint8Array): string {
  return formatUuidHex(Buffer.from(bytes.subarray(0, 16)).toString('hex'));
}

function formatUuidHex(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/**
 * A stable UUID derived from names (cluster, node, purpose): SHA-256 of the parts, shaped as an
 * RFC 9562 version 8 ("custom") UUID. Same parts, same UUID, on every machine.
 */
export function derivedUuid(...parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(`${Buffer.byteLength(p)}:${p}\0`);
  const b = h.digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x80; // version 8
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 9562 variant
  return uuidFromBytes(b);
}
