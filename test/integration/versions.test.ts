import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startCountingUpstream, type CountingUpstream } from '../../testkit/counting-upstream.js';
import { rawExchange } from '../../testkit/raw-http.js';
import { startTestGuard, type TestGuard } from '../support/env.js';

/**
 * Issue #20: request lines of a version other than HTTP/1.x are answered as coderd's
 * server (Go's net/http) answers them, byte for byte, and never forwarded: Node's parser
 * reads `GET /a` (no version) as HTTP/0.9 and takes `HTTP/2.0`, and the guard forwarded
 * both as HTTP/1.1.
 */
let upstream: CountingUpstream;
let guard: TestGuard;

beforeAll(async () => {
  upstream = await startCountingUpstream();
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await upstream?.close();
});

beforeEach(() => upstream.reset());

/** What Go's `(*conn).serve` writes for a request it refuses itself (net/http server.go). */
const go = (status: string) => `HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n${status}`;
const GO_400 = go('400 Bad Request');
const GO_505 = go('505 HTTP Version Not Supported: unsupported protocol version');

const send = async (bytes: string) => (await rawExchange(guard.guard.proxyAddress.port, bytes)).toString('latin1');

describe('request lines Go refuses', () => {
  it.each([
    ['a request line without a version (HTTP/0.9)', 'GET /a\r\n\r\n', GO_400],
    ['a request line without a version, headers after it', 'GET /a\r\nHost: h\r\n\r\n', GO_400],
    ['HTTP/2.0', 'GET / HTTP/2.0\r\nHost: h\r\n\r\n', GO_505],
    ['HTTP/2.0 with a body', 'POST /a HTTP/2.0\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc', GO_505],
    ['HTTP/2.0 asking for an upgrade', 'GET /ws HTTP/2.0\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', GO_505],
    ['HTTP/3.0 (which Node refuses itself)', 'GET / HTTP/3.0\r\nHost: h\r\n\r\n', GO_505],
  ])('%s: answered as Go answers it, never forwarded', async (_name, bytes, answer) => {
    expect(await send(bytes)).toBe(answer);
    expect(upstream.arrived).toEqual([]);
  });

  it('pipelined after a good request: that one is answered first, then the refusal, and the connection closes', async () => {
    const got = await send('GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/2.0\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n');
    expect(got.startsWith('HTTP/1.1 200 OK')).toBe(true);
    expect(got.endsWith(`/a;${GO_505}`)).toBe(true);
    expect(upstream.arrived).toEqual(['/a']);
  });

  it('is counted by reason', async () => {
    const refused = (reason: string) => guard.metric('coder_reinit_guard_refused_requests_total', { reason });
    const before = { version: await refused('unsupported_version'), line: await refused('malformed_request_line') };
    await send('GET / HTTP/2.0\r\nHost: h\r\n\r\n');
    await send('GET / HTTP/3.0\r\nHost: h\r\n\r\n');
    await send('GET /a\r\n\r\n');
    expect(await refused('unsupported_version')).toBe(before.version + 2);
    expect(await refused('malformed_request_line')).toBe(before.line + 1);
  });

  it('HTTP/1.0 and HTTP/1.1 still pass', async () => {
    expect(await send('GET /x HTTP/1.0\r\nHost: h\r\n\r\n')).toContain('/x;');
    expect(await send('GET /y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')).toContain('/y;');
    expect(upstream.arrived).toEqual(['/x', '/y']);
  });
});
