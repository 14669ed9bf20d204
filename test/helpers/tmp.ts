// A temp directory removed when the test that made it ends.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function tempDir(t: { after: (fn: () => Promise<void>) => void }, name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `bramble-${name}-`));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
