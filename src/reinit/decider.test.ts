import { randomUUID } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Queries, WorkspaceLatestBuild } from '../db/queries.js';
import { createDecider, type DeciderOptions } from './decider.js';
import { PREBUILDS_USER_ID, type LatestBuild } from './verdict.js';

/**
 * The decider's queueing and batching, against an in-memory stand-in for its two statements
 * (its SQL runs against a real PostgreSQL in test/integration/storm.test.ts). What is pinned
 * here: the guard's own queue never fails a lookup, a storm coalesces into few statements,
 * a database that cannot answer fails what waits at once, and the warm-up caches only
 * final verdicts.
 */
const USER = '6d7c1f0e-3c5e-4b53-9a1b-0f2f4f8a9c11';
const handled: LatestBuild = { build_number: 3, transition: 'start', initiator_id: USER, input: {} };
const claimLatest: LatestBuild = { build_number: 2, transition: 'start', initiator_id: USER, input: { prebuilt_workspace_stage: 2 } };

type Behaviour = { delayMs?: number; fail?: unknown; never?: boolean };

function fakeDb(builds: Map<string, LatestBuild>, behave: () => Behaviour = () => ({})) {
  const batches: number[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const run = async <T>(value: () => T): Promise<T> => {
    const b = behave();
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      if (b.never) await new Promise(() => {});
      if (b.delayMs) await new Promise((r) => setTimeout(r, b.delayMs));
      if (b.fail) throw b.fail;
      return value();
    } finally {
      inFlight--;
    }
  };
  const queries: Queries = {
    latestBuilds(ids) {
      batches.push(ids.length);
      return run(() => new Map(ids.filter((id) => builds.has(id)).map((id) => [id, builds.get(id) as LatestBuild])));
    },
    claimedPrebuildsPage(after, limit) {
      const rows: WorkspaceLatestBuild[] = [...builds.entries()]
        .filter(([id, b]) => (after === null || id > after) && b.build_number > 1 && b.initiator_id !== PREBUILDS_USER_ID)
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .slice(0, limit)
        .map(([id, b]) => ({ workspace_id: id, ...b }));
      return run(() => rows);
    },
  };
  return { queries, batches, maxInFlight: () => maxInFlight };
}

const options = (queries: Queries, over: Partial<DeciderOptions> = {}): DeciderOptions => ({
  queries,
  timeoutMs: 200,
  cacheSize: 100_000,
  finalTtlMs: 60_000,
  transientTtlMs: 2_000,
  maxConcurrent: 4,
  batchSize: 1000,
  batchWindowMs: 20,
  ...over,
});

const ids = (n: number) => Array.from({ length: n }, () => randomUUID());

