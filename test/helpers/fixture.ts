// The fixture upstream for tests: built once per machine (cached under ~/.cache/bramble-test), served
// once per test process on an ephemeral 127.0.0.1 port. The server does not keep the process alive.
import { ensureFixture, type FixtureTree } from '../../scripts/fixtures/build.ts';
import { startFixtureServer, type FixtureServer } from '../../scripts/fixtures/server.ts';
import type { FixtureBoard, WrittenFlatcarRelease } from '../../scripts/fixtures/flatcar-release.ts';
import { join } from 'node:path';
import { parseSources } from '../../builders/load/sources.ts';
import { defaultSources, type Sources } from '../../builders/spec.ts';

export type { FixtureTree, FixtureServer, FixtureBoard, WrittenFlatcarRelease };

export interface Fixture extends FixtureTree {
  server: FixtureServer;
  /** server.url */
  url: string;
  /** server.sourcesToml: the [sources] block pointing bramble at the server. */
  sourcesToml: string;
}

let tree: Promise<FixtureTree> | undefined;
let served: Promise<Fixture> | undefined;

/** The fixture tree only, without a server. */
export function getFixtureTree(): Promise<FixtureTree> {
  tree ??= ensureFixture({ log: process.env.BRAMBLE_FIXTURE_VERBOSE ? (l) => process.stderr.write(`${l}\n`) : undefined });
  return tree;
}

/** The fixture tree plus a server for it (one per process; tests share its request log and faults). */
export function getFixture(): Promise<Fixture> {
  served ??= (async () => {
    const t = await getFixtureTree();
    const server = await startFixtureServer({ root: t.root, unref: true });
    return { ...t, server, url: server.url, sourcesToml: server.sourcesToml };
  })();
  return served;
}

/** A Flatcar release of the fixture; `version` defaults to the channel's current one. */
export function flatcarRelease(f: FixtureTree, channel: 'stable' | 'lts', board: FixtureBoard, version?: string): WrittenFlatcarRelease {
  const r = f.flatcar.find((x) => x.channel === channel && x.board === board && (version ? x.version === version : x.current));
  if (!r) throw new Error(`the fixture has no Flatcar ${channel} ${board} ${version ?? 'current'}`);
  return r;
}

/** The Sources the fixture's [sources] block gives, read by bramble's own loader (for tests that build a ClusterSpec by hand). */
export function fixtureSources(f: Fixture): Sources {
  return { ...defaultSources, ...parseSources(f.sourcesToml, join(f.root, 'sources.toml')) };
}
