import { LRUCache } from 'lru-cache';
import type { Queries, WorkspaceLatestBuild } from '../db/queries.js';
import { outOfDescriptors } from '../proxy/descriptors.js';
import { decide, isFinal, type LatestBuild, type Verdict } from './verdict.js';

/** Why a decision could not be made; the stream then fails open. */
export type DbFailure = 'timeout' | 'unavailable' | 'privilege' | 'no_descriptor' | 'error';

/** The result of asking for a verdict. */
export type Decision =
  | { ok: true; verdict: Verdict; source: 'cache' | 'db' | 'shared' }
  | { ok: false; failure: DbFailure; detail: string };

/** The statements the decider runs, for metrics (label `statement`). */
export type Statement = 'latest_builds' | 'warm_up';

/** Options of the decider. */
export interface DeciderOptions {
  queries: Queries;
  /**
   * Deadline of one statement, from the moment it is sent to the database. Time a lookup
   * spends in the guard's own queue is not counted: the guard's queueing never fails open.
   */
  timeoutMs: number;
  /** Most cached workspaces; 0 disables the cache. */
  cacheSize: number;
  /** TTL of final verdicts ("claim already handled"). */
  finalTtlMs: number;
  /** TTL of verdicts that can change (the claim build is the latest, or not yet created). */
  transientTtlMs: number;
  /** Most statements in flight at once: the pool size, so postgres.js never queues. */
  maxConcurrent: number;
  /** Most workspaces one statement asks about. */
  batchSize: number;
  /**
   * While lookups keep arriving, a statement is sent at most this often (or once a batch is
   * full): a reconnect storm coalesces into few statements. A lookup arriving after a quiet
   * spell is sent at once.
   */
  batchWindowMs: number;
  /**
   * How long a batch waits, in all, for a file descriptor when the guard has none left to
   * open a database connection (EMFILE in a storm): the guard's own shortage, waited out
   * rather than failed open. Default 5 s.
   */
  descriptorWaitMs?: number;
  /** Called with every verdict source, for metrics. */
  onCache?: (result: 'hit' | 'miss' | 'shared') => void;
  /** Called once per statement with its size and result, for metrics. */
  onStatement?: (s: { statement: Statement; workspaces: number; seconds: number; failure: DbFailure | null }) => void;
  /** Lookups waiting in the guard's queue, after every change (for a gauge). */
  onQueue?: (waiting: number) => void;
}

/** Gives verdicts for workspaces: cached, shared between concurrent callers, batched. */
export interface Decider {
  /**
   * A verdict for the workspace. `fresh` skips a cached verdict (a lookup already in
   * flight is still joined) and caches what the database says now: a held stream asks
   * this way whether the claim build exists yet.
   */
  decide(workspaceId: string, opts?: { fresh?: boolean }): Promise<Decision>;
}

/** The decider of the process that owns the database pool (the cluster primary). */
export interface LocalDecider extends Decider {
  /**
   * Fills the cache with every "claim already handled" verdict of the fleet, page by page,
   * one statement at a time; resolves with how many were cached. Such a verdict is final,
   * so a reconnect storm against a warm guard costs no statement at all.
   */
  warmUp(opts?: { pageSize?: number }): Promise<{ cached: number; statements: number }>;
}

const POSTGRES_CODES: Record<string, DbFailure> = {
  '57014': 'timeout', // query_canceled: statement_timeout
  '42501': 'privilege', // insufficient_privilege
  '25006': 'privilege', // read_only_sql_transaction (should never happen: we only read)
};

/** Maps a postgres.js or network error to what it means for the decision. */
export function classifyDbError(err: unknown): { failure: DbFailure; detail: string } {
  if (err instanceof DeadlineError) return { failure: 'timeout', detail: err.message };
  const e = err as { code?: string; message?: string; errno?: string };
  const code = e?.code ?? '';
  const message = (e?.message ?? String(err)).slice(0, 300);
  if (outOfDescriptors(err)) return { failure: 'no_descriptor', detail: `the guard has no file descriptor left for a database connection (${code}): raise its open-files limit` };
  if (code === '42501') return { failure: 'privilege', detail: `missing privilege: apply sql/least-privilege-role.sql to the guard's role (${message})` };
  if (POSTGRES_CODES[code]) return { failure: POSTGRES_CODES[code] as DbFailure, detail: message };
  if (/^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|CONNECT_TIMEOUT|CONNECTION_)/.test(code) || code === '57P01' || code === '57P03' || code === '53300') {
    return { failure: 'unavailable', detail: `${code}: ${message}` };
  }
  return { failure: 'error', detail: code ? `${code}: ${message}` : message };
}

class DeadlineError extends Error {}

/**
 * Failures that say the database itself cannot answer now, whatever it is asked: what queues
 * behind such a statement fails with it. A statement past its deadline is not one of them: in a
 * storm on a loaded machine one large batch can be slow while the next is not, and flushing the
 * queue on it failed 798 of 10,000 agents open in the mixed storm (bench/results/NOTES.md).
 * Each batch keeps its own deadline; a database that answers nothing at all is caught when
 * every connection holds a statement past its deadline (see `pump`).
 */
