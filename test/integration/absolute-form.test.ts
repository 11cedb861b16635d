import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../../testkit/pg.js';
import { parseResponse, rawExchange } from '../../testkit/raw-http.js';
import { startRecordingUpstream, type RecordingUpstream } from '../../testkit/recording-upstream.js';
import { startTestGuard, type TestGuard } from '../support/env.js';

/**
 * Issue #20: an absolute-form target's authority is the Host coderd sees (RFC 9112 §3.2.2;
 * Go sets `r.Host` from it), on every path: forwarded, inspected (/reinit), tunnelled. The
 * guard dropped it and forwarded the client's Host line. In any other form Host passes
 * verbatim.
 */
let upstream: RecordingUpstream;
let guard: TestGuard;

beforeAll(async () => {
  upstream = await startRecordingUpstream();
  // Mode enforce, so that /reinit?wait=true takes the inspected path; its database is
  // never needed (no seeded event appears).
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: upstream.url,
    REINIT_GUARD_PG_URL: `postgres://guard:pw@127.0.0.1:${await freePort()}/coder`,
  });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await upstream?.close();
});

let seen = 0;
beforeEach(() => {
  seen = upstream.requests.length;
});

/** The requests that reached the upstream since the test began, less the guard's own polls. */
const arrived = () => upstream.requests.slice(seen).filter((r) => r.url !== '/api/v2/buildinfo');
const hostOf = (raw: string[]) => {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === 'host') out.push(raw[i + 1]!);
  return out;
};
const send = (bytes: string) => rawExchange(guard.guard.proxyAddress.port, bytes);

describe('an absolute-form target', () => {
  it('names the Host coderd sees, and goes up in origin form', async () => {
    const res = parseResponse(await send('GET http://coder.example/api/v2/x?y=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n'));
    expect(res.status).toBe(200);
    expect(arrived().map((r) => [r.url, hostOf(r.rawHeaders)])).toEqual([['/api/v2/x?y=1', ['coder.example']]]);
  });

  it('without userinfo, with its port', async () => {
    await send('GET http://user:SECRET@coder.example:8443/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n');
    expect(arrived().map((r) => [r.url, hostOf(r.rawHeaders)])).toEqual([['/x', ['coder.example:8443']]]);
  });

  it('gives an HTTP/1.0 request without Host the target authority, not the upstream address', async () => {
    await send('GET http://coder.example/x HTTP/1.0\r\n\r\n');
    expect(arrived().map((r) => hostOf(r.rawHeaders))).toEqual([['coder.example']]);
  });

  it('on the inspected /reinit path too', async () => {
    const res = parseResponse(await send('GET http://coder.example/api/v2/workspaceagents/me/reinit?wait=true HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n'));
    expect(res.status).toBe(200);
    expect(arrived().map((r) => [r.url, hostOf(r.rawHeaders)])).toEqual([['/api/v2/workspaceagents/me/reinit?wait=true', ['coder.example']]]);
  });

  it('on a tunnelled upgrade too', async () => {
    await send('GET http://coder.example/ws HTTP/1.1\r\nHost: other.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(arrived().map((r) => [r.kind, r.url, hostOf(r.rawHeaders)])).toEqual([['upgrade', '/ws', ['coder.example']]]);
  });

  it('on an upgrade to /reinit, served as a plain request', async () => {
    await send('GET http://coder.example/api/v2/workspaceagents/me/reinit HTTP/1.1\r\nHost: other.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(arrived().map((r) => [r.kind, r.url, hostOf(r.rawHeaders)])).toEqual([['request', '/api/v2/workspaceagents/me/reinit', ['coder.example']]]);
  });
});

describe('any other target', () => {
  it('keeps Host verbatim', async () => {
    await send('GET /api/v2/x HTTP/1.1\r\nHost: Other.Example:80\r\nConnection: close\r\n\r\n');
    expect(arrived().map((r) => [r.url, hostOf(r.rawHeaders)])).toEqual([['/api/v2/x', ['Other.Example:80']]]);
  });
});
