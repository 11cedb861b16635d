import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * The guard fronts all of Coder's traffic: what passes through is counted (by method, status
 * class and who answered, latency, bytes) and, when switched on, written as one JSON line per
 * request without any header, cookie, token or query value.
 */
let upstream: http.Server;
let guard: TestGuard;

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    if (req.url?.startsWith('/down')) return void res.writeHead(503, { 'Content-Type': 'text/plain' }).end('coderd says no');
    req.resume();
    req.on('end', () => res.end('hello'));
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, REINIT_GUARD_MODE: 'off', REINIT_GUARD_ACCESS_LOG: 'on' });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await new Promise((r) => upstream?.close(r));
});

describe('pass-through traffic', () => {
  it('is counted by method, status class and origin, with latency and bytes', async () => {
    expect(await (await fetch(`${guard.url}/api/v2/a?token=s3cr3t-query`, { headers: { Cookie: 'coder_session_token=s3cr3t-cookie' } })).text()).toBe('hello');
    expect((await fetch(`${guard.url}/api/v2/b`, { method: 'POST', body: 'x'.repeat(1000) })).status).toBe(200);
    expect((await fetch(`${guard.url}/down`)).status).toBe(503);
    await waitFor(async () => (await guard.metric('coder_reinit_guard_http_requests_total')) >= 3, 3000, 'the requests to be counted');
    expect(await guard.metric('coder_reinit_guard_http_requests_total', { method: 'GET', code: '2xx', origin: 'coderd' })).toBe(1);
    expect(await guard.metric('coder_reinit_guard_http_requests_total', { method: 'POST', code: '2xx', origin: 'coderd' })).toBe(1);
    // coderd's own 5xx is coderd's, not the guard's.
    expect(await guard.metric('coder_reinit_guard_http_requests_total', { method: 'GET', code: '5xx', origin: 'coderd' })).toBe(1);
    expect(await guard.metric('coder_reinit_guard_http_requests_total', { origin: 'guard' })).toBe(0);
    expect(await guard.metric('coder_reinit_guard_http_bytes_total', { direction: 'in' })).toBeGreaterThan(1000);
    expect(await guard.metric('coder_reinit_guard_http_bytes_total', { direction: 'out' })).toBeGreaterThan(0);
    expect(await guard.guard.metrics.registry.metrics()).toContain('coder_reinit_guard_http_request_duration_seconds_count{origin="coderd"} 3');
  });

  it('writes one JSON access-log line per request, without a query value, cookie or token', () => {
    const lines = guard.logs.entries().filter((e) => e.msg === 'request');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatchObject({ level: 'info', method: 'GET', path: '/api/v2/a', status: 200, origin: 'coderd', bytes_out: expect.any(Number), completed: true });
    expect(typeof lines[0]?.duration_ms).toBe('number');
    expect(typeof lines[0]?.upstream_ms).toBe('number');
    expect(lines[1]).toMatchObject({ method: 'POST', path: '/api/v2/b', status: 200 });
    expect(lines[1]?.bytes_in as number).toBeGreaterThan(1000);
    expect(guard.logs.text()).not.toContain('s3cr3t');
  });

  it("counts the guard's own answers apart: its 502 when coderd is unreachable is origin guard", async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${await freePort()}`, REINIT_GUARD_MODE: 'off' });
    try {
      expect((await fetch(`${g.url}/api/v2/c`)).status).toBe(502);
      await waitFor(async () => (await g.metric('coder_reinit_guard_http_requests_total', { code: '5xx', origin: 'guard' })) === 1, 3000, 'the 502 to be counted');
      // Off by default: no access log.
      expect(g.logs.entries().filter((e) => e.msg === 'request')).toHaveLength(0);
    } finally {
      await g.guard.close(100);
    }
  });
});
