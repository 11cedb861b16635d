import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { startEchoUpstream, type EchoUpstream, type Received } from '../../testkit/echo-upstream.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { parseResponse, rawExchange } from '../../testkit/raw-http.js';
import { startScriptedUpstream, type ScriptedUpstream } from '../../testkit/scripted-upstream.js';
import { freshDatabase, startTestGuard, type TestGuard } from '../support/env.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

/**
 * The reproductions of issue #10, each against the real guard on loopback: request
 * smuggling through a Connection-listed Content-Length, the upstream answers that ended the
 * process, X-Forwarded-For spoofing, two Hosts, cut header lists, the ways around the
 * /reinit inspection, and credentials in logs.
 */
const pairs = (raw: string[]) => Array.from({ length: raw.length / 2 }, (_, i) => [raw[2 * i], raw[2 * i + 1]] as [string, string]);
const values = (raw: string[], name: string) => pairs(raw).filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);

/** Sends bytes on a connection and keeps it open; resolves with what arrived after `ms`. */
function hold(port: number, bytes: string, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let got = '';
    socket.on('data', (c: Buffer) => (got += c.toString('latin1')));
    socket.on('error', () => {});
    socket.write(bytes);
    setTimeout(() => {
      socket.destroy();
      resolve(got);
    }, ms);
  });
}

describe('request smuggling through a Connection-listed Content-Length', () => {
  let upstream: EchoUpstream;
  let guard: TestGuard;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
  });
  afterAll(async () => {
    await guard?.guard.close(100);
    await upstream?.close();
  });

  const smuggled = 'POST /echo/smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 150\r\n\r\n';
  it.each([
    ['Connection: Content-Length', 'GET', 'Connection: Content-Length\r\nContent-Length'],
    ['Connection: keep-alive, Content-Length', 'GET', 'Connection: keep-alive, Content-Length\r\nContent-Length'],
    ['lowercase, on DELETE', 'DELETE', 'connection: content-length\r\ncontent-length'],
  ])('%s: one request reaches coderd, and a victim on its own connection gets its own answer', async (_name, method, headers) => {
    // The attacker's connection stays open, so its upstream connection is pooled for reuse.
    const attacker = hold(guard.guard.proxyAddress.port, `${method} /echo/attacker HTTP/1.1\r\nHost: h\r\n${headers}: ${smuggled.length}\r\n\r\n${smuggled}`, 400);
    await new Promise((r) => setTimeout(r, 100));
    const victim = parseResponse(await rawExchange(guard.guard.proxyAddress.port, 'GET /echo/victim HTTP/1.1\r\nHost: h\r\nCoder-Session-Token: victim-token\r\nConnection: close\r\n\r\n'));
    expect(victim.status).toBe(200);
    const seen = JSON.parse(victim.body.toString()) as Received;
    expect(seen.url).toBe('/echo/victim');
    expect(values(seen.rawHeaders, 'coder-session-token')).toEqual(['victim-token']);
    // The attacker's request went up whole, with its body framed and inside it.
    const answer = parseResponse(Buffer.from(await attacker, 'latin1'));
    const received = JSON.parse(answer.body.toString()) as Received;
    expect(received).toMatchObject({ method, url: '/echo/attacker', bodyBytes: smuggled.length });
    expect(values(received.rawHeaders, 'content-length')).toEqual([String(smuggled.length)]);
  });

  it('Connection: Host never replaces the client Host', async () => {
    const res = parseResponse(await rawExchange(guard.guard.proxyAddress.port, 'GET /echo HTTP/1.1\r\nHost: coder.example.com\r\nConnection: Host, close\r\n\r\n'));
    expect(values((JSON.parse(res.body.toString()) as Received).rawHeaders, 'host')).toEqual(['coder.example.com']);
  });

  it('X-Forwarded-For lines are merged into one and the client appended once', async () => {
    const res = parseResponse(await rawExchange(guard.guard.proxyAddress.port, 'GET /echo HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n'));
    expect(values((JSON.parse(res.body.toString()) as Received).rawHeaders, 'x-forwarded-for')).toEqual(['1.1.1.1, 6.6.6.6, 127.0.0.1']);
  });

  it.each([
    ['a request', 'GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
    ['an upgrade', 'GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n'],
  ])('two Host headers on %s: 400, never forwarded', async (_name, request) => {
    const before = upstream.received;
    const res = parseResponse(await rawExchange(guard.guard.proxyAddress.port, request));
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body.toString())).toMatchObject({ message: 'Bad Request.' });
    expect(upstream.received).toBe(before);
  });

  it('1,100 header lines all reach coderd, the Content-Length past the thousandth too', async () => {
    const lines = Array.from({ length: 1100 }, (_, i) => `X-L${i}: v\r\n`).join('');
    const res = parseResponse(await rawExchange(guard.guard.proxyAddress.port, `POST /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n${lines}Content-Length: 3\r\n\r\nabc`));
    const seen = JSON.parse(res.body.toString()) as Received;
    expect(seen.bodyBytes).toBe(3);
    expect(pairs(seen.rawHeaders).filter(([k]) => k.startsWith('X-L'))).toHaveLength(1100);
  });

  it('past 64 KiB of header lines: 431, never forwarded', async () => {
    const lines = Array.from({ length: 9000 }, (_, i) => `X-L${i}: v\r\n`).join('');
    expect(parseResponse(await rawExchange(guard.guard.proxyAddress.port, `GET /echo HTTP/1.1\r\nHost: h\r\n${lines}\r\n`)).status).toBe(431);
  });
});

