import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { PREBUILDS_USER_ID, STAGE } from '../../src/reinit/verdict.js';
import { connectReinit, receivedClaim } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { startFaultProxy } from '../../testkit/fault-proxy.js';
import { addAgent, addBuild, createUser, createWorkspace, seedLongClaimedBulk, seedScenario } from '../../testkit/fixtures.js';
import { freshDatabase, startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * The reconnect storm, at the guard's default configuration (pool of 4, 2 s statement
 * deadline, batches): every agent is decided, none fails open because of the guard's own
 * queueing, the pool is never exceeded, and a warm guard sends no statement at all.
 * Nothing here is timed: figures are the benchmark's (bench/, `npm run bench -- reinit`).
 */
const AGENTS = 600;
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let user: string;
let agents: Array<{ token: string; workspaceId: string }>;
const guards: TestGuard[] = [];

beforeAll(async () => {
  db = await freshDatabase('storm');
  user = await createUser(db.sql, 'stella');
  agents = await seedLongClaimedBulk(db.sql, user, AGENTS);
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 15_000, poolSize: 16 });
});

afterAll(async () => {
  for (const g of guards) await g.guard.close(100);
  await standin?.close();
  await db?.sql.end();
});

const start = async (env: Record<string, string> = {}) => {
  const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, ...env });
  guards.push(g);
  return g;
};

const storm = (g: TestGuard, list = agents) => Promise.all(list.map((a) => connectReinit(g.url, a.token, { timeoutMs: 60_000 })));

