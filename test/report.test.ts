// Plain progress lines: the registry mirror's storage tree is summarised, other artefacts are listed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { plainSink } from '../builders/report.ts';

test('plain output lists artefacts but counts the mirror tree in one line per stage', () => {
  const lines: string[] = [];
  const sink = plainSink((l) => lines.push(l.trimEnd()));
  sink({ kind: 'stage-started', stage: 'package', title: 'Write the artefacts' });
  for (const [path, size] of [['registry/docker/registry/v2/blobs/sha256/aa/aa/data', 1048576], ['registry/docker/registry/v2/repositories/x/_layers/sha256/aa/link', 71]] as const) {
    sink({ kind: 'artefact-written', path, size, sha256: '0'.repeat(64), secret: false });
  }
  sink({ kind: 'artefact-written', path: 'images/cp-1.img', size: 2097152, sha256: '0'.repeat(64), secret: true });
  sink({ kind: 'stage-finished', stage: 'package', title: 'Write the artefacts', ms: 1500 });
  assert.deepEqual(lines, [
    '• Write the artefacts',
    '  wrote images/cp-1.img (2.0 MiB) [secret]',
    '  wrote 2 files of the registry mirror under registry/ (1.0 MiB)',
    '✓ Write the artefacts (1.5 s)',
  ]);
});
