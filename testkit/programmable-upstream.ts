import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** One request as a {@link ProgrammableUpstream} read it off its connection. */
export interface UpstreamRequest {
  method: string;
  target: string;
  /** The request head as received (request line and header lines, no final CRLF CRLF). */
  head: string;
  /** The body, read by its Content-Length (the only framing this upstream reads). */
  body: Buffer;
  /** Which connection (0, 1, ...) and which request on it (0, 1, ...). */
  conn: number;
  index: number;
}

/** What the test does with a request: writes to, ends, resets the connection, or not. */
export type UpstreamHandler = (req: UpstreamRequest, socket: net.Socket) => void;

/** A raw upstream whose every answer a test writes by hand, on the request's own socket. */
export interface ProgrammableUpstream {
  url: string;
  port: number;
  /** Every request read, in order of arrival. */
  requests: UpstreamRequest[];
  /** Connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

/**
 * Starts an upstream that parses request heads (and Content-Length bodies) and hands each
 * request to `handler` with its raw socket: the test decides the bytes, when the
 * connection closes and whether it is reset. Requests on one connection are handled in
 * order, each once its body is complete.
 */
export async function startProgrammableUpstream(handler: UpstreamHandler): Promise<ProgrammableUpstream> {
  const sockets = new Set<net.Socket>();
  const requests: UpstreamRequest[] = [];
  let conns = 0;
  const server = net.createServer((socket) => {
    const conn = conns++;
    let index = 0;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buf.subarray(0, end).toString('latin1');
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + length) return;
        const [method = '', target = ''] = head.split(' ');
        const req: UpstreamRequest = { method, target, head, body: buf.subarray(end + 4, end + 4 + length), conn, index: index++ };
        buf = buf.subarray(end + 4 + length);
        requests.push(req);
        handler(req, socket);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    connections: () => conns,
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
