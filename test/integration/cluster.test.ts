import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit, receivedClaim } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase, waitFor } from '../support/env.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let guard: GuardProcess;
let longClaimed: Seeded[];
let justClaimed: Seeded;

beforeAll(async () => {
  db = await freshDatabase('cluster');
  const user = await createUser(db.sql, 'dave');
  longClaimed = [];
  for (let i = 0; i < 6; i++) longClaimed.push(await seedScenario(db.sql, 'long_claimed', user));
  justClaimed = await seedScenario(db.sql, 'just_claimed', user);
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
  // Lookups are counted below: no cache warm-up (it would answer them all from the cache).
  guard = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_WORKERS: '2', REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
});

afterAll(async () => {
  await guard?.stop();
  await standin?.close();
  await db?.sql.end();
});

describe('two proxy workers behind one control plane', () => {
  it('decides through the primary: 409 for spurious events, the genuine one passes', async () => {
    const spurious = await Promise.all(longClaimed.flatMap((s) => [connectReinit(guard.url, s.token), connectReinit(guard.url, s.token)]));
    expect(spurious.map((r) => r.status)).toEqual(Array(12).fill(409));
    expect((await connectReinit(guard.url, justClaimed.token)).status).toBe(200);
  });

  it('serves /metrics aggregated over workers, with one database lookup per workspace', async () => {
    const text = await (await fetch(`${guard.adminUrl}/metrics`)).text();
    expect(text).toMatch(/coder_reinit_guard_reinit_requests_total\{outcome="suppressed",reason="claim_already_handled"\} 12/);
    // 7 workspaces, each looked up once; the second agent of each shared or hit the cache.
    expect(text).toMatch(/coder_reinit_guard_verdict_cache_total\{result="miss"\} 7/);
    expect((await fetch(`${guard.adminUrl}/readyz`)).status).toBe(200);
  });

  it('stops on SIGTERM with exit status 0', async () => {
    expect(await guard.stop()).toBe(0);
  });
});

/** The primary's proxy workers (its child processes), by pid. */
const workerPids = (primary: GuardProcess): number[] =>
  readFileSync(`/proc/${primary.child.pid}/task/${primary.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);

const readyz = async (g: GuardProcess) => (await fetch(`${g.adminUrl}/readyz`)).json() as Promise<Record<string, unknown>>;

describe('several workers share retirement, mode and verdicts, through worker restarts', () => {
  let fixed: Standin;
  const extra: GuardProcess[] = [];
  beforeAll(async () => {
    fixed = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300, version: 'v2.35.1+8b44bd6' });
  });
  afterAll(async () => {
    for (const g of extra) await g.stop();
    await fixed?.close();
  });

  /** Kills one worker and waits until the primary has a fresh one listening. */
  const restartOneWorker = async (g: GuardProcess) => {
    const [victim] = workerPids(g);
    process.kill(victim!, 'SIGKILL');
    await waitFor(() => !workerPids(g).includes(victim!), 5000, 'the worker to die');
    await waitFor(async () => (await readyz(g)).proxy !== undefined && ((await readyz(g)).proxy as { listening: number }).listening === 2, 10_000, 'a new worker to listen');
    await waitFor(() => g.out.stdout.includes('proxy worker exited; starting another'), 2000, 'the restart to be logged');
  };

  it('a retired guard passes everything from every worker, also from a restarted one', async () => {
    const g = await startGuardProcess({ REINIT_GUARD_UPSTREAM: fixed.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_WORKERS: '2', REINIT_GUARD_RETIRE_AT: '>=2.35.1', REINIT_GUARD_RETIRE_POLL: '200ms' });
    extra.push(g);
    await waitFor(async () => (await readyz(g)).retired === true, 5000, 'retirement');
    // The stand-in is unpatched: through a retired guard its (spurious) event reaches every agent.
    const check = async () => {
      const rs = await Promise.all(longClaimed.slice(0, 4).map((s) => connectReinit(g.url, s.token)));
      rs.forEach((r, i) => expect(receivedClaim(r, longClaimed[i]!.workspaceId)).toBe(true));
    };
    await check();
    await restartOneWorker(g);
    await check();
    expect(await readyz(g)).toMatchObject({ ready: true, proxy: { workers: 2, listening: 2 } });
  });

  it('observe mode holds in every worker: events pass, would_suppress is counted', async () => {
    const g = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_WORKERS: '2', REINIT_GUARD_MODE: 'observe' });
    extra.push(g);
    const rs = await Promise.all(longClaimed.slice(0, 4).map((s) => connectReinit(g.url, s.token)));
    rs.forEach((r, i) => expect(receivedClaim(r, longClaimed[i]!.workspaceId)).toBe(true));
    await waitFor(async () => /reinit_requests_total\{outcome="would_suppress",reason="claim_already_handled"\} 4/.test(await (await fetch(`${g.adminUrl}/metrics`)).text()), 3000, 'would_suppress to be counted');
  });

  it('verdicts stay shared after a worker restart: no second lookup of a known workspace', async () => {
    const g = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_WORKERS: '2', REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
    extra.push(g);
    const all = async () => (await Promise.all(longClaimed.map((s) => connectReinit(g.url, s.token)))).map((r) => r.status);
    expect(await all()).toEqual(Array(longClaimed.length).fill(409));
    await restartOneWorker(g);
    expect(await all()).toEqual(Array(longClaimed.length).fill(409));
    const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
    expect(text).toMatch(new RegExp(`coder_reinit_guard_verdict_cache_total\\{result="miss"\\} ${longClaimed.length}\\n`));
  });
});
