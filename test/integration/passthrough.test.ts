import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { Received } from '../../testkit/echo-upstream.js';
import { startEchoUpstream, type EchoUpstream } from '../../testkit/echo-upstream.js';
import { parseResponse, rawExchange } from '../../testkit/raw-http.js';
import { freePort } from '../../testkit/pg.js';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';

let upstream: EchoUpstream;
let guard: TestGuard;
let port: number;
const extra: TestGuard[] = [];

beforeAll(async () => {
  upstream = await startEchoUpstream();
  // Mode off: these tests are about pass-through; the reinit path has its own suites.
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off', REINIT_GUARD_HEADER_TIMEOUT: '500ms' });
  port = guard.guard.proxyAddress.port;
});

afterAll(async () => {
  for (const g of [guard, ...extra]) await g?.guard.close(100);
  await upstream?.close();
});

/**
 * The upstream hop (undici) writes the three header lines it manages itself, `host`,
 * `content-length` and `transfer-encoding`, in lowercase; their values are the client's and
 * the guard's framing. Field names are case-insensitive (RFC 9110 §5.1) and coderd's Go
 * canonicalizes them, so these three are compared by name as Go reads them. Every other
 * header keeps its exact case, order and repeats (asserted below).
 */
const MANAGED_BY_HOP: Record<string, string> = { host: 'Host', 'content-length': 'Content-Length', 'transfer-encoding': 'Transfer-Encoding' };
const pairs = (raw: string[]) => {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < raw.length; i += 2) out.push([MANAGED_BY_HOP[raw[i]!] ?? raw[i]!, raw[i + 1]!]);
  return out;
};
/** Sends raw request bytes through the guard; returns the response and what coderd received. */
async function viaGuard(request: string, p = port) {
  const res = parseResponse(await rawExchange(p, request));
  return { res, received: JSON.parse(res.body.toString()) as Received };
}

