import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** One request as it arrived upstream, parsed by Node's own (strict) HTTP parser. */
export interface Recorded {
  /** Which upstream connection carried it (1, 2, ...). */
  connection: number;
  kind: 'request' | 'upgrade' | 'connect';
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  /** Body bytes read (for upgrades and CONNECT: the bytes that came with the head). */
  bodyBytes: number;
  bodySha256: string;
}

/** A recording upstream for adversarial tests: it counts what a real parser sees arrive. */
export interface RecordingUpstream {
  url: string;
  port: number;
  /** Every request that arrived, in order. */
  readonly requests: readonly Recorded[];
  /** Bytes that arrived and did not parse as a request (unframed bodies, garbage). */
  readonly parseErrors: number;
  close(): Promise<void>;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * Starts an upstream that records every request it parses and answers each one
 * `200 {"n":<index>}`; upgrades get a 101 and CONNECT a 200, then the socket is closed.
 * A body that reached it unframed shows up as an extra request or a parse error: the
 * evidence that a proxy forwarded more requests than it answered.
 */
export async function startRecordingUpstream(): Promise<RecordingUpstream> {
  const requests: Recorded[] = [];
  let parseErrors = 0;
  let connections = 0;
  const ids = new WeakMap<Duplex, number>();
  const sockets = new Set<Socket>();
  const record = (kind: Recorded['kind'], req: http.IncomingMessage, body: Buffer) => {
    requests.push({
      connection: ids.get(req.socket) ?? 0,
      kind,
      method: req.method ?? '',
      url: req.url ?? '',
      httpVersion: req.httpVersion,
      rawHeaders: req.rawHeaders,
      bodyBytes: body.length,
      bodySha256: sha(body),
    });
    return requests.length;
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const n = record('request', req, Buffer.concat(chunks));
      const json = JSON.stringify({ n });
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
      res.end(req.method === 'HEAD' ? undefined : json);
    });
  });
  server.maxHeadersCount = 0;
  server.on('connection', (s: Socket) => {
    ids.set(s, ++connections);
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => {
    parseErrors++;
    socket.destroy();
  });
  server.on('upgrade', (req, socket, head) => {
    record('upgrade', req, head);
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade ?? ''}\r\nConnection: Upgrade\r\n\r\n`);
  });
  server.on('connect', (req, socket, head) => {
    record('connect', req, head);
    socket.end('HTTP/1.1 200 Connection Established\r\n\r\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get requests() {
      return requests;
    },
    get parseErrors() {
      return parseErrors;
    },
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