const DATABASE_WIDE: ReadonlySet<DbFailure> = new Set(['unavailable', 'privilege']);

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** One workspace waiting for its statement, with everyone who asked. */
interface Lookup {
  id: string;
  /** When this lookup's batch first found no file descriptor (0: never). */
  noDescriptorSince: number;
  promise: Promise<Verdict>;
  resolve(v: Verdict): void;
  reject(err: unknown): void;
}

/**
 * Creates the decider. A workspace's "claim already handled" verdict is final (a workspace
 * is claimed once) and cached long; other verdicts live only seconds. Concurrent lookups of
 * one workspace share one entry, and lookups of many workspaces share one statement: they
 * wait in the guard's queue (with no deadline of their own) until a connection is free, then
 * go as one batch of up to `batchSize`. Only the statement has a deadline. When the
 * database cannot answer (down, too slow, missing grant), everything queued behind the
 * failed statement fails with it at once: they would wait for the same database.
 */
export function createDecider(opts: DeciderOptions): LocalDecider {
  const cache =
    opts.cacheSize > 0 ? new LRUCache<string, Verdict>({ max: opts.cacheSize, ttl: opts.finalTtlMs, ttlAutopurge: false }) : null;
  /** Every workspace queued or in a statement, by id: later callers join it. */
  const inflight = new Map<string, Lookup>();
  /** Queued workspaces, oldest first (Map keeps insertion order). */
  const queue = new Map<string, Lookup>();
  let running = 0;
  /** Statements past their deadline that still hold a connection. */
  let overdue = 0;
  let lastSent = -Infinity;
  let windowTimer: NodeJS.Timeout | null = null;
  /** Set while the queue waits for a file descriptor ({@link waitForDescriptor}). */
  let paused = false;
  let descriptorPause: NodeJS.Timeout | null = null;
  let descriptorWaits = 0;
  /** Background work (the warm-up) waiting for a connection no lookup wants. */
  const quietWaiters: Array<() => void> = [];
  const quiet = () => queue.size === 0 && running < opts.maxConcurrent;
  /** Resolves when a connection is free and no lookup is queued; woken by {@link pump}. */
  const whenQuiet = async (): Promise<void> => {
    while (!quiet()) await new Promise<void>((resolve) => quietWaiters.push(resolve));
  };
  const queued = () => opts.onQueue?.(queue.size);

  const remember = (id: string, verdict: Verdict) => {
    cache?.set(id, verdict, { ttl: isFinal(verdict) ? opts.finalTtlMs : opts.transientTtlMs });
  };

  /** Runs one statement on a free connection, bounded by the deadline from now on. */
  const statement = async <T>(name: Statement, workspaces: number, run: () => Promise<T>): Promise<T> => {
    running++;
    const started = performance.now();
    const task = run();
    let timer: NodeJS.Timeout | undefined;
    let late = false;
    let done = false;
    const deadline = new Promise<never>((_, reject) => {
      const expire = () => {
        if (done) return;
        late = true;
        overdue++;
        reject(new DeadlineError(`no answer within ${opts.timeoutMs}ms`));
        pump();
      };
      // libuv runs due timers before it reads sockets. When the guard's own event loop was
      // busy past the deadline (a storm on starved cores), the database's answer can be
      // waiting unread in the socket while this timer fires: that is the guard's queueing,
      // not a slow database, and must not fail open. setImmediate runs after the loop's
      // next poll, so an answer that is already here settles the statement first. (The
      // server's own statement_timeout still bounds the statement itself.)
      timer = setTimeout(() => setImmediate(expire), opts.timeoutMs);
    });
    // The connection stays taken until the statement itself settles (the server's
    // statement_timeout ends it), even when the caller's deadline passed first: the pool
    // bound holds. (Cancelling queries queued inside postgres.js left its pool stuck
    // after an outage in our fault tests.)
    const settled = () => {
      done = true;
      if (late) overdue--;
      release();
    };
    void task.then(settled, settled);
    try {
      const value = await Promise.race([task, deadline]);
      opts.onStatement?.({ statement: name, workspaces, seconds: (performance.now() - started) / 1000, failure: null });
      return value;
    } catch (err) {
      opts.onStatement?.({ statement: name, workspaces, seconds: (performance.now() - started) / 1000, failure: classifyDbError(err).failure });
      throw err;
    } finally {
      clearTimeout(timer);
    }
  };

  const release = () => {
    running--;
    // After the statement's own caller has handled its result: a database-wide failure
    // fails the queue first, rather than sending the next batch into the same failure.
    setImmediate(pump);
  };

  /** Sends queued lookups while a connection is free and the window allows. */
  const pump = () => {
    if (queue.size > 0 && running >= opts.maxConcurrent && overdue === running) {
      // Every connection holds a statement the database has not answered past its
      // deadline (black-holed, hung): nothing queued can be sent before one of them ends.
      return failQueue(new DeadlineError(`the database has not answered ${overdue} statement(s) within ${opts.timeoutMs}ms`));
    }
    while (!paused && queue.size > 0 && running < opts.maxConcurrent) {
      const wait = lastSent + opts.batchWindowMs - performance.now();
      if (queue.size < opts.batchSize && wait > 0) {
        windowTimer ??= setTimeout(() => {
          windowTimer = null;
          pump();
        }, Math.ceil(wait));
        return;
      }
      lastSent = performance.now();
      const batch: Lookup[] = [];
      for (const lookup of queue.values()) {
        batch.push(lookup);
        queue.delete(lookup.id);
        if (batch.length === opts.batchSize) break;
      }
      queued();
      void send(batch);
    }
    if (quiet()) for (const wake of quietWaiters.splice(0)) wake();
  };

  const send = async (batch: Lookup[]) => {
    try {
      const latest = await statement('latest_builds', batch.length, () => opts.queries.latestBuilds(batch.map((l) => l.id)));
      descriptorWaits = 0;
      for (const l of batch) {
        const verdict = decide((latest.get(l.id) as LatestBuild | undefined) ?? null);
        remember(l.id, verdict);
        settle(l, () => l.resolve(verdict));
      }
    } catch (err) {
      if (waitForDescriptor(batch, err)) return;
      for (const l of batch) settle(l, () => l.reject(err));
      // The database cannot answer now: what waits behind this statement would wait for
      // the same database. Fail it now rather than a deadline later.
      if (DATABASE_WIDE.has(classifyDbError(err).failure)) failQueue(err);
    }
  };

  /**
   * The guard had no file descriptor to open a database connection (a storm of 10,000 agents
   * holds 20,000 sockets): nothing was sent, and descriptors come free as agents are
   * answered. That is the guard's own queueing, not the database's failure: the batch goes
   * back to the front of the queue after a pause (10 ms doubling to 500 ms), for at most
   * `descriptorWaitMs` from its first wait.
   */
  const waitForDescriptor = (batch: Lookup[], err: unknown): boolean => {
    if (classifyDbError(err).failure !== 'no_descriptor') return false;
    const now = performance.now();
    for (const l of batch) if (l.noDescriptorSince === 0) l.noDescriptorSince = now;
    if (batch.some((l) => now - l.noDescriptorSince >= (opts.descriptorWaitMs ?? 5_000))) return false;
    const rest = [...queue.values()];
    queue.clear();
    for (const l of [...batch, ...rest]) queue.set(l.id, l);
    queued();
    paused = true;
    descriptorPause ??= setTimeout(() => {
      descriptorPause = null;
      paused = false;
      pump();
    }, Math.min(500, 10 * 2 ** descriptorWaits++));
    return true;
  };

  const failQueue = (err: unknown) => {
    const failed = [...queue.values()];
    queue.clear();
    queued();
    for (const l of failed) settle(l, () => l.reject(err));
  };

  const settle = (l: Lookup, fn: () => void) => {
    if (inflight.get(l.id) === l) inflight.delete(l.id);
    fn();
  };

  const enqueue = (id: string): Lookup => {
    let resolve!: (v: Verdict) => void;
    let reject!: (err: unknown) => void;
    const promise = new Promise<Verdict>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // Every caller handles it; none may become unhandled.
    const lookup: Lookup = { id, noDescriptorSince: 0, promise, resolve, reject };
    inflight.set(id, lookup);
    queue.set(id, lookup);
    queued();
    pump();
    return lookup;
  };

  return {
    async decide(workspaceId, decideOpts) {
      const id = workspaceId.toLowerCase();
      if (!UUID.test(id)) return { ok: false, failure: 'error', detail: 'the workspace id is not a uuid' };
      const cached = decideOpts?.fresh ? undefined : cache?.get(id);
      if (cached) {
        opts.onCache?.('hit');
        return { ok: true, verdict: cached, source: 'cache' };
      }
      const shared = inflight.get(id);
      opts.onCache?.(shared ? 'shared' : 'miss');
      try {
        const verdict = await (shared ?? enqueue(id)).promise;
        return { ok: true, verdict, source: shared ? 'shared' : 'db' };
      } catch (err) {
        return { ok: false, ...classifyDbError(err) };
      }
    },

    async warmUp(warmOpts) {
      const pageSize = warmOpts?.pageSize ?? 2000;
      let after: string | null = null;
      let cachedCount = 0;
      let statements = 0;
      if (!cache) return { cached: 0, statements: 0 };
      for (;;) {
        // One page at a time, and only on a free connection: lookups of agents waiting now
        // go first (they are queued; the warm-up waits for a quiet connection).
        await whenQuiet();
        statements++;
        const from: string | null = after;
        const rows: WorkspaceLatestBuild[] = await statement('warm_up', 0, () => opts.queries.claimedPrebuildsPage(from, pageSize));
        for (const { workspace_id, ...latest } of rows) {
          const verdict = decide(latest);
          // Only final verdicts: a transient one would be stale long before the next warm-up.
          if (!isFinal(verdict)) continue;
          remember(workspace_id, verdict);
          if (++cachedCount >= opts.cacheSize) return { cached: cachedCount, statements };
        }
        if (rows.length < pageSize) return { cached: cachedCount, statements };
        after = (rows[rows.length - 1] as WorkspaceLatestBuild).workspace_id;
      }
    },
  };
}
