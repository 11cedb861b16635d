import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * An upgrade request with a Content-Length body (curl's h2c upgrade on a POST) whose answer
 * comes before the body is complete: coderd may switch protocols as soon as it has the
 * head. Everything the client sends after that, the rest of the body and then tunnel data,
 * must reach coderd through the tunnel unchanged: nothing lost, nothing twice, nothing
 * stalled. And the heads the tunnel writes itself keep coderd's bytes (obs-text).
 */
interface Upstream {
  port: number;
  /** Bytes received after the request head, by request target (one connection each). */
  after: Map<string, Buffer>;
  close(): Promise<void>;
}

const SWITCH = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\nX-Obs: caf\xe9\r\n\r\n';
const REFUSE = 'HTTP/1.1 400 Bad Request\r\nX-Obs: caf\xe9\r\nContent-Length: 2\r\n\r\nno';

/**
 * Answers each upgrade request once `bodyFirst` bytes of what follows its head arrived:
 * with a 101 (then echoes every later byte back), or, for `/refuse`, a 400.
 */
async function startUpstream(bodyFirst: number): Promise<Upstream> {
  const after = new Map<string, Buffer>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    let head = '';
    let target = '';
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      let rest = chunk;
      if (!head.endsWith('\r\n\r\n')) {
        const text = chunk.toString('latin1');
        const end = (head + text).indexOf('\r\n\r\n');
        if (end === -1) return void (head += text);
        rest = chunk.subarray(end + 4 - head.length);
        head = (head + text).slice(0, end + 4);
        target = head.split(' ')[1] ?? '';
      }
      const got = Buffer.concat([after.get(target) ?? Buffer.alloc(0), rest]);
      after.set(target, got);
      if (!answered && got.length >= bodyFirst) {
        answered = true;
        if (target === '/refuse') return void socket.end(REFUSE, 'latin1');
        socket.write(SWITCH, 'latin1');
        if (got.length > bodyFirst) socket.write(got.subarray(bodyFirst));
      } else if (answered) socket.write(rest);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    after,
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

let upstream: Upstream;
let guard: TestGuard;

beforeAll(async () => {
  // coderd answers once 5 of the body's 10 bytes arrived.
  upstream = await startUpstream(5);
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${upstream.port}`, REINIT_GUARD_MODE: 'off' });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await upstream?.close();
});

const request = (path: string) => `POST ${path} HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 10\r\n\r\n`;

describe('an upgrade answered before its body is complete', () => {
  it('the rest of the body and the tunnel data reach coderd through the tunnel, once, in order', async () => {
    const client = net.connect(guard.guard.proxyAddress.port, '127.0.0.1');
    let received = Buffer.alloc(0);
    client.on('data', (c: Buffer) => (received = Buffer.concat([received, c])));
    client.on('error', () => {});
    client.write(`${request('/ws')}01234`);
    await waitFor(() => received.includes('\r\n\r\n'), 5000, 'the 101');
    const head = received.subarray(0, received.indexOf('\r\n\r\n') + 4);
    client.write('56789');
    client.write('PING');
    await waitFor(() => upstream.after.get('/ws')?.toString('latin1') === '0123456789PING', 5000, 'the rest of the body and the tunnel data upstream');
    // coderd echoes what followed its 101: the rest of the body, then the tunnel data.
    await waitFor(() => received.subarray(head.length).toString('latin1') === '56789PING', 5000, 'the echo');
    client.destroy();
  });

  it("coderd's 101 head reaches the client byte for byte (an obs-text byte stays one byte)", async () => {
    const client = net.connect(guard.guard.proxyAddress.port, '127.0.0.1');
    let received = Buffer.alloc(0);
    client.on('data', (c: Buffer) => (received = Buffer.concat([received, c])));
    client.on('error', () => {});
    client.write(`${request('/whole')}0123456789`);
    await waitFor(() => received.includes('\r\n\r\n'), 5000, 'the 101');
    expect(received.subarray(0, received.indexOf('\r\n\r\n') + 4).toString('latin1')).toBe(SWITCH);
    client.destroy();
  });

  it('a refusal before the body is complete reaches the client with coderd bytes, then the connection closes', async () => {
    const client = net.connect(guard.guard.proxyAddress.port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let closed = false;
    client.on('data', (c: Buffer) => (received = Buffer.concat([received, c])));
    client.on('error', () => {});
    client.on('close', () => (closed = true));
    client.write(`${request('/refuse')}01234`);
    await waitFor(() => closed, 5000, 'the close');
    const text = received.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(text).toContain('\r\nX-Obs: caf\xe9\r\n');
    expect(text.endsWith('\r\n\r\nno')).toBe(true);
  });
});
