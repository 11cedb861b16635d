import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { runAudit, type AuditReport } from '../../src/audit/index.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { createUser, seedScenario, type Scenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { freshDatabase } from '../support/env.js';
import { spawnEntryPoint } from '../support/guard-process.js';

let db: { url: string; sql: postgres.Sql };
let empty: { url: string; sql: postgres.Sql };
const seeded: Seeded[] = [];
const standins: Standin[] = [];

const plan: Array<[Scenario, number]> = [
  ['long_claimed', 3],
  ['latest_stop', 1],
  ['claim_failed_retried', 1],
  ['just_claimed', 2],
  ['claim_failed', 1],
  ['claim_running', 1],
  ['unclaimed_prebuild', 2],
  ['regular', 2],
];

beforeAll(async () => {
  db = await freshDatabase('audit');
  const users = [await createUser(db.sql, 'hana'), await createUser(db.sql, 'ivan')];
  let i = 0;
  for (const [scenario, n] of plan) for (let k = 0; k < n; k++) seeded.push(await seedScenario(db.sql, scenario, users[i++ % 2]!, `${scenario}-${k}`));
  // A deleted workspace is not counted.
  const gone = await seedScenario(db.sql, 'long_claimed', users[0]!, 'deleted-one');
  await db.sql`UPDATE workspaces SET deleted = true WHERE id = ${gone.workspaceId}`;
  empty = await freshDatabase('audit_empty');
  await seedScenario(empty.sql, 'just_claimed', await createUser(empty.sql, 'jo'), 'fine');
});

afterAll(async () => {
  for (const s of standins) await s.close();
  await db?.sql.end();
  await empty?.sql.end();
});

