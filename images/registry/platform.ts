// Platforms as the cluster wants them (`linux/amd64`, `linux/arm64`, `linux/arm/v7`) and as image
// indexes describe them, normalised the way containerd/platforms does (kubernetes-and-registry.md
// §3.5): aarch64 → arm64 (variant v8 folded away), x86_64 → amd64, armhf → arm/v7, plain arm → arm/v7.
import { InputError } from '../../builders/errors.ts';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const architectureAliases: Record<string, string> = { aarch64: 'arm64', x86_64: 'amd64', 'x86-64': 'amd64', armhf: 'arm', armel: 'arm' };
const impliedVariant: Record<string, string> = { armhf: 'v7', armel: 'v6' };

export function normalisePlatform(p: { os?: string; architecture?: string; variant?: string }): Platform {
  const rawArch = (p.architecture ?? '').toLowerCase();
  const architecture = architectureAliases[rawArch] ?? rawArch;
  let variant: string | undefined = p.variant?.toLowerCase() || impliedVariant[rawArch];
  if (architecture === 'arm64' && (variant === 'v8' || variant === '8')) variant = undefined;
  if (architecture === 'arm' && variant && /^\d$/.test(variant)) variant = `v${variant}`;
  return { os: (p.os ?? '').toLowerCase(), architecture, ...(variant ? { variant } : {}) };
}

/** Parse `os/arch[/variant]`; a wanted `linux/arm` means arm/v7, as containerd's default for arm. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((x) => !/^[a-z0-9_.-]+$/i.test(x))) {
    throw new InputError(`platform "${text}" is not os/architecture[/variant]`, { hint: 'write platforms like linux/amd64, linux/arm64 or linux/arm/v7' });
  }
  const p = normalisePlatform({ os: parts[0], architecture: parts[1], variant: parts[2] });
  return p.architecture === 'arm' && !p.variant ? { ...p, variant: 'v7' } : p;
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** 2: same os, architecture and variant; 1: same os and architecture, the candidate names no variant; 0: no match. */
export function platformMatch(wanted: Platform, candidate: Platform): 0 | 1 | 2 {
  if (wanted.os !== candidate.os || wanted.architecture !== candidate.architecture) return 0;
  if (wanted.variant === candidate.variant) return 2;
  return candidate.variant === undefined ? 1 : 0;
}