describe('request headers reaching coderd', () => {
  const request = [
    'GET /echo?a=%2F&b=c;d&&e=%zz&f=+ HTTP/1.1',
    'Host: coder.example.com',
    'Connection: close, X-Drop-Me',
    'X-Drop-Me: 1',
    'Keep-Alive: timeout=5',
    'Proxy-Connection: keep-alive',
    'TE: trailers',
    'Upgrade: h2c',
    'X-Forwarded-For: 203.0.113.7',
    'Coder-Session-Token: 5f3c8a7e-0000-4000-8000-000000000001',
    'Cookie: a=1',
    'Cookie: b=2',
    'X-Repeat: 1',
    'X-Repeat: 2',
    'x-MiXeD-CaSe: v',
    '',
    '',
  ].join('\r\n');

  it.each<[string, (h: Array<[string, string]>) => unknown, unknown]>([
    ['Host is the client Host', (h) => h.filter(([k]) => k === 'Host'), [['Host', 'coder.example.com']]],
    ['hop-by-hop headers are gone', (h) => h.filter(([k]) => /^(keep-alive|proxy-connection|te|upgrade|transfer-encoding)$/i.test(k)), []],
    ['Connection-listed headers are gone', (h) => h.filter(([k]) => k === 'X-Drop-Me'), []],
    ['X-Forwarded-For gets the client appended', (h) => h.filter(([k]) => /^x-forwarded-/i.test(k)), [['X-Forwarded-For', '203.0.113.7, 127.0.0.1'], ['X-Forwarded-Proto', 'http'], ['X-Forwarded-Host', 'coder.example.com']]],
    ['repeated headers stay repeated, in order', (h) => h.filter(([k]) => /^(cookie|x-repeat)$/i.test(k)), [['Cookie', 'a=1'], ['Cookie', 'b=2'], ['X-Repeat', '1'], ['X-Repeat', '2']]],
    ['header name case is kept', (h) => h.filter(([k]) => k.toLowerCase() === 'x-mixed-case'), [['x-MiXeD-CaSe', 'v']]],
    ['the agent token reaches coderd', (h) => h.filter(([k]) => k === 'Coder-Session-Token').length, 1],
  ])('%s', async (_name, pick, expected) => {
    const { received } = await viaGuard(request);
    expect(pick(pairs(received.rawHeaders))).toEqual(expected);
  });

  it('the request target is byte-identical', async () => {
    const { received } = await viaGuard(request);
    expect(received.url).toBe('/echo?a=%2F&b=c;d&&e=%zz&f=+');
  });

  it('REINIT_GUARD_FORWARDED_HEADERS=off forwards X-Forwarded-* as received', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off', REINIT_GUARD_FORWARDED_HEADERS: 'off' });
    extra.push(g);
    const { received } = await viaGuard(request, g.guard.proxyAddress.port);
    expect(pairs(received.rawHeaders).filter(([k]) => /^x-forwarded-/i.test(k))).toEqual([['X-Forwarded-For', '203.0.113.7']]);
  });

  it('an HTTP/1.0 request without Host gets the upstream host', async () => {
    const { received } = await viaGuard('GET /echo HTTP/1.0\r\n\r\n');
    expect(pairs(received.rawHeaders).find(([k]) => k === 'Host')).toEqual(['Host', `127.0.0.1:${upstream.port}`]);
  });

  it('an absolute-form request goes to the upstream, never to the named host', async () => {
    const { res, received } = await viaGuard('GET http://evil.invalid:81/echo?x=1 HTTP/1.1\r\nHost: evil.invalid:81\r\nConnection: close\r\n\r\n');
    expect(res.status).toBe(200);
    expect(received.url).toBe('/echo?x=1');
  });

  it.each([
    ['OPTIONS', []],
    ['TRACE', []],
    ['DELETE', []],
    ['PROPFIND', [['Content-Length', '0']]],
    ['PATCH', [['Content-Length', '0']]],
  ])('method %s passes; a bodiless request stays bodiless', async (method, framing) => {
    const { received } = await viaGuard(`${method} /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    expect(received.method).toBe(method);
    expect(received.bodyBytes).toBe(0);
    expect(pairs(received.rawHeaders).filter(([k]) => /^(content-length|transfer-encoding)$/i.test(k))).toEqual(framing);
  });

  it('a body with Content-Length passes with the same length', async () => {
    const { received } = await viaGuard('PUT /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello');
    expect(received.bodyBytes).toBe(5);
    expect(pairs(received.rawHeaders).filter(([k]) => /^(content-length|transfer-encoding)$/i.test(k))).toEqual([['Content-Length', '5']]);
  });

  it('a chunked request body is re-chunked and arrives intact', async () => {
    const { received } = await viaGuard('POST /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n');
    expect(received.bodyBytes).toBe(11);
    expect(pairs(received.rawHeaders).filter(([k]) => k.toLowerCase() === 'transfer-encoding')).toEqual([['Transfer-Encoding', 'chunked']]);
  });

  it('conflicting Content-Length and Transfer-Encoding is refused, never forwarded', async () => {
    const before = upstream.received;
    const raw = await rawExchange(port, 'POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    expect(parseResponse(raw).status).toBe(400);
    expect(upstream.received).toBe(before);
  });
});

describe('responses reaching the client', () => {
  it('status codes and reason phrases are kept', async () => {
    const r = parseResponse(await rawExchange(port, 'GET /status?code=418&reason=I%27m%20a%20teapot HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n'));
    expect([r.status, r.reason, r.body.toString()]).toEqual([418, "I'm a teapot", 'status body']);
  });

  it('repeated response headers (Set-Cookie) stay repeated, Content-Length kept', async () => {
    const r = parseResponse(await rawExchange(port, 'GET /cookies HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n'));
    expect(r.headers.filter(([k]) => /^(set-cookie|x-multi|content-length)$/i.test(k))).toEqual([
      ['Set-Cookie', 'a=1; Path=/'], ['Set-Cookie', 'b=2; HttpOnly'], ['X-Multi', 'one'], ['X-Multi', 'two'], ['content-length', '2'],
    ]);
  });

  it('gzip stays gzip: bytes and Content-Length identical', async () => {
    const r = parseResponse(await rawExchange(port, 'GET /gzip HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n'));
    expect(r.headers.find(([k]) => k === 'Content-Encoding')).toEqual(['Content-Encoding', 'gzip']);
    expect(r.headers.find(([k]) => k === 'Content-Length')).toEqual(['Content-Length', String(upstream.gzipBody.length)]);
    expect(r.body.equals(upstream.gzipBody)).toBe(true);
  });

  it.each([
    ['HEAD', 'HEAD /echo', 200],
    ['204', 'GET /empty?code=204', 204],
    ['304', 'GET /empty?code=304', 304],
  ])('%s has no body', async (_n, line, status) => {
    const raw = await rawExchange(port, `${line} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    const r = parseResponse(raw, line.split(' ')[0]);
    expect(r.status).toBe(status);
    expect(raw.subarray(raw.indexOf('\r\n\r\n') + 4).length).toBe(0);
  });

  it('SSE events arrive as they are written (inter-arrival timing kept)', async () => {
    const gaps = [0, 150, 150, 150];
    const arrivals: number[] = [];
    await new Promise<void>((resolve, reject) => {
      http.get(`${guard.url}/sse?gaps=${gaps.join(',')}`, (res) => {
        let buf = '';
        res.on('data', (c: Buffer) => {
          buf += c.toString();
          while (buf.includes('\n\n')) {
            buf = buf.slice(buf.indexOf('\n\n') + 2);
            arrivals.push(performance.now());
          }
        });
        res.on('end', resolve);
      }).on('error', reject);
    });
    expect(arrivals).toHaveLength(4);
    for (let i = 1; i < arrivals.length; i++) expect(Math.abs(arrivals[i]! - arrivals[i - 1]! - 150)).toBeLessThan(40);
  });
});