const audit = async (argv: string[], env: Record<string, string>) => {
  let out = '';
  let err = '';
  const code = await runAudit(argv, env, { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
};

/** The real entry point, as `node dist/main.js audit` runs in the image. */
const auditProcess = async (argv: string[], env: Record<string, string>) => {
  const { out, exited } = spawnEntryPoint(env, ['audit', ...argv]);
  const code = await exited;
  return { code, out: out.stdout, err: out.stderr };
};

describe('audit', () => {
  it('counts every category over non-deleted workspaces', async () => {
    const { code, out } = await audit(['--json'], { REINIT_GUARD_PG_URL: db.url });
    expect(code).toBe(1);
    const report = JSON.parse(out) as AuditReport;
    expect(report.counts).toEqual({ workspaces: 13, claimed: 9, affected: 5, claimBuildLatest: 2, claimFailed: 1, claimInProgress: 1, unclaimedPrebuilds: 2 });
    const affectedIds = seeded.filter((s) => ['long_claimed', 'latest_stop', 'claim_failed_retried'].includes(s.scenario)).map((s) => s.workspaceId).sort();
    expect(report.affected.map((a) => a.workspace_id).sort()).toEqual(affectedIds);
    const stop = report.affected.find((a) => a.workspace_name === 'latest_stop-0')!;
    expect(stop).toMatchObject({ latest_build_number: 3, latest_transition: 'stop', latest_job_status: 'succeeded' });
    expect(['hana', 'ivan']).toContain(stop.owner_username);
    expect(stop.claimed_at).toBeTruthy();
  });

  it('prints a table limited by --limit, saying how many are left out', async () => {
    const { code, out } = await audit(['--limit', '2'], { REINIT_GUARD_PG_URL: db.url });
    expect(code).toBe(1);
    expect(out).toMatch(/affected \(latest build is not the claim\): 5/);
    expect(out).toContain('affected workspaces (first 2 of 5; --limit to see more):');
    expect(out).toMatch(/workspace id\s+owner\s+workspace\s+latest build\s+claimed at/);
    expect(out.split('\n').filter((l) => /^[0-9a-f]{8}-/.test(l))).toHaveLength(2);
  });

  it('reports coderd version: affected, fixed, or outside the bug', async () => {
    for (const [version, retireAt, affected] of [
      ['v2.34.5+abc1234', '>=2.34.6', true],
      ['v2.34.6+def5678', '>=2.34.6', false],
      ['v2.32.9', '', false],
      // Read from the releases' sources: 2.34.3 has the bug, 2.35.1 the fix, between unknown.
      ['v2.34.3+4653f32', '', true],
      ['v2.35.1+8b44bd6', '', false],
      ['v2.34.5+abc1234', '', null],
      // The default range (>=2.35.1) says nothing about the releases between.
      ['v2.34.5+abc1234', undefined, null],
      ['v2.35.1+8b44bd6', undefined, false],
      ['v2.34.3+4653f32', undefined, true],
    ] as const) {
      const s = await startCoderdStandin({ pgUrl: db.url, version });
      standins.push(s);
      const { out } = await audit(['--json', '--limit', '0'], { REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_UPSTREAM: s.url, ...(retireAt === undefined ? {} : { REINIT_GUARD_RETIRE_AT: retireAt }) });
      expect((JSON.parse(out) as AuditReport).coderd).toMatchObject({ version, affected });
    }
  });

  it('exit 0 when nothing is affected (process entry point)', async () => {
    const r = await auditProcess([], { CODER_PG_CONNECTION_URL: empty.url });
    expect(r.code).toBe(0);
    expect(r.out).toContain('No workspace is affected.');
  });

  it('exit 1 when some are (process entry point)', async () => {
    expect((await auditProcess(['--limit', '1'], { REINIT_GUARD_PG_URL: db.url })).code).toBe(1);
  });

  it('takes the database as separate PG* variables too (process entry point, no URL)', async () => {
    const u = new URL(db.url);
    const pg = { PGHOST: u.hostname, PGPORT: u.port, PGDATABASE: u.pathname.slice(1), PGUSER: decodeURIComponent(u.username), PGPASSWORD: decodeURIComponent(u.password), PGSSLMODE: 'disable' };
    const r = await auditProcess(['--json', '--limit', '0'], pg);
    expect(r.err).toBe('');
    expect(r.code).toBe(1);
    expect((JSON.parse(r.out) as AuditReport).counts.affected).toBe(5);
    // Unreachable: the message names the database without its password.
    const down = await auditProcess([], { ...pg, PGPORT: String(await freePort()), PGPASSWORD: 'hunter2-secret' });
    expect(down.code).toBe(2);
    expect(down.err).toMatch(/^audit: cannot reach PostgreSQL \(ECONNREFUSED.*\(from PGHOST and the other PG\* variables\)\]$/m);
    expect(down.err + down.out).not.toContain('hunter2-secret');
  });

  it('exit 2 with a clear message, no password, when the database is unreachable', async () => {
    const r = await auditProcess([], { REINIT_GUARD_PG_URL: `postgres://guard:hunter2-secret@127.0.0.1:${await freePort()}/coder` });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^audit: cannot reach PostgreSQL \(ECONNREFUSED/);
    expect(r.err + r.out).not.toContain('hunter2-secret');
    expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('exit 2 naming the missing grant for a guard-only role; the README grants are enough', async () => {
    const role = `audit_${randomBytes(3).toString('hex')}`;
    const password = randomBytes(9).toString('hex');
    const guardSql = (await readFile(new URL('../../sql/least-privilege-role.sql', import.meta.url), 'utf8')).replaceAll('coder_reinit_guard', role);
    await db.sql.unsafe(guardSql);
    await db.sql.unsafe(`ALTER ROLE ${role} PASSWORD '${password}'`);
    const url = new URL(db.url);
    url.username = role;
    url.password = password;
    const denied = await auditProcess([], { REINIT_GUARD_PG_URL: url.toString() });
    expect(denied.code).toBe(2);
    expect(denied.err).toMatch(/may not read (workspaces|users|workspace_builds|provisioner_jobs): apply sql\/audit-grants\.sql/);
    expect(denied.err).not.toContain(password);
    await db.sql.unsafe((await readFile(new URL('../../sql/audit-grants.sql', import.meta.url), 'utf8')).replaceAll('coder_reinit_guard', role));
    const ok = await auditProcess(['--json'], { REINIT_GUARD_PG_URL: url.toString() });
    expect(ok.code).toBe(1);
    expect((JSON.parse(ok.out) as AuditReport).counts.affected).toBe(5);
  });

  it('rejects unknown arguments with usage, exit 2', async () => {
    const r = await audit(['--frobnicate'], { REINIT_GUARD_PG_URL: db.url });
    expect(r.code).toBe(2);
    expect(r.err).toContain('usage: coder-reinit-guard audit');
  });
});
