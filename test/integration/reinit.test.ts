import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit, type ReinitResult } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, finishJob, publishClaim, seedScenario, type Scenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase, startTestGuard, waitFor, type TestGuard } from '../support/env.js';

const PING_MS = 300;
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let guard: TestGuard;
const ws = {} as Record<Scenario, Seeded>;

const bodyJson = (r: ReinitResult) => JSON.parse(r.body.toString('utf8')) as { message: string; detail: string };
/**
 * End-to-end headers as a comparable list: less Date (each response has its own) and the
 * connection-scoped ones each hop sets for itself (RFC 9110 §7.6.1).
 */
const headersOf = (r: ReinitResult) => {
  const out: string[] = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) {
    if (!['date', 'connection', 'keep-alive'].includes(r.rawHeaders[i]!.toLowerCase())) out.push(`${r.rawHeaders[i]}: ${r.rawHeaders[i + 1]}`);
  }
  return out;
};

beforeAll(async () => {
  db = await freshDatabase('reinit');
  const user = await createUser(db.sql, 'alice');
  for (const s of ['long_claimed', 'latest_stop', 'claim_failed_retried', 'just_claimed', 'claim_failed', 'claim_running', 'regular', 'unclaimed_prebuild'] as Scenario[]) {
    ws[s] = await seedScenario(db.sql, s, user);
  }
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: PING_MS });
  guard = await startTestGuard({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await standin?.close();
  await db?.sql.end();
});

describe('the decision table, through the wire (enforce)', () => {
  it.each(['long_claimed', 'latest_stop', 'claim_failed_retried'] as Scenario[])(
    '%s: coderd seeds a spurious event, the guard answers 409',
    async (scenario) => {
      const direct = await connectReinit(standin.url, ws[scenario].token);
      expect(direct.status).toBe(200);
      expect(direct.body.toString()).toBe(
        `event: data\ndata: {"workspace_id":"${ws[scenario].workspaceId}","reason":"prebuild_claimed","owner_id":"${ws[scenario].ownerId}"}\n\n`,
      );

      // What the patched coderd (2.35.1) answers, byte for byte; the guard shows itself in a
      // header of its own, never in coderd's words.
      const viaGuard = await connectReinit(guard.url, ws[scenario].token);
      expect(viaGuard.status).toBe(409);
      expect(viaGuard.headers['content-type']).toBe('application/json; charset=utf-8');
      expect(viaGuard.body.toString()).toBe(
        '{"message":"Workspace is not a prebuilt workspace waiting to be claimed.","detail":"The prebuild claim for this workspace has already been handled by an earlier build."}\n',
      );
      expect(viaGuard.headers['x-coder-reinit-guard']).toBe('claim-already-handled');
      expect(viaGuard.body.toString()).not.toContain(ws[scenario].token);
    },
  );

  it('just_claimed: the claim build is the latest, the event passes byte for byte', async () => {
    const until = (b: string) => b.includes('event: ping');
    const direct = await connectReinit(standin.url, ws.just_claimed.token, { until });
    const viaGuard = await connectReinit(guard.url, ws.just_claimed.token, { until });
    expect(viaGuard.status).toBe(200);
    expect(viaGuard.body.equals(direct.body)).toBe(true);
    expect(viaGuard.body.toString()).toMatch(/^event: data\ndata: \{"workspace_id":"[^"]+","reason":"prebuild_claimed","owner_id":"[^"]+"\}\n\nevent: ping\n\n$/);
    expect(headersOf(viaGuard)).toEqual(headersOf(direct));
  });

  it.each([
    ['claim_failed', 'Claim build failed permanently.'],
    ['regular', 'Workspace is not a prebuilt workspace waiting to be claimed.'],
  ] as Array<[Scenario, string]>)("%s: coderd's own 409 passes verbatim", async (scenario, message) => {
    const direct = await connectReinit(standin.url, ws[scenario].token);
    const viaGuard = await connectReinit(guard.url, ws[scenario].token);
    expect(direct.status).toBe(409);
    expect(viaGuard.status).toBe(409);
    expect(bodyJson(viaGuard).message).toBe(message);
    expect(viaGuard.body.equals(direct.body)).toBe(true);
    expect(headersOf(viaGuard)).toEqual(headersOf(direct));
  });

  it('unclaimed_prebuild: nothing is seeded; the first ping arrives as from coderd', async () => {
    const until = (b: string) => b.includes('event: ping');
    const viaGuard = await connectReinit(guard.url, ws.unclaimed_prebuild.token, { until });
    expect(viaGuard.status).toBe(200);
    expect(viaGuard.body.toString()).toBe('event: ping\n\n');
    // Go-like: no head before the first write, so the head arrives with the ping.
    expect(viaGuard.headMs).toBeGreaterThanOrEqual(PING_MS * 0.8);
  });

  it('claim_running: pings pass, then a genuine claim delivered by pubsub passes', async () => {
    const s = ws.claim_running;
    const pending = connectReinit(guard.url, s.token, { timeoutMs: 10_000 });
    // Let at least two pings through before the claim build completes.
    const pings = () => guard.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'passed', reason: 'no_seeded_event' });
    const before = await pings();
    await waitFor(async () => (await pings()) > before, 5000, 'the first ping to pass');
    await new Promise((r) => setTimeout(r, PING_MS + 50));
    await finishJob(db.sql, s.latestJobId);
    await publishClaim(db.sql, s.workspaceId);
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.stopped).toBe('data_event');
    expect(r.body.toString()).toBe(`event: ping\n\nevent: ping\n\nevent: data\ndata: {"workspace_id":"${s.workspaceId}","reason":"prebuild_claimed"}\n\n`);
  });
});

