import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Outcomes of an inspected `/reinit` stream (label `outcome`). */
export type ReinitOutcome =
  | 'passed' // no seeded claim, or a genuine one: stream passed through
  | 'suppressed' // spurious claim replaced by 409 (enforce)
  | 'would_suppress' // spurious claim seen in observe mode, passed
  | 'held' // claim build not created yet: event dropped, stream kept (as a fixed coderd waits)
  | 'would_hold' // the same, in observe mode
  | 'failed_open' // could not decide: passed unchanged
  | 'upstream_status'; // coderd answered something else than a 200 event stream

/** The guard's Prometheus metrics, on a registry of their own. */
export interface Metrics {
  registry: Registry;
  reinitRequests: Counter<'outcome' | 'reason'>;
  decisionSeconds: Histogram<'source'>;
  dbErrors: Counter<'kind'>;
  holdsReleased: Counter<'reason'>;
  holdRecheckFailures: Counter<'kind'>;
  cache: Counter<'result'>;
  cacheWarmed: Gauge;
  dbStatements: Counter<'statement' | 'result'>;
  dbStatementSeconds: Histogram<'statement'>;
  dbBatchWorkspaces: Histogram;
  decisionQueue: Gauge;
  upstreamErrors: Counter<'kind'>;
  upstreamRetries: Counter<'reason'>;
  /** Pass-through traffic (observability/traffic.ts). */
  httpRequests: Counter<'method' | 'code' | 'origin'>;
  httpDuration: Histogram<'origin'>;
  httpBytes: Counter<'direction'>;
  internalErrors: Counter<'where'>;
  refused: Counter<'reason'>;
  inflight: Gauge;
  openStreams: Gauge<'kind'>;
  /** Open TCP connections by side; read at scrape time from {@link Metrics.connectionSources}. */
  connections: Gauge<'side'>;
  /** Where {@link Metrics.connections} reads its counts; the proxy server sets them. */
  connectionSources: { client: () => number; upstream: () => number; control: () => number } | null;
  info: Gauge<'version' | 'mode' | 'coderd_version'>;
  retired: Gauge;
  dependencyUp: Gauge<'dependency'>;
}

const PREFIX = 'coder_reinit_guard_';

/**
 * prom-client's default gauges that are named `*_total`, a suffix Prometheus reserves for
 * counters (`promtool check metrics` refuses them). Each has a twin without the suffix
 * (`nodejs_active_handles{type}` and so on) that carries the same numbers by type.
 */
