import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit, receivedClaim } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { startFaultProxy, type FaultProxy } from '../../testkit/fault-proxy.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freePort } from '../../testkit/pg.js';
import { freshDatabase, startTestGuard, waitFor, type TestGuard } from '../support/env.js';

/**
 * Readiness says whether this pod can proxy, nothing more. In the takeover topology the
 * guard *is* the `coder` Service, and every replica shares coderd and the database: were
 * readiness to follow them, one lost database (a rotated password, a failover) would pull
 * every replica out of the Service and cut every user off a healthy coderd.
 */
let db: { url: string; sql: postgres.Sql };
let standin: Standin;
let seeded: Seeded;
const closers: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  db = await freshDatabase('readiness');
  seeded = await seedScenario(db.sql, 'long_claimed', await createUser(db.sql, 'rita'));
  standin = await startCoderdStandin({ pgUrl: db.url, pingIntervalMs: 300 });
});

afterAll(async () => {
  for (const c of closers.reverse()) await c();
  await standin?.close();
  await db?.sql.end();
});

type Readyz = { ready: boolean; draining: boolean; proxy: Record<string, unknown>; dependencies: Record<string, { up: boolean | null; detail: string | null }> };
const readyz = async (g: TestGuard) => {
  const r = await fetch(`${g.adminUrl}/readyz`);
  return { status: r.status, body: (await r.json()) as Readyz };
};

const start = async (env: Record<string, string>) => {
  const g = await startTestGuard({ REINIT_GUARD_PROBE_INTERVAL: '100ms', REINIT_GUARD_DB_TIMEOUT: '300ms', REINIT_GUARD_DB_CONNECT_TIMEOUT: '1s', ...env });
  closers.push(() => g.guard.close(100));
  return g;
};

const viaFaultProxy = async () => {
  const u = new URL(db.url);
  const proxy: FaultProxy = await startFaultProxy({ host: u.hostname, port: Number(u.port) });
  closers.push(() => proxy.close());
  u.port = String(proxy.port);
  return { proxy, url: u.toString() };
};

describe('readiness', () => {
  it('the database lost: still ready and still proxying; the loss is in the body, the gauge and one log line; its return too', async () => {
    const { proxy, url } = await viaFaultProxy();
    const g = await start({ REINIT_GUARD_UPSTREAM: standin.url, REINIT_GUARD_PG_URL: url });
    await waitFor(async () => (await readyz(g)).body.dependencies.database?.up === true, 5000, 'the database probe');
    // Judged once while the database is up (the warm-up may do it too, unless its 300 ms
    // deadline is too short on a busy machine): the verdict is final and cached.
    expect((await connectReinit(g.url, seeded.token)).status).toBe(409);
    // Log lines from here on: on a busy machine a first probe can miss its 300 ms deadline
    // before the database is first seen up, which is logged too, and rightly.
    const logged = (msg: string, was?: string) =>
      g.logs.entries().slice(before).filter((e) => e.msg === msg && e.dependency === 'database' && (was === undefined || e.was === was));
    const before = g.logs.entries().length;
    await proxy.setMode('refuse');
    await waitFor(async () => (await readyz(g)).body.dependencies.database?.up === false, 5000, 'the database to be seen down');
    const { status, body } = await readyz(g);
    expect(status).toBe(200);
    expect(body).toMatchObject({ ready: true, draining: false, proxy: { listening: true }, dependencies: { coderd: { up: true } } });
    expect(body.dependencies.database?.detail).toBeTruthy();
    expect(await g.metric('coder_reinit_guard_dependency_up', { dependency: 'database' })).toBe(0);
    expect(await g.metric('coder_reinit_guard_dependency_up', { dependency: 'coderd' })).toBe(1);
    // A workspace judged before is still judged from the cache; one never seen fails open:
    // the agent gets coderd's answer.
    expect((await connectReinit(g.url, seeded.token)).status).toBe(409);
    const unseen = await seedScenario(db.sql, 'long_claimed', seeded.ownerId);
    expect(receivedClaim(await connectReinit(g.url, unseen.token), unseen.workspaceId)).toBe(true);
    expect(logged('dependency down')).toHaveLength(1);

    await proxy.setMode('pass');
    await waitFor(async () => (await readyz(g)).body.dependencies.database?.up === true, 5000, 'the database to be seen back');
    expect(await g.metric('coder_reinit_guard_dependency_up', { dependency: 'database' })).toBe(1);
    expect(logged('dependency up', 'down')).toHaveLength(1);
    expect((await connectReinit(g.url, seeded.token)).status).toBe(409);
  });

  it('coderd unreachable: still ready; clients get the guard\'s clear 502, not a connection error', async () => {
    const g = await start({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${await freePort()}`, REINIT_GUARD_PG_URL: db.url });
    await waitFor(async () => (await readyz(g)).body.dependencies.coderd?.up === false, 5000, 'coderd to be seen down');
    const { status, body } = await readyz(g);
    expect(status).toBe(200);
    expect(body.ready).toBe(true);
    expect(await g.metric('coder_reinit_guard_dependency_up', { dependency: 'coderd' })).toBe(0);
    const res = await fetch(`${g.url}/api/v2/users/me`);
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ message: 'Failed to reach coderd.' });
    const down = g.logs.entries().filter((e) => e.msg === 'dependency down' && e.dependency === 'coderd');
    expect(down).toHaveLength(1);
    // The log says what clients get meanwhile.
    expect(String(down[0]?.effect)).toContain('clients get 502');
  });

  it('an upstream that is not coderd (404 on buildinfo) is reported as such; still ready and proxying', async () => {
    const other = http.createServer((req, res) => {
      res.writeHead(req.url === '/hello' ? 200 : 404, { 'Content-Type': 'text/plain' }).end(req.url === '/hello' ? 'hi' : 'not found');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => other.close(r)));
    const g = await start({ REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(other.address() as AddressInfo).port}`, REINIT_GUARD_PG_URL: db.url });
    await waitFor(async () => (await readyz(g)).body.dependencies.coderd?.up === false, 5000, 'the upstream to be judged');
    const { status, body } = await readyz(g);
    expect(status).toBe(200);
    expect(body.dependencies.coderd?.detail).toContain("answered /api/v2/buildinfo with 404 and no coderd version: is it coderd's address?");
    expect(await (await fetch(`${g.url}/hello`)).text()).toBe('hi');
    const down = g.logs.entries().find((e) => e.msg === 'dependency down' && e.dependency === 'coderd');
    expect(String(down?.detail)).toContain('REINIT_GUARD_UPSTREAM');
  });
});
