import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase } from '../support/env.js';
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
  guard = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_WORKERS: '2' });
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
