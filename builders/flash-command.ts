// `bramble flash IMAGE DEVICE...`: confirm, flash, draw progress, print which targets succeeded. The
// work is builders/flash.ts; this file only talks to the user.
import { createInterface } from 'node:readline/promises';
import { describeTarget, formatBytes, inspectTarget, removableDrives } from '../images/devices.ts';
import type { Command, CommandContext } from './commands.ts';
import { UsageError } from './errors.ts';
import type { BrambleEvent } from './events.ts';
import { flashImage, worstExitCode, type FlashResult } from './flash.ts';
import { formatProgress, type FlashProgress } from './flash-progress.ts';

/** Asks a yes/no question; true only for an explicit "yes". */
export type Confirm = (question: string) => Promise<boolean>;

const askOnTerminal: Confirm = async (question) => {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^\s*yes\s*$/i.test(await rl.question(question));
  } finally {
    rl.close();
  }
};

/** Usage problems first: no image, no target. */
async function argumentsOf(ctx: CommandContext): Promise<{ image: string; targets: string[] }> {
  const [image, ...targets] = ctx.positionals;
  if (!image || targets.length === 0) {
    const drives = await removableDrives().catch(() => []);
    throw new UsageError('bramble flash needs an IMAGE and at least one DEVICE', {
      hint: drives.length
        ? `removable drives now: ${drives.map(describeTarget).join('; ')}`
        : 'e.g. bramble flash out/<cluster>/<node>.img /dev/sdX (find the drive with `lsblk`)',
    });
  }
  return { image, targets };
}

/** Drives are overwritten only after a "yes" on a terminal, or with --yes. */
async function confirmDrives(ctx: CommandContext, targets: string[], confirm: Confirm, canAsk: boolean): Promise<void> {
  if (ctx.values.yes) return;
  const infos = await Promise.all(targets.map((t) => inspectTarget(t).catch(() => undefined)));
  const drives = infos.filter((i) => i?.kind === 'block-device');
  if (drives.length === 0) return;
  if (!canAsk) {
    throw new UsageError(`refusing to overwrite ${drives.map((d) => d!.path).join(', ')} without confirmation`, {
      hint: 'pass --yes to write without asking (there is no terminal to ask on)',
    });
  }
  ctx.stderr(`Everything on these drives will be overwritten:\n${drives.map((d) => `  ${describeTarget(d!)}`).join('\n')}\n`);
  if (!(await confirm('Type "yes" to continue: '))) {
    throw new UsageError('not confirmed: nothing was written', { hint: 'answer "yes", or pass --yes' });
  }
}

function summaryLines(results: ReadonlyMap<string, FlashResult>, verified: boolean): string[] {
  const lines: string[] = [];
  let ok = 0;
  for (const [path, r] of results) {
    if (r.ok) {
      ok++;
      lines.push(`✓ ${path}: ${formatBytes(r.bytesWritten)} written${verified ? ' and verified' : ''} in ${(r.ms / 1000).toFixed(1)} s`);
    } else {
      lines.push(`✗ ${path}: ${r.error.message}${r.error.hint ? `\n    hint: ${r.error.hint}` : ''}`);
    }
  }
  const failed = results.size - ok;
  lines.push(failed === 0 ? `${ok} of ${results.size} targets written` : `${ok} of ${results.size} targets written, ${failed} failed`);
  return lines;
}

/** The command, with the question asked through `confirm` (tests pass their own). */
export function makeFlashCommand(confirm: Confirm = askOnTerminal, canAskOverride?: boolean): Command {
  return async (ctx) => {
    const { image, targets } = await argumentsOf(ctx);
    const canAsk = canAskOverride ?? (ctx.interactive && !!process.stdin.isTTY);
    await confirmDrives(ctx, targets, confirm, canAsk);
    const verify = !ctx.values['no-verify'];

    let drawn = false;
    const onProgress = ctx.interactive
      ? (p: FlashProgress) => {
          ctx.stderr(`\r\x1b[2K${formatProgress(p)}`);
          drawn = true;
        }
      : (p: FlashProgress) => {
          // speed and eta ride along in --json output; the plain renderer shows bytes.
          const e: BrambleEvent & { speed: number; eta?: number } = { kind: 'progress', stage: 'flash', what: p.phase, done: p.bytes, total: p.total, unit: 'bytes', speed: Math.round(p.speed), eta: p.eta };
          ctx.events(e);
        };

    const started = performance.now();
    ctx.events({ kind: 'stage-started', stage: 'flash', title: `Flash ${image}` });
    let results;
    try {
      results = await flashImage({
        source: image,
        targets,
        bmapPath: ctx.values.bmap,
        verify,
        forceNonRemovable: !!ctx.values['force-non-removable'],
        signal: ctx.signal,
        onProgress,
        events: ctx.events,
      });
    } finally {
      if (drawn) ctx.stderr('\r\x1b[2K');
    }
    ctx.events({ kind: 'stage-finished', stage: 'flash', title: `Flash ${image}`, ms: Math.round(performance.now() - started) });

    if (ctx.values.json) {
      for (const [path, r] of results) {
        const e: BrambleEvent & Record<string, unknown> = r.ok
          ? { kind: 'info', message: `${path}: written`, target: path, ok: true, bytesWritten: r.bytesWritten, ms: r.ms }
          : { kind: 'warning', message: `${path}: ${r.error.message}`, target: path, ok: false, exitCode: r.error.exitCode, hint: r.error.hint };
        ctx.events(e);
      }
    } else {
      ctx.stdout(summaryLines(results, verify).join('\n') + '\n');
    }
    return worstExitCode(results);
  };
}

export const flashCommand: Command = makeFlashCommand();
