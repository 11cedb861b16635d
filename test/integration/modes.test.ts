import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import postgres from 'postgres';
import { createDbClient } from '../../src/db/client.js';
import { PREBUILDS_USER_ID, STAGE } from '../../src/reinit/verdict.js';
import { connectReinit, receivedClaim } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { addAgent, addBuild, createUser, createWorkspace, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase, startTestGuard, type TestGuard } from '../support/env.js';

const PING_MS = 300;
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let user: string;
let longClaimed: Seeded;
let justClaimed: Seeded;
const guards: TestGuard[] = [];
const servers: net.Server[] = [];

const start = async (env: Record<string, string>) => {
  const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: standin.url, ...env });
  guards.push(g);
  return g;
};

/** A TCP server on loopback that counts connections and, if asked, never answers. */
const tcpSink = async () => {
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => sockets.push(s));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, sockets };
};

beforeAll(async () => {
  db = await freshDatabase('modes');
  user = await createUser(db.sql, 'bob');
  longClaimed = await seedScenario(db.sql, 'long_claimed', user);
  justClaimed = await seedScenario(db.sql, 'just_claimed', user);
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: PING_MS });
});

afterAll(async () => {
  for (const g of guards) await g.guard.close(100);
  for (const s of servers) s.close();
  await standin?.close();
  await db?.sql.end();
});

describe('observe mode', () => {
  it('alters nothing, but logs and counts what enforce would do', async () => {
    const g = await start({ REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_MODE: 'observe' });
    const direct = await connectReinit(standin.url, longClaimed.token);
    const viaGuard = await connectReinit(g.url, longClaimed.token);
    expect(viaGuard.status).toBe(200);
    expect(viaGuard.body.equals(direct.body)).toBe(true);
    await expect.poll(() => g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'would_suppress' })).toBe(1);
    const line = g.logs.entries().find((e) => e.workspace_id === longClaimed.workspaceId);
    expect(line).toMatchObject({ outcome: 'would_suppress', mode: 'observe' });
  });
});

describe('off mode', () => {
  it('is a pure pass-through and never connects to the database', async () => {
    const sink = await tcpSink();
    const g = await start({ REINIT_GUARD_PG_URL: `postgres://u:secret@127.0.0.1:${sink.port}/coder`, REINIT_GUARD_MODE: 'off' });
    const r = await connectReinit(g.url, longClaimed.token);
    expect(r.status).toBe(200);
    expect(r.body.toString()).toContain('"reason":"prebuild_claimed"');
    const ready = await fetch(`${g.adminUrl}/readyz`).then((x) => x.json() as Promise<{ dependencies: Record<string, unknown> }>);
    expect(Object.keys(ready.dependencies)).toEqual(['coderd']);
    expect(sink.sockets).toHaveLength(0);
  });
});

