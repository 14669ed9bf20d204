// What every qemu boot test shares: the BRAMBLE_SKIP_BOOT switch, a generous timeout (TCG on a loaded
// 2-core machine), a failure message with the command line and the end of the serial console, and a
// `test` wrapper that skips when boots are switched off.
import { test, type TestContext } from 'node:test';
import type { BootResult } from './qemu.ts';

/** Why boot tests are skipped, or undefined when they run. */
export const skipBoot = process.env.BRAMBLE_SKIP_BOOT === '1' ? 'BRAMBLE_SKIP_BOOT=1' : undefined;

/** One boot normally takes 10-60 s; this only stops a hung qemu. */
export const BOOT_TIMEOUT_MS = 10 * 60_000;

export function explainBoot(r: BootResult): string {
  return `timedOut=${r.timedOut}\n${r.command.join(' ')}\n--- serial (last 3000 chars) ---\n${r.serial.slice(-3000)}`;
}

/** A test that boots qemu: skipped with BRAMBLE_SKIP_BOOT=1; `extraMs` covers the work around the boot. */
export function bootTest(name: string, fn: (t: TestContext) => Promise<void>, extraMs = 60_000) {
  test(name, { timeout: BOOT_TIMEOUT_MS + extraMs }, async (t) => {
    if (skipBoot) return t.skip(skipBoot);
    await fn(t);
  });
}
