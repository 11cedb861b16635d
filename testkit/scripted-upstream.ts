import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** A raw upstream that answers each request with bytes a test chose, however malformed. */
export interface ScriptedUpstream {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** The well-formed answer to `GET /ok`, for checking that the proxy still works. */
export const OK_RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngood';

/**
 * A scripted answer: its bytes, and what becomes of the connection after it: `keep` it open
 * (a well-framed answer), `end` it at once (an answer delimited by the close), or close it
 * `later` (anything else; a bare Buffer means `later`).
 */
export type Scripted = Buffer | { bytes: Buffer; then: 'keep' | 'end' | 'later' } | null;

/**
 * Starts an upstream speaking raw bytes. Each request head (requests are bodiless) is
 * answered with `script(target)`; `/ok` with {@link OK_RESPONSE}. After a well-framed answer
 * the connection stays open, so a proxy reuses it for its next request; after an odd one,
 * it is closed `closeAfterMs` later, so a response that never ends cannot hang the test.
 */
export async function startScriptedUpstream(script: (target: string) => Scripted, closeAfterMs = 40): Promise<ScriptedUpstream> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = '';
    socket.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end !== -1; end = buf.indexOf('\r\n\r\n')) {
        const target = buf.slice(0, end).split(' ')[1] ?? '/';
        buf = buf.slice(end + 4);
        if (target === '/ok') {
          socket.write(OK_RESPONSE);
          continue;
        }
        const answer = script(target);
        const { bytes, then } = Buffer.isBuffer(answer) ? { bytes: answer, then: 'later' } : (answer ?? { bytes: null, then: 'later' });
        if (bytes) socket.write(bytes);
        if (then === 'end') socket.end();
        else if (then === 'later') setTimeout(() => socket.destroy(), closeAfterMs).unref();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
