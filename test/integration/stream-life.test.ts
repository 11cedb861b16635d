import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startFaultProxy, type FaultProxy } from '../../testkit/fault-proxy.js';
import { addAgent, addBuild, createUser, createWorkspace, seedScenario } from '../../testkit/fixtures.js';
import { PREBUILDS_USER_ID, STAGE } from '../../src/reinit/verdict.js';
import { freshDatabase, startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * coderd ends or breaks the agent's /reinit stream while the guard is still reading the
 * first event or deciding on it (its database is slowed to ~0.5 s a decision). Whatever
 * the verdict, the agent's stream must end the way coderd ended it, never hang: agents set
 * no timeout and a hung one never learns of its genuine claim.
 */
const SSE = { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' };
const claim = (ws: string) => `event: data\ndata: {"workspace_id":"${ws}","reason":"prebuild_claimed"}\n\n`;

type Ending = 'end-later' | 'end-same-write' | 'reset-later' | 'reset-before-event';
const endings: Record<Ending, (res: http.ServerResponse, ws: string) => void> = {
  // The event, then a clean end 150 ms later (coderd restarting, closing its streams).
  'end-later': (res, ws) => {
    res.write(claim(ws));
    setTimeout(() => res.end(), 150);
  },
  // The event and the clean end in one read.
  'end-same-write': (res, ws) => res.end(claim(ws)),
  // The event, then the connection dies 150 ms later (a crash: no end of the chunked body).
  'reset-later': (res, ws) => {
    res.write(claim(ws));
    setTimeout(() => (res.socket as Socket).destroy(), 150);
  },
  // Half an event, then the connection dies: the head is already on its way.
  'reset-before-event': (res) => {
    res.write('event: da');
    setTimeout(() => (res.socket as Socket).destroy(), 100);
  },
};

let db: { url: string; sql: postgres.Sql };
let server: http.Server;
let fault: FaultProxy;
let guard: TestGuard;
const ws: Record<'pass' | 'hold' | 'suppress', string> = { pass: '', hold: '', suppress: '' };

beforeAll(async () => {
  db = await freshDatabase('streamlife');
  const user = await createUser(db.sql, 'erin');
  ws.pass = (await seedScenario(db.sql, 'just_claimed', user)).workspaceId;
  ws.suppress = (await seedScenario(db.sql, 'long_claimed', user)).workspaceId;
  ws.hold = await createWorkspace(db.sql, user, 'claim-not-built-yet');
  await addAgent(db.sql, (await addBuild(db.sql, ws.hold, { initiator: PREBUILDS_USER_ID, stage: STAGE.CREATE })).jobId);

  server = http.createServer((req, res) => {
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const ending = endings[q.get('ending') as Ending];
    if (!ending) return void res.writeHead(404).end(); // the guard's own buildinfo polls
    res.writeHead(200, SSE);
    ending(res, q.get('ws') ?? '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const u = new URL(db.url);
  fault = await startFaultProxy({ host: u.hostname, port: Number(u.port) });
  u.port = String(fault.port);
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    REINIT_GUARD_PG_URL: u.toString(),
    REINIT_GUARD_DB_TIMEOUT: '5s',
    REINIT_GUARD_CACHE_SIZE: '0',
  });
  await fault.setMode('slow', { delayMs: 250 });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await fault?.close();
  server?.close();
  await db?.sql.end();
});

/** Reads the agent's whole stream, to its end or its break (never a timeout). */
const agent = (verdict: keyof typeof ws, ending: Ending) =>
  connectReinit(guard.url, 'token', { extraQuery: `ws=${ws[verdict]}&ending=${ending}`, until: () => false, timeoutMs: 8000 });

describe('coderd ends the stream while the guard decides', () => {
  it.each<[keyof typeof ws, Ending, { status: number; body: (w: string) => string; stopped: string }]>([
    ['pass', 'end-later', { status: 200, body: claim, stopped: 'ended' }],
    ['pass', 'end-same-write', { status: 200, body: claim, stopped: 'ended' }],
    ['pass', 'reset-later', { status: 200, body: claim, stopped: 'error' }],
    ['hold', 'end-later', { status: 200, body: () => '', stopped: 'ended' }],
    ['hold', 'end-same-write', { status: 200, body: () => '', stopped: 'ended' }],
    ['suppress', 'end-later', { status: 409, body: () => '', stopped: 'ended' }],
    ['suppress', 'reset-later', { status: 409, body: () => '', stopped: 'ended' }],
  ])('verdict %s, coderd %s: the agent sees what coderd ended with', async (verdict, ending, want) => {
    const r = await agent(verdict, ending);
    expect(r.status).toBe(want.status);
    expect(r.stopped).toBe(want.stopped);
    if (want.status === 200) expect(r.body.toString()).toBe(want.body(ws[verdict]));
  });

  it('verdict hold, coderd resets: the agent sees the connection break, with no head (nothing was sent)', async () => {
    await expect(agent('hold', 'reset-later')).rejects.toThrow(/socket hang up|ECONNRESET/);
  });

  it('coderd breaks after its head, mid-event: the agent gets the head, the bytes, then the break; no 502', async () => {
    const r = await agent('pass', 'reset-before-event');
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('event: da');
    expect(r.stopped).toBe('error');
  });

  it('no stream is left open', async () => {
    await waitFor(async () => (await guard.metric('coder_reinit_guard_open_streams', { kind: 'reinit' })) === 0, 3000, 'reinit streams to close');
  });
});