describe('which requests are inspected', () => {
  it('wait absent or false: coderd seeds nothing and the guard passes the stream', async () => {
    for (const wait of [null, 'false', 'yes']) {
      const r = await connectReinit(guard.url, ws.long_claimed.token, { wait, until: (b) => b.includes('event: ping') });
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe('event: ping\n\n');
    }
  });

  it('wait=1 is true as in Go: the spurious event becomes 409', async () => {
    const r = await connectReinit(guard.url, ws.long_claimed.token, { wait: '1' });
    expect(r.status).toBe(409);
  });

  it('an unknown token gets coderd 401 unchanged', async () => {
    const r = await connectReinit(guard.url, '00000000-0000-0000-0000-000000000000');
    expect(r.status).toBe(401);
  });
});

describe('verdict cache', () => {
  it('concurrent agents of one workspace share one query; later ones hit the cache', async () => {
    const s = await seedScenario(db.sql, 'long_claimed', ws.long_claimed.ownerId);
    const misses = await guard.metric('coder_reinit_guard_verdict_cache_total', { result: 'miss' });
    const results = await Promise.all(Array.from({ length: 20 }, () => connectReinit(guard.url, s.token)));
    expect(results.map((r) => r.status)).toEqual(Array(20).fill(409));
    expect(await guard.metric('coder_reinit_guard_verdict_cache_total', { result: 'miss' })).toBe(misses + 1);
    const again = await connectReinit(guard.url, s.token);
    expect(again.status).toBe(409);
    expect(await guard.metric('coder_reinit_guard_verdict_cache_total', { result: 'miss' })).toBe(misses + 1);
  });

  it('logs one line per decision with workspace id and outcome, and never the token', async () => {
    const s = await seedScenario(db.sql, 'long_claimed', ws.long_claimed.ownerId);
    await connectReinit(guard.url, s.token);
    const line = guard.logs.entries().find((e) => e.workspace_id === s.workspaceId);
    expect(line).toMatchObject({ level: 'info', msg: 'reinit decision', outcome: 'suppressed', reason: 'claim_already_handled' });
    expect(guard.logs.text()).not.toContain(s.token);
  });
});
