// A loopback stand-in for the part of GitHub's REST API that `bramble publish --to github://` uses
// (this machine cannot reach GitHub): get a release by tag, create a release, list its assets
// (paginated), delete an asset, upload an asset to the release's upload_url (?name=&label=), and
// download an asset. It checks the Bearer token and records every request, so tests can see what was
// sent. It implements the endpoints as documented, not GitHub's behaviour beyond them.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StandInAsset {
  id: number;
  name: string;
  label: string | null;
  size: number;
  state: 'uploaded';
  bytes: Buffer;
}

export interface StandInRelease {
  id: number;
  tag_name: string;
  name: string;
  body: string;
  assets: StandInAsset[];
}

export interface GithubStandIn {
  /** API base URL, e.g. http://127.0.0.1:PORT/api */
  api: string;
  releases: StandInRelease[];
  requests: Array<{ method: string; path: string }>;
  close(): Promise<void>;
}

const PER_PAGE_MAX = 100;

export async function startGithubStandIn(o: { owner: string; repo: string; token: string }): Promise<GithubStandIn> {
  const releases: StandInRelease[] = [];
  const requests: Array<{ method: string; path: string }> = [];
  let nextId = 1;
  let base = '';
  const repoPrefix = `/api/repos/${o.owner}/${o.repo}`;

  const send = (res: ServerResponse, status: number, body?: unknown) => {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  const view = (r: StandInRelease) => ({
    id: r.id,
    tag_name: r.tag_name,
    name: r.name,
    body: r.body,
    html_url: `${base}/${o.owner}/${o.repo}/releases/tag/${r.tag_name}`,
    upload_url: `${base}/uploads/repos/${o.owner}/${o.repo}/releases/${r.id}/assets{?name,label}`,
    assets: r.assets.map(assetView),
  });
  const assetView = (a: StandInAsset) => ({
    id: a.id,
    name: a.name,
    label: a.label,
    size: a.size,
    state: a.state,
    browser_download_url: `${base}/download/${a.id}`,
  });
  const readBody = async (req: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  };

  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', base);
    requests.push({ method: req.method ?? '', path: `${url.pathname}${url.search}` });
    if (url.pathname.startsWith('/download/')) {
      const asset = releases.flatMap((r) => r.assets).find((a) => a.id === Number(url.pathname.split('/')[2]));
      if (!asset) return send(res, 404, { message: 'Not Found' });
      res.writeHead(200, { 'content-length': asset.size });
      return res.end(asset.bytes);
    }
    if (req.headers.authorization !== `Bearer ${o.token}`) return send(res, 401, { message: 'Bad credentials' });
    let m: RegExpExecArray | null;
    if (req.method === 'GET' && (m = new RegExp(`^${repoPrefix}/releases/tags/(.+)$`).exec(url.pathname))) {
      const r = releases.find((x) => x.tag_name === decodeURIComponent(m![1]!));
      return r ? send(res, 200, view(r)) : send(res, 404, { message: 'Not Found' });
    }
    if (req.method === 'POST' && url.pathname === `${repoPrefix}/releases`) {
      const body = JSON.parse((await readBody(req)).toString('utf8')) as { tag_name?: string; name?: string; body?: string };
      if (!body.tag_name) return send(res, 422, { message: 'Validation Failed' });
      if (releases.some((x) => x.tag_name === body.tag_name)) return send(res, 422, { message: 'Validation Failed: already_exists' });
      const r: StandInRelease = { id: nextId++, tag_name: body.tag_name, name: body.name ?? body.tag_name, body: body.body ?? '', assets: [] };
      releases.push(r);
      return send(res, 201, view(r));
    }
    if (req.method === 'GET' && (m = new RegExp(`^${repoPrefix}/releases/(\\d+)/assets$`).exec(url.pathname))) {
      const r = releases.find((x) => x.id === Number(m![1]));
      if (!r) return send(res, 404, { message: 'Not Found' });
      const perPage = Math.min(PER_PAGE_MAX, Number(url.searchParams.get('per_page') ?? 30));
      const page = Number(url.searchParams.get('page') ?? 1);
      return send(res, 200, r.assets.slice((page - 1) * perPage, page * perPage).map(assetView));
    }
    if (req.method === 'DELETE' && (m = new RegExp(`^${repoPrefix}/releases/assets/(\\d+)$`).exec(url.pathname))) {
      for (const r of releases) {
        const i = r.assets.findIndex((a) => a.id === Number(m![1]));
        if (i >= 0) {
          r.assets.splice(i, 1);
          res.writeHead(204);
          return res.end();
        }
      }
      return send(res, 404, { message: 'Not Found' });
    }
    if (req.method === 'POST' && (m = new RegExp(`^/uploads/repos/${o.owner}/${o.repo}/releases/(\\d+)/assets$`).exec(url.pathname))) {
      const r = releases.find((x) => x.id === Number(m![1]));
      if (!r) return send(res, 404, { message: 'Not Found' });
      const name = url.searchParams.get('name');
      if (!name) return send(res, 422, { message: 'name is required' });
      if (r.assets.some((a) => a.name === name)) return send(res, 422, { message: 'Validation Failed: already_exists' });
      const bytes = await readBody(req);
      if (Number(req.headers['content-length']) !== bytes.length) return send(res, 400, { message: 'Content-Length mismatch' });
      const a: StandInAsset = { id: nextId++, name, label: url.searchParams.get('label'), size: bytes.length, state: 'uploaded', bytes };
      r.assets.push(a);
      return send(res, 201, assetView(a));
    }
    return send(res, 404, { message: 'Not Found' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    api: `${base}/api`,
    releases,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