const MISNAMED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** Creates the metrics; `defaults` adds Node's process metrics (off in tests). */
export function createMetrics(defaults = true): Metrics {
  const registry = new Registry();
  if (defaults) {
    collectDefaultMetrics({ register: registry, prefix: PREFIX });
    for (const name of MISNAMED_DEFAULTS) registry.removeSingleMetric(`${PREFIX}${name}`);
  }
  const registers = [registry];
  const metrics: Metrics = {
    registry,
    reinitRequests: new Counter({
      name: 'coder_reinit_guard_reinit_requests_total',
      help: 'Inspected /reinit?wait=true requests by outcome.',
      labelNames: ['outcome', 'reason'],
      registers,
    }),
    decisionSeconds: new Histogram({
      name: 'coder_reinit_guard_decision_seconds',
      help: 'Time to decide on a seeded prebuild_claimed event, by verdict source.',
      labelNames: ['source'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
    dbErrors: new Counter({
      name: 'coder_reinit_guard_db_errors_total',
      help: 'Database lookups that failed, by kind (timeout, unavailable, privilege, error).',
      labelNames: ['kind'],
      registers,
    }),
    holdsReleased: new Counter({
      name: 'coder_reinit_guard_holds_released_total',
      help: 'Held /reinit streams ended early because the workspace moved on (the claim build exists), by the new verdict reason.',
      labelNames: ['reason'],
      registers,
    }),
    holdRecheckFailures: new Counter({
      name: 'coder_reinit_guard_hold_recheck_failures_total',
      help: 'Rechecks of held /reinit streams that could not ask the database, by kind (also counted in coder_reinit_guard_db_errors_total). The stream stays held until REINIT_GUARD_HOLD_MAX.',
      labelNames: ['kind'],
      registers,
    }),
    cache: new Counter({
      name: 'coder_reinit_guard_verdict_cache_total',
      help: 'Verdict cache lookups by result (hit, miss, shared).',
      labelNames: ['result'],
      registers,
    }),
    cacheWarmed: new Gauge({
      name: 'coder_reinit_guard_verdict_cache_warmed_workspaces',
      help: 'Workspaces whose "claim already handled" verdict the last cache warm-up loaded.',
      registers,
      aggregator: 'max',
    }),
    dbStatements: new Counter({
      name: 'coder_reinit_guard_db_statements_total',
      help: 'Statements the guard sent to the database, by statement (latest_builds: a batch of decisions; warm_up: a page of the cache warm-up) and result (ok or the failure kind).',
      labelNames: ['statement', 'result'],
      registers,
    }),
    dbStatementSeconds: new Histogram({
      name: 'coder_reinit_guard_db_statement_seconds',
      help: 'Time from sending a statement to its answer (or its deadline), by statement.',
      labelNames: ['statement'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
    dbBatchWorkspaces: new Histogram({
      name: 'coder_reinit_guard_db_batch_workspaces',
      help: 'Workspaces asked about per decision statement (a reconnect storm coalesces into large batches).',
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
      registers,
    }),
    decisionQueue: new Gauge({
      name: 'coder_reinit_guard_decision_queue',
      help: 'Workspace lookups waiting in the guard for a free database connection (they wait without a deadline; only a statement has one).',
      registers,
    }),
    httpRequests: new Counter({
      name: 'coder_reinit_guard_http_requests_total',
      help: 'Proxied requests by method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, other), status class (1xx-5xx; none when the client left before any answer) and origin (coderd: its answer relayed; guard: answered by the guard itself: its errors, refusals and the 409 it sends in place of a spurious event). Upgrades and tunnels are not counted here (open_streams).',
      labelNames: ['method', 'code', 'origin'],
      registers,
    }),
    httpDuration: new Histogram({
      name: 'coder_reinit_guard_http_request_duration_seconds',
      help: "Time from a proxied request's arrival to the end of its response, by origin: API calls take milliseconds, streams (watches, /reinit) minutes to hours.",
      labelNames: ['origin'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
      registers,
    }),
    httpBytes: new Counter({
      name: 'coder_reinit_guard_http_bytes_total',
      help: "Bytes of proxied requests read from clients (direction in) and of responses written to them (out), heads included, as the client's connection counted them.",
      labelNames: ['direction'],
      registers,
    }),
    upstreamErrors: new Counter({
      name: 'coder_reinit_guard_upstream_errors_total',
      help: 'Failures talking to coderd, by kind.',
      labelNames: ['kind'],
      registers,
    }),
    upstreamRetries: new Counter({
      name: 'coder_reinit_guard_upstream_retries_total',
      help: 'Requests sent to coderd again (bodiless idempotent requests and, for no_descriptor, bodiless upgrades), on a fresh connection, because the first connection failed before any answer, by reason (closed, reset: coderd closed an idle keep-alive connection as the request went out; interim_100: coderd sent a 100 Continue; no_descriptor: the guard was out of file descriptors, and a bodiless request or upgrade waited for one, counted per try).',
      labelNames: ['reason'],
      registers,
    }),
    internalErrors: new Counter({
      name: 'coder_reinit_guard_internal_errors_total',
      help: 'Requests a fault inside the guard ended (with a 502 or a cut connection), by where it happened. Should stay 0.',
      labelNames: ['where'],
      registers,
    }),
    refused: new Counter({
      name: 'coder_reinit_guard_refused_requests_total',
      help: 'Client requests the guard refused before forwarding them (ambiguous or unsupported), by reason.',
      labelNames: ['reason'],
      registers,
    }),
    inflight: new Gauge({
      name: 'coder_reinit_guard_upstream_inflight_requests',
      help: 'Proxied requests waiting for or streaming an upstream response.',
      registers,
    }),
    openStreams: new Gauge({
      name: 'coder_reinit_guard_open_streams',
      help: 'Open long-lived streams by kind (tunnel, reinit).',
      labelNames: ['kind'],
      registers,
    }),
    connections: new Gauge({
      name: 'coder_reinit_guard_connections',
      help: "Open TCP connections, by side: client (accepted by the proxy listeners), upstream (to coderd for proxied traffic: pooled, of their own, tunnelled) and control (the guard's own reads of coderd's buildinfo). Upstream stays at or below client unless idle keep-alive connections outlive their clients.",
      labelNames: ['side'],
      registers,
      collect() {
        const sources = metrics.connectionSources;
        if (!sources) return;
        this.set({ side: 'client' }, sources.client());
        this.set({ side: 'upstream' }, sources.upstream());
        this.set({ side: 'control' }, sources.control());
      },
    }),
    connectionSources: null,
    info: new Gauge({
      name: 'coder_reinit_guard_info',
      help: "Always 1: the guard's version, configured mode and coderd's reported version.",
      labelNames: ['version', 'mode', 'coderd_version'],
      registers,
      // Summed over cluster workers it would read N; only the primary sets it.
      aggregator: 'max',
    }),
    dependencyUp: new Gauge({
      name: 'coder_reinit_guard_dependency_up',
      help: '1 while the dependency (coderd, database) answered its last probe, else 0. Information only: readiness does not depend on it (the guard fails open).',
      labelNames: ['dependency'],
      registers,
      aggregator: 'max',
    }),
    retired: new Gauge({
      name: 'coder_reinit_guard_retired',
      help: '1 once coderd reports a version in REINIT_GUARD_RETIRE_AT: the guard passes everything and can be removed.',
      registers,
      aggregator: 'max',
    }),
  };
  return metrics;
}
