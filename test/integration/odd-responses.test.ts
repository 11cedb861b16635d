import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { converse, type Message } from '../../testkit/http-messages.js';
import { startProgrammableUpstream, type ProgrammableUpstream, type UpstreamRequest } from '../../testkit/programmable-upstream.js';
import { startTestGuard, type TestGuard } from '../support/env.js';

/**
 * Answers coderd may give that the guard's hop must relay as sent, with the client's
 * keep-alive connection still usable after them: bodiless statuses carrying
 * Content-Length, 1xx interim responses (an unsolicited 100, 103 Early Hints with a Link
 * Node would refuse or with several Link lines, to HTTP/1.1 and HTTP/1.0 clients), and a
 * request caught by coderd closing its keep-alive connection (sent again once, when that
 * is safe). Real sockets on loopback; the upstream writes raw bytes.
 */
const OK = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngood';
const ANSWERS: Record<string, string> = {
  '/304': 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n',
  '/204': 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n',
  '/head': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n',
  '/continue': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal',
  '/hints-odd': 'HTTP/1.1 103 Early Hints\r\nLink: preload-me\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  '/hints-two':
    'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\nX-Hint: caf\xe9\r\nLink: </b.js>; rel=preload; as=script\r\n\r\n' +
    'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  '/hints-twice': 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  '/hints-bad-value': 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nX-Del: a\x7fb\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  '/processing': 'HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
};

let upstream: ProgrammableUpstream;
let guard: TestGuard;
let port: number;

/** What the upstream does with a request (besides the fixed answers). */
function handle(req: UpstreamRequest, socket: net.Socket): void {
  const path = req.target.split('?')[0]!;
  // coderd closing a keep-alive connection just as the next request goes out: any request
  // on a connection that already served one is met by a close (or a reset), unanswered.
  if (path.startsWith('/stale') && req.index > 0) {
    if (path.includes('reset')) socket.resetAndDestroy();
    else socket.end();
    return;
  }
  if (path === '/always-close') return void socket.end();
  socket.write(ANSWERS[path] ?? OK, 'latin1');
}

beforeAll(async () => {
  upstream = await startProgrammableUpstream(handle);
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
  port = guard.guard.proxyAddress.port;
});

afterAll(async () => {
  await guard?.guard.close(100);
  await upstream?.close();
});

