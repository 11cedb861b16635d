import { execFileSync } from 'node:child_process';
import postgres from 'postgres';
import { connectReinit, receivedClaim, type ReinitResult } from '../../testkit/agent-client.js';
import { createUser, seedBulk, type BulkKind } from '../../testkit/fixtures.js';
import type { EmbeddedPg } from '../../testkit/pg.js';
import { startContender } from '../lib/contenders.js';
import { freePort, startNode, type Proc } from '../lib/procs.js';
import { percentile, promSum, round } from '../lib/stats.js';

/**
 * The reconnect storm (issue 18): every agent of a fleet reconnects at once, as after a
 * coderd restart. Against the unpatched coderd stand-in (its own process, on an embedded
 * PostgreSQL), in one run:
 *
 * - `direct`: the same storm straight to the stand-in (the baseline);
 * - `floor`: the same storm through the least a Node process can do per agent
 *   (bench/contenders/reinit-floor.ts), with raw sockets, with node:http's server, and with
 *   node:http on both sides, twice each: what the platform costs, beside what the guard costs;
 * - `cold`: a fresh guard at its default configuration but with the cache warm-up off, so
 *   every workspace is looked up (the worst case);
 * - `again`: the same guard, the same storm at once (every verdict cached);
 * - `warm`: a fresh guard at its default configuration, once its warm-up has run;
 * - `mixed`: a fresh default guard, 80 % long-claimed, 10 % claim build latest, 10 % held.
 *
 * Sampled during each guard storm: the guard's RSS (all its processes), its PostgreSQL
 * connections (pg_stat_activity), its client and upstream connections (its own gauge, every 200 ms), and the
 * kernel's listen-queue overflows (nstat).
 */
export interface StormRow {
  storm: string;
  agents: number;
  seconds: number;
  statuses: Record<string, number>;
  /** Agents that did not get what the patched coderd gives them. */
  wrong: number;
  failedOpen: number;
  /** Failed-open decisions by reason, and upstream errors by kind (from the guard's metrics). */
  failedOpenReasons?: Record<string, number>;
  upstreamErrors?: Record<string, number>;
  errors: number;
  /** Decision statements (latest_builds) the guard sent during this storm. */
  statements: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  maxDbConnections?: number;
  maxRssMiB?: number;
  /** Highest (upstream connections - client connections) seen; never above 0 is the bar. */
  maxUpstreamOverClients?: number;
  maxClientConnections?: number;
  maxUpstreamConnections?: number;
  /** Peaks of V8's heap (total, used) and of memory outside it, from the guard's metrics. */
  maxHeapTotalMiB?: number;
  maxHeapUsedMiB?: number;
  maxExternalMiB?: number;
  /** The error codes of the guard's failed upstream requests during the storm (its log). */
  upstreamErrorCodes?: Record<string, number>;
  /** The details of the guard's failed-open decisions during the storm (its log). */
  failedOpenDetails?: Record<string, number>;
  /** Deepest accept queue seen on the guard's listener and on the stand-in's (ss Recv-Q). */
  maxGuardAcceptQueue?: number;
  maxStandinAcceptQueue?: number;
  /** TcpExtListenOverflows during the storm, machine-wide (any listener). */
  listenOverflows?: number;
}

type Agent = { token: string; workspaceId: string; kind: BulkKind };

/** Lines of `ss` output, or none where ss is missing. */
const ss = (...args: string[]): string[] => {
  try {
    return execFileSync('ss', args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).split('\n');
  } catch {
    return [];
  }
};
const port = (addr: string | undefined) => Number(addr?.slice(addr.lastIndexOf(':') + 1));

const overflows = (): number => {
  try {
    const out = execFileSync('nstat', ['-az', 'TcpExtListenOverflows'], { encoding: 'utf8' });
    return Number(/TcpExtListenOverflows\s+(\d+)/.exec(out)?.[1] ?? NaN);
  } catch {
    return NaN;
  }
};