/** The guard's connections as PostgreSQL sees them, sampled until `until` settles. */
async function sampleConnections<T>(until: Promise<T>): Promise<{ value: T; max: number }> {
  let max = 0;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      const [r] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'coder-reinit-guard' AND datname = current_database()`;
      max = Math.max(max, r!.n);
      await new Promise((res) => setTimeout(res, 5));
    }
  })();
  const value = await until;
  done = true;
  await sampler;
  return { value, max };
}

describe('reconnect storm', () => {
  it(`cold: ${AGENTS} agents at once, every one answered 409, none failed open, in batches, within the pool`, async () => {
    const g = await start({ REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
    const { value: rs, max } = await sampleConnections(storm(g));
    expect(rs.map((r) => r.status)).toEqual(Array(AGENTS).fill(409));
    expect(await g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open' })).toBe(0);
    expect(await g.metric('coder_reinit_guard_db_errors_total')).toBe(0);
    expect(max).toBeLessThanOrEqual(4);
    // One lookup per workspace, coalesced: far fewer statements than agents.
    expect(await g.metric('coder_reinit_guard_verdict_cache_total', { result: 'miss' })).toBe(AGENTS);
    const statements = await g.metric('coder_reinit_guard_db_statements_total', { statement: 'latest_builds' });
    expect(statements).toBeGreaterThan(0);
    expect(statements).toBeLessThanOrEqual(AGENTS / 10);
    // At once again: all from the cache, no statement.
    expect((await storm(g)).every((r) => r.status === 409)).toBe(true);
    expect(await g.metric('coder_reinit_guard_db_statements_total', { statement: 'latest_builds' })).toBe(statements);
  });

  it('after a storm of suppressed streams the guard keeps no connection to coderd open: one per agent at most, and none after', async () => {
    const g = await start({ REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
    await connectReinit(g.url, agents[0]!.token); // the verdict is cached; the guard's own polls are open
    await new Promise((r) => setTimeout(r, 200));
    const baseline = standin.openConnections;
    let max = 0;
    const sampler = setInterval(() => (max = Math.max(max, standin.openConnections - baseline)), 5);
    const rs = await storm(g, agents.slice(0, 200));
    clearInterval(sampler);
    expect(rs.every((r) => r.status === 409)).toBe(true);
    expect(max).toBeLessThanOrEqual(200);
    // Every suppressed stream's upstream connection was closed before its 409 was written,
    // and no other is left idle: nothing waits for an idle timeout (undici's is 4 s).
    await waitFor(() => standin.openConnections <= baseline, 1500, `the guard's upstream connections to close (open: ${standin.openConnections}, baseline ${baseline})`);
  });

  it('warm: the warm-up caches every handled claim, the storm sends no statement, and later claims are still judged right', async () => {
    const g = await start({ REINIT_GUARD_DB_POOL_SIZE: '2' });
    await waitFor(async () => (await g.metric('coder_reinit_guard_verdict_cache_warmed_workspaces')) >= AGENTS, 20_000, 'the warm-up');
    expect(await g.metric('coder_reinit_guard_db_statements_total', { statement: 'warm_up', result: 'ok' })).toBeGreaterThan(0);
    const rs = await storm(g);
    expect(rs.map((r) => r.status)).toEqual(Array(AGENTS).fill(409));
    expect(await g.metric('coder_reinit_guard_db_statements_total', { statement: 'latest_builds' })).toBe(0);
    expect(g.logs.entries().find((e) => e.msg === 'verdict cache warmed')).toMatchObject({ workspaces: expect.any(Number) });

    // Claimed after the warm-up: the claim build is the latest, the event is genuine.
    const fresh = await seedScenario(db.sql, 'just_claimed', user);
    expect(receivedClaim(await connectReinit(g.url, fresh.token), fresh.workspaceId)).toBe(true);
    // ...and once the user builds again, it is no longer (the "pass" verdict lives 2 s).
    await addBuild(db.sql, fresh.workspaceId, { initiator: user, transition: 'stop' });
    await waitFor(async () => (await connectReinit(g.url, fresh.token)).status === 409, 5000, 'the verdict to follow the new build');
  });

  it('a held stream whose recheck cannot reach the database: counted every time, one warning per stream', async () => {
    const u = new URL(db.url);
    const proxy = await startFaultProxy({ host: u.hostname, port: Number(u.port) });
    u.port = String(proxy.port);
    // A stand-in of its own: the shared one is still working through the storms' LISTEN and
    // UNLISTEN commands (one connection for all) and can take seconds to answer.
    const own = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 15_000 });
    const g = await start({
      REINIT_GUARD_UPSTREAM: own.url,
      REINIT_GUARD_PG_URL: u.toString(),
      REINIT_GUARD_HOLD_RECHECK: '100ms',
      REINIT_GUARD_HOLD_MAX: '3s',
      REINIT_GUARD_DB_TIMEOUT: '300ms',
      REINIT_GUARD_DB_CONNECT_TIMEOUT: '1s',
    });
    try {
      const ws = await createWorkspace(db.sql, user, 'held-while-db-cut');
      const token = await addAgent(db.sql, (await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, stage: STAGE.CREATE })).jobId);
      const held = connectReinit(g.url, token, { until: () => false, timeoutMs: 10_000 });
      await waitFor(async () => (await g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'held' })) === 1, 5000, 'the hold').catch((err: Error) => {
        throw new Error(`${err.message}; guard log: ${g.logs.text().slice(-1500)}`);
      });
      await proxy.setMode('refuse');
      await waitFor(async () => (await g.metric('coder_reinit_guard_hold_recheck_failures_total')) >= 3, 5000, 'failed rechecks');
      expect(await g.metric('coder_reinit_guard_db_errors_total')).toBeGreaterThanOrEqual(3);
      const warnings = g.logs.entries().filter((e) => e.msg === 'held reinit stream recheck failed');
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({ workspace_id: ws, reason: expect.stringMatching(/^db_/) });
      // The hold still ends by REINIT_GUARD_HOLD_MAX: cleanly, without the spurious event.
      const r = await held;
      expect(r.stopped).toBe('ended');
      expect(r.body.toString()).not.toContain('prebuild_claimed');
    } finally {
      await g.guard.close(100);
      await own.close();
      await proxy.close();
    }
  });
});
