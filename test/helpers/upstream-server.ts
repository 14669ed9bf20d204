// A small real HTTP server on 127.0.0.1 for fetch tests: serves in-memory files with Range/If-Range
// support, logs every request, and can misbehave on purpose (close the connection early, stall).
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface LoggedRequest {
  method: string;
  path: string;
  range?: string;
  ifRange?: string;
  status: number;
}

export interface Misbehaviour {
  /** Send the full Content-Length but only this many body bytes, then close the connection. */
  truncateAt?: number;
  /** Send this many bytes, then stop sending until the client aborts or dropStalled() is called. */
  stallAt?: number;
  /** Answer Range requests with the whole file (200), like a server without range support. */
  ignoreRange?: boolean;
}

/** A fixed Last-Modified, so If-Range validators are stable. */
const LAST_MODIFIED = 'Tue, 01 Jul 2025 00:00:00 GMT';

export class UpstreamServer {
  readonly files = new Map<string, Buffer>();
  readonly log: LoggedRequest[] = [];
  /** Per path: one Misbehaviour for every request, or a list used up one per request (then normal). */
  readonly misbehave = new Map<string, Misbehaviour | Misbehaviour[]>();
  private server?: Server;
  private sockets = new Set<Socket>();
  private stalled = new Set<ServerResponse>();

  get base(): string {
    const addr = this.server?.address() as AddressInfo | undefined;
    if (!addr) throw new Error('server not started');
    return `http://127.0.0.1:${addr.port}`;
  }

  url(path: string): string {
    return `${this.base}${path}`;
  }

  /** Requests whose path is `path` (or ends with it). */
  requestsFor(path: string): LoggedRequest[] {
    return this.log.filter((r) => r.path === path || r.path.endsWith(path));
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return this;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  /** Close the connections of stalled responses: the client sees the body end early. */
  dropStalled(): void {
    for (const res of this.stalled) res.socket?.destroy();
    this.stalled.clear();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const entry: LoggedRequest = {
      method: req.method ?? 'GET',
      path,
      range: req.headers.range,
      ifRange: req.headers['if-range'] as string | undefined,
      status: 0,
    };
    this.log.push(entry);
    const body = this.files.get(path);
    if (!body) {
      entry.status = 404;
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    const etag = `"${createHash('sha256').update(body).digest('hex').slice(0, 16)}"`;
    const rule = this.misbehave.get(path);
    const bad = Array.isArray(rule) ? rule.shift() : rule;
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(entry.range ?? '');
    const validatorOk = !entry.ifRange || entry.ifRange === etag || entry.ifRange === LAST_MODIFIED;
    const headers: Record<string, string | number> = {
      'content-type': 'application/octet-stream',
      'accept-ranges': 'bytes',
      etag,
      'last-modified': LAST_MODIFIED,
    };
    if (range && validatorOk && !bad?.ignoreRange) {
      start = Number(range[1]);
      if (start >= body.length) {
        entry.status = 416;
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
        return;
      }
      entry.status = 206;
      headers['content-range'] = `bytes ${start}-${body.length - 1}/${body.length}`;
    } else {
      entry.status = 200;
    }
    const part = body.subarray(start);
    headers['content-length'] = part.length;
    res.writeHead(entry.status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    if (bad?.truncateAt !== undefined) {
      res.write(part.subarray(0, bad.truncateAt), () => res.socket?.destroy());
      return;
    }
    if (bad?.stallAt !== undefined) {
      this.stalled.add(res);
      res.write(part.subarray(0, bad.stallAt));
      return;
    }
    res.end(part);
  }
}