const get = (path: string, version = '1.1', method = 'GET') => `${method} ${path} HTTP/${version}\r\nHost: coder.example.com\r\n\r\n`;
const header = (m: Message, name: string) => m.headers.filter(([k]) => k.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
const finals = (ms: Message[]) => ms.filter((m) => !m.interim);
// The guard's own probe of coderd (this upstream is no coderd) is not the requests' trouble.
const troubles = () => guard.logs.entries().filter((e) => (e.level === 'warn' || e.level === 'error') && e.msg !== 'dependency down');
async function errorCounts() {
  return {
    upstream: await guard.metric('coder_reinit_guard_upstream_errors_total'),
    internal: await guard.metric('coder_reinit_guard_internal_errors_total'),
    logged: troubles().length,
  };
}

describe('bodiless responses carrying Content-Length', () => {
  it.each([
    ['304 with Content-Length: 1234', '/304', 304, [['ETag', '"v1"'], ['Content-Length', '1234']]],
    ['204 with Content-Length: 5', '/204', 204, [['Content-Length', '5']]],
  ])('%s reaches the client complete, and the keep-alive connection goes on', async (_name, path, status, expected) => {
    const before = await errorCounts();
    const c = await converse(port, [get(path), get('/ok'), get(path), get('/ok')]);
    expect(c.messages.map((m) => m.status)).toEqual([status, 200, status, 200]);
    expect(c.closed).toBe(false);
    const first = c.messages[0]!;
    // coderd's headers as sent, Content-Length included (RFC 9110 §8.6), and no body: the
    // next response starts right after the head.
    expect(first.headers.filter(([k]) => /^(etag|content-length)$/i.test(k))).toEqual(expected);
    expect(c.raw.toString('latin1')).toContain(`${first.head}\r\n\r\nHTTP/1.1 200 OK`);
    expect(c.messages[1]!.body.toString()).toBe('good');
    // Nothing logged or counted: nothing went wrong.
    expect(await errorCounts()).toEqual(before);
  });

  it('a HEAD response with Content-Length keeps it and has no body; the connection goes on', async () => {
    const before = await errorCounts();
    const c = await converse(port, [get('/head', '1.1', 'HEAD'), get('/ok'), get('/head', '1.1', 'HEAD'), get('/ok')]);
    expect(c.messages.map((m) => m.status)).toEqual([200, 200, 200, 200]);
    expect(header(c.messages[0]!, 'content-length')).toEqual(['1234']);
    expect(c.raw.toString('latin1')).toContain(`${c.messages[0]!.head}\r\n\r\nHTTP/1.1 200 OK`);
    expect(await errorCounts()).toEqual(before);
  });
});

describe('1xx interim responses', () => {
  it('an unsolicited 100 Continue does not cost the final response: it is relayed whole', async () => {
    const before = await errorCounts();
    const c = await converse(port, [get('/continue'), get('/ok')]);
    // The 100 is hop-by-hop (Node's server answers a client's Expect itself): dropped.
    expect(c.messages.map((m) => m.status)).toEqual([200, 200]);
    expect(c.messages[0]!.body.toString()).toBe('final');
    expect(await errorCounts()).toEqual(before);
  });

  it('a 100 Continue before the answer to a request with a body is dropped too', async () => {
    const c = await converse(port, ['POST /continue HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc', get('/ok')]);
    expect(c.messages.map((m) => m.status)).toEqual([200, 200]);
    expect(c.messages[0]!.body.toString()).toBe('final');
    expect(upstream.requests.filter((r) => r.method === 'POST' && r.target === '/continue')).toHaveLength(1);
  });

  it('a 103 whose Link Node would refuse reaches the client as sent, then the final response', async () => {
    const before = await errorCounts();
    const c = await converse(port, [get('/hints-odd'), get('/ok')]);
    expect(c.messages.map((m) => m.status)).toEqual([103, 200, 200]);
    expect(c.messages[0]!.head).toBe('HTTP/1.1 103 Early Hints\r\nLink: preload-me');
    expect(c.messages[1]!.body.toString()).toBe('ok');
    expect(await errorCounts()).toEqual(before);
  });

  it('a 103 with two Link lines keeps both, in order, with its other lines byte for byte', async () => {
    const c = await converse(port, [get('/hints-two')]);
    expect(c.messages.map((m) => m.status)).toEqual([103, 200]);
    expect(c.messages[0]!.head).toBe(
      'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\nX-Hint: caf\xe9\r\nLink: </b.js>; rel=preload; as=script',
    );
  });

  it('two 103s both reach the client, in order, before the final response', async () => {
    const c = await converse(port, [get('/hints-twice'), get('/ok')]);
    expect(c.messages.map((m) => [m.status, header(m, 'link')])).toEqual([
      [103, ['</a.css>; rel=preload']],
      [103, ['</b.js>; rel=preload']],
      [200, []],
      [200, []],
    ]);
  });

  it('a 102 Processing is relayed as well (only 100 is hop-by-hop)', async () => {
    const c = await converse(port, [get('/processing')]);
    expect(c.messages.map((m) => m.status)).toEqual([102, 200]);
  });

  it('a malformed 1xx (a control byte in a value) is an unreadable answer: 502 in coderd shape, and the connection goes on', async () => {
    const c = await converse(port, [get('/hints-bad-value'), get('/ok')]);
    expect(c.messages.map((m) => m.status)).toEqual([502, 200]);
    expect(JSON.parse(c.messages[0]!.body.toString())).toMatchObject({ message: 'Failed to reach coderd.' });
  });

  it.each(['/hints-two', '/hints-odd', '/processing'])('an HTTP/1.0 client never gets a 1xx (%s): only the final response', async (path) => {
    const c = await converse(port, [`GET ${path} HTTP/1.0\r\nHost: coder.example.com\r\nConnection: keep-alive\r\n\r\n`, get('/ok', '1.0')]);
    expect(c.messages.map((m) => m.status)).toEqual([200, 200]);
    expect(c.raw.toString('latin1')).not.toMatch(/HTTP\/1\.[01] 1\d\d/);
  });
});

describe('targets no hop sends', () => {
  it.each([
    ['GET *', 'GET * HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['POST * with a body (node:http would send it)', 'POST * HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc'],
  ])('%s: 400 in coderd shape, never forwarded', async (_name, request) => {
    const seen = upstream.requests.length;
    const c = await converse(port, [request]);
    expect(c.messages.map((m) => m.status)).toEqual([400]);
    expect(JSON.parse(c.messages[0]!.body.toString())).toMatchObject({ message: 'Bad Request.' });
    expect(upstream.requests.slice(seen).filter((r) => r.target === '*')).toEqual([]);
  });
});

describe('a request caught by coderd closing its keep-alive connection', () => {
  /** Warms the pool with an idle keep-alive connection, then sends `path` on it. */
  async function onWarmConnection(requests: string[]) {
    // The first request opens (or reuses) a pooled connection and leaves it idle; the
    // next one goes out on it and meets coderd's close.
    return converse(port, [get('/ok'), ...requests]);
  }

  it.each([
    ['closed', '/stale'],
    ['reset', '/stale-reset'],
  ])('an idempotent bodiless request is sent again once, on a fresh connection (%s)', async (reason, path) => {
    const retries = await guard.metric('coder_reinit_guard_upstream_retries_total', { reason });
    const before = await errorCounts();
    const seen = upstream.requests.length;
    const c = await onWarmConnection([get(path), get(path, '1.1', 'HEAD')]);
    expect(c.messages.map((m) => m.status)).toEqual([200, 200, 200]);
    expect(c.messages[1]!.body.toString()).toBe('good');
    // The retries went on connections of their own, each answered as its first request.
    const retried = upstream.requests.slice(seen).filter((r) => r.target === path);
    expect(retried.filter((r) => r.index === 0).length).toBeGreaterThanOrEqual(2);
    expect(await guard.metric('coder_reinit_guard_upstream_retries_total', { reason })).toBeGreaterThanOrEqual(retries + 1);
    expect(await errorCounts()).toEqual(before);
  });

  it('a request is sent again only once: a second failure answers 502 in coderd shape', async () => {
    const seen = upstream.requests.length;
    const c = await converse(port, [get('/always-close')]);
    expect(c.messages.map((m) => m.status)).toEqual([502]);
    expect(JSON.parse(c.messages[0]!.body.toString())).toMatchObject({ message: 'Failed to reach coderd.' });
    expect(upstream.requests.slice(seen).filter((r) => r.target === '/always-close')).toHaveLength(2);
  });

  it.each([
    ['POST', 'POST /stale HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n'],
    ['PATCH', 'PATCH /stale HTTP/1.1\r\nHost: h\r\n\r\n'],
    ['GET with a body', 'GET /stale HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc'],
  ])('%s is never sent again', async (_name, request) => {
    const retries = await guard.metric('coder_reinit_guard_upstream_retries_total');
    const seen = upstream.requests.length;
    // Warm node:http's keep-alive agent the same way (a request with a body).
    const c = await converse(port, ['POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx', request]);
    const sent = upstream.requests.slice(seen).filter((r) => r.target === '/stale');
    expect(sent).toHaveLength(1);
    // It went out on the warm connection and met the close: 502, not a second try.
    expect(sent[0]!.index).toBeGreaterThan(0);
    expect(c.messages.map((m) => m.status)).toEqual([200, 502]);
    expect(await guard.metric('coder_reinit_guard_upstream_retries_total')).toBe(retries);
  });
});
