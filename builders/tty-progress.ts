// On a TTY, the build's stages are shown as a listr2 task list. The pipeline runs on its own and emits
// events; each listr2 task waits for its stage's "finished" event and shows progress as task output.
import { Listr } from 'listr2';
import type { BrambleEvent, EventSink } from './events.ts';
import { formatEvent } from './report.ts';

interface StageState {
  title: string;
  started: Promise<void>;
  start: () => void;
  finished: Promise<void>;
  finish: () => void;
  fail: (e: unknown) => void;
  output?: (text: string) => void;
}

function deferred() {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * Returns an event sink and a function that runs `work` while listr2 draws the stages.
 * `stages` are the stage ids the pipeline will announce, in order, with their titles.
 */
export function ttyProgress(stages: Array<{ id: string; title: string }>) {
  const state = new Map<string, StageState>();
  for (const s of stages) {
    const started = deferred();
    const finished = deferred();
    state.set(s.id, {
      title: s.title,
      started: started.promise,
      start: started.resolve,
      finished: finished.promise,
      finish: finished.resolve,
      fail: finished.reject,
    });
  }
  const notes: string[] = [];
  const sink: EventSink = (e: BrambleEvent) => {
    if (e.kind === 'stage-started') state.get(e.stage)?.start();
    else if (e.kind === 'stage-finished') state.get(e.stage)?.finish();
    else if (e.kind === 'progress') state.get(e.stage)?.output?.(formatEvent(e)?.trim() ?? '');
    else if (e.kind === 'warning') notes.push(formatEvent(e) ?? '');
  };
  async function runWith<T>(work: () => Promise<T>): Promise<T> {
    const list = new Listr(
      stages.map((s) => ({
        title: s.title,
        task: async (_ctx: unknown, task: { output: string; skip: (m?: string) => void }) => {
          const st = state.get(s.id)!;
          st.output = (text) => {
            task.output = text;
          };
          await st.finished;
        },
      })),
      { concurrent: false, exitOnError: true, rendererOptions: { collapseSubtasks: false } },
    );
    const drawing = list.run().catch(() => {});
    try {
      const result = await work();
      // Stages the pipeline skipped (nothing to do for them) are finished here so the list completes.
      for (const st of state.values()) st.finish();
      await drawing;
      for (const n of notes) process.stderr.write(n + '\n');
      return result;
    } catch (e) {
      for (const st of state.values()) st.fail(e);
      await drawing;
      throw e;
    }
  }
  return { sink, runWith };
}
