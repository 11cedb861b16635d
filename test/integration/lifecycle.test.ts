import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import WebSocket from 'ws';
import { connectReinit } from '../../testkit/agent-client.js';
import { startCoderdStandin, type Standin } from '../../testkit/coderd-standin.js';
import { startEchoUpstream, type EchoUpstream } from '../../testkit/echo-upstream.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase, startTestGuard, waitFor, type TestGuard } from '../support/env.js';

let db: { url: string; sql: postgres.Sql };
let longClaimed: Seeded;
const closers: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  db = await freshDatabase('lifecycle');
  longClaimed = await seedScenario(db.sql, 'long_claimed', await createUser(db.sql, 'erin'));
});

afterAll(async () => {
  for (const c of closers.reverse()) await c();
  await db?.sql.end();
});

const standin = async (version: string): Promise<Standin> => {
  const s = await startCoderdStandin({ pgUrl: db.url, version, pingIntervalMs: 300 });
  closers.push(() => s.close());
  return s;
};
const guardFor = async (s: Standin, env: Record<string, string> = {}): Promise<TestGuard> => {
  const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: s.url, REINIT_GUARD_PG_URL: db.url, REINIT_GUARD_RETIRE_POLL: '100ms', ...env });
  closers.push(() => g.guard.close(100));
  return g;
};
const readyz = async (g: TestGuard) => (await fetch(`${g.adminUrl}/readyz`)).json() as Promise<Record<string, unknown>>;

describe('retirement', () => {
  it('an unpatched coderd keeps the guard working and is reported in metrics', async () => {
    const g = await guardFor(await standin('v2.34.5+abc1234'), { REINIT_GUARD_RETIRE_AT: '>=2.34.6' });
    await waitFor(async () => (await readyz(g)).coderd_version === 'v2.34.5+abc1234', 3000, 'the version to be read');
    expect(await readyz(g)).toMatchObject({ mode: 'enforce', effective_mode: 'enforce', retired: false, retire_at: '>=2.34.6' });
    expect((await connectReinit(g.url, longClaimed.token)).status).toBe(409);
    const text = await (await fetch(`${g.adminUrl}/metrics`)).text();
    expect(text).toMatch(/coder_reinit_guard_info\{version="[^"]+",mode="enforce",coderd_version="v2.34.5\+abc1234"\} 1/);
    expect(text).toMatch(/coder_reinit_guard_retired 0/);
  });

  it('a fixed coderd retires the guard: it passes everything, says so once, in logs, metrics and /readyz', async () => {
    const g = await guardFor(await standin('v2.34.6+0a1b2c3'), { REINIT_GUARD_RETIRE_AT: '>=2.34.6' });
    await waitFor(async () => (await readyz(g)).retired === true, 3000, 'retirement');
    const r = await connectReinit(g.url, longClaimed.token);
    expect(r.status).toBe(200); // the (patched) coderd's answer, unchanged: here the stand-in's
    expect(await readyz(g)).toMatchObject({ effective_mode: 'off', retired: true, coderd_version: 'v2.34.6+0a1b2c3' });
    await new Promise((res) => setTimeout(res, 350)); // a few more polls
    const notes = g.logs.entries().filter((e) => String(e.msg).includes('can be removed'));
    expect(notes).toHaveLength(1);
    expect(await g.metric('coder_reinit_guard_retired')).toBe(1);
  });
});

describe('graceful shutdown', () => {
  let upstream: EchoUpstream;
  beforeAll(async () => {
    upstream = await startEchoUpstream();
    closers.push(() => upstream.close());
  });

  it('stops accepting, lets a request finish, then closes streams and tunnels', async () => {
    const g = await startTestGuard({ REINIT_GUARD_UPSTREAM: upstream.url, REINIT_GUARD_MODE: 'off' });
    const port = g.guard.proxyAddress.port;
    // A long-lived SSE stream and a WebSocket tunnel.
    const sseClosed = new Promise<void>((resolve) => {
      http.get(`${g.url}/sse?gaps=0,60000`, (res) => {
        res.resume();
        res.on('close', resolve);
      }).on('error', () => resolve());
    });
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
    await new Promise((r, j) => ws.once('open', r).once('error', j));
    const wsClosed = new Promise<void>((r) => ws.once('close', () => r()));
    // An upload still in flight when SIGTERM comes.
    const upload = new Promise<number>((resolve, reject) => {
      const req = http.request(`${g.url}/echo`, { method: 'POST', headers: { 'Content-Length': '10' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.write('hello');
      setTimeout(() => req.end('world'), 150);
    });
    await waitFor(() => upstream.open >= 2, 3000, 'requests to reach coderd');

    const started = performance.now();
    const closing = g.guard.close(400);
    await new Promise((r) => setTimeout(r, 20));
    expect((await fetch(`${g.adminUrl}/readyz`)).status).toBe(503);
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(false)));
      s.once('error', () => resolve(true));
    });
    expect(refused).toBe(true);
    expect(await upload).toBe(200);
    await Promise.all([sseClosed, wsClosed, closing]);
    const took = performance.now() - started;
    expect(took).toBeGreaterThanOrEqual(380);
    expect(took).toBeLessThan(3000);
  });
});
