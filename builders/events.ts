// Structured progress events. Stages emit them through an EventSink; the CLI renders them
// (listr2 on a TTY, plain lines in CI, one JSON object per line with --json). The library never prints.

export type BrambleEvent =
  | { kind: 'stage-started'; stage: string; title: string }
  | { kind: 'stage-finished'; stage: string; title: string; ms: number }
  | { kind: 'progress'; stage: string; what: string; done: number; total?: number; unit: 'bytes' | 'items' }
  | { kind: 'artefact-written'; path: string; size: number; sha256: string; secret: boolean }
  | { kind: 'download'; url: string; cached: boolean }
  | { kind: 'warning'; message: string }
  | { kind: 'info'; message: string };

export type EventSink = (event: BrambleEvent) => void;

export const discardEvents: EventSink = () => {};

/** Options every stage takes. */
export interface StageContext {
  signal: AbortSignal;
  events: EventSink;
}

export function defaultContext(): StageContext {
  return { signal: new AbortController().signal, events: discardEvents };
}