describe('decider', () => {
  it('a storm of 5,000 lookups: every one decided, in a few statements, never more at once than the pool', async () => {
    const ws = ids(5000);
    const db = fakeDb(new Map(ws.map((id) => [id, handled])), () => ({ delayMs: 5 }));
    const decider = createDecider(options(db.queries));
    const decisions = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(decisions.every((d) => d.ok && d.verdict.action === 'suppress')).toBe(true);
    expect(db.batches.reduce((a, b) => a + b, 0)).toBe(5000);
    expect(db.batches.length).toBeLessThanOrEqual(50);
    expect(db.maxInFlight()).toBeLessThanOrEqual(4);
    // Again at once: every verdict is final and cached, no statement.
    const before = db.batches.length;
    const again = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(again.every((d) => d.ok && d.source === 'cache')).toBe(true);
    expect(db.batches.length).toBe(before);
  });

  it("the guard's own queue never fails a lookup: waiting far longer than the deadline is not a failure", async () => {
    const ws = ids(40);
    // One connection, a batch of one, each statement 60 ms against a 200 ms deadline: the
    // last lookup waits ~2.4 s in the queue.
    const db = fakeDb(new Map(ws.map((id) => [id, handled])), () => ({ delayMs: 60 }));
    const decider = createDecider(options(db.queries, { maxConcurrent: 1, batchSize: 1, batchWindowMs: 0 }));
    const t = performance.now();
    const decisions = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(performance.now() - t).toBeGreaterThan(1000);
    expect(decisions.every((d) => d.ok)).toBe(true);
  });

  it('concurrent lookups of one workspace share one entry', async () => {
    const [id] = ids(1) as [string];
    const db = fakeDb(new Map([[id, claimLatest]]), () => ({ delayMs: 10 }));
    const decider = createDecider(options(db.queries));
    const ds = await Promise.all(Array.from({ length: 50 }, () => decider.decide(id)));
    expect(ds.every((d) => d.ok && d.verdict.action === 'pass')).toBe(true);
    expect(db.batches).toEqual([1]);
    expect(ds.filter((d) => d.ok && d.source === 'shared')).toHaveLength(49);
  });

  it('a database that refuses fails the statement and everything queued behind it at once', async () => {
    const ws = ids(200);
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const db = fakeDb(new Map(), () => ({ delayMs: 20, fail: refused }));
    const decider = createDecider(options(db.queries, { maxConcurrent: 1, batchSize: 10, batchWindowMs: 0 }));
    const decisions = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(decisions.every((d) => !d.ok && d.failure === 'unavailable')).toBe(true);
    expect(db.batches.length).toBe(1); // the other 190 never waited for a statement of their own
  });

  it("an answer that arrived while the guard's event loop was busy past the deadline is not a timeout", async () => {
    // The answer is in the socket (written on loopback before the loop blocks), but the loop
    // is busy for 300 ms against a 200 ms deadline, as in a storm on starved cores. libuv
    // runs due timers before it reads sockets: the deadline must not win that race.
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = new Promise<Socket>((r) => server.once('connection', r));
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    const peer = await accepted;
    const id = randomUUID();
    const queries: Queries = {
      latestBuilds: () =>
        new Promise((resolve) => {
          client.once('data', () => resolve(new Map([[id, handled]])));
          peer.write('answer');
          // After the statement's deadline is set: the event loop, busy.
          queueMicrotask(() => {
            const until = performance.now() + 300;
            while (performance.now() < until);
          });
        }),
      claimedPrebuildsPage: async () => [],
    };
    try {
      const d = await createDecider(options(queries)).decide(id);
      expect(d).toMatchObject({ ok: true, verdict: { action: 'suppress' } });
    } finally {
      client.destroy();
      peer.destroy();
      server.close();
    }
  });

  it('no file descriptor for a database connection: the batch waits and is sent again, never failed open', async () => {
    const ws = ids(3);
    let calls = 0;
    const emfile = Object.assign(new Error('connect EMFILE 127.0.0.1:5432'), { code: 'EMFILE' });
    const db = fakeDb(new Map(ws.map((id) => [id, handled])), () => (++calls <= 3 ? { fail: emfile } : {}));
    const decider = createDecider(options(db.queries, { maxConcurrent: 1 }));
    const ds = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(ds.every((d) => d.ok && d.verdict.action === 'suppress')).toBe(true);
    expect(calls).toBe(4); // three refused for want of a descriptor, then the one that ran
  });

  it('no file descriptor for longer than descriptorWaitMs: the lookups fail, named for what happened', async () => {
    const emfile = Object.assign(new Error('connect EMFILE 127.0.0.1:5432'), { code: 'EMFILE' });
    const db = fakeDb(new Map(), () => ({ fail: emfile }));
    const decider = createDecider(options(db.queries, { descriptorWaitMs: 100 }));
    const d = await decider.decide(randomUUID());
    expect(d).toMatchObject({ ok: false, failure: 'no_descriptor' });
    expect(d.ok || d.detail).toMatch(/open-files limit/);
  });

  it('one statement past its deadline fails only its own batch: what queues behind it is still sent', async () => {
    const ws = ids(30);
    let n = 0;
    const db = fakeDb(new Map(ws.map((id) => [id, handled])), () => (n++ === 0 ? { delayMs: 400 } : { delayMs: 5 }));
    const decider = createDecider(options(db.queries, { maxConcurrent: 2, batchSize: 10, batchWindowMs: 0 }));
    const ds = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(ds.filter((d) => !d.ok && d.failure === 'timeout')).toHaveLength(1); // the first lookup went alone, at once
    expect(ds.filter((d) => d.ok)).toHaveLength(29);
  });

  it('black-holed: statements that never answer fail at their deadline, and so does what queues behind them', async () => {
    const ws = ids(100);
    const db = fakeDb(new Map(), () => ({ never: true }));
    const decider = createDecider(options(db.queries, { batchSize: 5, batchWindowMs: 0 }));
    const t = performance.now();
    const first = await Promise.all(ws.slice(0, 50).map((id) => decider.decide(id)));
    expect(first.every((d) => !d.ok && d.failure === 'timeout')).toBe(true);
    expect(performance.now() - t).toBeLessThan(200 + 150);
    // Every connection is still held by a statement past its deadline: no wait at all now.
    const t2 = performance.now();
    const later = await Promise.all(ws.slice(50).map((id) => decider.decide(id)));
    expect(later.every((d) => !d.ok && d.failure === 'timeout')).toBe(true);
    expect(performance.now() - t2).toBeLessThan(50);
    expect(db.maxInFlight()).toBeLessThanOrEqual(4);
  });

  it('a failure of one batch data (not the database) fails only that batch', async () => {
    const ws = ids(30);
    let n = 0;
    const db = fakeDb(new Map(ws.map((id) => [id, handled])), () => (n++ === 0 ? { delayMs: 5, fail: Object.assign(new Error('odd'), { code: 'XX000' }) } : { delayMs: 5 }));
    const decider = createDecider(options(db.queries, { maxConcurrent: 1, batchSize: 10, batchWindowMs: 0 }));
    const ds = await Promise.all(ws.map((id) => decider.decide(id)));
    expect(ds.filter((d) => !d.ok)).toHaveLength(1); // the first lookup went alone, at once
    expect(ds.filter((d) => d.ok)).toHaveLength(29);
  });

  it('the warm-up caches every final verdict and nothing that can change', async () => {
    const final = ids(4500);
    const transient = ids(3);
    const builds = new Map<string, LatestBuild>([...final.map((id) => [id, handled] as const), ...transient.map((id) => [id, claimLatest] as const)]);
    const db = fakeDb(builds);
    const decider = createDecider(options(db.queries));
    const warmed = await decider.warmUp({ pageSize: 1000 });
    expect(warmed).toEqual({ cached: 4500, statements: 5 });
    const ds = await Promise.all(final.map((id) => decider.decide(id)));
    expect(ds.every((d) => d.ok && d.source === 'cache' && d.verdict.action === 'suppress')).toBe(true);
    expect(db.batches).toEqual([]);
    const t = await Promise.all(transient.map((id) => decider.decide(id)));
    expect(t.every((d) => d.ok && d.source === 'db' && d.verdict.action === 'pass')).toBe(true);
  });

  it('a verdict that can change is never served past its TTL', async () => {
    const [id] = ids(1) as [string];
    const builds = new Map([[id, claimLatest]]);
    const db = fakeDb(builds);
    const decider = createDecider(options(db.queries, { transientTtlMs: 50 }));
    expect(await decider.decide(id)).toMatchObject({ ok: true, source: 'db', verdict: { action: 'pass' } });
    expect(await decider.decide(id)).toMatchObject({ ok: true, source: 'cache' });
    builds.set(id, handled); // the user built again
    await new Promise((r) => setTimeout(r, 80));
    expect(await decider.decide(id)).toMatchObject({ ok: true, source: 'db', verdict: { action: 'suppress' } });
  });

  it('refuses an id that is not a uuid without sending a statement', async () => {
    const db = fakeDb(new Map());
    const decider = createDecider(options(db.queries));
    expect(await decider.decide("x' OR 1=1")).toMatchObject({ ok: false, failure: 'error' });
    expect(db.batches).toEqual([]);
  });
});
