import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCountingUpstream, type CountingUpstream } from '../../testkit/counting-upstream.js';
import { freePort } from '../../testkit/pg.js';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';
import { startGuardProcess } from '../support/guard-process.js';

/**
 * Issue #20: one client connection never has more than one request in flight upstream.
 * Pipelined requests wait for their turn, in order, and are dropped, never forwarded, when
 * their client leaves first. Everything on real sockets on loopback.
 */
let upstream: CountingUpstream;
let guard: TestGuard;
let port: number;

// A guard and an upstream of its own for each test: what one test leaves open upstream
// (the defect under test) never counts against the next.
beforeEach(async () => {
  upstream = await startCountingUpstream();
  // Mode enforce, so that /reinit takes its own paths; its database is never needed here.
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: upstream.url,
    REINIT_GUARD_PG_URL: `postgres://guard:pw@127.0.0.1:${await freePort()}/coder`,
  });
  port = guard.guard.proxyAddress.port;
});

afterEach(async () => {
  await guard?.guard.close(100);
  await upstream?.close();
});

/** A client connection that sends raw bytes and collects what comes back. */
interface Client {
  socket: net.Socket;
  received(): string;
  /** Resolves once `check` holds on what arrived (or rejects when the connection closes first). */
  until(check: (got: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
  closed: Promise<void>;
}

function connect(bytes: string, to = port): Client {
  const socket = net.connect(to, '127.0.0.1');
  const chunks: Buffer[] = [];
  let got: string | null = null;
  const received = () => (got ??= Buffer.concat(chunks).toString('latin1'));
  const waiters = new Set<() => void>();
  socket.on('data', (c: Buffer) => {
    chunks.push(c);
    got = null;
    for (const w of [...waiters]) w();
  });
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  socket.once('close', () => {
    for (const w of [...waiters]) w();
  });
  socket.write(bytes);
  return {
    socket,
    received,
    closed,
    until(check, what, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(look);
          reject(new Error(`timed out waiting for ${what}; got: ${received().slice(-300)}`));
        }, timeoutMs);
        const look = () => {
          if (check(received())) {
            clearTimeout(timer);
            waiters.delete(look);
            resolve(received());
          } else if (socket.destroyed) {
            clearTimeout(timer);
            waiters.delete(look);
            reject(new Error(`connection closed before ${what}; got: ${received().slice(-300)}`));
          }
        };
        waiters.add(look);
        look();
      });
    },
  };
}

