// A release as a GitHub release's assets, through the REST API: the release for the tag is fetched or
// created, its assets listed, and each file uploaded unless an asset with the same name, size and
// digest label (`sha256:<hex>`, set at upload) is already there; a changed asset is deleted and sent
// again, an asset that is not part of the release is deleted. Running it twice uploads nothing the
// second time. The files go up in order with SHA256SUMS and its signature last, so a reader never
// sees a new signature over files not yet replaced.
//
// Tested only against a loopback stand-in implementing these endpoints (test/helpers/github-stand-in.ts):
// this machine cannot reach GitHub. The API base is $BRAMBLE_GITHUB_API or --github-api.
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { HostError, InputError, InterruptedError } from './errors.ts';
import type { EventSink } from './events.ts';
import { releaseNames, type ReleaseManifest } from './publish-format.ts';
import { readdir, stat } from 'node:fs/promises';
import { sha256File } from './output.ts';

export interface GithubDestination {
  kind: 'github';
  owner: string;
  repo: string;
  tag: string;
}

export const DEFAULT_GITHUB_API = 'https://api.github.com';
const ASSETS_PER_PAGE = 100;

interface GithubRelease {
  id: number;
  upload_url: string;
  html_url?: string;
}

interface GithubAsset {
  id: number;
  name: string;
  size: number;
  label: string | null;
  state: string;
}

class GithubApi {
  constructor(
    private readonly base: string,
    private readonly token: string,
    private readonly signal: AbortSignal,
  ) {}

  async call(method: string, url: string, init: { json?: unknown; body?: () => Readable; headers?: Record<string, string>; ok: number[] }): Promise<Response> {
    const headers: Record<string, string> = {
      accept: 'application/vnd.github+json',
      authorization: `Bearer ${this.token}`,
      'x-github-api-version': '2022-11-28',
      'user-agent': 'bramble',
      ...init.headers,
    };
    const request: RequestInit & { duplex?: 'half' } = { method, headers, signal: this.signal };
    if (init.json !== undefined) {
      headers['content-type'] = 'application/json';
      request.body = JSON.stringify(init.json);
    } else if (init.body) {
      request.body = Readable.toWeb(init.body()) as ReadableStream;
      request.duplex = 'half';
    }
    let res: Response;
    try {
      res = await fetch(new URL(url, `${this.base}/`), request);
    } catch (e) {
      if (this.signal.aborted) throw new InterruptedError();
      throw new HostError(`cannot reach ${new URL(url, `${this.base}/`).host}: ${(e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : (e as Error).message}`, {
        hint: 'check the network, or $BRAMBLE_GITHUB_API / --github-api',
      });
    }
    if (!init.ok.includes(res.status)) {
      const text = await res.text().catch(() => '');
      let message = text.slice(0, 300);
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? message;
      } catch {
        /* not JSON */
      }
      const what = `GitHub ${method} ${new URL(url, `${this.base}/`).pathname}: HTTP ${res.status}${message ? ` ${message}` : ''}`;
      if (res.status === 401 || res.status === 403) throw new InputError(what, { hint: 'GITHUB_TOKEN must be a token with write access to the repository\'s contents (releases)' });
      throw new HostError(what, { hint: 'try again; a second run uploads only what is missing' });
    }
    return res;
  }

  async json<T>(method: string, url: string, init: { json?: unknown; ok: number[] }): Promise<{ status: number; body: T }> {
    const res = await this.call(method, url, init);
    return { status: res.status, body: (res.status === 404 ? undefined : await res.json()) as T };
  }
}

/** Upload order: the files, then manifest.json, then SHA256SUMS, then its signature. */
function uploadOrder(names: string[]): string[] {
  const last = [releaseNames.manifest, releaseNames.checksums, releaseNames.signature] as string[];
  return [...names.filter((n) => !last.includes(n)).sort(), ...last.filter((n) => names.includes(n))];
}

export async function publishToGithub(
  stageDir: string,
  m: ReleaseManifest,
  dest: GithubDestination,
  o: { api?: string; token: string; signal: AbortSignal; events: EventSink },
): Promise<{ location: string; uploaded: string[]; skipped: string[] }> {
  const api = new GithubApi((o.api ?? DEFAULT_GITHUB_API).replace(/\/+$/, ''), o.token, o.signal);
  const repoPath = `repos/${encodeURIComponent(dest.owner)}/${encodeURIComponent(dest.repo)}`;

  let release = (await api.json<GithubRelease>('GET', `${repoPath}/releases/tags/${encodeURIComponent(dest.tag)}`, { ok: [200, 404] })).body;
  if (!release) {
    const versions = Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(', ');
    release = (
      await api.json<GithubRelease>('POST', `${repoPath}/releases`, {
        json: { tag_name: dest.tag, name: dest.tag, body: `bramble release of cluster ${m.cluster}${versions ? ` (${versions})` : ''}. Verify: see SHA256SUMS and SHA256SUMS.asc.` },
        ok: [201],
      })
    ).body;
    o.events({ kind: 'info', message: `created GitHub release ${dest.tag}` });
  }

  const assets: GithubAsset[] = [];
  for (let page = 1; ; page++) {
    const batch = (await api.json<GithubAsset[]>('GET', `${repoPath}/releases/${release.id}/assets?per_page=${ASSETS_PER_PAGE}&page=${page}`, { ok: [200] })).body;
    assets.push(...batch);
    if (batch.length < ASSETS_PER_PAGE) break;
  }

  const names = await readdir(stageDir);
  const uploadUrl = release.upload_url.replace(/\{[^}]*\}$/, '');
  const uploaded: string[] = [];
  const skipped: string[] = [];
  for (const [i, name] of uploadOrder(names).entries()) {
    const file = join(stageDir, name);
    const size = (await stat(file)).size;
    const sha256 = m.files.find((f) => f.name === name)?.sha256 ?? (await sha256File(file, o.signal));
    const label = `sha256:${sha256}`;
    const existing = assets.find((a) => a.name === name);
    if (existing && existing.size === size && existing.label === label && existing.state === 'uploaded') {
      skipped.push(name);
      continue;
    }
    if (existing) await api.call('DELETE', `${repoPath}/releases/assets/${existing.id}`, { ok: [204] });
    o.events({ kind: 'progress', stage: 'publish', what: `upload ${name}`, done: i, total: names.length, unit: 'items' });
    const url = new URL(uploadUrl);
    url.searchParams.set('name', name);
    url.searchParams.set('label', label);
    await api.call('POST', url.href, {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body: () => createReadStream(file, { highWaterMark: 1 << 20 }),
      ok: [201],
    });
    uploaded.push(name);
  }
  for (const a of assets) {
    if (names.includes(a.name)) continue;
    await api.call('DELETE', `${repoPath}/releases/assets/${a.id}`, { ok: [204] });
    o.events({ kind: 'info', message: `removed asset ${a.name}: it is not part of this release` });
  }
  return { location: release.html_url ?? `${dest.owner}/${dest.repo}@${dest.tag}`, uploaded, skipped };
}
