// Listing what a writer left in a directory tree.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Every regular file under `dir` (recursively), as a path joined to `dir`, sorted. */
export async function filesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesIn(p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}
