import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario } from '../../testkit/fixtures.js';
import { freshDatabase } from '../support/env.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

/**
 * The database given as separate libpq variables (PGHOST, PGPORT, PGDATABASE, PGUSER,
 * PGPASSWORD, PGSSLMODE), as the Helm chart sets them from reinitGuard.db.host etc. and a
 * password Secret key: the guard, its own process with no REINIT_GUARD_PG_URL and no
 * CODER_PG_CONNECTION_URL in its environment, reaches the database and decides.
 */
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
const guards: GuardProcess[] = [];

/** The PG* variables that name the same database as `url`. */
const pgEnv = (url: string): Record<string, string> => {
  const u = new URL(url);
  return {
    PGHOST: u.hostname,
    PGPORT: u.port,
    PGDATABASE: u.pathname.slice(1),
    PGUSER: decodeURIComponent(u.username),
    PGPASSWORD: decodeURIComponent(u.password),
  };
};

const metric = async (g: GuardProcess, name: string, labels: Record<string, string>) => {
  const text = await fetch(`${g.adminUrl}/metrics`).then((r) => r.text());
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && want.every((w) => l.includes(w)))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
};

beforeAll(async () => {
  db = await freshDatabase('pgenv');
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
});

afterAll(async () => {
  for (const g of guards) await g.stop();
  await standin?.close();
  await db?.sql.end();
});

describe('database credentials as separate PG* variables, no URL', () => {
  it.each([['disable'], ['prefer']])('PGSSLMODE=%s: the guard decides from the database (a spurious reinit answered 409)', async (sslmode) => {
    const g = await startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, ...pgEnv(db.url), PGSSLMODE: sslmode });
    guards.push(g);
    expect(g.out.stdout).toContain('(from PGHOST and the other PG* variables)');
    expect(g.out.stdout + g.out.stderr).not.toContain(pgEnv(db.url).PGPASSWORD);

    const user = await createUser(db.sql, `pgenv-${sslmode}`);
    const spurious = await seedScenario(db.sql, 'long_claimed', user);
    const r = await connectReinit(g.url, spurious.token);
    expect(r.status).toBe(409);
    expect(await metric(g, 'coder_reinit_guard_reinit_requests_total', { outcome: 'suppressed' })).toBe(1);
    expect(await metric(g, 'coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open' })).toBe(0);
  });

  it('with neither a URL nor PGHOST the guard refuses to start and names both ways', async () => {
    await expect(startGuardProcess({ REINIT_GUARD_UPSTREAM: standin.url, PGUSER: 'guard' })).rejects.toThrow(
      /REINIT_GUARD_PG_URL is not set: set either it \(or CODER_PG_CONNECTION_URL\) to coderd's PostgreSQL URL, or PGHOST/,
    );
  });
});