/**
 * Counts one field of the guard's log lines whose message passes `match`, since `since` (its
 * last 20 kB of output): the error codes of failed upstream requests, the details of
 * failed-open decisions.
 */
function logCounts(log: string, since: string, match: (msg: string) => boolean, field: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of log.split('\n')) {
    try {
      const entry = JSON.parse(line) as Record<string, unknown>;
      if (!match(String(entry.msg ?? '')) || String(entry.time ?? '') < since) continue;
      const key = String(entry[field] ?? 'none').slice(0, 120);
      out[key] = (out[key] ?? 0) + 1;
    } catch {
      // A line cut by the end of the capture, or not JSON.
    }
  }
  return out;
}

/** What the patched coderd gives each kind of agent. */
function right(kind: BulkKind, r: ReinitResult | null, workspaceId: string): boolean {
  if (!r) return false;
  if (kind === 'long_claimed') return r.status === 409;
  if (kind === 'just_claimed') return receivedClaim(r, workspaceId);
  // Held: the patched coderd waits on pubsub; nothing but pings until the claim comes.
  return r.status === 200 && !r.body.toString().includes('prebuild_claimed');
}

async function runStorm(name: string, url: string, agents: Agent[], watch: { guard?: Proc & { adminUrl?: string }; floor?: Proc; guardPort?: number; standinPort: number; pgUrl: string }): Promise<StormRow> {
  const metrics = async () => (watch.guard?.adminUrl ? (await fetch(`${watch.guard.adminUrl}/metrics`)).text() : '');
  const before = await metrics();
  const since = new Date().toISOString();
  const ovBefore = overflows();
  let sampling = true;
  const samples = { db: 0, rss: 0, over: -Infinity, clients: 0, upstream: 0, heapTotal: 0, heapUsed: 0, external: 0, guardQueue: 0, standinQueue: 0 };
  const acceptQueues = (async () => {
    // The accept queues, every 10 ms: where an agent waits before any process sees it.
    while (sampling) {
      for (const line of ss('-Hltn')) {
        const cols = line.trim().split(/\s+/);
        // LISTEN, Recv-Q (connections waiting for accept), Send-Q (the backlog), address.
        const p = port(cols[3]);
        if (p === watch.guardPort) samples.guardQueue = Math.max(samples.guardQueue, Number(cols[1]));
        if (p === watch.standinPort) samples.standinQueue = Math.max(samples.standinQueue, Number(cols[1]));
      }
      await new Promise((res) => setTimeout(res, 10));
    }
  })();
  const sampler = (async () => {
    // The contender's RSS; for the guard also its database connections and its metrics (a
    // floor contender has neither).
    const proc = watch.guard ?? watch.floor;
    if (!proc) return;
    const s = watch.guard ? postgres(watch.pgUrl, { max: 1, onnotice: () => {} }) : null;
    let tick = 0;
    while (sampling) {
      samples.rss = Math.max(samples.rss, proc.rss());
      if (s) {
        const [r] = await s<{ n: number }[]>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'coder-reinit-guard'`;
        samples.db = Math.max(samples.db, r!.n);
      }
      if (tick++ % 10 === 0 && watch.guard?.adminUrl) {
        // The guard's own count of both sides, read in one scrape: a consistent snapshot
        // (an `ss` dump of 20,000 sockets during a storm is not).
        const text = await metrics();
        const clients = promSum(text, 'coder_reinit_guard_connections', { side: 'client' });
        const upstream = promSum(text, 'coder_reinit_guard_connections', { side: 'upstream' });
        samples.clients = Math.max(samples.clients, clients);
        samples.upstream = Math.max(samples.upstream, upstream);
        // What the RSS is made of: V8's heap (total and used) and memory outside it.
        samples.heapTotal = Math.max(samples.heapTotal, promSum(text, 'coder_reinit_guard_nodejs_heap_size_total_bytes'));
        samples.heapUsed = Math.max(samples.heapUsed, promSum(text, 'coder_reinit_guard_nodejs_heap_size_used_bytes'));
        samples.external = Math.max(samples.external, promSum(text, 'coder_reinit_guard_nodejs_external_memory_bytes'));
        samples.over = Math.max(samples.over, upstream - clients);
      }
      await new Promise((res) => setTimeout(res, 20));
    }
    await s?.end();
  })();
  const started = performance.now();
  const results = await Promise.all(
    agents.map((a) =>
      connectReinit(url, a.token, a.kind === 'held' ? { until: () => false, timeoutMs: 3_000, allowTimeout: true } : { timeoutMs: 120_000 }).catch(() => null),
    ),
  );
  const seconds = round((performance.now() - started) / 1000, 2);
  sampling = false;
  await sampler;
  await acceptQueues;
  const after = await metrics();
  const statuses: Record<string, number> = {};
  for (const r of results) statuses[r ? r.status : 'error'] = (statuses[r ? r.status : 'error'] ?? 0) + 1;
  const answered = results.filter((r, i): r is ReinitResult => r !== null && agents[i]!.kind !== 'held').map((r) => r.totalMs);
  const diff = (metric: string, labels: Record<string, string> = {}) => promSum(after, metric, labels) - promSum(before, metric, labels);
  const row: StormRow = {
    storm: name,
    agents: agents.length,
    seconds,
    statuses,
    wrong: results.filter((r, i) => !right(agents[i]!.kind, r, agents[i]!.workspaceId)).length,
    failedOpen: watch.guard ? diff('coder_reinit_guard_reinit_requests_total', { outcome: 'failed_open' }) : 0,
    errors: results.filter((r) => r === null || r.stopped === 'error').length,
    statements: watch.guard ? diff('coder_reinit_guard_db_statements_total', { statement: 'latest_builds' }) : 0,
    p50Ms: round(percentile(answered, 50), 1),
    p99Ms: round(percentile(answered, 99), 1),
    maxMs: round(Math.max(...answered), 1),
  };
  if (watch.guard) {
    const byLabel = (metric: string, label: string, filter: Record<string, string> = {}) => {
      const out: Record<string, number> = {};
      for (const line of after.split('\n')) {
        const m = new RegExp(`^${metric}\\{([^}]*)\\} `).exec(line);
        if (!m) continue;
        const labels = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
        if (!Object.entries(filter).every(([k, v]) => labels[k] === v)) continue;
        const key = labels[label] as string;
        const n = diff(metric, { ...filter, [label]: key });
        if (n) out[key] = n;
      }
      return out;
    };
    Object.assign(row, {
      failedOpenReasons: byLabel('coder_reinit_guard_reinit_requests_total', 'reason', { outcome: 'failed_open' }),
      upstreamErrors: byLabel('coder_reinit_guard_upstream_errors_total', 'kind'),
      maxDbConnections: samples.db,
      maxRssMiB: round(samples.rss / 2 ** 20, 1),
      maxUpstreamOverClients: samples.over,
      maxClientConnections: samples.clients,
      maxUpstreamConnections: samples.upstream,
      maxHeapTotalMiB: round(samples.heapTotal / 2 ** 20, 1),
      maxHeapUsedMiB: round(samples.heapUsed / 2 ** 20, 1),
      maxExternalMiB: round(samples.external / 2 ** 20, 1),
      upstreamErrorCodes: logCounts(watch.guard.log(), since, (m) => m === 'upstream request failed' || m === 'upstream upgrade failed', 'code'),
      failedOpenDetails: logCounts(watch.guard.log(), since, (m) => m.startsWith('reinit decision failed open') || m === 'reinit stream passed without a decision', 'detail'),
    });
  }
  if (watch.floor) row.maxRssMiB = round(samples.rss / 2 ** 20, 1);
  row.maxStandinAcceptQueue = samples.standinQueue;
  if (watch.guard) row.maxGuardAcceptQueue = samples.guardQueue;
  row.listenOverflows = overflows() - ovBefore;
  process.stderr.write(`  storm ${name}: ${JSON.stringify(row)}\n`);
  return row;
}

/** The floor contender's modes, as the rows name them. */
const FLOOR_NAMES = { raw: '(raw sockets)', server: '(node:http server, raw upstream)', both: '(node:http both sides)' } as const;

/** Runs the storms of issue 18; `agents` long-claimed workspaces, one agent each. */
export async function runStorms(pg: EmbeddedPg, opts: { agents: number; workers?: string }): Promise<{ rows: StormRow[]; poolSize: number }> {
  const url = await pg.createDatabase(`storm_${Date.now()}`);
  const sql = postgres(url, { max: 2, onnotice: () => {} });
  const user = await createUser(sql, 'storm');
  const tag = (kind: BulkKind) => (list: Array<{ token: string; workspaceId: string }>) => list.map((a) => ({ ...a, kind }));
  const long = tag('long_claimed')(await seedBulk(sql, user, opts.agents, 'long_claimed'));
  // The mixed storm: 80 % long-claimed (a slice of the above), 10 % claim latest, 10 % held.
  const tenth = Math.round(opts.agents / 10);
  const mixed = [...long.slice(0, opts.agents - 2 * tenth), ...tag('just_claimed')(await seedBulk(sql, user, tenth, 'just_claimed')), ...tag('held')(await seedBulk(sql, user, tenth, 'held'))];
  await sql`ANALYZE`;
  const standinPort = await freePort();
  const standin = await startNode('standin', 'bench/standin-process.ts', standinPort, { PG_URL: url });
  const upstream = `http://127.0.0.1:${standinPort}`;
  // The default configuration: only the database URL (and the worker count if asked).
  const env: Record<string, string> = { REINIT_GUARD_PG_URL: url, ...(opts.workers ? { REINIT_GUARD_WORKERS: opts.workers } : {}) };
  const rows: StormRow[] = [];
  const guardStorm = async (names: string[], agents: Agent[], extra: Record<string, string>, ready?: (g: { adminUrl: string }) => Promise<void>) => {
    const g = await startContender('guard', upstream, { ...env, ...extra });
    const proc = g.proc as Proc & { adminUrl: string };
    try {
      await ready?.(proc);
      for (const n of names) rows.push(await runStorm(n, g.url, agents, { guard: proc, guardPort: port(g.url), standinPort, pgUrl: url }));
    } finally {
      await g.proc?.stop();
    }
  };
  try {
    rows.push(await runStorm('direct (stand-in alone)', upstream, long, { standinPort, pgUrl: url }));
    // The floor (bench/contenders/reinit-floor.ts): what Node itself costs per agent of a
    // cached storm, by how much of its HTTP stack is used; twice each, as cold and again.
    for (const mode of ['raw', 'server', 'both'] as const) {
      const floorPort = await freePort();
      const floor = await startNode(`floor-${mode}`, 'bench/contenders/reinit-floor.ts', floorPort, { TARGET: upstream, FLOOR_MODE: mode });
      try {
        for (const run of ['', ', again']) rows.push(await runStorm(`floor ${FLOOR_NAMES[mode]}${run}`, `http://127.0.0.1:${floorPort}`, long, { floor, standinPort, pgUrl: url }));
      } finally {
        await floor.stop();
      }
    }
    await guardStorm(['cold (warm-up off)', 'again at once'], long, { REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
    await guardStorm(['warm (default)'], long, {}, async (g) => {
      const deadline = Date.now() + 60_000;
      while (promSum(await (await fetch(`${g.adminUrl}/metrics`)).text(), 'coder_reinit_guard_verdict_cache_warmed_workspaces') < opts.agents) {
        if (Date.now() > deadline) throw new Error('the warm-up did not finish within 60 s');
        await new Promise((r) => setTimeout(r, 100));
      }
    });
    await guardStorm(['mixed (default, cold)'], mixed, { REINIT_GUARD_CACHE_WARM_INTERVAL: '0' });
    return { rows, poolSize: 4 };
  } finally {
    await standin.stop();
    await sql.end();
  }
}
