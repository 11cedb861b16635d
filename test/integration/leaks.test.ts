import http from 'node:http';
import { readdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type postgres from 'postgres';
import { startEchoUpstream, type EchoUpstream } from '../../testkit/echo-upstream.js';
import { freshDatabase, waitFor } from '../support/env.js';
import { startGuardProcess, type GuardProcess } from '../support/guard-process.js';

/**
 * 10,000 clients that leave at the worst moments: during the first-event peek of /reinit,
 * mid-upload and mid-download. Afterwards the guard (its own process) holds no more
 * sockets than before, coderd's side has nothing open, and memory has not run away.
 */
const CYCLES = 10_000;
const CONCURRENCY = 64;
let upstream: EchoUpstream;
let stall: http.Server;
let stallOpen = 0;
let guard: GuardProcess;
let db: { url: string; sql: postgres.Sql };

beforeAll(async () => {
  db = await freshDatabase('leaks');
  upstream = await startEchoUpstream();
  // The /reinit upstream: headers and half an event, then nothing: the guard is peeking.
  stall = http.createServer((req, res) => {
    if (req.url?.startsWith('/api/v2/workspaceagents/me/reinit')) {
      stallOpen++;
      res.once('close', () => stallOpen--);
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('event: data\ndata: {"workspace_id":');
      return;
    }
    // Everything else goes to the echo upstream's behaviour.
    const p = http.request({ port: upstream.port, host: '127.0.0.1', method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    p.on('error', () => res.destroy());
    res.once('close', () => p.destroy());
    req.pipe(p);
  });
  await new Promise<void>((r) => stall.listen(0, '127.0.0.1', r));
  guard = await startGuardProcess({
    REINIT_GUARD_UPSTREAM: `http://127.0.0.1:${(stall.address() as AddressInfo).port}`,
    REINIT_GUARD_PG_URL: db.url,
    REINIT_GUARD_PEEK_TIMEOUT: '30s',
  });
});

afterAll(async () => {
  await guard?.stop();
  stall?.closeAllConnections();
  stall?.close();
  await upstream?.close();
  await db?.sql.end();
});

const fds = () => readdirSync(`/proc/${guard.child.pid}/fd`).length;

/** One client that leaves at a bad moment; resolves once it has left. */
function cycle(i: number): Promise<void> {
  return new Promise((resolve) => {
    const kind = i % 3;
    const agent = false;
    if (kind === 0) {
      const req = http.get(`${guard.url}/api/v2/workspaceagents/me/reinit?wait=true`, { agent, headers: { 'Coder-Session-Token': 'x' } });
      req.on('error', () => resolve());
      // The guard sends nothing while it peeks: leave after coderd answered it.
      setTimeout(() => (req.destroy(), resolve()), 5);
    } else if (kind === 1) {
      const req = http.request(`${guard.url}/echo`, { method: 'POST', agent, headers: { 'Content-Length': String(1 << 20) } });
      req.on('error', () => resolve());
      req.write(Buffer.alloc(64 * 1024), () => setTimeout(() => (req.destroy(), resolve()), 2));
    } else {
      const req = http.get(`${guard.url}/download?bytes=${8 << 20}`, { agent }, (res) => {
        res.once('data', () => (req.destroy(), resolve()));
      });
      req.on('error', () => resolve());
    }
  });
}

describe('clients leaving at the worst moments', () => {
  it(`${CYCLES} cycles leave no socket, no upstream request and no runaway memory behind`, async () => {
    for (let i = 0; i < 30; i++) await cycle(i); // warm up pools and JIT
    await waitFor(() => upstream.open === 0 && stallOpen === 0, 10_000, 'warm-up to settle');
    const before = { fds: fds(), rss: guard.memory().rss };
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < CYCLES) await cycle(next++);
      }),
    );
    await waitFor(() => upstream.open === 0 && stallOpen === 0, 15_000, "coderd's side to be released");
    await waitFor(() => fds() <= before.fds + 8, 15_000, `guard sockets to return to ${before.fds} (now ${fds()})`);
    const after = { fds: fds(), rss: guard.memory().rss };
    expect(after.fds).toBeLessThanOrEqual(before.fds + 8);
    expect(after.rss - before.rss).toBeLessThan(96 * 1024 * 1024);
    // And it still works.
    expect((await fetch(`${guard.url}/echo`)).status).toBe(200);
    process.stdout.write(`leaks: fds ${before.fds} -> ${after.fds}, rss ${Math.round(before.rss / 2 ** 20)} -> ${Math.round(after.rss / 2 ** 20)} MiB\n`);
  }, 300_000); // 10,000 cycles take 40-60 s on two quiet cores, past 120 s on two busy ones
});
