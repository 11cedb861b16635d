import http from 'node:http';
import net from 'node:net';
import { gzipSync } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { deterministicStream, sha256Stream } from './bytes.js';

/** What the echo upstream received for one request. */
export interface Received {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  bodySha256: string;
  bodyBytes: number;
}

/** A local upstream for pass-through tests: it reports what reached it, byte for byte. */
export interface EchoUpstream {
  url: string;
  port: number;
  /** Requests whose connection closed before the body finished (client aborts seen here). */
  aborted: number;
  /** Requests currently open. */
  open: number;
  /**
   * Every request, upgrade and CONNECT that ever arrived (cumulative: "never forwarded"),
   * but the guard's own polls of /api/v2/buildinfo.
   */
  received: number;
  /** Raw upgraded (DERP) and CONNECT sockets currently open on the upstream side. */
  tunnels: number;
  gzipBody: Buffer;
  close(): Promise<void>;
}

export const GZIP_JSON = gzipSync(Buffer.from(JSON.stringify({ hello: 'world', pad: 'x'.repeat(2000) })));

/**
 * Routes: `/echo*` (JSON of what arrived), `/download?bytes=N`, `/gzip`, `/sse?gaps=a,b,c`,
 * `/status?code=N&reason=R`, `/cookies`, `/empty?code=204|304`, `/broken` (dies mid-body),
 * `/hang` (never answers). Upgrades: WebSocket (echo, subprotocols), `Upgrade: DERP` (raw
 * echo), `/reject` (403 instead of 101). CONNECT: 200 then raw echo.
 */
export async function startEchoUpstream(opts: { port?: number } = {}): Promise<EchoUpstream> {
  const state = { aborted: 0, open: 0, tunnels: 0, received: 0 };
  const track = (socket: net.Socket | import('node:stream').Duplex) => {
    state.tunnels++;
    socket.once('close', () => state.tunnels--);
  };
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: true, handleProtocols: (protocols) => (protocols.has('coder-test.v2') ? 'coder-test.v2' : false) });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });

  const server = http.createServer(async (req, res) => {
    if (!req.url?.startsWith('/api/v2/buildinfo')) state.received++;
    state.open++;
    let finished = false;
    req.once('end', () => (finished = true));
    res.once('close', () => {
      state.open--;
      if (!finished) state.aborted++;
    });
    const url = new URL(req.url ?? '/', 'http://x');
    const q = url.searchParams;
    switch (url.pathname) {
      case '/download': {
        const n = Number(q.get('bytes'));
        req.resume();
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n });
        deterministicStream(n).pipe(res);
        return;
      }
      case '/gzip':
        req.resume();
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip', 'Content-Length': GZIP_JSON.length, Vary: 'Accept-Encoding' });
        return res.end(GZIP_JSON);
      case '/sse': {
        req.resume();
        res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
        res.flushHeaders();
        const gaps = (q.get('gaps') ?? '').split(',').map(Number);
        for (const [i, gap] of gaps.entries()) {
          await new Promise((r) => setTimeout(r, gap));
          res.write(`event: data\ndata: {"n":${i}}\n\n`);
        }
        return res.end();
      }
      case '/status':
        req.resume();
        res.statusCode = Number(q.get('code'));
        res.statusMessage = q.get('reason') ?? 'OK';
        return res.end('status body');
      case '/cookies':
        req.resume();
        res.writeHead(200, [['Set-Cookie', 'a=1; Path=/'], ['Set-Cookie', 'b=2; HttpOnly'], ['X-Multi', 'one'], ['X-Multi', 'two'], ['content-length', '2']].flat());
        return res.end('ok');
      case '/empty':
        req.resume();
        res.writeHead(Number(q.get('code')), { ETag: '"v1"' });
        return res.end();
      case '/broken':
        req.resume();
        res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
        res.write(Buffer.alloc(1000, 1));
        setTimeout(() => res.socket?.destroy(), 50);
        return;
      case '/early':
        // Answers in full before reading the body, as coderd's 404 to an upload does.
        res.writeHead(404, { 'Content-Type': 'application/json', 'Content-Length': 30 });
        return res.end('{"message":"Route not found."}');
      case '/hang':
        req.resume();
        return;
      default: {
        const body = await sha256Stream(req).catch(() => null);
        if (!body) return; // The client left mid-body.
        const received: Received = { method: req.method ?? '', url: req.url ?? '', httpVersion: req.httpVersion, rawHeaders: req.rawHeaders, bodySha256: body.sha256, bodyBytes: body.bytes };
        const json = JSON.stringify(received);
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
        return res.end(req.method === 'HEAD' ? undefined : json);
      }
    }
  });

  // Like coderd (Go takes up to 1 MB of headers), never drop header lines.
  server.maxHeadersCount = 0;

  server.on('upgrade', (req, socket, head) => {
    state.received++;
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/reject') {
      const body = '{"message":"Forbidden."}';
      socket.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      return;
    }
    if ((req.headers.upgrade ?? '').toLowerCase() === 'derp') {
      track(socket);
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n\r\n');
      // The server speaks first, as DERP does, then echoes whatever arrives (head included).
      socket.write('DERP-SERVER-HELLO');
      if (url.pathname === '/derp-bye') return void setTimeout(() => socket.destroy(), 30);
      if (head.length) socket.write(head);
      socket.pipe(socket);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  server.on('connect', (req, socket: net.Socket, head) => {
    state.received++;
    track(socket);
    socket.write(`HTTP/1.1 200 Connection Established\r\nX-Target: ${req.url}\r\n\r\n`);
    if (head.length) socket.write(head);
    socket.pipe(socket);
  });

  // Every socket, upgraded ones included (the HTTP server stops tracking those), so that
  // close() can kill coderd's side of everything at once, as a crash would.
  const allSockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    allSockets.add(s);
    s.once('close', () => allSockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(opts.port ?? 0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get aborted() {
      return state.aborted;
    },
    get open() {
      return state.open;
    },
    get received() {
      return state.received;
    },
    get tunnels() {
      return state.tunnels;
    },
    gzipBody: GZIP_JSON,
    async close() {
      wss.close();
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of allSockets) s.destroy();
      await closed;
    },
  };
}
