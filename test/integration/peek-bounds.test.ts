import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { connectReinit } from '../../testkit/agent-client.js';
import { createUser, seedScenario, type Seeded } from '../../testkit/fixtures.js';
import { freshDatabase, startTestGuard, type TestGuard } from '../support/env.js';

/**
 * A scripted upstream: `/reinit?wait=true&case=NAME` answers with the bytes of that case,
 * so the guard's first-event reader meets framing coderd itself never produces.
 */
let seeded: Seeded;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const claim = () => `{"workspace_id":"${seeded.workspaceId}","reason":"prebuild_claimed","owner_id":"${seeded.ownerId}"}`;
const BIG = `data: ${'x'.repeat(100 * 1024)}`;

const cases: Record<string, (res: http.ServerResponse) => Promise<void>> = {
  async oversized(res) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write(BIG);
    await sleep(50);
    res.end('\n\n');
  },
  async stall(res) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.write('event: da');
    await sleep(600);
    res.end('ta\ndata: {}\n\n');
  },
  async split(res) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    for (const ch of `event: data\r\ndata: ${claim()}\r\n\r\n`) {
      res.write(ch);
      await sleep(1);
    }
  },
  async 'error-event'(res) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.end('event: error\ndata: {"message":"boom"}\n\n');
  },
  async 'not-sse'(res) {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(`event: data\ndata: ${claim()}\n\n`);
  },
  async 'bad-json'(res) {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.end('event: data\ndata: {"workspace_id":\n\n');
  },
};

let server: http.Server;
let db: { url: string; sql: postgres.Sql };
let guard: TestGuard;
let patient: TestGuard;

beforeAll(async () => {
  db = await freshDatabase('peek');
  seeded = await seedScenario(db.sql, 'long_claimed', await createUser(db.sql, 'carol'));
  server = http.createServer((req, res) => {
    const name = new URL(req.url ?? '/', 'http://x').searchParams.get('case') ?? '';
    void cases[name]?.(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  guard = await startTestGuard({
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    REINIT_GUARD_PG_URL: db.url,
    REINIT_GUARD_PEEK_MAX_BYTES: '4KiB',
    REINIT_GUARD_PEEK_TIMEOUT: '300ms',
  });
  // Odd framing is about parsing, not time: 156 one-byte writes 1 ms apart can take longer
  // than 300 ms on a busy machine, and would then fail open for the wrong reason.
  patient = await startTestGuard({
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    REINIT_GUARD_PG_URL: db.url,
    REINIT_GUARD_PEEK_MAX_BYTES: '4KiB',
    REINIT_GUARD_PEEK_TIMEOUT: '30s',
  });
});

afterAll(async () => {
  await guard?.guard.close(100);
  await patient?.guard.close(100);
  server?.closeAllConnections();
  server?.close();
  await db?.sql.end();
});

const through = (name: string, until?: (b: string) => boolean, via: TestGuard = guard) =>
  connectReinit(via.url, seeded.token, { extraQuery: `case=${name}`, until: until ?? ((b) => b.endsWith('\n\n')) });

describe('the first-event read is bounded and fails open', () => {
  it('a first line larger than the bound passes unchanged', async () => {
    const r = await through('oversized');
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(`${BIG}\n\n`);
    expect(await guard.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open', reason: 'peek_too_large' })).toBe(1);
  });

  it('an event that never completes passes after the time bound, then the rest follows', async () => {
    const r = await through('stall');
    expect(r.body.toString()).toBe('event: data\ndata: {}\n\n');
    expect(r.headMs).toBeGreaterThanOrEqual(280);
    expect(r.headMs).toBeLessThan(600);
    expect(await guard.metric('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open', reason: 'peek_timeout' })).toBe(1);
  });
});

describe('odd framing from the upstream', () => {
  it('a seeded event split into one-byte writes with CRLF is still recognised', async () => {
    const r = await through('split', undefined, patient);
    expect(r.status).toBe(409);
  });

  it.each([
    ['error-event', 'event: error\ndata: {"message":"boom"}\n\n'],
    ['bad-json', 'event: data\ndata: {"workspace_id":\n\n'],
  ])('%s passes unchanged', async (name, body) => {
    const r = await through(name, undefined, patient);
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(body);
  });

  it('a 200 that is not an event stream passes unchanged', async () => {
    const r = await through('not-sse', undefined, patient);
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.body.toString()).toBe(`event: data\ndata: ${claim()}\n\n`);
  });
});
