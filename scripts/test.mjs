#!/usr/bin/env node
// `npm test`: install missing host tools (or say how), type-check, then run every test file on
// Node's own runner. BRAMBLE_TEST_ONLY=regex limits the files; BRAMBLE_SKIP_BOOT=1 skips qemu boot tests.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const root = fileURLToPath(new URL('..', import.meta.url));
const step = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) process.exit(r.status ?? 1);
};

step('bash', ['scripts/host-tools.sh']);
step(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', '.']);

const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.ts')) files.push(relative(root, p));
  }
};
walk(join(root, 'test'));
const only = process.env.BRAMBLE_TEST_ONLY ? new RegExp(process.env.BRAMBLE_TEST_ONLY) : undefined;
const selected = only ? files.filter((f) => only.test(f)) : files;
const concurrency = String(Math.max(1, Math.min(os.availableParallelism?.() ?? 2, 4)));
step(process.execPath, ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, ...process.argv.slice(2), ...selected]);