const get = (target: string, extra = '') => `GET ${target} HTTP/1.1\r\nHost: h\r\n${extra}\r\n`;
const count = (s: string, needle: string) => s.split(needle).length - 1;
/** Sends `n` GETs on one connection, each once the one before was answered. */
function oneByOne(to: number, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(to, '127.0.0.1');
    let answered = 0;
    socket.on('data', (c: Buffer) => {
      answered += count(c.toString('latin1'), ';');
      if (answered < n) socket.write(get(`/one/${answered}`));
      else {
        socket.destroy();
        resolve();
      }
    });
    socket.once('error', reject);
    socket.write(get('/one/0'));
  });
}
const statuses = (s: string) => [...s.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

describe('pipelined requests on one connection', () => {
  it('5,000 pipelined GETs: at most one in flight upstream, every one answered in order, memory flat', async () => {
    // The real entry point in a process of its own, so that its memory is its own.
    const proc = await startGuardProcess({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
    try {
      const procPort = Number(new URL(proc.url).port);
      const n = 5000;
      // The baseline: the same kind of requests sent one at a time, as ordinary clients do
      // (code compiled, pools, buffers and the heap grown to their churn).
      await oneByOne(procPort, 2000);
      upstream.reset();
      const before = proc.memory().peak;
      const client = connect(Array.from({ length: n }, (_, i) => get(`/p/${i}`)).join(''), procPort);
      const got = await client.until((s) => count(s, ';') >= n, `${n} answers`, 150_000);
      client.socket.destroy();
      const grew = proc.memory().peak - before;
      console.log(`pipelined ${n}: peak RSS grew past the baseline's ${(grew / 2 ** 20).toFixed(1)} MiB; upstream connections ${upstream.connections}`);
      expect(upstream.maxOpen).toBe(1);
      expect(upstream.connections).toBeLessThan(n / 20);
      expect(count(got, 'HTTP/1.1 200 OK')).toBe(n);
      const order = [...got.matchAll(/\/p\/(\d+);/g)].map((m) => Number(m[1]));
      expect(order).toEqual(Array.from({ length: n }, (_, i) => i));
      expect(upstream.arrived).toEqual(Array.from({ length: n }, (_, i) => `/p/${i}`));
      // Pipelining costs no more than the same requests one by one, give or take the heap's
      // own growth: holding every request (5,000 upstream connections, before requests waited
      // their turn) cost 52 MiB more on Node 20. The bound is wider than Node 20 needs (under
      // 16 MiB there) because Node 26's V8 lets its heap grow further before collecting: 24 to
      // 42 MiB past the baseline here. One request in flight, asserted above, is the rule itself.
      expect(grew).toBeLessThan(48 * 2 ** 20);
    } finally {
      await proc.stop();
    }
  }, 180_000);

  it('on the TLS listener too: 2,000 pipelined GETs, one in flight, each answered in order', async () => {
    const cert = (f: string) => new URL(`../../testkit/tls/${f}`, import.meta.url).pathname;
    const tlsGuard = await startTestGuard({
      REINIT_GUARD_UPSTREAM: upstream.url,
      REINIT_GUARD_MODE: 'off',
      REINIT_GUARD_TLS_LISTEN: '127.0.0.1:0',
      REINIT_GUARD_TLS_CERT_FILE: cert('server.pem'),
      REINIT_GUARD_TLS_KEY_FILE: cert('server.key'),
    });
    try {
      const n = 2000;
      const socket = tls.connect({ host: '127.0.0.1', port: tlsGuard.guard.tlsAddress!.port, ca: readFileSync(cert('ca.pem')), servername: 'localhost' });
      socket.on('error', () => {});
      let got = '';
      const all = new Promise<void>((resolve) => socket.on('data', (c: Buffer) => (got += c.toString('latin1')).split(';').length > n && resolve()));
      socket.write(Array.from({ length: n }, (_, i) => get(`/t/${i}`)).join(''));
      await all;
      socket.destroy();
      expect(upstream.maxOpen).toBe(1);
      // Serial requests reuse a pooled connection or two, where the fan-out opened one each.
      expect(upstream.connections).toBeLessThan(n / 20);
      expect([...got.matchAll(/\/t\/(\d+);/g)].map((m) => Number(m[1]))).toEqual(Array.from({ length: n }, (_, i) => i));
    } finally {
      await tlsGuard.guard.close(100);
    }
  }, 120_000);

  it('a client that leaves takes its pipelined requests with it: none stays open upstream, the waiting ones never go', async () => {
    const client = connect(get('/watch/1') + get('/watch/2') + get('/watch/3'));
    await client.until((s) => s.includes('tick'), 'the first stream to flow');
    client.socket.destroy();
    await waitFor(() => upstream.open === 0, 10_000, 'no request left open upstream');
    await waitFor(async () => (await guard.metric('coder_reinit_guard_upstream_inflight_requests')) === 0, 10_000, 'nothing in flight in the guard');
    expect(upstream.arrived).toEqual(['/watch/1']);
    expect(upstream.events).toEqual(['arrive GET /watch/1', 'abandon GET /watch/1']);
  });

  it('a client that leaves while its first request is answered: the waiting ones never go', async () => {
    const client = connect(get('/hold/200/a') + get('/b') + get('/c'));
    await waitFor(() => upstream.arrived.length > 0, 10_000, 'the first request upstream');
    client.socket.destroy();
    await waitFor(() => upstream.open === 0, 10_000, 'no request left open upstream');
    await waitFor(async () => (await guard.metric('coder_reinit_guard_upstream_inflight_requests')) === 0, 10_000, 'nothing in flight in the guard');
    expect(upstream.arrived).toEqual(['/hold/200/a']);
  });

  it('pipelined unsafe requests reach coderd one after the other: DELETE only once PUT was answered', async () => {
    const client = connect('PUT /hold/150/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcDELETE /2 HTTP/1.1\r\nHost: h\r\n\r\n');
    const got = await client.until((s) => count(s, ';') >= 2, 'two answers');
    client.socket.destroy();
    expect(upstream.events).toEqual(['arrive PUT /hold/150/1', 'answer PUT /hold/150/1', 'arrive DELETE /2', 'answer DELETE /2']);
    expect(got.indexOf('/hold/150/1;')).toBeLessThan(got.indexOf('/2;'));
  });

  it('HEAD then GET: each answered in turn', async () => {
    const client = connect(`HEAD /hold/50/a HTTP/1.1\r\nHost: h\r\n\r\n${get('/b')}`);
    const got = await client.until((s) => s.includes('/b;'), 'the GET answer');
    client.socket.destroy();
    expect(statuses(got)).toEqual([200, 200]);
    expect(upstream.events).toEqual(['arrive HEAD /hold/50/a', 'answer HEAD /hold/50/a', 'arrive GET /b', 'answer GET /b']);
  });

  it('an upgrade pipelined after a request waits for its answer: the 101 never overtakes it', async () => {
    const client = connect(get('/hold/150/a') + get('/ws', 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'));
    const got = await client.until((s) => s.includes('101 Switching'), 'the 101');
    client.socket.destroy();
    expect(statuses(got)).toEqual([200, 101]);
    expect(got.indexOf('/hold/150/a;')).toBeLessThan(got.indexOf('101 Switching'));
    expect(upstream.events).toEqual(['arrive GET /hold/150/a', 'answer GET /hold/150/a', 'upgrade GET /ws']);
  });

  it('an upgrade whose body is still arriving waits the same (Node 26 hands it over as a stream)', async () => {
    const client = connect(get('/hold/150/a') + 'GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhe');
    await waitFor(() => upstream.arrived.length > 0, 10_000, 'the first request upstream');
    client.socket.write('llo');
    const got = await client.until((s) => s.includes('101 Switching'), 'the 101');
    client.socket.destroy();
    expect(statuses(got)).toEqual([200, 101]);
    expect(upstream.events).toEqual(['arrive GET /hold/150/a', 'answer GET /hold/150/a', 'upgrade GET /ws']);
  });

  it('an upgrade to /reinit pipelined after a request is served as a plain request, after it', async () => {
    const reinit = '/api/v2/workspaceagents/me/reinit';
    const client = connect(get('/hold/150/a') + get(reinit, 'Connection: Upgrade\r\nUpgrade: websocket\r\n'));
    const got = await client.until((s) => s.includes(`${reinit};`), 'the /reinit answer');
    await client.closed;
    expect(statuses(got)).toEqual([200, 200]);
    expect(got.indexOf('/hold/150/a;')).toBeLessThan(got.indexOf(`${reinit};`));
    expect(upstream.events).toEqual(['arrive GET /hold/150/a', 'answer GET /hold/150/a', `arrive GET ${reinit}`, `answer GET ${reinit}`]);
  });

  it('an inspected /reinit?wait=true pipelined after a request goes upstream only after it', async () => {
    const reinit = '/api/v2/workspaceagents/me/reinit?wait=true';
    const client = connect(get('/hold/150/a') + get(reinit));
    const got = await client.until((s) => s.includes(`${reinit};`), 'the /reinit answer');
    client.socket.destroy();
    expect(got.indexOf('/hold/150/a;')).toBeLessThan(got.indexOf(`${reinit};`));
    expect(upstream.events.slice(0, 3)).toEqual(['arrive GET /hold/150/a', 'answer GET /hold/150/a', `arrive GET ${reinit}`]);
  });

  it('requests pipelined after a refusal that closes the connection are never forwarded', async () => {
    const refused = 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n';
    const client = connect(get('/hold/100/a') + refused + get('/b') + get('/c'));
    await client.closed;
    expect(statuses(client.received())).toEqual([200, 501]);
    expect(upstream.arrived).toEqual(['/hold/100/a']);
  });

  it('garbage after pipelined requests: each request answered, then 400, never inside an answer', async () => {
    const client = connect(get('/hold/50/a') + get('/hold/150/b') + 'GARBAGE\r\n\r\n');
    await client.closed;
    const got = client.received();
    expect(statuses(got)).toEqual([200, 200, 400]);
    expect(got.indexOf('/hold/50/a;')).toBeLessThan(got.indexOf('/hold/150/b;'));
    expect(got.indexOf('/hold/150/b;')).toBeLessThan(got.indexOf('400 Bad Request'));
    expect(upstream.arrived).toEqual(['/hold/50/a', '/hold/150/b']);
  });

  it('a bad chunk in a waiting request: that request is never forwarded, the one before is answered, then 400', async () => {
    const client = connect(get('/hold/100/a') + 'POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n');
    await client.closed;
    expect(statuses(client.received())).toEqual([200, 400]);
    expect(upstream.arrived).toEqual(['/hold/100/a']);
  });
});