describe('upstream answers that ended the process', () => {
  const RESPONSES: Record<string, string> = {
    trailer: 'HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n',
    'trailer-length': 'HTTP/1.1 200 OK\r\nTrailer: X-T\r\nContent-Length: 2\r\n\r\nok',
    'trailer-204': 'HTTP/1.1 204 No Content\r\nTrailer: X-T\r\n\r\n',
    del: 'HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok',
    '099': 'HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok',
    '101': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n',
  };
  let upstream: ScriptedUpstream;
  let guard: GuardProcess;
  beforeAll(async () => {
    upstream = await startScriptedUpstream((target) => {
      const name = target.split('/').pop() ?? '';
      const bytes = RESPONSES[name];
      // Kept open: the guard's next request may reuse the connection (a poisoned one would
      // show), and no close of the upstream's can race it.
      return bytes === undefined ? null : { bytes: Buffer.from(bytes, 'latin1'), then: 'keep' };
    });
    guard = await startGuardProcess({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
  }, 60_000);
  afterAll(async () => {
    await guard?.stop();
    await upstream?.close();
  });

  const port = () => Number(new URL(guard.url).port);
  it.each<[string, string, (r: ReturnType<typeof parseResponse>) => void]>([
    ['a trailer, to an HTTP/1.0 client', 'GET /trailer HTTP/1.0\r\nHost: h\r\n\r\n', (r) => {
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe('ok');
      expect(r.headers.find(([k]) => k.toLowerCase() === 'trailer')).toBeUndefined();
    }],
    ['a trailer, to HEAD', 'HEAD /trailer HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect(r.status).toBe(200)],
    ['a trailer with Content-Length', 'GET /trailer-length HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect([r.status, r.body.toString()]).toEqual([200, 'ok'])],
    ['a trailer on a 204', 'GET /trailer-204 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect(r.status).toBe(204)],
    ['a DEL in the reason phrase: the standard phrase', 'GET /del HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect([r.status, r.reason, r.body.toString()]).toEqual([200, 'OK', 'ok'])],
    ['status 099: 502', 'GET /099 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect(r.status).toBe(502)],
    ['101 to a request that asked for no upgrade: 502', 'GET /101 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n', (r) => expect(r.status).toBe(502)],
  ])('%s: the process lives on', async (_name, request, check) => {
    const raw = await rawExchange(port(), request);
    check(parseResponse(raw, request.startsWith('HEAD') ? 'HEAD' : 'GET'));
    expect(guard.child.exitCode).toBeNull();
    expect(parseResponse(await rawExchange(port(), 'GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')).status).toBe(200);
  });

  it('a trailer reaches an HTTP/1.1 client', async () => {
    const raw = (await rawExchange(port(), 'GET /trailer HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')).toString('latin1');
    expect(raw).toMatch(/\r\nTrailer: X-T\r\n/);
    expect(raw.endsWith('2\r\nok\r\n0\r\nX-T: 1\r\n\r\n')).toBe(true);
  });
});

describe('ways around the /reinit inspection, and credentials in logs', () => {
  let db: { url: string; sql: postgres.Sql };
  let standin: Standin;
  let guard: TestGuard;
  let seeded: Seeded;
  beforeAll(async () => {
    db = await freshDatabase('security');
    seeded = await seedScenario(db.sql, 'long_claimed', await createUser(db.sql, 'mallory'));
    standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
    guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_LOG_LEVEL: 'debug' });
  });
  afterAll(async () => {
    await guard?.guard.close(100);
    await standin?.close();
    await db?.sql.end();
  });

  const P = '/api/v2/workspaceagents/me/reinit';
  it.each([
    ['the absolute form', `http://coder.example.com${P}?wait=true`],
    ['the absolute form with userinfo', `http://user:SECRET@coder.example.com${P}?wait=true`],
    ['doubled slashes (coderd collapses them)', `//api/v2//workspaceagents/me///reinit?wait=true`],
    ['a percent-encoded letter (coderd routes on the decoded path)', `/api/v2/workspaceagents/me/reini%74?wait=true`],
    ['a bad escape before the real wait (Go skips that pair)', `${P}?wait=%zz&wait=true`],
    ['a semicolon pair before the real wait (Go skips that pair)', `${P}?wait=1;x&wait=true`],
  ])('%s is inspected: 409', async (_name, target) => {
    const res = parseResponse(await rawExchange(guard.guard.proxyAddress.port, `GET ${target} HTTP/1.1\r\nHost: coder.example.com\r\nCoder-Session-Token: ${seeded.token}\r\nConnection: close\r\n\r\n`));
    expect(res.status).toBe(409);
    expect(res.body.toString()).not.toContain('prebuild_claimed');
  });

  it('an Upgrade header does not tunnel /reinit past the inspection', async () => {
    const res = parseResponse(
      await rawExchange(guard.guard.proxyAddress.port, `GET ${P}?wait=true HTTP/1.1\r\nHost: h\r\nCoder-Session-Token: ${seeded.token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`),
    );
    expect(res.status).toBe(409);
    const direct = await connectReinit(standin.url, seeded.token);
    expect(direct.body.toString()).toContain('prebuild_claimed'); // the bug, without the guard
  });

  it('userinfo in the target and odd Upgrade values never reach a log line', async () => {
    // coderd unreachable: every one of these requests is logged.
    const dead = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${await freePort()}`, REINIT_GUARD_MODE: 'off', REINIT_GUARD_LOG_LEVEL: 'debug' });
    const port = dead.guard.proxyAddress.port;
    expect(parseResponse(await rawExchange(port, 'GET http://admin:HUNTER2@coder.example.com/api/v2/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n')).status).toBe(502);
    expect(parseResponse(await rawExchange(port, 'GET /api/v2/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: HUNTER3, \u00e9vil\r\n\r\n')).status).toBe(502);
    expect(parseResponse(await rawExchange(port, 'GET http://u:HUNTER4@h/derp HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n')).status).toBe(502);
    await dead.guard.close(100);
    const logs = dead.logs.entries();
    expect(logs.filter((l) => /upstream (request|upgrade) failed/.test(String(l.msg)))).toHaveLength(3);
    expect(logs.map((l) => l.path)).toContain('/api/v2/x');
    for (const secret of ['HUNTER2', 'HUNTER3', 'HUNTER4']) expect(dead.logs.text()).not.toContain(secret);
  });
});