describe('upgrades and CONNECT', () => {
  it('WebSocket: text, binary, ping/pong, a negotiated subprotocol and extension', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v2/workspaceagents/me/rpc`, ['coder-test.v1', 'coder-test.v2'], { perMessageDeflate: true });
    await new Promise((r, j) => ws.once('open', r).once('error', j));
    expect(ws.protocol).toBe('coder-test.v2');
    expect(ws.extensions).toContain('permessage-deflate'); // negotiated with coderd, end to end
    const next = () => new Promise<[Buffer, boolean]>((r) => ws.once('message', (d, b) => r([d as Buffer, b])));
    ws.send('hello');
    expect(await next()).toEqual([Buffer.from('hello'), false]);
    const bin = Buffer.from([0, 1, 2, 255, 254]);
    ws.send(bin);
    expect(await next()).toEqual([bin, true]);
    const pong = new Promise<Buffer>((r) => ws.once('pong', r));
    ws.ping('are-you-there');
    expect((await pong).toString()).toBe('are-you-there');
    const closed = new Promise<number>((r) => ws.once('close', r));
    ws.close(1000);
    expect(await closed).toBe(1000);
  });

  it('Upgrade: DERP is tunnelled raw, with bytes sent right after the request head kept', async () => {
    const socket = net.connect(port, '127.0.0.1');
    let got = Buffer.alloc(0);
    socket.on('data', (c) => (got = Buffer.concat([got, c])));
    socket.write('GET /derp HTTP/1.1\r\nHost: coder.example.com\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\nEARLY-BYTES');
    await waitFor(() => got.includes('EARLY-BYTES'), 3000, 'the early bytes echoed');
    const text = got.toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n\r\nDERP-SERVER-HELLO/);
    socket.write(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    await waitFor(() => got.subarray(-4).equals(Buffer.from([0xde, 0xad, 0xbe, 0xef])), 3000, 'binary echo');
    const closed = new Promise((r) => socket.once('close', r));
    socket.end();
    await closed;
  });

  /** A DERP tunnel through the guard, open once coderd's hello arrived. */
  const openDerpTunnel = async () => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    let got = '';
    socket.on('data', (c) => (got += c.toString('latin1')));
    socket.write('GET /derp HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n');
    await waitFor(() => got.includes('DERP-SERVER-HELLO'), 3000, 'the tunnel to open');
    return socket;
  };

  it('either side of a tunnel closing closes the other', async () => {
    const base = upstream.tunnels;
    const a = await openDerpTunnel();
    expect(upstream.tunnels).toBe(base + 1);
    a.destroy(); // client vanishes
    await waitFor(() => upstream.tunnels === base, 3000, 'coderd side to close');
    await waitFor(async () => (await guard.metric('coder_reinit_guard_open_streams', { kind: 'tunnel' })) === 0, 3000, 'the gauge to drop');

    // coderd vanishes: the client's connection ends too.
    const b = net.connect(port, '127.0.0.1');
    b.on('error', () => {});
    b.resume();
    const closed = new Promise((r) => b.once('close', r));
    b.write('GET /derp-bye HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n');
    await closed;
  });

  it('counts its client and upstream connections, tunnels included', async () => {
    const conn = (side: string) => guard.metric('coder_reinit_guard_connections', { side });
    const base = await conn('upstream');
    const sockets = await Promise.all([1, 2, 3].map(() => openDerpTunnel()));
    expect(await conn('client')).toBeGreaterThanOrEqual(3);
    expect(await conn('upstream')).toBeGreaterThanOrEqual(3);
    for (const s of sockets) s.destroy();
    await waitFor(async () => (await guard.metric('coder_reinit_guard_open_streams', { kind: 'tunnel' })) === 0, 3000, 'the tunnels to close');
    // Every tunnel's upstream connection went with it; what is left upstream is the pool.
    await waitFor(async () => (await conn('upstream')) <= base, 3000, 'the upstream side to drop');
  });

  it('a non-101 answer to an upgrade is relayed, not hung', async () => {
    const raw = await rawExchange(port, 'GET /reject HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    const r = parseResponse(raw);
    expect([r.status, r.body.toString()]).toEqual([403, '{"message":"Forbidden."}']);
  });

  it('CONNECT is tunnelled to coderd only', async () => {
    const socket = net.connect(port, '127.0.0.1');
    let got = '';
    socket.on('data', (c) => (got += c.toString('latin1')));
    socket.write('CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n\r\nping');
    await waitFor(() => got.endsWith('ping'), 3000, 'CONNECT echo');
    expect(got).toMatch(/^HTTP\/1\.1 200 Connection Established\r\nX-Target: example\.invalid:443\r\n/);
    socket.destroy();
  });
});

describe('failures', () => {
  it('coderd unreachable: 502 in coderd JSON shape, for requests and upgrades', async () => {
    const dead = await freePort();
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${dead}`, REINIT_GUARD_MODE: 'off' });
    extra.push(g);
    const res = await fetch(`${g.url}/api/v2/buildinfo`);
    expect(res.status).toBe(502);
    expect(res.headers.get('content-type')).toBe('application/json');
    const body = (await res.json()) as Record<string, string>;
    expect(Object.keys(body).sort()).toEqual(['detail', 'message']);
    const up = parseResponse(await rawExchange(g.guard.proxyAddress.port, 'GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n'));
    expect(up.status).toBe(502);
    expect(JSON.parse(up.body.toString())).toHaveProperty('message');
    expect(await g.metric('coder_reinit_guard_upstream_errors_total', { kind: 'refused' })).toBe(2);
  });

  it('coderd dies mid-body: the client sees the connection end, not a clean end', async () => {
    const outcome = await new Promise<string>((resolve) => {
      http.get(`${guard.url}/broken`, (res) => {
        res.resume();
        res.on('end', () => resolve('clean end'));
        res.on('error', () => resolve('aborted'));
        res.on('aborted', () => resolve('aborted'));
      }).on('error', () => resolve('aborted'));
    });
    expect(outcome).toBe('aborted');
  });

  it('a client leaving mid-upload releases the upstream request', async () => {
    const aborted = upstream.aborted;
    const req = http.request(`${guard.url}/echo`, { method: 'POST', headers: { 'Content-Length': String(10 * 1024 * 1024) } });
    req.on('error', () => {});
    req.write(Buffer.alloc(256 * 1024));
    await waitFor(() => upstream.open > 0, 3000, 'the upload to reach coderd');
    req.destroy();
    await waitFor(() => upstream.aborted === aborted + 1 && upstream.open === 0, 3000, 'coderd to see the abort');
  });

  it('an answer before the upload is read does not wedge the keep-alive connection', async () => {
    // Found by the soak: the next request on the same client connection hung.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    for (let i = 0; i < 4; i++) {
      const status = await new Promise<number>((resolve, reject) => {
        const req = http.request(`${guard.url}/early`, { method: 'POST', agent, headers: { 'Content-Length': String(1 << 20) } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        req.setTimeout(3000, () => req.destroy(new Error(`request ${i} hung`)));
        req.end(Buffer.alloc(1 << 20));
      });
      expect(status).toBe(404);
    }
    agent.destroy();
  });

  it('a client leaving a long poll releases the upstream request', async () => {
    const req = http.get(`${guard.url}/hang`);
    req.on('error', () => {});
    await waitFor(() => upstream.open > 0, 3000, 'the poll to reach coderd');
    req.destroy();
    await waitFor(() => upstream.open === 0, 3000, 'coderd to see the client go');
  });

  it('slow clients that never finish their headers are cut after the header timeout', async () => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    socket.resume(); // Read the 408 and the FIN, or 'close' never comes.
    socket.write('GET /echo HTTP/1.1\r\nHost: h\r\n');
    const started = performance.now();
    await new Promise((r) => socket.once('close', r));
    expect(performance.now() - started).toBeLessThan(3000);
  });
});