describe('database failures fail open within the deadline', () => {
  it.each([
    ['refused', async () => {
      const s = await tcpSink();
      await new Promise<void>((r) => servers.pop()!.close(() => r()));
      return s.port; // nothing listens there any more
    }],
    ['black-holed', async () => (await tcpSink()).port],
  ])('database %s: the seeded event passes, logged and counted', async (_kind, portOf) => {
    const port = await portOf();
    const g = await start({ REINIT_GUARD_PG_URL: `postgres://guard:hunter2@127.0.0.1:${port}/coder`, REINIT_GUARD_DB_TIMEOUT: '400ms', REINIT_GUARD_DB_CONNECT_TIMEOUT: '1s' });
    const r = await connectReinit(g.url, longClaimed.token);
    expect(receivedClaim(r, longClaimed.workspaceId)).toBe(true);
    expect(r.totalMs).toBeLessThan(400 + 600);
    expect(await g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open' })).toBe(1);
    const line = g.logs.entries().find((e) => e.outcome === 'failed_open');
    expect(line).toMatchObject({ level: 'warn', workspace_id: longClaimed.workspaceId });
    expect(g.logs.text()).not.toContain('hunter2');
    expect(g.logs.text()).not.toContain(longClaimed.token);
  });

  it('job input from older releases (legacy keys, no stage) is judged as the fixed coderd judges it', async () => {
    // coder 2.35.1 ignores is_prebuild / prebuild_claimed_by (stage NONE): a user's build
    // means the claim was handled (fidelity/: "legacy job input" rows).
    const g = await start({ REINIT_GUARD_PG_URL: db.url });
    const ws = await createWorkspace(db.sql, user, 'legacy');
    await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, input: { is_prebuild: true } });
    const { jobId } = await addBuild(db.sql, ws, { initiator: user, input: { prebuild_claimed_by: user } });
    const token = await addAgent(db.sql, jobId);
    const r = await connectReinit(g.url, token);
    expect(r.status).toBe(409);
    expect(receivedClaim(r, ws)).toBe(false);
    expect(g.logs.entries().find((e) => e.workspace_id === ws)).toMatchObject({ outcome: 'suppressed', reason: 'claim_already_handled' });
  });

  it('claim build not created yet: the seeded event is held back and the stream goes on', async () => {
    const g = await start({ REINIT_GUARD_PG_URL: db.url });
    // Owner already changed, but the latest build is still the prebuild's own.
    const ws = await createWorkspace(db.sql, user, 'racing-claim');
    const { jobId } = await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, stage: STAGE.CREATE });
    const token = await addAgent(db.sql, jobId);
    const r = await connectReinit(g.url, token, { until: (b) => b.includes('event: ping') });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('event: ping\n\n');
    expect(r.headMs).toBeGreaterThanOrEqual(PING_MS * 0.8);
  });

  it('a held stream ends cleanly after REINIT_GUARD_HOLD_MAX, so the agent asks again', async () => {
    const g = await start({ REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_HOLD_MAX: '300ms' });
    const ws = await createWorkspace(db.sql, user, 'racing-claim-2');
    const { jobId } = await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, stage: STAGE.CREATE });
    const r = await connectReinit(g.url, await addAgent(db.sql, jobId), { until: () => false, timeoutMs: 5000 });
    expect(r.status).toBe(200);
    expect(r.stopped).toBe('ended');
    expect(r.body.toString()).not.toContain('prebuild_claimed');
    expect(r.totalMs).toBeGreaterThanOrEqual(250);
  });

  it('a held stream is released once the claim build exists, and the reconnecting agent gets the genuine claim', async () => {
    // Found with the real coderd (fidelity/): a patched coderd sends the claim when the claim
    // build completes; the unpatched one, having seeded, never will on this stream.
    const g = await start({ REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_HOLD_MAX: '60s', REINIT_GUARD_HOLD_RECHECK: '100ms' });
    const ws = await createWorkspace(db.sql, user, 'racing-claim-3');
    const { jobId } = await addBuild(db.sql, ws, { initiator: PREBUILDS_USER_ID, stage: STAGE.CREATE });
    const token = await addAgent(db.sql, jobId);
    const held = connectReinit(g.url, token, { until: () => false, timeoutMs: 10_000 });
    await expect.poll(() => g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'held' })).toBe(1);
    // Still held while nothing changed: rechecks go to the database, not the cache.
    await new Promise((r) => setTimeout(r, 400));
    expect(await g.metric('coder_reinit_guard_holds_released_total', { reason: 'claim_build_is_latest' })).toBe(0);
    await addBuild(db.sql, ws, { initiator: user, stage: STAGE.CLAIM });
    const r = await held;
    expect(r.status).toBe(200);
    expect(r.stopped).toBe('ended');
    expect(r.body.toString()).not.toContain('prebuild_claimed');
    expect(await g.metric('coder_reinit_guard_holds_released_total', { reason: 'claim_build_is_latest' })).toBe(1);
    expect(g.logs.entries().find((e) => e.msg === 'held reinit stream released')).toMatchObject({ workspace_id: ws, reason: 'claim_build_is_latest' });
    // The agent asks again at once and is judged afresh: the claim is now genuine.
    expect(receivedClaim(await connectReinit(g.url, token), ws)).toBe(true);
  });
});

