// The warning a `docker-daemon:` extra image gets in a cluster of several arches: the daemon exports
// one platform (the export already refuses one no node has), so the nodes of the other arches are
// named, with the image and its platform. Table-driven over the decision function.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { daemonImageArchWarning } from '../builders/registry-content.ts';
import type { Arch } from '../builders/spec.ts';

const ENTRY = 'docker-daemon:myapp:1.0';
const nodes = (...list: Array<[string, Arch]>) => list.map(([name, arch]) => ({ name, arch }));
const amd64 = { os: 'linux', architecture: 'amd64' };
const arm64 = { os: 'linux', architecture: 'arm64' };
const armv7 = { os: 'linux', architecture: 'arm', variant: 'v7' };

const cases: Array<{ name: string; platforms: Array<{ os: string; architecture: string; variant?: string }>; nodes: Array<{ name: string; arch: Arch }>; expect: RegExp | undefined }> = [
  { name: 'one arch, the image matches: no warning', platforms: [amd64], nodes: nodes(['cp-1', 'amd64'], ['w-1', 'amd64']), expect: undefined },
  { name: 'amd64 image, arm64 workers: names the image, its platform and those nodes', platforms: [amd64], nodes: nodes(['cp-1', 'amd64'], ['w-2', 'arm64'], ['w-1', 'arm64']), expect: /^registry\.extra_images "docker-daemon:myapp:1\.0" is linux\/amd64 only: nodes w-1, w-2 \(linux\/arm64\) cannot run it; / },
  { name: 'arm/v7 nodes are named with their platform', platforms: [arm64], nodes: nodes(['cp-1', 'arm64'], ['pi3', 'arm'], ['x', 'amd64']), expect: /is linux\/arm64 only: node x \(linux\/amd64\), node pi3 \(linux\/arm\/v7\) cannot run it/ },
  { name: 'an index covering every arch (containerd image store): no warning', platforms: [amd64, arm64], nodes: nodes(['cp-1', 'amd64'], ['w-1', 'arm64']), expect: undefined },
  { name: 'an index covering some: the rest named', platforms: [amd64, arm64], nodes: nodes(['cp-1', 'amd64'], ['w-1', 'arm64'], ['pi3', 'arm']), expect: /is linux\/amd64, linux\/arm64 only: node pi3 \(linux\/arm\/v7\) cannot run it/ },
  { name: 'an arm/v6 image does not run on arm/v7 nodes', platforms: [{ ...armv7, variant: 'v6' }, amd64], nodes: nodes(['cp-1', 'amd64'], ['pi3', 'arm']), expect: /node pi3 \(linux\/arm\/v7\) cannot run it/ },
];

for (const c of cases) {
  test(c.name, () => {
    const message = daemonImageArchWarning(ENTRY, c.platforms, c.nodes);
    if (c.expect === undefined) assert.equal(message, undefined);
    else {
      assert.match(message ?? '', c.expect);
      assert.match(message!, /build it for every node platform.*kubernetes\.io\/arch/);
    }
  });
}
