import { LRUCache } from 'lru-cache';
import type { Queries } from '../db/queries.js';
import { decide, isFinal, type Verdict } from './verdict.js';

/** Why a decision could not be made; the stream then fails open. */
export type DbFailure = 'timeout' | 'unavailable' | 'privilege' | 'error';

/** The result of asking for a verdict. */
export type Decision =
  | { ok: true; verdict: Verdict; source: 'cache' | 'db' | 'shared' }
  | { ok: false; failure: DbFailure; detail: string };

/** Options of the decider. */
export interface DeciderOptions {
  queries: Queries;
  /** Deadline for one decision's database work, from the caller's point of view. */
  timeoutMs: number;
  /** Most cached workspaces; 0 disables the cache. */
  cacheSize: number;
  /** TTL of final verdicts ("claim already handled"). */
  finalTtlMs: number;
  /** TTL of verdicts that can change (the claim build is the latest, or not yet created). */
  transientTtlMs: number;
  /** Most lookups handed to the database client at once: the pool size. */
  maxConcurrent: number;
  /** Called with every verdict source, for metrics. */
  onCache?: (result: 'hit' | 'miss' | 'shared') => void;
}

/** Gives verdicts for workspaces: cached, shared between concurrent callers, bounded. */
export interface Decider {
  /**
   * A verdict for the workspace. `fresh` skips a cached verdict (a lookup already in
   * flight is still joined) and caches what the database says now: a held stream asks
   * this way whether the claim build exists yet.
   */
  decide(workspaceId: string, opts?: { fresh?: boolean }): Promise<Decision>;
}

const POSTGRES_CODES: Record<string, DbFailure> = {
  '57014': 'timeout', // query_canceled: statement_timeout
  '42501': 'privilege', // insufficient_privilege
  '25006': 'privilege', // read_only_sql_transaction (should never happen: we only read)
};

/** Maps a postgres.js or network error to what it means for the decision. */
export function classifyDbError(err: unknown): { failure: DbFailure; detail: string } {
  const e = err as { code?: string; message?: string; errno?: string };
  const code = e?.code ?? '';
  const message = (e?.message ?? String(err)).slice(0, 300);
  if (POSTGRES_CODES[code]) return { failure: POSTGRES_CODES[code] as DbFailure, detail: message };
  if (/^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|CONNECT_TIMEOUT|CONNECTION_)/.test(code) || code === '57P01' || code === '57P03' || code === '53300') {
    return { failure: 'unavailable', detail: `${code}: ${message}` };
  }
  return { failure: 'error', detail: code ? `${code}: ${message}` : message };
}

class DeadlineError extends Error {}

/**
 * Admits at most `max` tasks at once; the others wait in a queue they leave when their
 * deadline passes, so they never reach the database. (Cancelling queries queued inside
 * postgres.js instead left its pool stuck after an outage in our fault tests.)
 */
function createGate(max: number) {
  let running = 0;
  const waiting: Array<() => void> = [];
  const release = () => {
    running--;
    waiting.shift()?.();
  };
  return {
    /** Runs `task` once admitted, unless `deadlineMs` passes first (then rejects). */
    run<T>(task: () => Promise<T>, deadlineMs: number): Promise<T> {
      const start = () => {
        running++;
        return task().finally(release);
      };
      if (running < max) return start();
      return new Promise<T>((resolve, reject) => {
        const admit = () => {
          clearTimeout(timer);
          start().then(resolve, reject);
        };
        const timer = setTimeout(() => {
          const i = waiting.indexOf(admit);
          if (i !== -1) waiting.splice(i, 1);
          reject(new DeadlineError());
        }, deadlineMs);
        waiting.push(admit);
      });
    },
  };
}

/**
 * Creates the decider. A workspace's "claim already handled" verdict is final (a workspace
 * is claimed once) and cached long; other verdicts live only seconds. Concurrent lookups
 * of one workspace share one query, so a reconnect storm costs one query per workspace;
 * at most `maxConcurrent` lookups run at once and the rest queue here, bounded by their
 * deadline.
 */
export function createDecider(opts: DeciderOptions): Decider {
  const cache =
    opts.cacheSize > 0 ? new LRUCache<string, Verdict>({ max: opts.cacheSize, ttl: opts.finalTtlMs, ttlAutopurge: false }) : null;
  const inflight = new Map<string, Promise<Verdict>>();
  const gate = createGate(opts.maxConcurrent);

  const lookup = (id: string): Promise<Verdict> => {
    const p = gate.run(() => opts.queries.latestBuild(id), opts.timeoutMs).then((latest) => {
      const verdict = decide(latest);
      cache?.set(id, verdict, { ttl: isFinal(verdict) ? opts.finalTtlMs : opts.transientTtlMs });
      return verdict;
    });
    inflight.set(id, p);
    // Keep the entry until the query settles, even past a caller's deadline, so that
    // callers arriving meanwhile join it rather than piling up more queries.
    const clear = () => inflight.delete(id);
    p.then(clear, clear);
    return p;
  };

  return {
    async decide(id, decideOpts) {
      const cached = decideOpts?.fresh ? undefined : cache?.get(id);
      if (cached) {
        opts.onCache?.('hit');
        return { ok: true, verdict: cached, source: 'cache' };
      }
      const shared = inflight.get(id);
      opts.onCache?.(shared ? 'shared' : 'miss');
      const pending = shared ?? lookup(id);
      let timer: NodeJS.Timeout | undefined;
      try {
        const deadline = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new DeadlineError()), opts.timeoutMs);
        });
        const verdict = await Promise.race([pending, deadline]);
        return { ok: true, verdict, source: shared ? 'shared' : 'db' };
      } catch (err) {
        if (err instanceof DeadlineError) {
          return { ok: false, failure: 'timeout', detail: `no answer within ${opts.timeoutMs}ms` };
        }
        return { ok: false, ...classifyDbError(err) };
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
