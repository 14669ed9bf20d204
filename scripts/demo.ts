// `npm run demo`: the main job, offline. Builds (or reuses) the fixture upstream — laid out like the
// real Flatcar/HypriotOS/dl.k8s.io trees, signed with a test key — serves it on 127.0.0.1, and runs
// the real `bramble fetch` and `bramble build` for examples/cluster.toml into out/demo/.
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureFixture } from './fixtures/build.ts';
import { startFixtureServer } from './fixtures/server.ts';
import { runMain } from './run-main.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const bramble = join(root, 'bin/bramble.mjs');
const log = (line: string) => process.stderr.write(`${line}\n`);

function runBramble(args: string[]): Promise<number> {
  log(`\n$ bramble ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bramble, ...args], { stdio: 'inherit', cwd: root });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 130 : 1)));
  });
}

async function main(): Promise<number> {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  log('demo: preparing the fixture upstream (built once, then cached under ~/.cache/bramble-test/)');
  const fixture = await ensureFixture({ signal: controller.signal, log });
  const server = await startFixtureServer({ root: fixture.root });
  try {
    const outDir = join(root, 'out');
    await mkdir(outDir, { recursive: true });
    const sources = join(outDir, 'demo-sources.toml');
    await writeFile(sources, server.sourcesToml);
    log(`demo: fixture upstream at ${server.url}; its [sources] block is in ${sources}`);
    const flatcar = ['-c', 'examples/cluster.toml', '--sources', sources, '--lock', join(outDir, 'demo.lock')];
    const hypriot = ['-c', 'examples/hypriot-rpi3.toml', '--sources', sources, '--lock', join(outDir, 'pi-cluster.lock')];
    for (const args of [
      ['plan', ...flatcar],
      ['fetch', ...flatcar],
      ['build', ...flatcar, '--out', outDir],
      ['inspect', join(outDir, 'demo')],
      // The legacy 32-bit HypriotOS path, as the ceil cluster ran it: three Raspberry Pi 3 SD cards.
      ['build', ...hypriot, '--out', outDir],
      ['inspect', join(outDir, 'pi-cluster', 'images', 'pi-1.img')],
    ]) {
      const code = await runBramble(args);
      if (code !== 0) return code;
    }
    log(`\ndemo: done. Flash an image with: sudo npx bramble flash out/demo/images/worker-1.img /dev/sdX`);
    return 0;
  } finally {
    await server.close();
  }
}

runMain('demo', main);
