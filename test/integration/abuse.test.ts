import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import WebSocket from 'ws';
import { PREBUILDS_USER_ID } from '../../src/reinit/verdict.js';
import { connectReinit, receivedClaim } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { addAgent, addBuild, createUser, createWorkspace, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { parseResponse, rawExchange } from '../../testkit/raw-http.js';
import { freshDatabase, startTestGuard, type TestGuard } from '../support/env.js';

let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let guard: TestGuard;
let user: string;
let longClaimed: Seeded;
const TOKEN_SECRET = '7d1c9e5a-1b2c-4d3e-8f90-a1b2c3d4e5f6';
const COOKIE_SECRET = 'session-cookie-value-4f1e2d3c';

beforeAll(async () => {
  db = await freshDatabase('abuse');
  user = await createUser(db.sql, 'gus');
  longClaimed = await seedScenario(db.sql, 'long_claimed', user);
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_LOG_LEVEL: 'debug' });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await standin?.close();
  await db?.sql.end();
});

const port = () => guard.guard.proxyAddress.port;
const status = async (request: string) => parseResponse(await rawExchange(port(), request)).status;

describe('hostile clients', () => {
  it.each([
    ['a header flood', `GET / HTTP/1.1\r\nHost: h\r\n${Array.from({ length: 100 }, (_, i) => `X-Flood-${i}: ${'a'.repeat(1000)}\r\n`).join('')}\r\n`, 431],
    ['one oversized header', `GET / HTTP/1.1\r\nHost: h\r\nX-Big: ${'b'.repeat(100_000)}\r\n\r\n`, 431],
    ['an invalid method', 'G@T / HTTP/1.1\r\nHost: h\r\n\r\n', 400],
    ['Content-Length with Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['two different Content-Lengths', 'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde', 400],
    ['an obfuscated Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n', 400],
    ['a bare LF request line', 'GET / HTTP/1.1\nHost: h\n\n', 400],
  ])('%s is refused and never forwarded', async (_name, request, expected) => {
    const before = standin.requests;
    expect(await status(request)).toBe(expected);
    expect(standin.requests).toBe(before);
  });

  it('tokens and cookies never reach a log line, even at debug level', async () => {
    const headers = { 'Coder-Session-Token': TOKEN_SECRET, Cookie: `coder_session_token=${COOKIE_SECRET}` };
    // Through every path that logs: decisions, pass-through, upstream failures, upgrades.
    await connectReinit(guard.url, longClaimed.token, { headers: { Cookie: `coder_session_token=${COOKIE_SECRET}` } });
    await connectReinit(guard.url, TOKEN_SECRET, { extraQuery: `coder_session_token=${TOKEN_SECRET}` });
    await fetch(`${guard.url}/api/v2/users/me?coder_session_token=${TOKEN_SECRET}`, { headers });
    const dead = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${await freePort()}`, REINIT_GUARD_MODE: 'off', REINIT_GUARD_LOG_LEVEL: 'debug' });
    await fetch(`${dead.url}/api/v2/workspaceagents/me/rpc?coder_session_token=${TOKEN_SECRET}`, { headers });
    const ws = new WebSocket(`ws://127.0.0.1:${dead.guard.proxyAddress.port}/api/v2/workspaceagents/me/rpc?coder_session_token=${TOKEN_SECRET}`, { headers });
    await new Promise((r) => ws.once('error', r));
    await rawExchange(port(), `GET /?coder_session_token=${TOKEN_SECRET} HTTP/1.1\r\nHost: h\r\nCookie: ${COOKIE_SECRET}\r\nX-Big: ${'b'.repeat(100_000)}\r\n\r\n`);
    await dead.guard.close(100);
    const logs = guard.logs.text() + dead.logs.text();
    expect(logs.length).toBeGreaterThan(500); // debug logging was on and wrote plenty
    for (const secret of [TOKEN_SECRET, COOKIE_SECRET, longClaimed.token]) expect(logs).not.toContain(secret);
  });
});

describe('odd data from the database fails open, logged with the reason', () => {
  it.each([
    ['stage as a string', { prebuilt_workspace_stage: '2' }, 'stage_not_integer'],
    ['input not an object', 'a string', 'input_not_object'],
    ['input an array', [1, 2], 'input_not_object'],
  ])('%s', async (_name, input, reason) => {
    const ws = await createWorkspace(db.sql, user, `odd-${reason}-${Math.random().toString(36).slice(2, 7)}`);
    await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, stage: 1 });
    const { jobId } = await addBuild(db.sql, ws, { initiator: user, input });
    const r = await connectReinit(guard.url, await addAgent(db.sql, jobId));
    expect(receivedClaim(r, ws)).toBe(true);
    expect(guard.logs.entries().find((e) => e.workspace_id === ws)).toMatchObject({ outcome: 'failed_open', reason, level: 'warn' });
  });
});

describe('odd events from coderd', () => {
  let server: http.Server;
  let g: TestGuard;
  const noBuilds = '5b0e3c1a-9d8f-4e7a-b6c5-d4e3f2a1b0c9';
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const which = new URL(req.url ?? '/', 'http://x').searchParams.get('case');
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      if (which === 'no-builds') res.end(`event: data\ndata: {"workspace_id":"${noBuilds}","reason":"prebuild_claimed"}\n\n`);
      else res.end(`event: data\ndata: {"workspace_id":"${noBuilds}","reason":"something_new","extra":{"a":1}}\n\n`);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    g = await startTestGuard({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, REINIT_GUARD_PG_URL: db.url });
  });
  afterAll(async () => {
    await g?.guard.close(100);
    server?.close();
  });

  it('a claim for a workspace with no builds fails open', async () => {
    const r = await connectReinit(g.url, 'x', { extraQuery: 'case=no-builds' });
    expect(receivedClaim(r, noBuilds)).toBe(true);
    expect(g.logs.entries().find((e) => e.workspace_id === noBuilds)).toMatchObject({ outcome: 'failed_open', reason: 'no_builds' });
  });

  it('an unknown reason with unknown fields passes untouched', async () => {
    const r = await connectReinit(g.url, 'x', { extraQuery: 'case=unknown' });
    expect(r.body.toString()).toBe(`event: data\ndata: {"workspace_id":"${noBuilds}","reason":"something_new","extra":{"a":1}}\n\n`);
  });
});