/** A new role made by the README's least-privilege script, and its database URL. */
async function leastPrivilegeRole(prefix: string): Promise<{ role: string; url: string; password: string }> {
  const role = `${prefix}_${randomBytes(3).toString('hex')}`;
  const password = randomBytes(9).toString('hex');
  const script = (await readFile(new URL('../../sql/least-privilege-role.sql', import.meta.url), 'utf8'))
    .replaceAll('coder_reinit_guard', role);
  expect(script).not.toMatch(/\bPASSWORD\b/); // no password is ever written in the script
  // Twice: the script is idempotent, so an operator can re-run it after an upgrade.
  await db.sql.unsafe(script);
  await db.sql.unsafe(script);
  // The password is set apart from the script, as the docs say (psql's \password does this).
  await db.sql.unsafe(`ALTER ROLE ${role} PASSWORD '${password}'`);
  const url = new URL(db.url);
  url.username = role;
  url.password = password;
  return { role, url: url.toString(), password };
}

describe('database access', () => {
  it("the README's least-privilege role is enough for every decision", async () => {
    const { url, password } = await leastPrivilegeRole('guard');
    const g = await start({ REINIT_GUARD_PG_URL: url });
    expect((await connectReinit(g.url, longClaimed.token)).status).toBe(409);
    expect((await connectReinit(g.url, justClaimed.token)).status).toBe(200);
    expect(await g.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open' })).toBe(0);
    const ready = await fetch(`${g.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    // The cache warm-up runs under the same grants.
    await expect.poll(() => g.logs.entries().find((e) => e.msg === 'verdict cache warmed' || e.msg === 'verdict cache warm-up failed')?.msg).toBe('verdict cache warmed');
  });

  it('a role missing a grant fails open, and the log names the missing privilege', async () => {
    const role = `noguard_${randomBytes(3).toString('hex')}`;
    const password = randomBytes(9).toString('hex');
    await db.sql.unsafe(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'; GRANT SELECT ON workspace_builds TO ${role}`);
    const url = new URL(db.url);
    url.username = role;
    url.password = password;
    const g = await start({ REINIT_GUARD_PG_URL: url.toString() });
    expect(receivedClaim(await connectReinit(g.url, longClaimed.token), longClaimed.workspaceId)).toBe(true);
    const line = g.logs.entries().find((e) => e.outcome === 'failed_open');
    expect(line).toMatchObject({ reason: 'db_privilege' });
    expect(String(line?.detail)).toContain('permission denied for table provisioner_jobs');
    expect(String(line?.detail)).toContain('apply sql/least-privilege-role.sql');
    expect(g.logs.text()).not.toContain(password);
  });

  it('a revoked grant shows in /readyz, the gauge and the log within one probe, naming the grant file; still ready', async () => {
    const { role, url, password } = await leastPrivilegeRole('revoked');
    const g = await start({ REINIT_GUARD_PG_URL: url, REINIT_GUARD_PROBE_INTERVAL: '100ms' });
    type Readyz = { ready: boolean; dependencies: Record<string, { up: boolean | null; detail: string | null }> };
    const readyz = async () => (await (await fetch(`${g.adminUrl}/readyz`)).json()) as Readyz;
    await expect.poll(async () => (await readyz()).dependencies.database?.up, { timeout: 10_000 }).toBe(true);
    await db.sql.unsafe(`REVOKE SELECT (id, input) ON provisioner_jobs FROM ${role}`);
    await expect.poll(async () => (await readyz()).dependencies.database?.up, { timeout: 10_000 }).toBe(false);
    const body = await readyz();
    expect(body.ready).toBe(true);
    expect(body.dependencies.database?.detail).toContain('apply sql/least-privilege-role.sql');
    expect(await g.metric('coder_reinit_guard_dependency_up', { dependency: 'database' })).toBe(0);
    const down = g.logs.entries().find((e) => e.msg === 'dependency down' && e.dependency === 'database');
    expect(String(down?.detail)).toContain('sql/least-privilege-role.sql');
    expect(String(down?.effect)).toContain('fails open');
    expect(g.logs.text()).not.toContain(password);
  });

  it("the guard's session is read-only even for a role that could write", async () => {
    const sql = createDbClient({ url: db.url, poolSize: 1, statementTimeoutMs: 2000, connectTimeoutMs: 2000 });
    try {
      await expect(sql`UPDATE workspaces SET name = name`).rejects.toMatchObject({ code: '25006' });
      const [row] = await sql<{ application_name: string; timeout: string }[]>`
        SELECT current_setting('application_name') AS application_name, current_setting('statement_timeout') AS timeout`;
      expect(row).toEqual({ application_name: 'coder-reinit-guard', timeout: '2s' });
    } finally {
      await sql.end();
    }
  });
});
