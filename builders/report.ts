// Renders BrambleEvents for people and machines. Each event kind has a formatter; adding a kind to
// BrambleEvent fails to compile until it has one here.
import type { BrambleEvent, EventSink } from './events.ts';
import { layout } from './layout.ts';

type Formatters = { [K in BrambleEvent['kind']]: (e: Extract<BrambleEvent, { kind: K }>) => string | undefined };

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

export const plainFormatters: Formatters = {
  'stage-started': (e) => `• ${e.title}`,
  'stage-finished': (e) => `✓ ${e.title} (${(e.ms / 1000).toFixed(1)} s)`,
  progress: (e) =>
    e.unit === 'bytes'
      ? `  ${e.what}: ${mib(e.done)}${e.total ? ` of ${mib(e.total)} (${Math.floor((100 * e.done) / e.total)}%)` : ''}`
      : `  ${e.what}: ${e.done}${e.total ? `/${e.total}` : ''}`,
  'artefact-written': (e) => `  wrote ${e.path} (${mib(e.size)})${e.secret ? ' [secret]' : ''}`,
  download: (e) => (e.cached ? undefined : `  downloading ${e.url}`),
  warning: (e) => `warning: ${e.message}`,
  info: (e) => `  ${e.message}`,
};

export function formatEvent(e: BrambleEvent): string | undefined {
  const f = plainFormatters[e.kind] as (e: BrambleEvent) => string | undefined;
  return f(e);
}

/** One JSON object per line, for --json. */
export function jsonSink(write: (line: string) => void): EventSink {
  return (e) => write(JSON.stringify({ time: new Date().toISOString(), ...e }) + '\n');
}

/**
 * Plain lines for CI and pipes. Byte progress is throttled to one line per stage and item every few
 * seconds, and the mirror tree's files are counted rather than listed, so logs stay readable.
 */
export function plainSink(write: (line: string) => void, intervalMs = 5000): EventSink {
  const last = new Map<string, number>();
  // The mirror's storage tree is hundreds of small files: one summary line per stage instead.
  const tree = { files: 0, bytes: 0 };
  return (e) => {
    if (e.kind === 'artefact-written' && e.path.startsWith(`${layout.registryDir}/`)) {
      tree.files++;
      tree.bytes += e.size;
      return;
    }
    if (e.kind === 'stage-finished' && tree.files > 0) {
      write(`  wrote ${tree.files} files of the registry mirror under ${layout.registryDir}/ (${mib(tree.bytes)})\n`);
      tree.files = 0;
      tree.bytes = 0;
    }
    if (e.kind === 'progress') {
      const key = `${e.stage}:${e.what}`;
      const now = Date.now();
      const done = e.total !== undefined && e.done >= e.total;
      if (!done && now - (last.get(key) ?? 0) < intervalMs) return;
      last.set(key, now);
    }
    const line = formatEvent(e);
    if (line !== undefined) write(line + '\n');
  };
}
